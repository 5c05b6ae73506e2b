package testbed

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

type netlinkHandle = netlink.Handle

// Fixed interface names; each lives in its own namespace.
const (
	underlayBridge = "br0"  // in the underlay netns
	underlayLink   = "ul0"  // in a node netns, peer in the underlay bridge
	podBridge      = "cbr0" // in a node netns, the pods' gateway
	podLink        = "eth0" // in a pod netns, peer in its node's cbr0
)

// withHandle runs fn with a netlink handle whose sockets live in the
// namespace at nsPath, so every link it creates is born there.
func withHandle(nsPath string, fn func(h *netlink.Handle) error) error {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", nsPath, err)
	}
	defer h.Close()
	return fn(h)
}

// bridgeMAC is a fixed, locally administered address for a bridge. A bridge
// without one takes the lowest MAC of its ports, so adding a pod could change
// the gateway's MAC under the neighbour caches of the pods already there.
func bridgeMAC(n int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 'k', 'm', byte(n >> 8), byte(n), 0x01}
}

func setLinkUp(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("link %s: set up: %w", name, err)
	}
	return nil
}

func addBridge(h *netlink.Handle, name string, mac net.HardwareAddr) (netlink.Link, error) {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: mac}}
	if err := h.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("bridge %s: %w", name, err)
	}
	if err := h.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("bridge %s: set up: %w", name, err)
	}
	return h.LinkByName(name)
}

// addVeth creates a veth pair whose near end, name, is in h's namespace and
// a port of bridge, and whose far end, peerName, is born in the namespace at
// peerNs. It brings the near end up.
func addVeth(h *netlink.Handle, name string, bridge netlink.Link, peerName, peerNs string) error {
	ns, err := netns.GetFromPath(peerNs)
	if err != nil {
		return fmt.Errorf("veth %s: open netns %s: %w", name, peerNs, err)
	}
	defer ns.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name, MasterIndex: bridge.Attrs().Index},
		PeerName:      peerName,
		PeerNamespace: netlink.NsFd(ns),
	}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("veth %s: %w", name, err)
	}
	if err := h.LinkSetUp(veth); err != nil {
		return fmt.Errorf("veth %s: set up: %w", name, err)
	}
	return nil
}

// addAddr adds p to link without duplicate address detection, so IPv6
// addresses are usable at once.
func addAddr(h *netlink.Handle, link string, p netip.Prefix) error {
	l, err := h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("link %s: %w", link, err)
	}
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("link %s: add address %s: %w", link, p, err)
	}
	return nil
}

// route returns a route to dst (all addresses of gw's family if dst is not
// valid) via gw on link.
func route(h *netlink.Handle, link string, dst netip.Prefix, gw netip.Addr) (*netlink.Route, error) {
	l, err := h.LinkByName(link)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", link, err)
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.IP(gw.AsSlice())}
	if dst.IsValid() {
		r.Dst = ipNet(dst)
	} else {
		// netlink wants an explicit family for a default route.
		r.Family = netlink.FAMILY_V4
		if gw.Is6() {
			r.Family = netlink.FAMILY_V6
		}
	}
	return r, nil
}

func addRoute(h *netlink.Handle, link string, dst netip.Prefix, gw netip.Addr) error {
	r, err := route(h, link, dst, gw)
	if err == nil {
		err = h.RouteAdd(r)
	}
	if err != nil {
		return fmt.Errorf("route %s via %s: %w", routeDst(dst), gw, err)
	}
	return nil
}

func delRoute(h *netlink.Handle, link string, dst netip.Prefix, gw netip.Addr) error {
	r, err := route(h, link, dst, gw)
	if err == nil {
		err = h.RouteDel(r)
	}
	if err != nil {
		return fmt.Errorf("delete route %s via %s: %w", routeDst(dst), gw, err)
	}
	return nil
}

func routeDst(dst netip.Prefix) string {
	if !dst.IsValid() {
		return "default"
	}
	return dst.String()
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   net.IP(p.Addr().AsSlice()),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}
