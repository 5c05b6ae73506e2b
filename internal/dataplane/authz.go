package dataplane

import (
	"fmt"
	"hash/fnv"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/authz"
	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/model"
)

// Authorization maps (bpf/include/types.h, "Authorization"). Policies keep
// their id while they exist, so their counters do; a changed policy is
// written into its other generation and then flipped. Lists of policies
// never change: a new set of policies that applies to a workload is a new
// list, written before the workload's entry moves to it, and the old list
// goes once nothing points at it. So a concurrent connect() sees, for each
// workload, the old policies or the new ones, never a mix, and never an id
// whose data is not written yet.
//
// When the mesh has no policy, the maps stay empty and the programs pass
// every connection after one lookup.

// PolicyInfo names a policy the maps hold, for metrics and dumps.
type PolicyInfo struct {
	Key    string // namespace/name
	Action model.PolicyAction
	DryRun bool
}

type authzState struct {
	policies  map[string]*policyState // by key
	policyIDs *idPool
	lists     map[string]*listState // by content
	listIDs   *idPool
	glob      bpf.KmeshAuthzListRef // as written; zero: no entry
	addrs     map[bpf.KmeshAuthzAddrKey]bpf.KmeshAuthzPeer
	netns     map[uint64]bpf.KmeshAuthzSelf
	names     map[uint32]PolicyInfo
	// workloads of the last applied mesh, when it has policies; nil
	// otherwise (ApplyNetns then clears km_authz_netns). The same map as
	// ix.workloads.
	workloads map[string]*model.Workload
	// ix indexes the last applied mesh while it has policies (nil
	// otherwise), for Update (authz_update.go).
	ix      *authzIndex
	idsHash uint64 // of the identities the policies were compiled for
	stale   *authzStale
	// listRefs counts the references to each list (glob, addrs);
	// unref are lists that may have none left, deleted after a write.
	listRefs map[uint32]int
	unref    map[uint32]struct{}
	listByID map[uint32]*listState
	// entries the policies and lists hold, as recorded: for the
	// capacity check without a walk of every policy.
	sum entryCounts
}

type entryCounts struct{ matches, vals, ips, refs int }

func (az *authzState) refList(id uint32) {
	if id != 0 {
		az.listRefs[id]++
	}
}

func (az *authzState) unrefList(id uint32) {
	if id == 0 {
		return
	}
	if az.listRefs[id] <= 1 {
		delete(az.listRefs, id)
		az.unref[id] = struct{}{}
		return
	}
	az.listRefs[id]--
}

// setAddr records v as km_authz_addr's entry for k (nil: none).
func (az *authzState) setAddr(k bpf.KmeshAuthzAddrKey, v *bpf.KmeshAuthzPeer) {
	if cur, ok := az.addrs[k]; ok {
		az.unrefList(cur.Lists[0].Id)
		az.unrefList(cur.Lists[1].Id)
	}
	if v == nil {
		delete(az.addrs, k)
		return
	}
	az.refList(v.Lists[0].Id)
	az.refList(v.Lists[1].Id)
	az.addrs[k] = *v
}

func (az *authzState) setGlob(ref bpf.KmeshAuthzListRef) {
	az.unrefList(az.glob.Id)
	az.refList(ref.Id)
	az.glob = ref
}

func (az *authzState) setPolicy(key string, ps *policyState) {
	if cur := az.policies[key]; cur != nil {
		az.sum.add(cur.compiled, -1)
	}
	if ps == nil {
		delete(az.policies, key)
		return
	}
	az.sum.add(ps.compiled, 1)
	az.policies[key] = ps
}

func (s *entryCounts) add(c *compiledPolicy, sign int) {
	s.matches += sign * len(c.matches)
	s.vals += sign * len(c.vals)
	s.ips += sign * len(c.ips)
}

type policyState struct {
	id       uint32
	gen      uint8
	policy   model.Policy // as compiled, to skip unchanged ones
	compiled *compiledPolicy
}

type listState struct {
	content string
	id      uint32
	ref     bpf.KmeshAuthzListRef
	entries []uint32 // policy ids
}

func newAuthzState(limits bpf.Limits) *authzState {
	return &authzState{
		policies:  map[string]*policyState{},
		policyIDs: newIDPool("policy", limits.Policies),
		lists:     map[string]*listState{},
		listIDs:   newIDPool("policy list", 0),
		addrs:     map[bpf.KmeshAuthzAddrKey]bpf.KmeshAuthzPeer{},
		netns:     map[uint64]bpf.KmeshAuthzSelf{},
		names:     map[uint32]PolicyInfo{},
		listRefs:  map[uint32]int{},
		unref:     map[uint32]struct{}{},
		listByID:  map[uint32]*listState{},
	}
}

// desiredAuthz is a mesh's policies in map terms, before ids are given out.
type desiredAuthz struct {
	policies  map[string]*model.Policy
	ids       identities
	idsHash   uint64
	glob      listSpec
	addrs     map[bpf.KmeshAuthzAddrKey]addrSpec
	workloads map[string]*model.Workload
}

// listSpec is a list by policy keys, per action (enum km_authz_action).
type listSpec [3][]string

type addrSpec struct {
	identity uint64
	lists    [2]listSpec // namespace, workload selector
}

func specOf(ps []*model.Policy) listSpec {
	var s listSpec
	for _, p := range ps {
		a := actionOf(p)
		s[a] = append(s[a], p.Key())
	}
	return s
}

// translateAuthz computes the authorization maps of m. With identityNode
// set, only the addresses of that node's workloads carry an identity.
func translateAuthz(m *model.Mesh, identityNode string) (*desiredAuthz, error) {
	want := &desiredAuthz{policies: map[string]*model.Policy{}, addrs: map[bpf.KmeshAuthzAddrKey]addrSpec{}}
	if len(m.Policies) == 0 {
		return want, nil
	}
	ix := authz.NewIndex(m)
	want.ids = identities{0: nil} // no identity
	want.workloads = make(map[string]*model.Workload, len(m.Workloads))
	for i := range m.Workloads {
		w := &m.Workloads[i]
		want.workloads[w.Key()] = w
		id := authz.IdentityOf(w)
		h := id.Hash()
		if prev, ok := want.ids[h]; ok && prev != nil && *prev != id {
			return nil, fmt.Errorf("workload %s: identity %s has the hash of %s; rename a service account", w.Key(), id, prev)
		}
		want.ids[h] = &id
	}
	hashes := slices.Sorted(maps.Keys(want.ids))
	f := fnv.New64a()
	for _, h := range hashes {
		f.Write(strconv.AppendUint(nil, h, 16))
	}
	want.idsHash = f.Sum64()
	for i := range m.Policies {
		want.policies[m.Policies[i].Key()] = &m.Policies[i]
	}
	want.glob = specOf(ix.Global())
	for a, w := range ix.Addresses() {
		var hash uint64
		if identityNode == "" || w.Node == identityNode {
			hash = authz.IdentityOf(w).Hash()
		}
		want.addrs[bpf.KmeshAuthzAddrKey{Addr: bpf.AddrWords(a)}] = addrSpec{
			identity: hash,
			lists:    [2]listSpec{specOf(ix.Namespace(w.Namespace)), specOf(ix.Selected(w))},
		}
	}
	return want, nil
}

// compileAuthz compiles the policies that changed, or all of them when the
// mesh's identities did.
func (d *Dataplane) compileAuthz(policies map[string]*model.Policy, ids identities, idsHash uint64) (map[string]*compiledPolicy, error) {
	out := make(map[string]*compiledPolicy, len(policies))
	for key, p := range policies {
		if cur := d.az.policies[key]; cur != nil && d.az.idsHash == idsHash && reflect.DeepEqual(&cur.policy, p) {
			out[key] = cur.compiled
			continue
		}
		c, err := compilePolicy(p, ids)
		if err != nil {
			return nil, err
		}
		out[key] = c
	}
	return out, nil
}

// applyAuthz writes want into the maps: policies first, then the lists
// that name them, then the references to the lists; then removes what is
// no longer referenced, in the reverse order.
func (d *Dataplane) applyAuthz(want *desiredAuthz, compiled map[string]*compiledPolicy) error {
	az := d.az
	for _, key := range slices.Sorted(maps.Keys(want.policies)) {
		if err := d.writePolicy(want.policies[key], compiled[key]); err != nil {
			return err
		}
	}
	if err := d.writeGlob(want.glob); err != nil {
		return err
	}
	for k, a := range want.addrs {
		if err := d.writeAddr(k, a); err != nil {
			return err
		}
	}
	for k := range az.addrs {
		if _, ok := want.addrs[k]; ok {
			continue
		}
		if err := d.deleteAddr(k); err != nil {
			return err
		}
	}
	for id := range az.listByID {
		az.unref[id] = struct{}{}
	}
	if err := d.sweepLists(); err != nil {
		return err
	}
	for key := range az.policies {
		if _, ok := want.policies[key]; ok {
			continue
		}
		if err := d.deletePolicy(key); err != nil {
			return err
		}
	}
	az.ix, az.workloads = nil, nil
	if want.workloads != nil {
		az.ix = indexOf(want)
		az.workloads = az.ix.workloads
	}
	az.idsHash = want.idsHash
	if az.stale != nil {
		return d.sweepAuthzStale()
	}
	return nil
}

// writeGlob points km_authz_glob at the list of s, written first.
func (d *Dataplane) writeGlob(s listSpec) error {
	az := d.az
	glob, err := d.writeList(s)
	if err != nil {
		return err
	}
	if glob == az.glob {
		return nil
	}
	if glob.Id == 0 {
		err = az.del(d.maps.KmAuthzGlob, uint32(0))
	} else {
		err = d.maps.KmAuthzGlob.Put(uint32(0), glob)
	}
	if err != nil {
		return fmt.Errorf("write global policies: %w", mapErr(bpf.KmeshMapKmAuthzGlob, err))
	}
	az.setGlob(glob)
	return nil
}

// writeAddr writes km_authz_addr's entry of one address, after the lists
// it names.
func (d *Dataplane) writeAddr(k bpf.KmeshAuthzAddrKey, a addrSpec) error {
	az := d.az
	v := bpf.KmeshAuthzPeer{Identity: a.identity}
	for i, s := range a.lists {
		var err error
		if v.Lists[i], err = d.writeList(s); err != nil {
			return err
		}
	}
	if cur, ok := az.addrs[k]; ok && cur == v {
		return nil
	}
	if err := d.maps.KmAuthzAddr.Put(k, v); err != nil {
		return fmt.Errorf("write workload address %s: %w", bpf.WordsAddr(k.Addr), mapErr(bpf.KmeshMapKmAuthzAddr, err))
	}
	az.setAddr(k, &v)
	return nil
}

func (d *Dataplane) deleteAddr(k bpf.KmeshAuthzAddrKey) error {
	if err := d.az.del(d.maps.KmAuthzAddr, k); err != nil {
		return fmt.Errorf("delete workload address %s: %w", bpf.WordsAddr(k.Addr), err)
	}
	d.az.setAddr(k, nil)
	return nil
}

// sweepLists deletes the lists nothing refers to any more, among those
// that lost a reference or were written since the last sweep.
func (d *Dataplane) sweepLists() error {
	az := d.az
	for _, id := range slices.Sorted(maps.Keys(az.unref)) {
		if l := az.listByID[id]; l != nil && az.listRefs[id] == 0 {
			if err := d.deleteList(l); err != nil {
				return err
			}
			delete(az.lists, l.content)
			delete(az.listByID, id)
			az.sum.refs -= len(l.entries)
		}
		delete(az.unref, id)
	}
	return nil
}

// deletePolicy removes a policy nothing refers to any more.
func (d *Dataplane) deletePolicy(key string) error {
	az := d.az
	cur := az.policies[key]
	if err := az.del(d.maps.KmAuthzPol, cur.id); err != nil {
		return fmt.Errorf("policy %s: delete: %w", key, err)
	}
	d.deletePolicyEntries(cur.id, cur.gen, cur.compiled)
	az.policyIDs.put(cur.id)
	delete(az.names, cur.id)
	az.setPolicy(key, nil)
	return nil
}

// writePolicy writes a new or changed policy into its free generation and
// then points its entry there.
func (d *Dataplane) writePolicy(p *model.Policy, c *compiledPolicy) error {
	az := d.az
	key := p.Key()
	cur := az.policies[key]
	if cur != nil && cur.compiled.equal(c) {
		cur.policy = *p
		az.names[cur.id] = PolicyInfo{Key: key, Action: p.Action, DryRun: p.DryRun}
		return nil
	}
	isNew := cur == nil
	next := &policyState{policy: *p, compiled: c}
	if isNew {
		id, err := az.policyIDs.get()
		if err != nil {
			return fmt.Errorf("policy %s: %w (raise --max-policies)", key, err)
		}
		// The id may have counted for a removed policy.
		if err := d.maps.KmAuthzStats.Put(id, make([]bpf.KmeshAuthzStat, ebpf.MustPossibleCPU())); err != nil {
			az.policyIDs.put(id)
			return fmt.Errorf("policy %s: reset counters: %w", key, err)
		}
		next.id = id
	} else {
		next.id, next.gen = cur.id, cur.gen^1
	}
	undo := func() {
		d.deletePolicyEntries(next.id, next.gen, c)
		if isNew {
			az.policyIDs.put(next.id)
		}
	}
	if err := d.writePolicyEntries(next.id, next.gen, c); err != nil {
		undo()
		return fmt.Errorf("policy %s: %w", key, err)
	}
	hdr := bpf.KmeshAuthzPolicy{Action: c.action, Gen: next.gen, Matches: uint32(len(c.matches))}
	if err := d.maps.KmAuthzPol.Put(next.id, hdr); err != nil {
		undo()
		return fmt.Errorf("policy %s: write: %w", key, mapErr(bpf.KmeshMapKmAuthzPol, err))
	}
	if !isNew {
		d.deletePolicyEntries(cur.id, cur.gen, cur.compiled)
	}
	az.setPolicy(key, next)
	az.names[next.id] = PolicyInfo{Key: key, Action: p.Action, DryRun: p.DryRun}
	return nil
}

func (d *Dataplane) writePolicyEntries(id uint32, gen uint8, c *compiledPolicy) error {
	for _, v := range c.vals {
		if err := d.maps.KmAuthzVal.Put(valKey(id, gen, v), v.label); err != nil {
			return fmt.Errorf("write match value: %w", mapErr(bpf.KmeshMapKmAuthzVal, err))
		}
	}
	for _, e := range c.ips {
		if err := d.maps.KmAuthzIp.Put(ipKey(id, gen, e), e.label); err != nil {
			return fmt.Errorf("write address block %s: %w", e.prefix, mapErr(bpf.KmeshMapKmAuthzIp, err))
		}
	}
	for i, m := range c.matches {
		if err := d.maps.KmAuthzMatch.Put(matchKey(id, gen, i), m); err != nil {
			return fmt.Errorf("write match %d: %w", i, mapErr(bpf.KmeshMapKmAuthzMatch, err))
		}
	}
	return nil
}

// deletePolicyEntries removes a generation's entries, matches first (a
// walk that loses one starts over); missing ones are fine, so it also
// undoes a failed write.
func (d *Dataplane) deletePolicyEntries(id uint32, gen uint8, c *compiledPolicy) {
	for i := range c.matches {
		d.deleteOrRemember(d.maps.KmAuthzMatch, bpf.KmeshMapKmAuthzMatch, matchKey(id, gen, i))
	}
	for _, v := range c.vals {
		d.deleteOrRemember(d.maps.KmAuthzVal, bpf.KmeshMapKmAuthzVal, valKey(id, gen, v))
	}
	for _, e := range c.ips {
		d.deleteOrRemember(d.maps.KmAuthzIp, bpf.KmeshMapKmAuthzIp, ipKey(id, gen, e))
	}
}

// writeList returns the reference to the list of s, writing the list if
// it does not exist yet.
func (d *Dataplane) writeList(s listSpec) (bpf.KmeshAuthzListRef, error) {
	var ids []uint32
	var ref bpf.KmeshAuthzListRef
	var content strings.Builder
	for _, a := range []uint8{actionDeny, actionAllow, actionCount} {
		ref.N[a] = uint16(len(s[a]))
		for _, key := range s[a] {
			id := d.az.policies[key].id
			ids = append(ids, id)
			content.WriteString(strconv.FormatUint(uint64(id), 10))
			content.WriteByte(',')
		}
		content.WriteByte('|')
	}
	if len(ids) == 0 {
		return bpf.KmeshAuthzListRef{}, nil
	}
	if l := d.az.lists[content.String()]; l != nil {
		return l.ref, nil
	}
	for a := range s {
		if len(s[a]) > 0xffff {
			return ref, fmt.Errorf("%d %s policies apply to one workload: at most 65535", len(s[a]), actionName(uint8(a)))
		}
	}
	lid, err := d.az.listIDs.get()
	if err != nil {
		return ref, err
	}
	ref.Id = lid
	l := &listState{content: content.String(), id: lid, ref: ref, entries: ids}
	for i, pid := range ids {
		if err := d.maps.KmAuthzList.Put(bpf.KmeshAuthzListKey{Id: lid, Index: uint32(i)}, pid); err != nil {
			l.entries = ids[:i]
			d.deleteList(l)
			return ref, fmt.Errorf("write policy list: %w", mapErr(bpf.KmeshMapKmAuthzList, err))
		}
	}
	d.az.lists[l.content] = l
	d.az.listByID[lid] = l
	d.az.sum.refs += len(ids)
	d.az.unref[lid] = struct{}{} // until something refers to it
	return ref, nil
}

func (d *Dataplane) deleteList(l *listState) error {
	for i := range l.entries {
		k := bpf.KmeshAuthzListKey{Id: l.id, Index: uint32(i)}
		if err := d.az.del(d.maps.KmAuthzList, k); err != nil {
			return fmt.Errorf("delete policy list %d: %w", l.id, err)
		}
	}
	d.az.listIDs.put(l.id)
	return nil
}

// del deletes a key; a missing one is fine.
func (az *authzState) del(m Map, key any) error {
	if err := m.Delete(key); err != nil && !isNotExist(err) {
		return err
	}
	return nil
}

// ApplyNetns tells the connect programs who each enrolled network
// namespace is: cookies maps a namespace's cookie to the key of its
// workload in the last applied mesh. Namespaces of unknown workloads are
// left out; their connects are checked only at the destination.
func (d *Dataplane) ApplyNetns(cookies map[uint64]string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.applyClients(cookies); err != nil {
		return err
	}
	if err := d.applyTunnelSrc(cookies); err != nil {
		return err
	}
	az := d.az
	want := map[uint64]bpf.KmeshAuthzSelf{}
	if az.workloads != nil {
		for c, key := range cookies {
			w := az.workloads[key]
			if w == nil {
				continue
			}
			// The same addresses, in the same fields, as the workload's backend.
			b, _ := backendValue(w.Addresses)
			want[c] = bpf.KmeshAuthzSelf{Identity: authz.IdentityOf(w).Hash(), Addr4: b.Addr4, Addr6: b.Addr6, Flags: b.Flags}
		}
	}
	if len(want) > int(d.limits.Workloads) {
		return fullError(bpf.KmeshMapKmAuthzNetns, len(want), int(d.limits.Workloads))
	}
	for k := range az.netns {
		if _, ok := want[k]; ok {
			continue
		}
		if err := az.del(d.maps.KmAuthzNetns, k); err != nil {
			return fmt.Errorf("delete netns cookie %d: %w", k, err)
		}
		delete(az.netns, k)
	}
	for k, v := range want {
		if cur, ok := az.netns[k]; ok && cur == v {
			continue
		}
		if err := d.maps.KmAuthzNetns.Put(k, v); err != nil {
			return fmt.Errorf("write netns cookie %d: %w", k, mapErr(bpf.KmeshMapKmAuthzNetns, err))
		}
		az.netns[k] = v
	}
	return nil
}

// Policies returns the policies the maps hold, by id.
func (d *Dataplane) Policies() map[uint32]PolicyInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.az.names)
}

// AuthzStat is what the programs counted for one policy at one side.
type AuthzStat struct {
	// Policy is the policy; its Key is "" for decisions no policy made
	// (none applied, or no ALLOW policy matched).
	Policy  PolicyInfo
	Side    string // Source (at connect) or Destination (on the SYN)
	Allowed uint64
	Denied  uint64
	Matched uint64 // an AUDIT or dry-run policy matched
}

// Sides of AuthzStat.
const (
	SideSource      = "source"
	SideDestination = "destination"
)

// AuthzStats reads the decision counters of every policy the maps hold,
// and of decisions no policy made.
func (d *Dataplane) AuthzStats() ([]AuthzStat, error) {
	names := d.Policies()
	ids := append([]uint32{0}, slices.Sorted(maps.Keys(names))...)
	var out []AuthzStat
	var per []bpf.KmeshAuthzStat
	for _, id := range ids {
		if err := d.maps.KmAuthzStats.Lookup(id, &per); err != nil {
			return out, fmt.Errorf("read %s: %w", bpf.KmeshMapKmAuthzStats, err)
		}
		var sum bpf.KmeshAuthzStat
		for _, s := range per {
			for i := range 2 {
				sum.Allowed[i] += s.Allowed[i]
				sum.Denied[i] += s.Denied[i]
				sum.Matched[i] += s.Matched[i]
			}
		}
		for i, side := range []string{SideSource, SideDestination} {
			out = append(out, AuthzStat{Policy: names[id], Side: side, Allowed: sum.Allowed[i], Denied: sum.Denied[i], Matched: sum.Matched[i]})
		}
	}
	return out, nil
}

func actionName(a uint8) string {
	switch a {
	case actionAllow:
		return "allow"
	case actionDeny:
		return "deny"
	case actionCount:
		return "count"
	}
	return "action" + strconv.Itoa(int(a))
}
