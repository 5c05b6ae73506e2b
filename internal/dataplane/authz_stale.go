package dataplane

import (
	"fmt"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// authzStale is what a previous kmeshd left in the authorization maps. Its
// workload entries are adopted as written (the first Apply overwrites or
// deletes each); its policies and lists keep serving them until then, with
// their ids reserved, and are swept after.
type authzStale struct {
	policies map[uint32]bool
	lists    map[uint32]bool
	// entries counts each map's entries, for the capacity check.
	entries map[string]int
}

func (d *Dataplane) scanAuthzStale() error {
	s := &authzStale{policies: map[uint32]bool{}, lists: map[uint32]bool{}, entries: map[string]int{}}
	az := d.az
	var id uint32
	var pol bpf.KmeshAuthzPolicy
	it := d.maps.KmAuthzPol.Iterate()
	for it.Next(&id, &pol) {
		s.policies[id] = true
		az.policyIDs.reserve(id)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", bpf.KmeshMapKmAuthzPol, err)
	}
	var lk bpf.KmeshAuthzListKey
	it = d.maps.KmAuthzList.Iterate()
	for it.Next(&lk, &id) {
		s.lists[lk.Id] = true
		az.listIDs.reserve(lk.Id)
		s.entries[bpf.KmeshMapKmAuthzList]++
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", bpf.KmeshMapKmAuthzList, err)
	}
	var ak bpf.KmeshAuthzAddrKey
	var av bpf.KmeshAuthzPeer
	it = d.maps.KmAuthzAddr.Iterate()
	for it.Next(&ak, &av) {
		az.setAddr(ak, &av)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", bpf.KmeshMapKmAuthzAddr, err)
	}
	var glob bpf.KmeshAuthzListRef
	if err := d.maps.KmAuthzGlob.Lookup(uint32(0), &glob); err == nil {
		az.setGlob(glob)
	} else if !isNotExist(err) {
		return fmt.Errorf("read %s: %w", bpf.KmeshMapKmAuthzGlob, err)
	}
	var cookie uint64
	var self bpf.KmeshAuthzSelf
	it = d.maps.KmAuthzNetns.Iterate()
	for it.Next(&cookie, &self) {
		az.netns[cookie] = self
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", bpf.KmeshMapKmAuthzNetns, err)
	}
	for name, m := range map[string]Map{
		bpf.KmeshMapKmAuthzMatch: d.maps.KmAuthzMatch,
		bpf.KmeshMapKmAuthzVal:   d.maps.KmAuthzVal,
		bpf.KmeshMapKmAuthzIp:    d.maps.KmAuthzIp,
	} {
		n, err := countKeys(m)
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		s.entries[name] = int(n)
	}
	s.entries[bpf.KmeshMapKmAuthzPol] = len(s.policies)
	if len(s.policies)+len(s.lists)+s.entries[bpf.KmeshMapKmAuthzMatch]+s.entries[bpf.KmeshMapKmAuthzVal]+s.entries[bpf.KmeshMapKmAuthzIp] > 0 {
		az.stale = s
		d.log.Info("found authorization entries of a previous instance", "policies", len(s.policies), "workload_addresses", len(az.addrs))
	}
	return nil
}

// sweepAuthzStale removes the previous instance's lists, then its
// policies: nothing the first Apply wrote refers to them any more.
func (d *Dataplane) sweepAuthzStale() error {
	s := d.az.stale
	var lk bpf.KmeshAuthzListKey
	var pid uint32
	var lists []bpf.KmeshAuthzListKey
	it := d.maps.KmAuthzList.Iterate()
	for it.Next(&lk, &pid) {
		if s.lists[lk.Id] {
			lists = append(lists, lk)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", bpf.KmeshMapKmAuthzList, err)
	}
	for _, k := range lists {
		if err := d.az.del(d.maps.KmAuthzList, k); err != nil {
			return fmt.Errorf("sweep policy list %d: %w", k.Id, err)
		}
	}
	for id := range s.policies {
		if err := d.az.del(d.maps.KmAuthzPol, id); err != nil {
			return fmt.Errorf("sweep policy %d: %w", id, err)
		}
	}
	if err := sweepKeys(d.maps.KmAuthzMatch, func(k *bpf.KmeshAuthzMatchKey) bool { return s.policies[k.PolicyId] }); err != nil {
		return err
	}
	if err := sweepKeys(d.maps.KmAuthzVal, func(k *bpf.KmeshAuthzValKey) bool { return s.policies[k.PolicyId] }); err != nil {
		return err
	}
	if err := sweepKeys(d.maps.KmAuthzIp, func(k *bpf.KmeshAuthzIpKey) bool { return s.policies[k.PolicyId] }); err != nil {
		return err
	}
	for id := range s.policies {
		d.az.policyIDs.put(id)
	}
	for id := range s.lists {
		d.az.listIDs.put(id)
	}
	d.log.Info("removed authorization entries of a previous instance", "policies", len(s.policies), "lists", len(s.lists))
	d.az.stale = nil
	return nil
}

// sweepKeys deletes the keys of m that stale selects. Keys are collected
// first: deleting while walking restarts the walk.
func sweepKeys[K any](m Map, stale func(*K) bool) error {
	var k K
	var keys []K
	it := m.Iterate()
	var v []byte
	for it.Next(&k, &v) {
		if stale(&k) {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", m.String(), err)
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !isNotExist(err) {
			return fmt.Errorf("sweep %s: %w", m.String(), err)
		}
	}
	return nil
}

// checkAuthzCapacity counts the most entries each authorization map holds
// while a write is applied (a changing policy's two generations, old and
// new lists side by side, a previous instance's entries) and refuses a
// config that overflows one, before any write. compiled are the policies
// the write compiled, glob (nil: unchanged) and addrs the entries it
// writes; the rest is counted from the running sums, not walked.
func (d *Dataplane) checkAuthzCapacity(compiled map[string]*compiledPolicy, glob *listSpec, addrSpecs map[bpf.KmeshAuthzAddrKey]addrSpec) error {
	az := d.az
	stale := map[string]int{}
	if az.stale != nil {
		stale = az.stale.entries
	}
	policies := stale[bpf.KmeshMapKmAuthzPol] + len(az.policies)
	matches := stale[bpf.KmeshMapKmAuthzMatch] + az.sum.matches
	vals := stale[bpf.KmeshMapKmAuthzVal] + az.sum.vals
	ips := stale[bpf.KmeshMapKmAuthzIp] + az.sum.ips
	for key, c := range compiled {
		cur := az.policies[key]
		if cur == nil {
			policies++
		}
		if cur == nil || !cur.compiled.equal(c) {
			matches += len(c.matches)
			vals += len(c.vals)
			ips += len(c.ips)
		}
	}
	// Lists: every current one, plus each new content (an upper bound:
	// contents are compared by key here, by id when written).
	refs := stale[bpf.KmeshMapKmAuthzList] + az.sum.refs
	seen := map[string]bool{}
	count := func(s listSpec) {
		n := len(s[0]) + len(s[1]) + len(s[2])
		if n == 0 {
			return
		}
		k := fmt.Sprint(s)
		if !seen[k] {
			seen[k] = true
			refs += n
		}
	}
	if glob != nil {
		count(*glob)
	}
	addrs := len(az.addrs)
	for k, a := range addrSpecs {
		count(a.lists[0])
		count(a.lists[1])
		if _, ok := az.addrs[k]; !ok {
			addrs++
		}
	}
	for _, c := range []struct {
		m          string
		need, have int
	}{
		{bpf.KmeshMapKmAuthzPol, policies, int(d.limits.Policies)},
		{bpf.KmeshMapKmAuthzMatch, matches, int(d.limits.PolicyMatches)},
		{bpf.KmeshMapKmAuthzVal, vals, int(d.limits.PolicyValues)},
		{bpf.KmeshMapKmAuthzIp, ips, int(d.limits.PolicyIPBlocks)},
		{bpf.KmeshMapKmAuthzList, refs, int(d.limits.PolicyRefs)},
		{bpf.KmeshMapKmAuthzAddr, addrs, int(d.limits.WorkloadAddresses)},
	} {
		if c.need > c.have {
			return fullError(c.m, c.need, c.have)
		}
	}
	return nil
}
