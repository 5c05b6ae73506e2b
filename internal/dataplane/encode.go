package dataplane

import (
	"encoding/binary"
	"net/netip"

	"github.com/kmesh-go/kmesh/internal/bpf"
)

// The C structs hold addresses and ports in network byte order. Their Go
// twins are plain integers stored in host order, so each value is built from
// its bytes in host order: the kernel then sees the bytes as they are on
// the wire.

// addrWords returns addr as the four words of frontend_key.addr: IPv6 as is,
// IPv4 as ::ffff:a.b.c.d.
func addrWords(addr netip.Addr) [4]uint32 {
	b := addr.As16()
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

// addr4Word returns an IPv4 address as the word of backend_value.addr4.
func addr4Word(addr netip.Addr) uint32 {
	b := addr.As4()
	return binary.NativeEndian.Uint32(b[:])
}

// wordsAddr is the inverse of addrWords, unmapping IPv4.
func wordsAddr(w [4]uint32) netip.Addr {
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[4*i:], w[i])
	}
	return netip.AddrFrom16(b).Unmap()
}

// netPort returns port in network byte order, as the C structs hold it.
func netPort(port uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], port)
	return binary.NativeEndian.Uint16(b[:])
}

// hostPort is the inverse of netPort.
func hostPort(port uint16) uint16 { return netPort(port) }

func frontendKey(addr netip.Addr, port uint16) bpf.KmeshFrontendKey {
	return bpf.KmeshFrontendKey{Addr: addrWords(addr), Port: netPort(port), Proto: ipprotoTCP}
}

// ipprotoTCP is IPPROTO_TCP, the only protocol the balancer handles.
const ipprotoTCP = 6

func backendValue(addrs []netip.Addr) (bpf.KmeshBackendValue, bool) {
	var v bpf.KmeshBackendValue
	for _, a := range addrs {
		switch {
		case a.Is4() && v.Flags&uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V4) == 0:
			v.Addr4 = addr4Word(a)
			v.Flags |= uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V4)
		case a.Is6() && v.Flags&uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V6) == 0:
			v.Addr6 = addrWords(a)
			v.Flags |= uint32(bpf.KmeshKmBackendFlagKM_BACKEND_HAS_V6)
		}
	}
	return v, v.Flags != 0
}

// mappedPrefix is any IPv4-mapped address; only its ::ffff: part is used.
var mappedPrefix = netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff})
