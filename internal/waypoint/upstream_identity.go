package waypoint

import (
	"net/netip"

	"github.com/kmesh-go/kmesh/internal/model"
)

// An upstream connection is made for an endpoint as the config knew it
// then: over HBONE to the identity its workload had, or in plaintext.
// Pooled connections are keyed by the endpoint's address only, so when a
// new config changes what an address is (its workload's identity or
// tunnel protocol, or the address leaves the mesh), the idle connections
// to it are closed: the next request dials again and, over HBONE, checks
// the certificate against the new identity. Envoy does the same when an
// endpoint's transport changes (a new host, the old one's connections
// drained). Connections busy with a request finish it.

// upstreamKey is what an upstream connection to a workload depends on.
type upstreamKey struct {
	principal string
	tunnel    model.TunnelProtocol
}

// changedUpstreams returns the addresses whose upstream connections were
// made for something the new snapshot no longer says.
func changedUpstreams(old, cur *snapshot) map[netip.Addr]bool {
	var changed map[netip.Addr]bool
	for a, ow := range old.byAddr {
		nw := cur.byAddr[a]
		if nw != nil && keyOf(old, ow) == keyOf(cur, nw) {
			continue
		}
		if changed == nil {
			changed = map[netip.Addr]bool{}
		}
		changed[a] = true
	}
	return changed
}

func keyOf(s *snapshot, w *model.Workload) upstreamKey {
	return upstreamKey{principal: s.principals[w], tunnel: w.TunnelFor(true)}
}

// dropUpstreams closes the idle pooled connections to the addresses.
func (p *Proxy) dropUpstreams(addrs map[netip.Addr]bool) {
	p.h1c.dropIdleTo(func(host netip.AddrPort) bool { return addrs[host.Addr().Unmap()] })
	// http.Transport closes its idle connections all at once; this is
	// rare (an identity or tunnel change), and only idle ones go.
	p.h1.CloseIdleConnections()
	p.h2.CloseIdleConnections()
}
