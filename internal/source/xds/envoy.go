package xds

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/kmesh-go/kmesh/internal/model"
)

// Type URLs of the Envoy resources the ADS client subscribes to.
const (
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"

	tcpProxyType = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
	hcmType      = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)

// cluster is a converted Envoy cluster.
type cluster struct {
	name string
	eds  string     // the EDS name of an EDS cluster; "" for a static one
	load *endpoints // a static cluster's inline endpoints
	skip string     // why the cluster cannot be a service ("" if it can)
}

// endpoints is a converted ClusterLoadAssignment: the endpoints that take
// traffic, all on one port.
type endpoints struct {
	port uint16 // 0 when there are no endpoints
	list []weightedAddr
}

type weightedAddr struct {
	addr   netip.Addr
	weight uint32
}

// listener is a converted Envoy listener bound to one address and port.
type listener struct {
	addr    netip.AddrPort
	cluster string
	skip    string // why the listener is not a service frontend
}

// sotwHandler converts one state-of-the-world resource, which carries its
// own name. An error with a non-empty name rejects that resource alone.
type sotwHandler interface {
	typeURL() string
	convert(res *anypb.Any) (name string, value any, err error)
}

type clusterHandler struct{}

func (clusterHandler) typeURL() string { return ClusterType }

func (clusterHandler) convert(res *anypb.Any) (string, any, error) {
	var c clusterv3.Cluster
	if err := proto.Unmarshal(res.GetValue(), &c); err != nil {
		return "", nil, fmt.Errorf("decode: %w", err)
	}
	v, err := convertCluster(&c)
	return c.GetName(), v, err
}

func convertCluster(c *clusterv3.Cluster) (*cluster, error) {
	if c.GetName() == "" {
		return nil, errors.New("name is empty")
	}
	out := &cluster{name: c.GetName()}
	if c.GetClusterType() != nil {
		out.skip = "custom cluster type " + c.GetClusterType().GetName()
		return out, nil
	}
	switch c.GetType() {
	case clusterv3.Cluster_EDS:
		out.eds = c.GetEdsClusterConfig().GetServiceName()
		if out.eds == "" {
			out.eds = c.GetName()
		}
	case clusterv3.Cluster_STATIC:
		eps, err := convertEndpoints(c.GetLoadAssignment())
		if err != nil {
			return nil, fmt.Errorf("load assignment: %w", err)
		}
		out.load = eps
	default:
		// DNS and original-destination clusters (Istio's
		// PassthroughCluster) have no endpoint list to balance over.
		out.skip = "cluster type " + c.GetType().String()
	}
	return out, nil
}

type endpointHandler struct{}

func (endpointHandler) typeURL() string { return EndpointType }

func (endpointHandler) convert(res *anypb.Any) (string, any, error) {
	var cla endpointv3.ClusterLoadAssignment
	if err := proto.Unmarshal(res.GetValue(), &cla); err != nil {
		return "", nil, fmt.Errorf("decode: %w", err)
	}
	if cla.GetClusterName() == "" {
		return "", nil, errors.New("cluster name is empty")
	}
	v, err := convertEndpoints(&cla)
	return cla.GetClusterName(), v, err
}

// convertEndpoints keeps the endpoints of the lowest priority that has
// any that take traffic (Envoy fails over to the next priority only when
// one is unhealthy; the data plane has no priorities yet).
func convertEndpoints(cla *endpointv3.ClusterLoadAssignment) (*endpoints, error) {
	out := &endpoints{}
	best := uint32(0)
	for g, lle := range cla.GetEndpoints() {
		for i, lbe := range lle.GetLbEndpoints() {
			sa := lbe.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				return nil, fmt.Errorf("endpoint %d.%d: not a socket address", g, i)
			}
			a, err := netip.ParseAddr(sa.GetAddress())
			if err != nil {
				return nil, fmt.Errorf("endpoint %d.%d: address %q is not an IP address", g, i, sa.GetAddress())
			}
			if a.Zone() != "" || a.IsUnspecified() {
				return nil, fmt.Errorf("endpoint %d.%d: address %s cannot be an endpoint", g, i, a)
			}
			a = a.Unmap()
			p, err := port(sa.GetPortValue(), "port")
			if err != nil {
				return nil, fmt.Errorf("endpoint %d.%d: %w", g, i, err)
			}
			if out.port != 0 && p != out.port {
				return nil, fmt.Errorf("endpoint %d.%d: port %d differs from port %d of the others; all endpoints of a cluster must share a port", g, i, p, out.port)
			}
			out.port = p
			switch lbe.GetHealthStatus() {
			case core.HealthStatus_UNHEALTHY, core.HealthStatus_DRAINING, core.HealthStatus_TIMEOUT:
				continue
			}
			if len(out.list) > 0 && lle.GetPriority() > best {
				continue
			}
			if len(out.list) > 0 && lle.GetPriority() < best {
				out.list = out.list[:0]
			}
			best = lle.GetPriority()
			w := uint32(1)
			if lw := lbe.GetLoadBalancingWeight(); lw != nil {
				w = min(max(lw.GetValue(), 1), model.MaxWeight)
			}
			if !slices.ContainsFunc(out.list, func(e weightedAddr) bool { return e.addr == a }) {
				out.list = append(out.list, weightedAddr{a, w})
			}
		}
	}
	return out, nil
}

type listenerHandler struct{}

func (listenerHandler) typeURL() string { return ListenerType }

func (listenerHandler) convert(res *anypb.Any) (string, any, error) {
	var l listenerv3.Listener
	if err := proto.Unmarshal(res.GetValue(), &l); err != nil {
		return "", nil, fmt.Errorf("decode: %w", err)
	}
	if l.GetName() == "" {
		return "", nil, errors.New("name is empty")
	}
	v, err := convertListener(&l)
	return l.GetName(), v, err
}

// convertListener finds the address and target cluster of a listener.
// Only listeners bound to one address, with one filter chain that ends
// in a tcp_proxy to one cluster or an http_connection_manager whose
// inline routes all go to one cluster, can become service frontends;
// other valid listeners are skipped, not rejected.
func convertListener(l *listenerv3.Listener) (*listener, error) {
	out := &listener{}
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil {
		out.skip = "not a socket address"
		return out, nil
	}
	if sa.GetProtocol() != core.SocketAddress_TCP {
		out.skip = "protocol " + sa.GetProtocol().String()
		return out, nil
	}
	a, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return nil, fmt.Errorf("address %q is not an IP address", sa.GetAddress())
	}
	p, err := port(sa.GetPortValue(), "port")
	if err != nil {
		return nil, err
	}
	out.addr = netip.AddrPortFrom(a.Unmap(), p)
	if a.IsUnspecified() {
		out.skip = "bound to every address"
		return out, nil
	}
	if a.Zone() != "" {
		out.skip = "address with a zone"
		return out, nil
	}
	chains := l.GetFilterChains()
	if dc := l.GetDefaultFilterChain(); dc != nil {
		chains = append(slices.Clone(chains), dc)
	}
	if len(chains) != 1 {
		out.skip = fmt.Sprintf("%d filter chains", len(chains))
		return out, nil
	}
	for i, f := range chains[0].GetFilters() {
		tc := f.GetTypedConfig()
		switch tc.GetTypeUrl() {
		case tcpProxyType:
			var tp tcpv3.TcpProxy
			if err := proto.Unmarshal(tc.GetValue(), &tp); err != nil {
				return nil, fmt.Errorf("filter %d (%s): decode: %w", i, f.GetName(), err)
			}
			out.cluster = tp.GetCluster()
			if out.cluster == "" {
				out.skip = "tcp_proxy without a single cluster"
			}
			return out, nil
		case hcmType:
			var hcm hcmv3.HttpConnectionManager
			if err := proto.Unmarshal(tc.GetValue(), &hcm); err != nil {
				return nil, fmt.Errorf("filter %d (%s): decode: %w", i, f.GetName(), err)
			}
			if hcm.GetRouteConfig() == nil {
				out.skip = "http_connection_manager without an inline route config (RDS is not supported)"
				return out, nil
			}
			var clusters []string
			for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
				for _, r := range vh.GetRoutes() {
					c := r.GetRoute().GetCluster()
					if c == "" || !slices.Contains(clusters, c) {
						clusters = append(clusters, c)
					}
				}
			}
			if len(clusters) != 1 || clusters[0] == "" {
				out.skip = "http routes to other than exactly one cluster"
				return out, nil
			}
			out.cluster = clusters[0]
			return out, nil
		}
	}
	out.skip = "no tcp_proxy or http_connection_manager filter"
	return out, nil
}

// buildADSMesh turns clusters, endpoints and listeners into a mesh: each
// cluster that listeners target becomes a service named after the
// cluster, on the listeners' addresses and ports, with one workload per
// endpoint. A service has one port list for all its addresses, so
// listeners of one cluster on different addresses and ports serve every
// combination of them.
func buildADSMesh(st *store) *built {
	b := &built{mesh: &model.Mesh{}}
	clusters := map[string]*cluster{}
	for _, e := range st.sorted(ClusterType) {
		c := e.value.(*cluster)
		if c.skip == "" {
			clusters[c.name] = c
		}
	}
	type frontend struct {
		addrs []netip.Addr
		ports []uint16
	}
	var order []string
	fronts := map[string]*frontend{}
	used := map[netip.AddrPort]string{}
	for _, e := range st.sorted(ListenerType) {
		l := e.value.(*listener)
		if l.skip != "" || clusters[l.cluster] == nil {
			// A cluster that has not arrived yet: the listener waits for it.
			continue
		}
		if prev := used[l.addr]; prev != "" {
			b.conflict(ListenerType, e.name, "address %s is already used by listener %s", l.addr, prev)
			continue
		}
		used[l.addr] = e.name
		f := fronts[l.cluster]
		if f == nil {
			f = &frontend{}
			fronts[l.cluster] = f
			order = append(order, l.cluster)
		}
		if !slices.Contains(f.addrs, l.addr.Addr()) {
			f.addrs = append(f.addrs, l.addr.Addr())
		}
		if !slices.Contains(f.ports, l.addr.Port()) {
			f.ports = append(f.ports, l.addr.Port())
		}
	}
	// Listeners of different clusters that are fine one by one can still
	// make the cross product of one cluster's addresses and ports overlap
	// another's: the later cluster is left out.
	owner := map[netip.AddrPort]string{}
	for _, name := range order {
		c, f := clusters[name], fronts[name]
		if clash := crossClash(f.addrs, f.ports, owner); clash.IsValid() {
			b.notes = append(b.notes, fmt.Sprintf("cluster %s: address %s is already used by cluster %s; left out", name, clash, owner[clash]))
			continue
		}
		for _, a := range f.addrs {
			for _, p := range f.ports {
				owner[netip.AddrPortFrom(a, p)] = name
			}
		}
		eps := c.load
		if c.eds != "" {
			if e := st.get(EndpointType, c.eds); e != nil {
				eps = e.value.(*endpoints)
			}
		}
		// Listeners arrive in no particular order; sort for stable meshes.
		slices.SortFunc(f.addrs, func(a, b netip.Addr) int { return a.Compare(b) })
		slices.Sort(f.ports)
		s := model.Service{Name: name, Addresses: f.addrs, LBMode: model.LBRandom}
		for _, p := range f.ports {
			tp := p
			if eps != nil && eps.port != 0 {
				tp = eps.port
			}
			s.Ports = append(s.Ports, model.ServicePort{Port: p, TargetPort: tp, Protocol: model.ProtocolTCP})
		}
		if eps != nil {
			for _, ep := range eps.list {
				w := model.Workload{Name: name + "/" + ep.addr.String(), Addresses: []netip.Addr{ep.addr}, Weight: ep.weight}
				b.mesh.Workloads = append(b.mesh.Workloads, w)
				s.Endpoints = append(s.Endpoints, model.Endpoint{Workload: w.Key()})
			}
		}
		b.mesh.Services = append(b.mesh.Services, s)
	}
	b.mesh.Sort()
	return b
}

func crossClash(addrs []netip.Addr, ports []uint16, used map[netip.AddrPort]string) netip.AddrPort {
	for _, a := range addrs {
		for _, p := range ports {
			if ap := netip.AddrPortFrom(a, p); used[ap] != "" {
				return ap
			}
		}
	}
	return netip.AddrPort{}
}
