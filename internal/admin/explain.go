package admin

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/authz"
	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/model"
)

// ErrUnknownWorkload is returned by Explain when the source names no
// workload of the mesh.
var ErrUnknownWorkload = errors.New("unknown workload")

// Placeholders for the checks the data plane does not make yet.
const (
	notChecked   = "n/a"
	notEvaluated = "not checked: the endpoint has no address of this family"
	defaultNS    = "default"
	familyV4     = "IPv4"
	familyV6     = "IPv6"
)

// Explain tells what a connect from the source workload (namespace/name, or
// a name in namespace default) to dst does under mesh m, as the kmeshd of
// node, which enrolled the network namespaces in enrolled, would do it: the
// service matched, and for each of its endpoints whether the connect may
// pick it, and why not. who names the workload of each enrolled namespace
// the daemon matched to one (workload key -> netns path): a workload of an
// xDS mesh has no netns of its own, and is in the mesh when it is there.
// It reads the model, not the maps.
//
// trustDomain is the CA's trust domain, "" when the mesh has none: with
// one, a connection to a workload of another node that takes HBONE goes
// through the tunnel, and the explanation names the peer and both
// identities (dataplane.TunnelAddrs decides the same for km_tunnel).
func Explain(m *model.Mesh, node string, enrolled []string, who map[string]string, trustDomain string, source string, dst netip.AddrPort) (api.Explanation, error) {
	key := source
	if !strings.Contains(key, "/") {
		key = defaultNS + "/" + key
	}
	src := m.Workload(key)
	if src == nil {
		return api.Explanation{}, fmt.Errorf("source %s: %w", key, ErrUnknownWorkload)
	}
	netns := src.Netns
	if p, ok := who[src.Key()]; ok && src.Node == node {
		netns = p
	}
	e := api.Explanation{
		Source:      explainSource(src, netns, node, enrolled),
		Destination: dst.String(),
		Endpoints:   []api.ExplainEndpoint{},
	}
	// The programs see a v4-mapped address as the IPv4 address it maps.
	addr := dst.Addr().Unmap()
	family := familyV6
	if addr.Is4() {
		family = familyV4
	}

	ix := authz.NewIndex(m)
	svc, port := findService(m, addr, dst.Port())
	switch {
	case svc == nil:
		e.Result = fmt.Sprintf("passes untouched: no service has address %s", addr)
		w := ix.WorkloadAt(addr)
		if w != nil {
			e.Tunnel = explainTunnel(src, w, trustDomain, addr)
		}
		var what []string
		if w != nil && ix.Policies() {
			what = append(what, explainPolicy(ix, src, w, netip.AddrPortFrom(addr, dst.Port())))
		}
		if e.Tunnel != nil {
			what = append(what, tunnelSentence(e.Tunnel))
		}
		if len(what) > 0 {
			e.Result = fmt.Sprintf("not balanced (no service has address %s); to workload %s: %s", addr, w.Key(), strings.Join(what, "; "))
		}
	case port == nil:
		e.Result = fmt.Sprintf("passes untouched: service %s has address %s but no port %d", svc.Key(), addr, dst.Port())
	default:
		e.Service = &api.ExplainService{Name: svc.Name, Namespace: svc.Namespace, Port: port.Port, TargetPort: port.TargetPort, Mode: string(svc.LBMode)}
		if key := m.ServiceWaypoint(svc); key != "" {
			e.Service.Waypoint = key
		} else if svc.Waypoint != nil {
			e.Service.Waypoint = svc.Waypoint.Address
			e.Service.Workload = svc.Waypoint.Workload
		}
		e.Endpoints = explainEndpoints(m, svc, port.TargetPort, addr.Is4())
		e.Service.Priority = explainLocality(m, svc, src, e.Endpoints)
		eligible, denied := 0, 0
		for i := range e.Endpoints {
			ep := &e.Endpoints[i]
			if w := m.Workload(ep.Workload); w != nil && ep.Address != "" {
				to := netip.MustParseAddrPort(ep.Address)
				ep.Policy = explainPolicy(ix, src, w, to)
				ep.Tunnel = explainTunnel(src, w, trustDomain, to.Addr())
			}
			if ep.Eligible {
				eligible++
				if strings.HasPrefix(ep.Policy, "denied") {
					denied++
				}
			}
		}
		switch {
		case eligible == 0 && svc.Locality != nil && svc.Locality.Mode == model.LocalityStrict:
			e.Result = fmt.Sprintf("refused: locality mode strict and no %s endpoint of service %s matches the source in every scope, so connect() fails with ECONNREFUSED", family, svc.Key())
		case eligible == 0:
			e.Result = fmt.Sprintf("refused: service %s has no eligible %s endpoint, so connect() fails with ECONNREFUSED", svc.Key(), family)
		case svc.AnyPort() && tunnelled(e.Endpoints) == 0:
			e.Result = fmt.Sprintf("refused: workload %s's own address goes to its waypoint %s only over HBONE, whose authority names it, and no instance is reached through the tunnel (no CA), so connect() fails with ECONNREFUSED",
				svc.Waypoint.Workload, svc.Waypoint.Address)
		case denied == eligible:
			e.Result = fmt.Sprintf("denied: policies deny every eligible endpoint of service %s, so connect() fails with EACCES", svc.Key())
		default:
			e.Result = fmt.Sprintf("balanced (%s) over %d of %d endpoints, to port %d", svc.LBMode, eligible, len(e.Endpoints), port.TargetPort)
			if denied > 0 {
				e.Result += fmt.Sprintf("; policies deny %d of them: a connect() that picks one fails with EACCES", denied)
			}
			if n := tunnelled(e.Endpoints); n > 0 {
				e.Result += fmt.Sprintf("; %d of them through the HBONE tunnel (mutual TLS, see TUNNEL)", n)
			}
			if svc.AnyPort() {
				e.Result = fmt.Sprintf("to workload %s through its waypoint %s (HBONE authority %s): %s", svc.Waypoint.Workload, svc.Waypoint.Address,
					netip.AddrPortFrom(addr, dst.Port()), e.Result)
			}
		}
	}
	switch {
	case src.Node != node && src.Netns == "" && src.UID != "":
		// xDS names no netns: only that node's kmeshd knows whether it
		// enrolled the source.
		e.Result = fmt.Sprintf("on node %s, by its kmeshd once it enrolls the source: %s", src.Node, e.Result)
	case netns == "":
		e.Result = "passes untouched: the source is not in the mesh (an enrolled source: " + e.Result + ")"
	case src.Node != node:
		e.Result = fmt.Sprintf("on node %s, by its kmeshd: %s", src.Node, e.Result)
	case !e.Source.Enrolled:
		e.Result = "passes untouched until the source is enrolled (then: " + e.Result + ")"
	}
	return e, nil
}

func explainSource(w *model.Workload, netns, node string, enrolled []string) api.ExplainSource {
	s := api.ExplainSource{Workload: w.Key(), Node: w.Node, Netns: netns}
	switch {
	case w.Node != node && w.Netns == "" && w.UID != "":
		s.Reason = fmt.Sprintf("runs on node %s, not %s: that node's kmeshd balances it once it enrolls it", w.Node, node)
	case netns == "" && w.Node == node && w.UID != "":
		s.Reason = "no enrolled netns on this node holds the workload (not labelled for the mesh, or not enrolled yet): its connects are not balanced"
	case netns == "":
		s.Reason = "no netns: not in the mesh, its connects are not balanced"
	case w.Node != node:
		s.Reason = fmt.Sprintf("runs on node %s, not %s: that node's kmeshd balances it", w.Node, node)
	case !slices.Contains(enrolled, netns):
		s.Reason = fmt.Sprintf("netns %s is not enrolled (yet): see kmeshd's log", netns)
	default:
		s.Enrolled = true
	}
	return s
}

// explainPolicy says what the policies decide for a connection from src to
// dst, a workload's address and port: as connect() does on src's node,
// with src's address of dst's family; the destination's node decides the
// same from the source address it sees.
func explainPolicy(ix *authz.Index, src, dst *model.Workload, to netip.AddrPort) string {
	if !ix.Policies() {
		return "allowed: the mesh has no policy"
	}
	from, ok := addressOf(src, to.Addr().Is4())
	if !ok {
		return "not checked at connect: the source has no address of this family (the destination checks what it sees)"
	}
	d, _ := ix.FromWorkload(src, from, to)
	out := d.Reason
	if len(d.Counted) > 0 {
		out += "; counted by " + strings.Join(d.Counted, ", ")
	}
	return out
}

// findService returns the service with address addr, and its port port
// (nil if it has none).
func findService(m *model.Mesh, addr netip.Addr, port uint16) (*model.Service, *model.ServicePort) {
	// A workload's own address with a waypoint takes every port that no
	// service port of the same address has, as the kernel looks it up.
	var anyPort *model.Service
	for i := range m.Services {
		if s := &m.Services[i]; s.AnyPort() && slices.Contains(s.Addresses, addr) {
			anyPort = s
		}
	}
	for i := range m.Services {
		if s := &m.Services[i]; s != anyPort && slices.Contains(s.Addresses, addr) && slices.ContainsFunc(s.Ports, func(p model.ServicePort) bool { return p.Port == port }) {
			anyPort = nil
		}
	}
	if anyPort != nil {
		return anyPort, &model.ServicePort{Port: port, TargetPort: port, Protocol: model.ProtocolTCP}
	}
	for i := range m.Services {
		s := &m.Services[i]
		if !slices.Contains(s.Addresses, addr) {
			continue
		}
		for j := range s.Ports {
			if s.Ports[j].Port == port && s.Ports[j].Protocol == model.ProtocolTCP {
				return s, &s.Ports[j]
			}
		}
		return s, nil
	}
	return nil, nil
}

func explainEndpoints(m *model.Mesh, s *model.Service, targetPort uint16, v4 bool) []api.ExplainEndpoint {
	out := make([]api.ExplainEndpoint, 0, len(s.Endpoints))
	var total uint32
	for _, ep := range s.Endpoints {
		x := api.ExplainEndpoint{Workload: ep.Workload, Health: notChecked, Locality: notChecked, Policy: notEvaluated}
		w := m.Workload(ep.Workload)
		if w == nil {
			x.Reasons = append(x.Reasons, "workload not in the mesh")
			out = append(out, x)
			continue
		}
		x.Node, x.Weight = w.Node, w.Weight
		if a, ok := addressOf(w, v4); ok {
			x.Address = netip.AddrPortFrom(a, targetPort).String()
		} else if v4 {
			x.Reasons = append(x.Reasons, "no IPv4 address")
		} else {
			x.Reasons = append(x.Reasons, "no IPv6 address")
		}
		if w.Weight == 0 {
			x.Reasons = append(x.Reasons, "weight 0")
		}
		x.Eligible = len(x.Reasons) == 0
		if x.Eligible {
			total += w.Weight
		}
		out = append(out, x)
	}
	for i := range out {
		if out[i].Eligible {
			out[i].Share = float64(out[i].Weight) / float64(total)
		}
	}
	return out
}

// explainLocality marks the endpoints a routing preference leaves out for
// src, and says which priority the connect picks from: the endpoints of the
// closest rank there is (as the kernel's priority tables, built by the
// dataplane from model.LocalityLB.Rank).
func explainLocality(m *model.Mesh, svc *model.Service, src *model.Workload, eps []api.ExplainEndpoint) string {
	lb := svc.Locality
	if lb == nil {
		return ""
	}
	ranks := make([]int, len(eps))
	best := -1
	for i := range eps {
		ep := &eps[i]
		w := m.Workload(ep.Workload)
		if w == nil {
			continue
		}
		ep.Locality = w.Locality.String()
		r, ok := lb.Rank(src, w)
		if !ok {
			ranks[i] = -1
			if ep.Eligible {
				ep.Eligible = false
				ep.Reasons = append(ep.Reasons, fmt.Sprintf("locality mode strict: does not match the source in every scope of %v", lb.RoutingPreference))
			}
			continue
		}
		ranks[i] = r
		if ep.Eligible && r > best {
			best = r
		}
	}
	n := 0
	var total uint32
	for i := range eps {
		ep := &eps[i]
		if ep.Eligible && ranks[i] < best {
			ep.Eligible = false
			ep.Reasons = append(ep.Reasons, fmt.Sprintf("farther from the source (rank %d) than the closest priority (rank %d)", ranks[i], best))
		}
		if ep.Eligible {
			n++
			total += ep.Weight
		}
	}
	for i := range eps {
		eps[i].Share = 0
		if eps[i].Eligible && total > 0 {
			eps[i].Share = float64(eps[i].Weight) / float64(total)
		}
	}
	if best < 0 {
		return fmt.Sprintf("none: no endpoint matches the source (%s, node %s) under %s %v", src.Locality, src.Node, lb.Mode, lb.RoutingPreference)
	}
	return fmt.Sprintf("rank %d of %s %v from the source (%s, node %s): %d endpoint(s); if they all go (or are ejected), the next rank takes over within the same connect",
		best, lb.Mode, lb.RoutingPreference, src.Locality, src.Node, n)
}

// addressOf returns the workload's address of the family.
func addressOf(w *model.Workload, v4 bool) (netip.Addr, bool) {
	for _, a := range w.Addresses {
		if a.Unmap().Is4() == v4 {
			return a.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// explainTunnel says how a connection from src to w at addr is tunnelled,
// or nil when it goes direct: as dataplane.TunnelAddrs fills km_tunnel on
// the source's node, a workload of another node that takes HBONE, or a
// waypoint instance of the same node, is reached through the tunnel when
// the mesh has a CA. The tunnel opens
// mutual TLS to addr:15008 from the source pod, under the source's
// identity, and accepts only the destination's.
func explainTunnel(src, w *model.Workload, trustDomain string, addr netip.Addr) *api.ExplainTunnel {
	if trustDomain == "" || !w.TunnelledFrom(src.Node, true) {
		return nil
	}
	return &api.ExplainTunnel{
		Peer:                netip.AddrPortFrom(addr, model.HBONEPort).String(),
		SourceIdentity:      identity.OfWorkload(trustDomain, src.Namespace, src.ServiceAccount).String(),
		DestinationIdentity: identity.OfWorkload(trustDomain, w.Namespace, w.ServiceAccount).String(),
	}
}

func tunnelSentence(t *api.ExplainTunnel) string {
	return fmt.Sprintf("tunnelled (HBONE, mutual TLS) to %s as %s, accepting only %s", t.Peer, t.SourceIdentity, t.DestinationIdentity)
}

func tunnelled(eps []api.ExplainEndpoint) int {
	n := 0
	for _, ep := range eps {
		if ep.Eligible && ep.Tunnel != nil {
			n++
		}
	}
	return n
}
