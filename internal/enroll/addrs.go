package enroll

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Addresses lists the global unicast addresses of the network namespace at
// path (opened as Cookie opens it), through a netlink socket made inside
// it. The daemon matches them to the mesh's workloads of this node to tell
// connect() who a namespace enrolled by path alone is (--enroll-netns,
// kmeshctl enroll). Loopback and link-local addresses, which every
// namespace repeats, are left out.
func Addresses(path string) ([]netip.Addr, error) {
	f, err := openNetns(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h, err := netlink.NewHandleAt(netns.NsHandle(f.Fd()))
	if err != nil {
		return nil, fmt.Errorf("netns %s: netlink: %w", path, err)
	}
	defer h.Close()
	list, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("netns %s: list addresses: %w", path, err)
	}
	var out []netip.Addr
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap().IsGlobalUnicast() {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}
