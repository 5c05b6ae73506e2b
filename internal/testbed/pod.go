package testbed

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"

	"github.com/vishvananda/netlink"
)

// Pod is a network namespace with one interface, eth0, into its node's
// bridge.
type Pod struct {
	// Name is the name given to AddPod.
	Name string
	// NetnsPath is the pod's network namespace, /var/run/netns/<run>-p-<name>.
	NetnsPath string
	// Node is the node the pod runs on.
	Node *Node
	// Addrs are the pod's addresses, at most one per family.
	Addrs []netip.Addr
}

// AddPod adds a pod on n with addresses from n's pod CIDRs, at most one per
// family, and default routes via n's gateways. Pod names are unique in a Bed.
func (n *Node) AddPod(name string, addrs ...netip.Addr) (*Pod, error) {
	b := n.bed
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, fmt.Errorf("pod %s: %w", name, errClosed)
	}
	if err := b.checkPod(n, name, addrs); err != nil {
		return nil, fmt.Errorf("pod %s: %w", name, err)
	}
	p := &Pod{
		Name:      name,
		NetnsPath: filepath.Join(netnsDir, b.runID+"-p-"+name),
		Node:      n,
		Addrs:     slices.Clone(addrs),
	}
	if err := createNetns(p.NetnsPath); err != nil {
		return nil, fmt.Errorf("pod %s: %w", name, err)
	}
	b.netns = append(b.netns, p.NetnsPath)
	if err := b.addPod(p); err != nil {
		// The veth, if made, goes with the namespace.
		if deleteNetns(p.NetnsPath) == nil {
			b.netns = b.netns[:len(b.netns)-1]
		}
		return nil, fmt.Errorf("pod %s: %w", name, err)
	}
	b.pods[name] = p
	return p, nil
}

func (b *Bed) checkPod(n *Node, name string, addrs []netip.Addr) error {
	if !validName(name) {
		return errors.New("invalid name: want up to 32 lower case letters, digits and dashes")
	}
	if _, ok := b.pods[name]; ok {
		return errors.New("already exists")
	}
	if len(addrs) == 0 {
		return errors.New("no address")
	}
	var v4, v6 int
	for _, a := range addrs {
		gw, ok := n.gateway(a)
		switch {
		case !ok:
			return fmt.Errorf("address %s: not in a pod CIDR of node %s", a, n.Name)
		case a == gw.Masked().Addr() || a == gw.Addr():
			return fmt.Errorf("address %s: reserved in %s", a, gw.Masked())
		case a.Is4() && a.Next().IsValid() && !gw.Contains(a.Next()):
			return fmt.Errorf("address %s: broadcast address of %s", a, gw.Masked())
		}
		if a.Is4() {
			v4++
		} else {
			v6++
		}
		for _, other := range b.pods {
			if slices.Contains(other.Addrs, a) {
				return fmt.Errorf("address %s: used by pod %s", a, other.Name)
			}
		}
	}
	if v4 > 1 || v6 > 1 {
		return errors.New("want at most one address per family")
	}
	return nil
}

func (b *Bed) addPod(p *Pod) error {
	// Before eth0 exists, so it inherits the default: with DAD off, IPv6
	// (link-local included) works the moment the link is up.
	err := setSysctls(p.NetnsPath,
		"net/ipv6/conf/all/accept_dad", "0",
		"net/ipv6/conf/default/accept_dad", "0",
	)
	if err != nil {
		return err
	}
	err = withHandle(p.Node.NetnsPath, func(h *netlink.Handle) error {
		br, err := h.LinkByName(podBridge)
		if err != nil {
			return fmt.Errorf("node %s: bridge: %w", p.Node.Name, err)
		}
		b.links++
		return addVeth(h, fmt.Sprintf("p%d", b.links), br, podLink, p.NetnsPath)
	})
	if err != nil {
		return err
	}
	return withHandle(p.NetnsPath, func(h *netlink.Handle) error {
		for _, l := range []string{"lo", podLink} {
			if err := setLinkUp(h, l); err != nil {
				return err
			}
		}
		for _, a := range p.Addrs {
			gw, _ := p.Node.gateway(a)
			if err := addAddr(h, podLink, netip.PrefixFrom(a, gw.Bits())); err != nil {
				return err
			}
			if err := addRoute(h, podLink, netip.Prefix{}, gw.Addr()); err != nil {
				return err
			}
		}
		return nil
	})
}

// Start runs a command in the pod: in its network namespace (through
// `nsenter --net`) and in its node's cgroup, so the node's kmeshd sees its
// sockets.
func (p *Pod) Start(name string, args ...string) (*Process, error) {
	return p.Node.bed.start(p.Name+"/"+filepath.Base(name), p.NetnsPath, p.Node.Cgroup, name, args)
}

// StartHost runs a command on the node itself: in the node's network
// namespace and cgroup.
func (n *Node) StartHost(name string, args ...string) (*Process, error) {
	return n.bed.start(n.Name+"/"+filepath.Base(name), n.NetnsPath, n.Cgroup, name, args)
}

// StartHostNetwork runs a command in the node's cgroup but in the root
// network namespace: a host-network process of the node that must reach a
// server on the machine's loopback, such as kmeshd's tunnel asking the
// Istio tier's istiod for certificates.
func (n *Node) StartHostNetwork(name string, args ...string) (*Process, error) {
	return n.bed.start(n.Name+"/"+filepath.Base(name), "", n.Cgroup, name, args)
}

// StartRoot runs a command in the root network namespace, outside every
// node's cgroup, as kmeshd runs. It runs in the Bed's own cgroup,
// <cgroup root>/<run>, so Sweep can still find it after a crash.
func (b *Bed) StartRoot(name string, args ...string) (*Process, error) {
	return b.start(filepath.Base(name), "", b.cgroup, name, args)
}

// Listen opens a listener in the pod's network namespace (a socket keeps
// the namespace it was made in): the test can then serve, or forward to
// the root namespace's loopback, what a process in the pod dials, such as
// the Istio tier's API server for a pod that watches Kubernetes.
func (p *Pod) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := onThread(p.NetnsPath, func() error {
		var err error
		ln, err = net.Listen(network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pod %s: listen %s: %w", p.Name, address, err)
	}
	return ln, nil
}
