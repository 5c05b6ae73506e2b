package bpf

import (
	"encoding/binary"
	"net/netip"
)

// The C structs hold addresses and ports in network byte order. Their Go
// twins are plain integers stored in host order, so each value is built from
// its bytes in host order: the kernel then sees the bytes as they are on
// the wire. Addresses of four words are IPv6, or IPv4 as ::ffff:a.b.c.d.

// AddrWords returns addr as the four words of an address field.
func AddrWords(addr netip.Addr) [4]uint32 {
	b := addr.As16()
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

// Addr4Word returns an IPv4 address as a one-word field (backend_value.addr4).
func Addr4Word(addr netip.Addr) uint32 {
	b := addr.As4()
	return binary.NativeEndian.Uint32(b[:])
}

// WordsAddr is the inverse of AddrWords, unmapping IPv4.
func WordsAddr(w [4]uint32) netip.Addr {
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[4*i:], w[i])
	}
	return netip.AddrFrom16(b).Unmap()
}

// NetPort returns port in network byte order, as the C structs hold it; it
// is its own inverse.
func NetPort(port uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], port)
	return binary.NativeEndian.Uint16(b[:])
}

// TCPFrontendKey is km_frontend's key for a service address and port over
// TCP, the only protocol the balancer handles. The dataplane writes it;
// benchmarks read the pinned map with it.
func TCPFrontendKey(addr netip.Addr, port uint16) KmeshFrontendKey {
	return KmeshFrontendKey{Addr: AddrWords(addr), Port: NetPort(port), Proto: 6} // IPPROTO_TCP
}
