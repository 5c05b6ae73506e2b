package waypoint

import (
	"context"
	"net"
	"net/http"
	"net/netip"

	"github.com/kmesh-go/kmesh/internal/hbone"
	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/model"
)

// UpstreamHBONE makes the waypoint reach endpoints whose tunnel protocol is
// HBONE the way Istio's waypoint does: a CONNECT to endpointIP:15008 with
// :authority endpointIP:targetPort, under the waypoint's own certificate,
// so the destination's tunnel runs its L4 policy on the waypoint's
// principal. Streams share the Dialer's pooled HTTP/2 connections (keyed
// by source and destination identity and address, as ztunnel's pool).
// Endpoints that do not take HBONE are dialled in plaintext.
type UpstreamHBONE struct {
	Dialer *hbone.Dialer
	// Identity is the waypoint's own (kmesh-waypoint --service-account).
	Identity identity.Identity
}

// upstreamDial wraps plain, the dialler of endpoints that do not take
// HBONE, with the HBONE client for those that do.
func (p *Proxy) upstreamDial(h *UpstreamHBONE, plain DialFunc) DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return plain(ctx, network, addr)
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		w := p.snap.Load().byAddr[ap.Addr()]
		// The waypoint has a CA whenever it has an HBONE client, so a
		// workload with a netns and no protocol of its own takes HBONE,
		// as kmeshd decides.
		if w == nil || w.TunnelFor(true) != model.TunnelHBONE {
			return plain(ctx, network, addr)
		}
		dst := identity.OfWorkload(h.Identity.TrustDomain, w.Namespace, w.ServiceAccount)
		c, err := h.Dialer.Dial(ctx, &hbone.Target{
			Source:      h.Identity,
			Destination: []identity.Identity{dst},
			Addr:        netip.AddrPortFrom(ap.Addr(), hbone.Port),
			Authority:   ap.String(),
			Header:      http.Header{},
		})
		if err != nil {
			// Debug: a refused endpoint fails every request sent to it
			// (the access log's response flags say so at every level).
			p.log.Debug("hbone upstream failed", "workload", w.Key(), "authority", ap.String(), "want", dst.String(), "err", err)
			return nil, err
		}
		return c, nil
	}
}
