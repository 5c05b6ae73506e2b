package waypoint

import (
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"
)

// ConfigDump is the waypoint's /config_dump: what it serves and how each
// request would be routed, shaped like kmeshd's (camelCase JSON).
type ConfigDump struct {
	Gateway  string        `json:"gateway"`
	Services []ServiceDump `json:"services"`
	// Workloads are the workloads whose own addresses this waypoint
	// serves (waypoint-for workload or all), namespace/name.
	Workloads []WorkloadDump `json:"workloads,omitempty"`
	Policies  []string       `json:"policies"` // policies targeting the Gateway
	Routes    []RouteDump    `json:"routes"`
	Faults    []FaultDump    `json:"faults,omitempty"`
	Backends  []BackendState `json:"backends"`
}

// ServiceDump is one service this waypoint serves.
type ServiceDump struct {
	Name      string   `json:"name"`
	Namespace string   `json:"namespace"`
	Addresses []string `json:"addresses"`
	Ports     []string `json:"ports"` // port/protocol, e.g. 80/HTTP
	Policies  []string `json:"policies,omitempty"`
}

// WorkloadDump is one workload whose own addresses this waypoint serves:
// a connection to one of them goes to that workload on the port dialed.
type WorkloadDump struct {
	Workload  string   `json:"workload"`
	Addresses []string `json:"addresses"`
	// Ports are the ports a service targets, with that port's protocol;
	// every other port is detected.
	Ports []string `json:"ports,omitempty"`
}

// RouteDump is one route rule match in the order the waypoint tries them on
// a service port.
type RouteDump struct {
	Service  string   `json:"service"` // namespace/name:port
	Order    int      `json:"order"`
	Rule     string   `json:"rule"`
	Match    string   `json:"match"`
	Backends []string `json:"backends"` // namespace/name:port=weight
	Timeout  string   `json:"timeout,omitempty"`
	Retry    string   `json:"retry"`
	// ConsumerNamespace is set on a consumer route: it applies only to
	// clients of this namespace.
	ConsumerNamespace string `json:"consumerNamespace,omitempty"`
}

// FaultDump is one fault rule on a service.
type FaultDump struct {
	Service string `json:"service"`
	Source  string `json:"source"`
	Fault   string `json:"fault"`
}

// BackendState is one endpoint of a backend service and whether it is in
// the pick set.
type BackendState struct {
	Service  string `json:"service"`
	Workload string `json:"workload"`
	Address  string `json:"address"`
	Healthy  bool   `json:"healthy"`
}

// Dump returns the current configuration.
func (p *Proxy) Dump() *ConfigDump {
	s := p.snap.Load()
	d := &ConfigDump{Gateway: s.gateway.Key(), Services: []ServiceDump{}, Routes: []RouteDump{}, Backends: []BackendState{}}
	for _, pol := range s.gatewayPolicies {
		d.Policies = append(d.Policies, pol.Key())
	}
	seen := map[*service]bool{}
	for _, a := range slices.SortedFunc(maps.Keys(s.workloads), netip.Addr.Compare) {
		svc := s.workloads[a]
		if seen[svc] {
			continue
		}
		seen[svc] = true
		wd := WorkloadDump{Workload: svc.workload.Key()}
		for _, wa := range svc.workload.Addresses {
			wd.Addresses = append(wd.Addresses, wa.String())
		}
		for _, port := range slices.Sorted(maps.Keys(svc.ports)) {
			wd.Ports = append(wd.Ports, fmt.Sprintf("%d/%s", port, svc.ports[port].proto))
		}
		d.Workloads = append(d.Workloads, wd)
	}
	keys := make([]string, 0, len(s.services))
	for k := range s.services {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	backends := map[string]bool{}
	now := time.Now()
	for _, k := range keys {
		svc := s.services[k]
		if !svc.served {
			continue
		}
		sd := ServiceDump{Name: svc.m.Name, Namespace: svc.m.Namespace}
		for _, a := range svc.m.Addresses {
			sd.Addresses = append(sd.Addresses, a.String())
		}
		for _, pol := range svc.policies {
			sd.Policies = append(sd.Policies, pol.Key())
		}
		backends[k] = true
		for _, mp := range svc.m.Ports {
			sp := svc.ports[mp.Port]
			sd.Ports = append(sd.Ports, fmt.Sprintf("%d/%s", sp.port, sp.proto))
			name := fmt.Sprintf("%s:%d", k, sp.port)
			dumpRoutes := func(es []*routeEntry, consumerNS string) {
				for i, e := range es {
					rd := RouteDump{Service: name, Order: i, Rule: e.rule.name, Match: e.match.String(), Retry: retryString(e.rule.retry),
						ConsumerNamespace: consumerNS}
					for _, b := range e.rule.backends {
						rd.Backends = append(rd.Backends, fmt.Sprintf("%s=%d", b.name, b.weight))
						backends[b.svc.key] = true
					}
					if e.rule.invalid != "" {
						rd.Backends = append(rd.Backends, "invalid: "+e.rule.invalid)
					}
					if t := e.rule.timeouts; t.Request > 0 || t.BackendRequest > 0 {
						rd.Timeout = fmt.Sprintf("request=%s backendRequest=%s", t.Request, t.BackendRequest)
					}
					d.Routes = append(d.Routes, rd)
				}
			}
			if !sp.routed {
				d.Routes = append(d.Routes, RouteDump{Service: name, Rule: "default", Match: "*", Backends: []string{name + "=1"},
					Retry: retryString(defaultRetry)})
			} else {
				dumpRoutes(sp.routes, "")
			}
			for _, ns := range slices.Sorted(maps.Keys(sp.consumers)) {
				dumpRoutes(sp.consumers[ns], ns)
			}
		}
		for _, fr := range svc.faults {
			d.Faults = append(d.Faults, FaultDump{Service: k, Source: fr.name, Fault: faultString(fr)})
		}
		d.Services = append(d.Services, sd)
	}
	for _, k := range keys {
		if !backends[k] {
			continue
		}
		svc := s.services[k]
		for _, ep := range svc.endpoints {
			for _, sp := range svc.ports {
				a := netip.AddrPortFrom(ep.addr, sp.targetPort)
				d.Backends = append(d.Backends, BackendState{Service: fmt.Sprintf("%s:%d", k, sp.port), Workload: ep.workload,
					Address: a.String(), Healthy: p.health.healthy(a, now)})
			}
		}
	}
	return d
}

func retryString(r retryPolicy) string {
	codes := make([]string, len(r.codes))
	for i, c := range r.codes {
		codes[i] = fmt.Sprint(c)
	}
	return fmt.Sprintf("attempts=%d codes=%s backoff=%s", r.attempts, strings.Join(codes, ","), r.backoff)
}

func faultString(fr faultRule) string {
	var parts []string
	if d := fr.fault.Delay; d != nil {
		parts = append(parts, fmt.Sprintf("delay %s %.4g%%", d.Fixed, d.Percent))
	}
	if a := fr.fault.Abort; a != nil {
		code := fmt.Sprint(a.HTTPStatus)
		if a.GRPCStatus != "" {
			code = "grpc " + a.GRPCStatus
		}
		parts = append(parts, fmt.Sprintf("abort %s %.4g%%", code, a.Percent))
	}
	return strings.Join(parts, ", ")
}

// String describes a match as the route wrote it.
func (m *match) String() string {
	var parts []string
	switch m.pathKind {
	case "Exact":
		parts = append(parts, "path="+m.path)
	case "RegularExpression":
		parts = append(parts, "path~"+m.path)
	default:
		parts = append(parts, "prefix="+m.path)
	}
	if m.method != "" {
		parts = append(parts, "method="+m.method)
	}
	for _, h := range m.headers {
		op := "="
		if h.re != nil {
			op = "~"
		}
		parts = append(parts, "header:"+strings.ToLower(h.name)+op+h.value)
	}
	for _, q := range m.query {
		op := "="
		if q.re != nil {
			op = "~"
		}
		parts = append(parts, "query:"+q.name+op+q.value)
	}
	return strings.Join(parts, " ")
}

// Explanation says what the waypoint would do with a request.
type Explanation struct {
	Service  string   `json:"service"`
	Decision string   `json:"decision"` // allow or deny
	Policy   string   `json:"policy,omitempty"`
	Fault    string   `json:"fault,omitempty"`
	Route    string   `json:"route"`
	Match    string   `json:"match,omitempty"`
	Status   int      `json:"status,omitempty"` // the answer when it is not forwarded
	Backends []string `json:"backends,omitempty"`
	Retry    string   `json:"retry,omitempty"`
	Timeout  string   `json:"timeout,omitempty"`
}

// Explain evaluates a request (method, URL with the service VIP or name as
// host, headers) from the source address src as ServeHTTP would, without
// sending it.
func (p *Proxy) Explain(src netip.Addr, method, rawURL string, header http.Header) (*Explanation, error) {
	s := p.snap.Load()
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("url %q: %w", rawURL, err)
	}
	r := &http.Request{Method: method, URL: u, Host: u.Host, Header: header}
	if r.Header == nil {
		r.Header = http.Header{}
	}
	port := uint16(80)
	if ps := u.Port(); ps != "" {
		fmt.Sscan(ps, &port)
	}
	var info *connInfo
	if a, err := netip.ParseAddr(u.Hostname()); err == nil {
		dst := netip.AddrPortFrom(a, port)
		if sp := s.byDst[dst]; sp != nil {
			info = &connInfo{dst: dst, sp: sp, port: port}
		} else if sp := s.workloadPort(dst); sp != nil {
			info = &connInfo{dst: dst, sp: sp, port: port}
		}
	}
	if info == nil {
		info = &connInfo{port: port}
		info.sp = p.servicePort(s, info, r)
		if info.sp == nil {
			return nil, fmt.Errorf("this waypoint serves no service %s on port %d", u.Hostname(), port)
		}
		info.dst = netip.AddrPortFrom(info.sp.svc.m.Addresses[0], port)
	}
	info.peer = Peer{Addr: netip.AddrPortFrom(src, 0)}
	sp := info.sp
	ex := &Explanation{Service: fmt.Sprintf("%s:%d", sp.svc.key, sp.port), Decision: "allow"}
	a := p.attrs(s, info, r)
	policies := append(s.gatewayPolicies[:len(s.gatewayPolicies):len(s.gatewayPolicies)], sp.svc.policies...)
	d := authorize(policies, &a)
	ex.Policy = d.policy
	if !d.allow {
		ex.Decision, ex.Status = "deny", http.StatusForbidden
		return ex, nil
	}
	if fr := sp.svc.fault(r); fr != nil {
		ex.Fault = fr.name + ": " + faultString(*fr)
	}
	routes, routed := sp.routesFor(principalNamespace(a.principal))
	if !routed {
		ex.Route = "default"
		ex.Backends = []string{ex.Service + "=1"}
		ex.Retry = retryString(defaultRetry)
		return ex, nil
	}
	e := matchRoute(routes, r)
	if e == nil {
		ex.Route, ex.Status = "none", http.StatusNotFound
		return ex, nil
	}
	ex.Route, ex.Match, ex.Retry = e.rule.name, e.match.String(), retryString(e.rule.retry)
	for _, b := range e.rule.backends {
		ex.Backends = append(ex.Backends, fmt.Sprintf("%s=%d", b.name, b.weight))
	}
	if t := e.rule.timeouts; t.Request > 0 || t.BackendRequest > 0 {
		ex.Timeout = fmt.Sprintf("request=%s backendRequest=%s", t.Request, t.BackendRequest)
	}
	return ex, nil
}
