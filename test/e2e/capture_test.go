//go:build e2e

package e2e

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"runtime"
	"sync"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// packet is one TCP segment a capture saw.
type packet struct {
	src, dst netip.AddrPort
	flags    uint8
	payload  []byte
}

// capture reads every TCP segment crossing the interfaces of a network
// namespace, through an AF_PACKET socket opened inside it (no tcpdump
// needed), until stop.
type capture struct {
	fd   int
	mu   sync.Mutex
	pkts []packet
	done chan struct{}
}

func startCapture(t *testing.T, nsPath string) *capture {
	t.Helper()
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		t.Fatal(err)
	}
	fd, serr := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err := netns.Set(orig); err != nil {
		t.Fatal(err) // the thread stays locked and dies with the test goroutine
	}
	runtime.UnlockOSThread()
	if serr != nil {
		t.Fatal(serr)
	}
	c := &capture{fd: fd, done: make(chan struct{})}
	go c.read()
	t.Cleanup(func() { c.stop() })
	return c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *capture) read() {
	defer close(c.done)
	buf := make([]byte, 1<<16)
	for {
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			return
		}
		// Outgoing copies on a bridge port repeat what came in on another.
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if p, ok := parseFrame(buf[:n]); ok {
			c.mu.Lock()
			c.pkts = append(c.pkts, p)
			c.mu.Unlock()
		}
	}
}

func (c *capture) stop() []packet {
	unix.Shutdown(c.fd, unix.SHUT_RDWR)
	unix.Close(c.fd)
	<-c.done
	return c.packets()
}

func (c *capture) packets() []packet {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]packet(nil), c.pkts...)
}

// parseFrame reads an Ethernet frame carrying TCP over IPv4 or IPv6
// (without extension headers, which the test-bed never sends).
func parseFrame(b []byte) (packet, bool) {
	if len(b) < 14 {
		return packet{}, false
	}
	etype := binary.BigEndian.Uint16(b[12:14])
	b = b[14:]
	var src, dst netip.Addr
	switch etype {
	case 0x0800:
		if len(b) < 20 || b[9] != unix.IPPROTO_TCP {
			return packet{}, false
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:4]))
		if total > len(b) || ihl > total {
			return packet{}, false
		}
		src = netip.AddrFrom4([4]byte(b[12:16]))
		dst = netip.AddrFrom4([4]byte(b[16:20]))
		b = b[ihl:total]
	case 0x86dd:
		if len(b) < 40 || b[6] != unix.IPPROTO_TCP {
			return packet{}, false
		}
		plen := int(binary.BigEndian.Uint16(b[4:6]))
		src = netip.AddrFrom16([16]byte(b[8:24]))
		dst = netip.AddrFrom16([16]byte(b[24:40]))
		if 40+plen > len(b) {
			return packet{}, false
		}
		b = b[40 : 40+plen]
	default:
		return packet{}, false
	}
	if len(b) < 20 {
		return packet{}, false
	}
	off := int(b[12]>>4) * 4
	if off > len(b) {
		return packet{}, false
	}
	return packet{
		src:     netip.AddrPortFrom(src, binary.BigEndian.Uint16(b[0:2])),
		dst:     netip.AddrPortFrom(dst, binary.BigEndian.Uint16(b[2:4])),
		flags:   b[13],
		payload: append([]byte(nil), b[off:]...),
	}, true
}

// tlsServerVersion finds a ServerHello in a server's first bytes and
// returns the version it chose: the supported_versions extension's for
// TLS 1.3 (its legacy field always says 1.2). 0 if none is there.
func tlsServerVersion(stream []byte) uint16 {
	// record: type 22 (handshake), version, length; handshake: type 2.
	if len(stream) < 9 || stream[0] != 22 || stream[5] != 2 {
		return 0
	}
	b := stream[9:]
	if len(b) < 35 {
		return 0
	}
	legacy := binary.BigEndian.Uint16(b[0:2])
	b = b[34:] // version, random
	sid := int(b[0])
	if len(b) < 1+sid+3+2 {
		return 0
	}
	b = b[1+sid+3:] // session id, cipher suite, compression
	extLen := int(binary.BigEndian.Uint16(b[0:2]))
	b = b[2:]
	if extLen < len(b) {
		b = b[:extLen]
	}
	for len(b) >= 4 {
		typ, l := binary.BigEndian.Uint16(b[0:2]), int(binary.BigEndian.Uint16(b[2:4]))
		if len(b) < 4+l {
			break
		}
		if typ == 43 && l == 2 { // supported_versions
			return binary.BigEndian.Uint16(b[4:6])
		}
		b = b[4+l:]
	}
	return legacy
}

// requireOnlyTunnel fails t unless every captured segment between two pod
// addresses (pod) goes to or from port 15008, none carries any of plain,
// at least one connection to 15008 was opened, and its server chose
// TLS 1.3. It returns how many tunnel connections were opened.
func requireOnlyTunnel(t *testing.T, pkts []packet, pod func(netip.Addr) bool, plain ...string) int {
	t.Helper()
	var tunnelSYNs int
	var serverFirst []byte
	for _, p := range pkts {
		if !pod(p.src.Addr()) || !pod(p.dst.Addr()) {
			continue
		}
		if p.src.Port() != 15008 && p.dst.Port() != 15008 {
			t.Fatalf("pod-to-pod segment on the underlay outside the tunnel: %s -> %s", p.src, p.dst)
		}
		if p.dst.Port() == 15008 && p.flags&0x12 == 0x02 {
			tunnelSYNs++
		}
		for _, s := range plain {
			if bytes.Contains(p.payload, []byte(s)) {
				t.Fatalf("application bytes %q on the underlay: %s -> %s: %q", s, p.src, p.dst, p.payload)
			}
		}
		if serverFirst == nil && p.src.Port() == 15008 && len(p.payload) > 0 {
			serverFirst = p.payload
		}
	}
	if tunnelSYNs == 0 {
		t.Fatal("no connection to port 15008 seen on the underlay")
	}
	if v := tlsServerVersion(serverFirst); v != 0x0304 {
		t.Fatalf("server's first bytes on 15008 chose TLS version %#04x, want 0x0304 (TLS 1.3): %x", v, serverFirst[:min(len(serverFirst), 64)])
	}
	return tunnelSYNs
}
