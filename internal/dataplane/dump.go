package dataplane

import (
	"fmt"
	"sort"
	"strings"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// DumpMaps decodes the service maps into one sorted line per entry, the
// format of golden tests and of the admin API's map dump:
//
//	frontend 10.96.0.10:80/TCP service=1 target_port=8080
//	service 1 mode=random gen=0 slots_v4=3 slots_v6=3
//	endpoint service=1 family=v4 gen=0 slot=0 backend=1
//	backend 1 v4=10.1.1.11 v6=fd00:1:1::11
func DumpMaps(maps *bpf.KmeshMaps) ([]string, error) {
	var lines []string

	var fk bpf.KmeshFrontendKey
	var fv bpf.KmeshFrontendValue
	it := maps.KmFrontend.Iterate()
	for it.Next(&fk, &fv) {
		lines = append(lines, fmt.Sprintf("frontend %s service=%d target_port=%d", frontendString(fk), fv.ServiceId, hostPort(fv.TargetPort)))
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
	sort.Strings(lines)
	return lines, nil
}

func frontendString(k bpf.KmeshFrontendKey) string {
	a := wordsAddr(k.Addr)
	proto := "TCP"
	if k.Proto != ipprotoTCP {
		proto = fmt.Sprintf("proto%d", k.Proto)
	}
	if a.Is4() {
		return fmt.Sprintf("%s:%d/%s", a, hostPort(k.Port), proto)
	}
	return fmt.Sprintf("[%s]:%d/%s", a, hostPort(k.Port), proto)
}

func backendString(id uint32, v bpf.KmeshBackendValue) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d", id)
	if v.Flags&uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V4) != 0 {
		fmt.Fprintf(&b, " v4=%s", wordsAddr([4]uint32{0, 0, netWordFFFF, v.Addr4}))
	}
	if v.Flags&uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V6) != 0 {
		fmt.Fprintf(&b, " v6=%s", wordsAddr(v.Addr6))
	}
	return b.String()
}

// netWordFFFF is the third word of an IPv4-mapped address.
var netWordFFFF = addrWords(mappedPrefix)[2]

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
