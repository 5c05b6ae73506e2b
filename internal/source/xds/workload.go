package xds

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"unique"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/kmesh-go/kmesh/internal/model"
)

// Type URLs of Istio's workload API.
const (
	AddressType       = "type.googleapis.com/istio.workload.Address"
	AuthorizationType = "type.googleapis.com/istio.security.Authorization"
)

// workload is a converted istio.workload.Workload.
type workload struct {
	// w is the workload as the model has it. After a build it may point
	// at the built mesh's copy (rebind in workload_mesh.go): equal in
	// value, and then the only copy, so 100,000 workloads are held once.
	// Never modified in place.
	w *model.Workload
	// key is w.Key(), made once: the index, the endpoints of every
	// service and the build share this string.
	key string
	// endpoint is false for workloads that take no traffic: unhealthy, or
	// with capacity 0.
	endpoint bool
	healthy  bool
	// services are the workload's memberships: namespace/hostname and the
	// workload's own service port -> target port mapping. Slices, not
	// maps: two small maps per workload cost ~300 bytes, 150 MB at
	// 500,000 workloads.
	services []membership
	// waypoint is the workload's own waypoint (waypoint-for workload):
	// connections to its address are refused (workload_waypoint.go).
	waypoint *waypointRef
}

// service is a converted istio.workload.Service.
// membership is a workload's membership of the service host.
type membership struct {
	host  string
	ports portMap
}

// portMap maps service ports to target ports; a workload names one or a
// few, so a scan beats a map.
type portMap []portPair

type portPair struct{ service, target uint16 }

// target is the target port of service port sp, 0 if none.
func (m portMap) target(sp uint16) uint16 {
	for _, p := range m {
		if p.service == sp {
			return p.target
		}
	}
	return 0
}

type service struct {
	s model.Service // without endpoints
	// host is namespace/hostname, the key workloads name it by.
	host string
	// targets is the service's service port -> target port; 0 means each
	// workload says (a named target port).
	targets        map[uint16]uint16
	allowUnhealthy bool
	// skip says why the service is not in the mesh ("" if it is).
	skip string
	note string
	// waypoint is the waypoint istiod assigned (nil: none).
	waypoint *waypointRef
}

// waypointRef is the workload API's GatewayAddress: a waypoint named by
// address (a service VIP or a workload address) or by namespace/hostname.
type waypointRef struct {
	addr netip.Addr
	host string // namespace/hostname
}

// String is the waypoint as the model and the logs name it.
func (r *waypointRef) String() string {
	if r.host != "" {
		return r.host
	}
	return r.addr.String()
}

func convertWaypoint(g *workloadapi.GatewayAddress) (*waypointRef, error) {
	if g == nil {
		return nil, nil
	}
	switch d := g.GetDestination().(type) {
	case *workloadapi.GatewayAddress_Address:
		a, err := parseIP(d.Address.GetAddress())
		if err != nil {
			return nil, fmt.Errorf("waypoint address: %w", err)
		}
		return &waypointRef{addr: a}, nil
	case *workloadapi.GatewayAddress_Hostname:
		ns, h := d.Hostname.GetNamespace(), d.Hostname.GetHostname()
		if ns == "" || h == "" {
			return nil, errors.New("waypoint hostname: want namespace and hostname")
		}
		return &waypointRef{host: ns + "/" + h}, nil
	default:
		return nil, errors.New("waypoint has neither an address nor a hostname")
	}
}

type addressHandler struct{}

func (addressHandler) typeURL() string { return AddressType }

func (addressHandler) convert(name string, res *anypb.Any, sl *slab) (any, error) {
	d := new(decoder)
	if sl != nil {
		d = &sl.decoder
	}
	if w, ok := d.decodeWorkload(res.GetValue(), name, sl); ok {
		return w, nil
	}
	var a workloadapi.Address
	if err := proto.Unmarshal(res.GetValue(), &a); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	switch t := a.GetType().(type) {
	case *workloadapi.Address_Workload:
		return convertWorkload(t.Workload, name, sl)
	case *workloadapi.Address_Service:
		return convertService(t.Service)
	default:
		return nil, errors.New("address is neither a workload nor a service")
	}
}

type authorizationHandler struct{}

func (authorizationHandler) typeURL() string { return AuthorizationType }

func (authorizationHandler) convert(_ string, res *anypb.Any, _ *slab) (any, error) {
	var a security.Authorization
	if err := proto.Unmarshal(res.GetValue(), &a); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	return convertAuthorization(&a)
}

// parseIP turns the bytes of an address field into an address.
func parseIP(b []byte) (netip.Addr, error) {
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return netip.Addr{}, fmt.Errorf("%d bytes is not an IPv4 or IPv6 address", len(b))
	}
	a = a.Unmap()
	if a.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("%s is unspecified", a)
	}
	return a, nil
}

func port(p uint32, what string) (uint16, error) {
	if p == 0 || p > 65535 {
		return 0, fmt.Errorf("%s %d is out of range 1..65535", what, p)
	}
	return uint16(p), nil
}

// splitHost splits a namespace/hostname key.
func splitHost(key string) (ns, host string, ok bool) {
	ns, host, ok = strings.Cut(key, "/")
	return ns, host, ok && ns != "" && host != "" && !strings.Contains(host, "/")
}

// convertWorkload converts pw, the resource called name; sl, when set,
// holds what stays of it (see slab).
func convertWorkload(pw *workloadapi.Workload, name string, sl *slab) (*workload, error) {
	// Strings that many workloads share (namespace, node, network,
	// service account, locality, policy and service names) are interned:
	// decoded, each workload would hold its own copy.
	w := sl.modelWorkload()
	*w = model.Workload{
		Name:           pw.GetName(),
		Namespace:      intern(pw.GetNamespace()),
		Node:           intern(pw.GetNode()),
		UID:            pw.GetUid(),
		Network:        intern(pw.GetNetwork()),
		ServiceAccount: intern(pw.GetServiceAccount()),
		Weight:         1,
		// LEGACY_ISTIO_MTLS (sidecar mTLS) is not spoken, as ztunnel
		// does not: such a workload is reached in plaintext.
		TunnelProtocol: model.TunnelNone,
		// Netns stays empty: xDS says nothing about this node's network
		// namespaces; enrollment comes from Kubernetes or the command line.
	}
	if pw.GetTunnelProtocol() == workloadapi.TunnelProtocol_HBONE {
		w.TunnelProtocol = model.TunnelHBONE
	}
	if w.UID == "" {
		return nil, errors.New("uid is empty")
	}
	if w.UID == name {
		// Istio names a workload's resource by its UID: the store's key
		// and the UID are one string, not two per workload.
		w.UID = name
	}
	if w.Name == "" {
		// Name and namespace are "just for debugging and may be elided".
		w.Name = w.UID
	}
	// An Istio UID (cluster/group/kind/namespace/name) ends in the
	// workload's key: key and name are cut from it, not held as two more
	// strings per workload (~5 MB at 100,000 workloads).
	key, ok := model.KeyInUID(w.UID, w.Namespace, w.Name)
	if ok {
		w.Name = key[len(w.Namespace)+1:]
	} else {
		key = w.Key()
	}
	if l := pw.GetLocality(); l != nil {
		w.Locality = model.NewLocality(l.GetRegion(), l.GetZone(), l.GetSubzone())
	}
	w.Addresses = sl.addrs(len(pw.GetAddresses()))
	for i, b := range pw.GetAddresses() {
		a, err := parseIP(b)
		if err != nil {
			return nil, fmt.Errorf("address %d: %w", i, err)
		}
		if !slices.Contains(w.Addresses, a) {
			w.Addresses = append(w.Addresses, a)
		}
	}
	for _, p := range pw.GetAuthorizationPolicies() {
		if _, _, ok := strings.Cut(p, "/"); !ok {
			return nil, fmt.Errorf("authorization policy %q: want namespace/name", p)
		}
		w.Policies = append(w.Policies, intern(p))
	}
	// The network gateway is not used: the data plane connects straight
	// to the workload's address. The workload's own waypoint (for traffic
	// to its address) is not served: the build refuses such connections.
	out := sl.workload()
	*out = workload{w: w, key: key, healthy: pw.GetStatus() == workloadapi.WorkloadStatus_HEALTHY, endpoint: true}
	wp, err := convertWaypoint(pw.GetWaypoint())
	if err != nil {
		return nil, err
	}
	out.waypoint = wp
	if c := pw.GetCapacity(); c != nil {
		if c.GetValue() == 0 {
			out.endpoint = false
		}
		out.w.Weight = min(max(c.GetValue(), 1), model.MaxWeight)
	}
	out.services = sl.memberships(len(pw.GetServices()))
	for key, pl := range pw.GetServices() {
		if _, _, ok := splitHost(key); !ok {
			return nil, fmt.Errorf("service %q: want namespace/hostname", key)
		}
		var ports portMap
		for _, p := range pl.GetPorts() {
			sp, err := port(p.GetServicePort(), "service port")
			if err != nil {
				return nil, fmt.Errorf("service %s: %w", key, err)
			}
			if p.GetTargetPort() > 65535 {
				return nil, fmt.Errorf("service %s: port %d: target port %d is out of range 0..65535", key, sp, p.GetTargetPort())
			}
			// A port named twice: the last wins, as in a map.
			ports = slices.DeleteFunc(ports, func(pp portPair) bool { return pp.service == sp })
			ports = append(ports, portPair{sp, uint16(p.GetTargetPort())})
		}
		out.services = append(out.services, membership{intern(key), ports})
	}
	return out, nil
}

func convertService(ps *workloadapi.Service) (*service, error) {
	if ps.GetHostname() == "" {
		return nil, errors.New("hostname is empty")
	}
	if ps.GetNamespace() == "" {
		return nil, errors.New("namespace is empty")
	}
	s := model.Service{Name: ps.GetName(), Namespace: ps.GetNamespace(), LBMode: model.LBRandom}
	if s.Name == "" {
		s.Name = ps.GetHostname()
	}
	out := &service{host: ps.GetNamespace() + "/" + ps.GetHostname(), targets: map[uint16]uint16{}}
	for i, na := range ps.GetAddresses() {
		a, err := parseIP(na.GetAddress())
		if err != nil {
			return nil, fmt.Errorf("address %d: %w", i, err)
		}
		if !slices.Contains(s.Addresses, a) {
			s.Addresses = append(s.Addresses, a)
		}
	}
	for _, p := range ps.GetPorts() {
		sp, err := port(p.GetServicePort(), "service port")
		if err != nil {
			return nil, err
		}
		if p.GetTargetPort() > 65535 {
			return nil, fmt.Errorf("port %d: target port %d is out of range 0..65535", sp, p.GetTargetPort())
		}
		if _, dup := out.targets[sp]; dup {
			return nil, fmt.Errorf("port %d is listed twice", sp)
		}
		out.targets[sp] = uint16(p.GetTargetPort())
		s.Ports = append(s.Ports, model.ServicePort{Port: sp, Protocol: model.ProtocolTCP})
	}
	// A service with a waypoint is reached only through it
	// (workload_waypoint.go).
	wp, err := convertWaypoint(ps.GetWaypoint())
	if err != nil {
		return nil, err
	}
	out.waypoint = wp
	if lb := ps.GetLoadBalancing(); lb != nil {
		switch lb.GetMode() {
		case workloadapi.LoadBalancing_PASSTHROUGH:
			out.skip = "load balancing mode PASSTHROUGH: connections keep their destination"
		case workloadapi.LoadBalancing_STRICT, workloadapi.LoadBalancing_FAILOVER:
			loc, err := localityLB(lb)
			if err != nil {
				return nil, err
			}
			s.Locality = loc
		case workloadapi.LoadBalancing_UNSPECIFIED_MODE:
			if len(lb.GetRoutingPreference()) > 0 {
				out.note = fmt.Sprintf("service %s: routing preference %v is not supported yet; balancing at random over all endpoints", out.host, lb.GetRoutingPreference())
			}
		default:
			return nil, fmt.Errorf("unknown load balancing mode %d", lb.GetMode())
		}
		out.allowUnhealthy = lb.GetHealthPolicy() == workloadapi.LoadBalancing_ALLOW_ALL
	}
	switch {
	case out.skip != "":
	case len(s.Addresses) == 0:
		out.skip = "no addresses (headless service)"
	case len(s.Ports) == 0:
		out.skip = "no ports"
	}
	out.s = s
	return out, nil
}

// localityLB is the workload API's load_balancing as the model's: the
// scopes in order, STRICT or FAILOVER (ztunnel's reading; an unspecified
// mode balances over all endpoints, and never gets here).
func localityLB(lb *workloadapi.LoadBalancing) (*model.LocalityLB, error) {
	out := &model.LocalityLB{Mode: model.LocalityFailover}
	if lb.GetMode() == workloadapi.LoadBalancing_STRICT {
		out.Mode = model.LocalityStrict
	}
	seen := map[model.LocalityScope]bool{}
	for _, sc := range lb.GetRoutingPreference() {
		var m model.LocalityScope
		switch sc {
		case workloadapi.LoadBalancing_NETWORK:
			m = model.ScopeNetwork
		case workloadapi.LoadBalancing_REGION:
			m = model.ScopeRegion
		case workloadapi.LoadBalancing_ZONE:
			m = model.ScopeZone
		case workloadapi.LoadBalancing_SUBZONE:
			m = model.ScopeSubzone
		case workloadapi.LoadBalancing_NODE:
			m = model.ScopeNode
		case workloadapi.LoadBalancing_CLUSTER:
			m = model.ScopeCluster
		default:
			return nil, fmt.Errorf("unknown routing preference scope %d", sc)
		}
		if seen[m] {
			return nil, fmt.Errorf("routing preference scope %s is listed twice", m)
		}
		seen[m] = true
		out.RoutingPreference = append(out.RoutingPreference, m)
	}
	if len(out.RoutingPreference) == 0 {
		return nil, nil // nothing to prefer: every endpoint ranks the same
	}
	return out, nil
}

func convertAuthorization(a *security.Authorization) (*model.Policy, error) {
	p := &model.Policy{Name: a.GetName(), Namespace: a.GetNamespace(), DryRun: a.GetDryRun()}
	if p.Name == "" {
		return nil, errors.New("name is empty")
	}
	switch a.GetScope() {
	case security.Scope_GLOBAL:
		p.Scope = model.ScopeGlobal
	case security.Scope_NAMESPACE:
		p.Scope = model.ScopeNamespace
	case security.Scope_WORKLOAD_SELECTOR:
		p.Scope = model.ScopeWorkloadSelector
	default:
		return nil, fmt.Errorf("unknown scope %d", a.GetScope())
	}
	if p.Scope != model.ScopeGlobal && p.Namespace == "" {
		return nil, fmt.Errorf("scope %s without a namespace", a.GetScope())
	}
	switch a.GetAction() {
	case security.Action_ALLOW:
		p.Action = model.ActionAllow
	case security.Action_DENY:
		p.Action = model.ActionDeny
	default:
		return nil, fmt.Errorf("unknown action %d", a.GetAction())
	}
	for g, group := range a.GetGroups() {
		var rule model.PolicyRule
		for r, rules := range group.GetRules() {
			var clause model.PolicyClause
			for m, pm := range rules.GetMatches() {
				mm, err := convertMatch(pm)
				if err != nil {
					return nil, fmt.Errorf("group %d: rule %d: match %d: %w", g, r, m, err)
				}
				clause.Matches = append(clause.Matches, mm)
			}
			rule.Clauses = append(rule.Clauses, clause)
		}
		p.Rules = append(p.Rules, rule)
	}
	return p, nil
}

// convertMatch converts one match. Extensions are ignored: Istio sends
// none for L4 policies, and nothing enforces policies yet.
func convertMatch(pm *security.Match) (model.PolicyMatch, error) {
	var m model.PolicyMatch
	var err error
	strs := func(in []*security.StringMatch, what string) []model.StringMatch {
		var out []model.StringMatch
		for i, s := range in {
			var sm model.StringMatch
			switch t := s.GetMatchType().(type) {
			case *security.StringMatch_Exact:
				sm = model.StringMatch{Kind: model.MatchExact, Value: t.Exact}
			case *security.StringMatch_Prefix:
				sm = model.StringMatch{Kind: model.MatchPrefix, Value: t.Prefix}
			case *security.StringMatch_Suffix:
				sm = model.StringMatch{Kind: model.MatchSuffix, Value: t.Suffix}
			case *security.StringMatch_Presence:
				sm = model.StringMatch{Kind: model.MatchPresence}
			default:
				err = cmpErr(err, fmt.Errorf("%s %d: no match type", what, i))
				continue
			}
			out = append(out, sm)
		}
		return out
	}
	sas := func(in []*security.ServiceAccountMatch, what string) []model.ServiceAccountMatch {
		var out []model.ServiceAccountMatch
		for i, s := range in {
			if s.GetServiceAccount() == "" {
				err = cmpErr(err, fmt.Errorf("%s %d: service account is empty", what, i))
				continue
			}
			out = append(out, model.ServiceAccountMatch{Namespace: s.GetNamespace(), Name: s.GetServiceAccount()})
		}
		return out
	}
	prefixes := func(in []*security.Address, what string) []netip.Prefix {
		var out []netip.Prefix
		for i, a := range in {
			ip, ok := netip.AddrFromSlice(a.GetAddress())
			if !ok {
				err = cmpErr(err, fmt.Errorf("%s %d: %d bytes is not an IPv4 or IPv6 address", what, i, len(a.GetAddress())))
				continue
			}
			if a.GetLength() > uint32(ip.BitLen()) {
				err = cmpErr(err, fmt.Errorf("%s %d: prefix length %d is longer than the address", what, i, a.GetLength()))
				continue
			}
			p, _ := ip.Prefix(int(a.GetLength()))
			out = append(out, p)
		}
		return out
	}
	ports := func(in []uint32, what string) []uint16 {
		var out []uint16
		for _, p := range in {
			v, perr := port(p, what)
			if perr != nil {
				err = cmpErr(err, perr)
				continue
			}
			out = append(out, v)
		}
		return out
	}
	m.Principals = strs(pm.GetPrincipals(), "principal")
	m.NotPrincipals = strs(pm.GetNotPrincipals(), "not principal")
	m.Namespaces = strs(pm.GetNamespaces(), "namespace")
	m.NotNamespaces = strs(pm.GetNotNamespaces(), "not namespace")
	m.ServiceAccounts = sas(pm.GetServiceAccounts(), "service account")
	m.NotServiceAccounts = sas(pm.GetNotServiceAccounts(), "not service account")
	m.SourceIPs = prefixes(pm.GetSourceIps(), "source ip")
	m.NotSourceIPs = prefixes(pm.GetNotSourceIps(), "not source ip")
	m.DestinationIPs = prefixes(pm.GetDestinationIps(), "destination ip")
	m.NotDestinationIPs = prefixes(pm.GetNotDestinationIps(), "not destination ip")
	m.DestinationPorts = ports(pm.GetDestinationPorts(), "destination port")
	m.NotDestinationPorts = ports(pm.GetNotDestinationPorts(), "not destination port")
	return m, err
}

// cmpErr keeps the first error.
func cmpErr(first, next error) error {
	if first != nil {
		return first
	}
	return next
}

// intern returns the one copy of s that every converted resource shares.
func intern(s string) string {
	if s == "" {
		return ""
	}
	return unique.Make(s).Value()
}
