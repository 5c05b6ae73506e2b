package testbed

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
)

// Node is one simulated host: a network namespace on the underlay that routes
// for its pods, a cgroup v2 directory and a bpffs pin directory.
type Node struct {
	// Name is the name given to AddNode.
	Name string
	// NetnsPath is the node's network namespace, /var/run/netns/<run>-n-<name>.
	NetnsPath string
	// Cgroup is the node's cgroup v2 directory, <cgroup root>/<run>-<name>.
	// Processes of the node's pods run in it; its kmeshd attaches there.
	Cgroup string
	// BPFDir is the node's bpffs pin directory, /sys/fs/bpf/<run>-<name>.
	// The bed does not create it (kmeshd does) but Close removes it.
	BPFDir string
	// UnderlayAddr4 and UnderlayAddr6 are the node's addresses on the
	// underlay, 10.255.0.N and fd00:255::N for the Nth node.
	UnderlayAddr4, UnderlayAddr6 netip.Addr
	// PodCIDRs are the prefixes given to AddNode; their first addresses are
	// the pods' gateways on the node's bridge.
	PodCIDRs []netip.Prefix

	bed *Bed
}

// UnderlayLink is the name of every node's interface on the underlay, in
// the node's network namespace: a node's traffic to and from other nodes
// enters and leaves through it.
const UnderlayLink = underlayLink

var (
	underlay4 = netip.MustParsePrefix("10.255.0.0/24")
	underlay6 = netip.MustParsePrefix("fd00:255::/64")
)

// AddNode adds a node with pod CIDRs: at most one IPv4 and one IPv6 prefix.
// It routes the new node's CIDRs from every other node and theirs from it.
func (b *Bed) AddNode(name string, podCIDRs ...netip.Prefix) (*Node, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, fmt.Errorf("node %s: %w", name, errClosed)
	}
	if err := b.checkNode(name, podCIDRs); err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	idx := len(b.nodes) + 1
	n := &Node{
		Name:          name,
		NetnsPath:     filepath.Join(netnsDir, b.runID+"-n-"+name),
		Cgroup:        filepath.Join(b.cgroupRoot, b.runID+"-"+name),
		BPFDir:        filepath.Join(bpfRoot, b.runID+"-"+name),
		UnderlayAddr4: nthAddr(underlay4, idx),
		UnderlayAddr6: nthAddr(underlay6, idx),
		PodCIDRs:      append([]netip.Prefix(nil), podCIDRs...),
		bed:           b,
	}
	if err := b.addNode(n, idx); err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	b.nodes = append(b.nodes, n)
	b.bpfDirs = append(b.bpfDirs, n.BPFDir)
	return n, nil
}

func (b *Bed) checkNode(name string, cidrs []netip.Prefix) error {
	if !validName(name) {
		return fmt.Errorf("invalid name: want up to 32 lower case letters, digits and dashes")
	}
	if len(b.nodes) >= 250 {
		return fmt.Errorf("too many nodes for the underlay %s", underlay4)
	}
	if len(cidrs) == 0 {
		return errors.New("no pod CIDR")
	}
	var v4, v6 int
	for _, c := range cidrs {
		switch {
		case !c.IsValid() || c != c.Masked():
			return fmt.Errorf("pod CIDR %s: not a network prefix", c)
		case c.Addr().Is4() && c.Bits() <= 30:
			v4++
		case c.Addr().Is6() && !c.Addr().Is4In6() && c.Bits() <= 126:
			v6++
		default:
			return fmt.Errorf("pod CIDR %s: too small for a gateway and a pod", c)
		}
		if c.Overlaps(underlay4) || c.Overlaps(underlay6) {
			return fmt.Errorf("pod CIDR %s: overlaps the underlay", c)
		}
		for _, other := range b.nodes {
			for _, oc := range other.PodCIDRs {
				if c.Overlaps(oc) {
					return fmt.Errorf("pod CIDR %s: overlaps %s of node %s", c, oc, other.Name)
				}
			}
		}
	}
	if v4 > 1 || v6 > 1 {
		return errors.New("want at most one pod CIDR per address family")
	}
	for _, other := range b.nodes {
		if other.Name == name {
			return errors.New("already exists")
		}
	}
	return nil
}

// addNode builds the node. On failure it removes what it built, and leaves
// for Close only what it could not remove.
func (b *Bed) addNode(n *Node, idx int) (err error) {
	if err := os.Mkdir(n.Cgroup, 0o755); err != nil {
		return fmt.Errorf("create cgroup: %w", err)
	}
	b.cgroups = append(b.cgroups, n.Cgroup)
	var (
		nsCreated bool
		routed    []*Node // other nodes that already route to n
	)
	defer func() {
		if err == nil {
			return
		}
		for _, o := range routed {
			o.delRoutesTo(n) // best effort: stale routes only point at a missing address
		}
		if nsCreated && deleteNetns(n.NetnsPath) == nil {
			b.netns = b.netns[:len(b.netns)-1]
		}
		if removeCgroup(n.Cgroup) == nil {
			b.cgroups = b.cgroups[:len(b.cgroups)-1]
		}
	}()
	if err := createNetns(n.NetnsPath); err != nil {
		return err
	}
	b.netns = append(b.netns, n.NetnsPath)
	nsCreated = true

	// Before any link exists, so the links inherit the defaults.
	err = setSysctls(n.NetnsPath,
		"net/ipv4/ip_forward", "1",
		"net/ipv6/conf/all/forwarding", "1",
		"net/ipv6/conf/all/accept_dad", "0",
		"net/ipv6/conf/default/accept_dad", "0",
	)
	if err != nil {
		return err
	}
	err = withHandle(b.underlay, func(h *netlink.Handle) error {
		br, err := h.LinkByName(underlayBridge)
		if err != nil {
			return fmt.Errorf("underlay bridge: %w", err)
		}
		b.links++
		return addVeth(h, fmt.Sprintf("n%d", b.links), br, underlayLink, n.NetnsPath)
	})
	if err != nil {
		return fmt.Errorf("underlay: %w", err)
	}
	err = withHandle(n.NetnsPath, func(h *netlink.Handle) error {
		for _, l := range []string{"lo", underlayLink} {
			if err := setLinkUp(h, l); err != nil {
				return err
			}
		}
		if err := addAddr(h, underlayLink, netip.PrefixFrom(n.UnderlayAddr4, underlay4.Bits())); err != nil {
			return err
		}
		if err := addAddr(h, underlayLink, netip.PrefixFrom(n.UnderlayAddr6, underlay6.Bits())); err != nil {
			return err
		}
		if _, err := addBridge(h, podBridge, bridgeMAC(idx)); err != nil {
			return err
		}
		for _, c := range n.PodCIDRs {
			if err := addAddr(h, podBridge, netip.PrefixFrom(c.Addr().Next(), c.Bits())); err != nil {
				return err
			}
		}
		for _, o := range b.nodes {
			for _, c := range o.PodCIDRs {
				if err := addRoute(h, underlayLink, c, o.underlayGateway(c)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, o := range b.nodes {
		routed = append(routed, o)
		if err := o.addRoutesTo(n); err != nil {
			return fmt.Errorf("node %s: %w", o.Name, err)
		}
	}
	return nil
}

// underlayGateway is n's underlay address of c's family.
func (n *Node) underlayGateway(c netip.Prefix) netip.Addr {
	if c.Addr().Is4() {
		return n.UnderlayAddr4
	}
	return n.UnderlayAddr6
}

func (n *Node) addRoutesTo(to *Node) error {
	return withHandle(n.NetnsPath, func(h *netlink.Handle) error {
		for _, c := range to.PodCIDRs {
			if err := addRoute(h, underlayLink, c, to.underlayGateway(c)); err != nil {
				return err
			}
		}
		return nil
	})
}

func (n *Node) delRoutesTo(to *Node) error {
	return withHandle(n.NetnsPath, func(h *netlink.Handle) error {
		var errs []error
		for _, c := range to.PodCIDRs {
			errs = append(errs, delRoute(h, underlayLink, c, to.underlayGateway(c)))
		}
		return errors.Join(errs...)
	})
}

// gateway returns the pods' gateway for addr: the first address of the pod
// CIDR that holds it.
func (n *Node) gateway(addr netip.Addr) (netip.Prefix, bool) {
	for _, c := range n.PodCIDRs {
		if c.Contains(addr) {
			return netip.PrefixFrom(c.Addr().Next(), c.Bits()), true
		}
	}
	return netip.Prefix{}, false
}

// nthAddr returns the address n after the start of p.
func nthAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Addr()
	for range n {
		a = a.Next()
	}
	return a
}
