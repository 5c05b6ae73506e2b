package dataplane

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// DumpMaps decodes the service and authorization maps (dumpAuthz) into one
// sorted line per entry, the format of golden tests and of the admin API's
// map dump:
//
//	frontend 10.96.0.10:80/TCP service=1 target_port=8080
//	service 1 mode=random gen=0 slots_v4=3 slots_v6=3
//	endpoint service=1 family=v4 gen=0 slot=0 backend=1
//	backend 1 v4=10.1.1.11 v6=fd00:1:1::11
func DumpMaps(maps *bpf.KmeshMaps) ([]string, error) { return Dump(MapStore(maps)) }

// Dump is DumpMaps on any store.
func Dump(maps *Store) ([]string, error) {
	var lines []string

	var fk bpf.KmeshFrontendKey
	var fv bpf.KmeshFrontendValue
	it := maps.KmFrontend.Iterate()
	for it.Next(&fk, &fv) {
		lines = append(lines, fmt.Sprintf("frontend %s service=%d target_port=%d", frontendString(fk), fv.ServiceId, bpf.NetPort(fv.TargetPort)))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmFrontend, err)
	}

	var id uint32
	var sv bpf.KmeshServiceValue
	it = maps.KmService.Iterate()
	for it.Next(&id, &sv) {
		lines = append(lines, fmt.Sprintf("service %d mode=%s gen=%d slots_v4=%d slots_v6=%d", id, lbModeName(sv.LbMode), sv.Gen, sv.Slots[0], sv.Slots[1]))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmService, err)
	}

	var ek bpf.KmeshEndpointKey
	var ev bpf.KmeshEndpointValue
	it = maps.KmEndpoint.Iterate()
	for it.Next(&ek, &ev) {
		lines = append(lines, fmt.Sprintf("endpoint service=%d family=%s gen=%d slot=%d backend=%d", ek.ServiceId, familyName(ek.Family), ek.Gen, ek.Slot, ev.BackendId))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmEndpoint, err)
	}

	var bv bpf.KmeshBackendValue
	it = maps.KmBackend.Iterate()
	for it.Next(&id, &bv) {
		lines = append(lines, "backend "+backendString(id, bv))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmBackend, err)
	}
	authzLines, err := dumpAuthz(maps)
	if err != nil {
		return nil, err
	}
	lines = append(lines, authzLines...)
	sort.Strings(lines)
	return lines, nil
}

func frontendString(k bpf.KmeshFrontendKey) string {
	a := bpf.WordsAddr(k.Addr)
	proto := "TCP"
	if k.Proto != ipprotoTCP {
		proto = fmt.Sprintf("proto%d", k.Proto)
	}
	if a.Is4() {
		return fmt.Sprintf("%s:%d/%s", a, bpf.NetPort(k.Port), proto)
	}
	return fmt.Sprintf("[%s]:%d/%s", a, bpf.NetPort(k.Port), proto)
}

func backendString(id uint32, v bpf.KmeshBackendValue) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d", id)
	if v.Flags&uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V4) != 0 {
		fmt.Fprintf(&b, " v4=%s", bpf.WordsAddr([4]uint32{0, 0, netWordFFFF, v.Addr4}))
	}
	if v.Flags&uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V6) != 0 {
		fmt.Fprintf(&b, " v6=%s", bpf.WordsAddr(v.Addr6))
	}
	return b.String()
}

// netWordFFFF is the third word of an IPv4-mapped address.
var netWordFFFF = bpf.AddrWords(mappedPrefix)[2]

func lbModeName(m uint8) string {
	for name, v := range lbModes {
		if v == m {
			return string(name)
		}
	}
	return fmt.Sprintf("mode%d", m)
}

func familyName(f uint8) string {
	if f == uint8(bpf.KmeshKmFamilyKM_FAMILY_V6) {
		return "v6"
	}
	return "v4"
}

// dumpAuthz adds one line per entry of the authorization maps:
//
//	authz_addr 10.1.1.11 identity=0x5f1e... ns_list=2/d1,a0,c0 sel_list=0
//	authz_glob list=1/d0,a1,c0
//	authz_list 1[0] policy=3
//	authz_policy 3 action=deny gen=0 matches=2
//	authz_match policy=3 gen=0 index=0 next_rule=1 flags=clause_start,clause_end,rule_end,identity
//	authz_val policy=3 gen=0 index=0 identity=0x5f1e... label=1
//	authz_val policy=3 gen=0 index=1 port=8080 label=1
//	authz_ip policy=3 gen=0 index=1 src=10.0.0.0/8 label=1
//	authz_netns 4099 identity=0x5f1e... v4=10.1.1.10 v6=fd00:1:1::10
func dumpAuthz(maps *Store) ([]string, error) {
	var lines []string
	var ak bpf.KmeshAuthzAddrKey
	var av bpf.KmeshAuthzPeer
	it := maps.KmAuthzAddr.Iterate()
	for it.Next(&ak, &av) {
		lines = append(lines, fmt.Sprintf("authz_addr %s identity=%#016x ns_list=%s sel_list=%s", bpf.WordsAddr(ak.Addr), av.Identity, listRefString(av.Lists[0]), listRefString(av.Lists[1])))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmAuthzAddr, err)
	}
	var zero uint32
	var glob bpf.KmeshAuthzListRef
	if err := maps.KmAuthzGlob.Lookup(zero, &glob); err == nil {
		lines = append(lines, "authz_glob list="+listRefString(glob))
	} else if !isNotExist(err) {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmAuthzGlob, err)
	}
	var lk bpf.KmeshAuthzListKey
	var pid uint32
	it = maps.KmAuthzList.Iterate()
	for it.Next(&lk, &pid) {
		lines = append(lines, fmt.Sprintf("authz_list %d[%d] policy=%d", lk.Id, lk.Index, pid))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmAuthzList, err)
	}
	var pv bpf.KmeshAuthzPolicy
	it = maps.KmAuthzPol.Iterate()
	for it.Next(&pid, &pv) {
		lines = append(lines, fmt.Sprintf("authz_policy %d action=%s gen=%d matches=%d", pid, actionName(pv.Action), pv.Gen, pv.Matches))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmAuthzPol, err)
	}
	var mk bpf.KmeshAuthzMatchKey
	var mv bpf.KmeshAuthzMatch
	it = maps.KmAuthzMatch.Iterate()
	for it.Next(&mk, &mv) {
		lines = append(lines, fmt.Sprintf("authz_match policy=%d gen=%d index=%d next_rule=%d flags=%s", mk.PolicyId, mk.Gen, mk.Index, mv.NextRule, matchFlagsString(mv.Flags)))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmAuthzMatch, err)
	}
	var vk bpf.KmeshAuthzValKey
	var label uint8
	it = maps.KmAuthzVal.Iterate()
	for it.Next(&vk, &label) {
		what := fmt.Sprintf("identity=%#016x", vk.Value)
		if vk.Kind == kindPort {
			what = fmt.Sprintf("port=%d", vk.Value)
		}
		lines = append(lines, fmt.Sprintf("authz_val policy=%d gen=%d index=%d %s label=%d", vk.PolicyId, vk.Gen, vk.Index, what, label))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmAuthzVal, err)
	}
	var ik bpf.KmeshAuthzIpKey
	it = maps.KmAuthzIp.Iterate()
	for it.Next(&ik, &label) {
		field := "src"
		if ik.Kind == kindDstIP {
			field = "dst"
		}
		lines = append(lines, fmt.Sprintf("authz_ip policy=%d gen=%d index=%d %s=%s label=%d", ik.PolicyId, ik.Gen, ik.Index, field, blockString(ik), label))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmAuthzIp, err)
	}
	var cookie uint64
	var self bpf.KmeshAuthzSelf
	it = maps.KmAuthzNetns.Iterate()
	for it.Next(&cookie, &self) {
		line := fmt.Sprintf("authz_netns %d identity=%#016x", cookie, self.Identity)
		if self.Flags&uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V4) != 0 {
			line += " v4=" + bpf.WordsAddr([4]uint32{0, 0, netWordFFFF, self.Addr4}).String()
		}
		if self.Flags&uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V6) != 0 {
			line += " v6=" + bpf.WordsAddr(self.Addr6).String()
		}
		lines = append(lines, line)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmAuthzNetns, err)
	}
	return lines, nil
}

func listRefString(r bpf.KmeshAuthzListRef) string {
	if r.Id == 0 {
		return "0"
	}
	return fmt.Sprintf("%d/d%d,a%d,c%d", r.Id, r.N[actionDeny], r.N[actionAllow], r.N[actionCount])
}

// blockString shows a trie key's block as written: IPv4 unmapped, the
// catch-all entry as "any".
func blockString(k bpf.KmeshAuthzIpKey) string {
	bits := int(k.Prefixlen) - 64
	if bits == 0 {
		return "any"
	}
	a := bpf.WordsAddr(k.Addr)
	if a.Is4() && bits >= 96 {
		return netip.PrefixFrom(a, bits-96).String()
	}
	return netip.PrefixFrom(netip.AddrFrom16(a.As16()), bits).String()
}

var matchFlagNames = []struct {
	flag uint16
	name string
}{
	{flagClauseStart, "clause_start"}, {flagClauseEnd, "clause_end"}, {flagRuleEnd, "rule_end"},
	{flagIdentity, "identity"}, {flagIdentityNot, "identity_not"}, {flagSrcIP, "src_ip"},
	{flagDstIP, "dst_ip"}, {flagPort, "port"}, {flagPortDefault, "port_default"},
}

func matchFlagsString(f uint16) string {
	var names []string
	for _, n := range matchFlagNames {
		if f&n.flag != 0 {
			names = append(names, n.name)
		}
	}
	return strings.Join(names, ",")
}
