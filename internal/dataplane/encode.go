package dataplane

import (
	"net/netip"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

func frontendKey(addr netip.Addr, port uint16) bpf.KmeshFrontendKey {
	return bpf.TCPFrontendKey(addr, port)
}

// ipprotoTCP is IPPROTO_TCP, the only protocol the balancer handles.
const ipprotoTCP = 6

// backendValue puts a workload's first IPv4 and first IPv6 address (an
// IPv4-mapped one counts as IPv4) in the fields of backend_value.
func backendValue(addrs []netip.Addr) (bpf.KmeshBackendValue, bool) {
	var v bpf.KmeshBackendValue
	for _, a := range addrs {
		switch a = a.Unmap(); {
		case a.Is4() && v.Flags&uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V4) == 0:
			v.Addr4 = bpf.Addr4Word(a)
			v.Flags |= uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V4)
		case a.Is6() && v.Flags&uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V6) == 0:
			v.Addr6 = bpf.AddrWords(a)
			v.Flags |= uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V6)
		}
	}
	return v, v.Flags != 0
}

// mappedPrefix is any IPv4-mapped address; only its ::ffff: part is used.
var mappedPrefix = netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff})
