package admin

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/internal/model"
)

var enrolledA = []string{"/var/run/netns/client", "/var/run/netns/hello-1"}

func TestExplain(t *testing.T) {
	tests := []struct {
		name      string
		source    string
		dst       string
		enrolled  []string
		result    string
		endpoints string // workload eligible share reasons; one per endpoint
	}{{
		name: "IPv4 service: every endpoint, shares by weight", source: "default/client", dst: "10.96.0.10:80",
		result: "balanced (random) over 3 of 3 endpoints, to port 8080",
		endpoints: `default/hello-1 10.1.1.11:8080 true 0.25 []
default/hello-2 10.1.2.12:8080 true 0.50 []
default/hello-3 10.1.2.13:8080 true 0.25 []`,
	}, {
		name: "IPv6 service: an endpoint without IPv6 is not eligible", source: "client", dst: "[fd00:96::10]:80",
		result: "balanced (random) over 2 of 3 endpoints, to port 8080",
		endpoints: `default/hello-1 [fd00:1:1::11]:8080 true 0.33 []
default/hello-2 [fd00:1:2::12]:8080 true 0.67 []
default/hello-3  false 0.00 [no IPv6 address]`,
	}, {
		name: "v4-mapped destination is the IPv4 service", source: "client", dst: "[::ffff:10.96.0.10]:80",
		result: "balanced (random) over 3 of 3 endpoints, to port 8080",
		endpoints: `default/hello-1 10.1.1.11:8080 true 0.25 []
default/hello-2 10.1.2.12:8080 true 0.50 []
default/hello-3 10.1.2.13:8080 true 0.25 []`,
	}, {
		name: "no service at the address", source: "client", dst: "10.96.0.99:80",
		result: "passes untouched: no service has address 10.96.0.99",
	}, {
		name: "service address, other port", source: "client", dst: "10.96.0.10:81",
		result: "passes untouched: service default/hello has address 10.96.0.10 but no port 81",
	}, {
		name: "source outside the mesh", source: "outsider", dst: "10.96.0.99:80",
		result: "passes untouched: the source is not in the mesh (an enrolled source: passes untouched: no service has address 10.96.0.99)",
	}, {
		name: "source on another node", source: "hello-2", dst: "10.96.0.10:80",
		result: "on node node-b, by its kmeshd: balanced (random) over 3 of 3 endpoints, to port 8080",
		endpoints: `default/hello-1 10.1.1.11:8080 true 0.25 []
default/hello-2 10.1.2.12:8080 true 0.50 []
default/hello-3 10.1.2.13:8080 true 0.25 []`,
	}, {
		name: "source not enrolled yet", source: "client", dst: "10.96.0.99:80", enrolled: []string{},
		result: "passes untouched until the source is enrolled (then: passes untouched: no service has address 10.96.0.99)",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			enrolled := enrolledA
			if tt.enrolled != nil {
				enrolled = tt.enrolled
			}
			e, err := Explain(helloMesh(), "node-a", enrolled, nil, "", tt.source, netip.MustParseAddrPort(tt.dst))
			if err != nil {
				t.Fatal(err)
			}
			if e.Result != tt.result {
				t.Errorf("result %q\nwant   %q", e.Result, tt.result)
			}
			var eps []string
			for _, ep := range e.Endpoints {
				eps = append(eps, fmt.Sprintf("%s %s %v %.2f %v", ep.Workload, ep.Address, ep.Eligible, ep.Share, ep.Reasons))
				if (ep.Policy != "allowed: the mesh has no policy" && ep.Policy != notEvaluated) || ep.Locality != "n/a" {
					t.Errorf("%s: policy %q locality %q, want no policy and the locality placeholder", ep.Workload, ep.Policy, ep.Locality)
				}
			}
			if got := strings.Join(eps, "\n"); got != tt.endpoints {
				t.Errorf("endpoints:\n%s\nwant:\n%s", got, tt.endpoints)
			}
		})
	}
}

func TestExplain_NoEligibleEndpointIsRefused(t *testing.T) {
	m := helloMesh()
	m.Services[0].Endpoints = []model.Endpoint{{Workload: "default/hello-3"}}
	e, err := Explain(m, "node-a", enrolledA, nil, "", "client", netip.MustParseAddrPort("[fd00:96::10]:80"))
	if err != nil {
		t.Fatal(err)
	}
	want := "refused: service default/hello has no eligible IPv6 endpoint, so connect() fails with ECONNREFUSED"
	if e.Result != want {
		t.Fatalf("result %q, want %q", e.Result, want)
	}
}

func TestExplain_SourceStates(t *testing.T) {
	m := helloMesh()
	tests := []struct {
		source, reason string
		enrolled       bool
	}{
		{"client", "", true},
		{"outsider", "no netns: not in the mesh, its connects are not balanced", false},
		{"hello-2", "runs on node node-b, not node-a: that node's kmeshd balances it", false},
	}
	for _, tt := range tests {
		t.Run(tt.source, func(t *testing.T) {
			e, err := Explain(m, "node-a", enrolledA, nil, "", tt.source, netip.MustParseAddrPort("10.96.0.10:80"))
			if err != nil {
				t.Fatal(err)
			}
			if e.Source.Enrolled != tt.enrolled || e.Source.Reason != tt.reason {
				t.Fatalf("source %+v, want enrolled=%v reason %q", e.Source, tt.enrolled, tt.reason)
			}
		})
	}
	if _, err := Explain(m, "node-a", enrolledA, nil, "", "other/client", netip.MustParseAddrPort("10.96.0.10:80")); !errors.Is(err, ErrUnknownWorkload) {
		t.Fatalf("unknown source: %v, want ErrUnknownWorkload", err)
	}
}

func TestExplain_EvaluatesPolicies(t *testing.T) {
	m := helloMesh()
	clientP := model.StringMatch{Kind: model.MatchExact, Value: "cluster.local/ns/default/sa/default"}
	m.Policies = []model.Policy{{
		Name: "hello-1-only-from-outside", Namespace: "default", Scope: model.ScopeWorkloadSelector, Action: model.ActionAllow,
		Rules: []model.PolicyRule{{Clauses: []model.PolicyClause{{Matches: []model.PolicyMatch{{NotPrincipals: []model.StringMatch{clientP}}}}}}},
	}, {
		Name: "audit-all", Namespace: "istio-system", Scope: model.ScopeGlobal, Action: model.ActionAudit,
		Rules: []model.PolicyRule{{}},
	}}
	for i := range m.Workloads {
		if m.Workloads[i].Name == "hello-1" {
			m.Workloads[i].Policies = []string{"default/hello-1-only-from-outside"}
		}
	}
	e, err := Explain(m, "node-a", enrolledA, nil, "", "client", netip.MustParseAddrPort("10.96.0.10:80"))
	if err != nil {
		t.Fatal(err)
	}
	want := "balanced (random) over 3 of 3 endpoints, to port 8080; policies deny 1 of them: a connect() that picks one fails with EACCES"
	if e.Result != want {
		t.Errorf("result %q\nwant   %q", e.Result, want)
	}
	var got []string
	for _, ep := range e.Endpoints {
		got = append(got, ep.Workload+": "+ep.Policy)
	}
	wantEps := []string{
		"default/hello-1: denied: none of the 1 ALLOW policies that apply matches; counted by istio-system/audit-all",
		"default/hello-2: allowed: no ALLOW policy applies; counted by istio-system/audit-all",
		"default/hello-3: allowed: no ALLOW policy applies; counted by istio-system/audit-all",
	}
	if strings.Join(got, "\n") != strings.Join(wantEps, "\n") {
		t.Errorf("endpoints:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantEps, "\n"))
	}

	// A workload address, not a service: checked all the same.
	e, err = Explain(m, "node-a", enrolledA, nil, "", "client", netip.MustParseAddrPort("10.1.1.11:8080"))
	if err != nil {
		t.Fatal(err)
	}
	want = "not balanced (no service has address 10.1.1.11); to workload default/hello-1: denied: none of the 1 ALLOW policies that apply matches; counted by istio-system/audit-all"
	if e.Result != want {
		t.Errorf("result %q\nwant   %q", e.Result, want)
	}
}

// TestExplain_XDSSourceEnrolledByAnotherSource: an xDS workload names no
// netns; the daemon's match of an enrolled namespace to it puts it in the
// mesh (on main before this, every xDS source was "not in the mesh").
func TestExplain_XDSSourceEnrolledByAnotherSource(t *testing.T) {
	m := helloMesh()
	for i := range m.Workloads {
		m.Workloads[i].Netns = ""
		m.Workloads[i].UID = "Kubernetes//Pod/" + m.Workloads[i].Key()
	}
	who := map[string]string{"default/client": "/var/run/netns/client"}
	dst := netip.MustParseAddrPort("10.96.0.10:80")
	e, err := Explain(m, "node-a", enrolledA, who, "", "client", dst)
	if err != nil {
		t.Fatal(err)
	}
	if want := "balanced (random) over 3 of 3 endpoints, to port 8080"; e.Result != want || !e.Source.Enrolled || e.Source.Netns != who["default/client"] {
		t.Fatalf("enrolled xDS source: result %q, source %+v; want %q from an enrolled source in %s", e.Result, e.Source, want, who["default/client"])
	}
	// Without the match, the same workload is outside the mesh.
	e, err = Explain(m, "node-a", enrolledA, nil, "", "client", dst)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(e.Result, "passes untouched: the source is not in the mesh") || e.Source.Enrolled {
		t.Fatalf("unmatched xDS source: result %q, source %+v", e.Result, e.Source)
	}
	// Another node's xDS workload: that node's kmeshd decides.
	e, err = Explain(m, "node-a", enrolledA, who, "", "hello-2", dst)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(e.Result, "on node node-b, by its kmeshd once it enrolls the source: balanced") {
		t.Fatalf("xDS source on node-b: result %q", e.Result)
	}
}

// TestExplain_Tunnel: with a CA, endpoints on another node that take HBONE
// are reached through the tunnel, to their address's 15008, under the
// source's identity; same-node endpoints and NONE workloads go direct.
func TestExplain_Tunnel(t *testing.T) {
	m := helloMesh()
	for i := range m.Workloads {
		switch m.Workloads[i].Name {
		case "client":
			m.Workloads[i].ServiceAccount = "sleep"
		case "hello-2":
			m.Workloads[i].ServiceAccount = "hello"
		case "hello-3":
			m.Workloads[i].TunnelProtocol = model.TunnelNone
		}
	}
	e, err := Explain(m, "node-a", enrolledA, nil, "example.org", "client", netip.MustParseAddrPort("10.96.0.10:80"))
	if err != nil {
		t.Fatal(err)
	}
	want := "balanced (random) over 3 of 3 endpoints, to port 8080; 1 of them through the HBONE tunnel (mutual TLS, see TUNNEL)"
	if e.Result != want {
		t.Errorf("result %q\nwant   %q", e.Result, want)
	}
	var got []string
	for _, ep := range e.Endpoints {
		got = append(got, fmt.Sprintf("%s %+v", ep.Workload, ep.Tunnel))
	}
	wantEps := `default/hello-1 <nil>
default/hello-2 &{Peer:10.1.2.12:15008 SourceIdentity:spiffe://example.org/ns/default/sa/sleep DestinationIdentity:spiffe://example.org/ns/default/sa/hello}
default/hello-3 <nil>`
	if strings.Join(got, "\n") != wantEps {
		t.Errorf("endpoints:\n%s\nwant\n%s", strings.Join(got, "\n"), wantEps)
	}

	// A workload address over IPv6: the peer is that address's 15008.
	e, err = Explain(m, "node-a", enrolledA, nil, "example.org", "client", netip.MustParseAddrPort("[fd00:1:2::12]:8080"))
	if err != nil {
		t.Fatal(err)
	}
	want = "not balanced (no service has address fd00:1:2::12); to workload default/hello-2: tunnelled (HBONE, mutual TLS) to [fd00:1:2::12]:15008 as spiffe://example.org/ns/default/sa/sleep, accepting only spiffe://example.org/ns/default/sa/hello"
	if e.Result != want || e.Tunnel == nil || e.Tunnel.Peer != "[fd00:1:2::12]:15008" {
		t.Errorf("result %q, tunnel %+v\nwant   %q", e.Result, e.Tunnel, want)
	}

	// Without a CA nothing is tunnelled.
	e, err = Explain(m, "node-a", enrolledA, nil, "", "client", netip.MustParseAddrPort("10.1.2.12:8080"))
	if err != nil {
		t.Fatal(err)
	}
	if e.Tunnel != nil || strings.Contains(e.Result, "tunnel") {
		t.Errorf("no CA: tunnel %+v, result %q", e.Tunnel, e.Result)
	}
}

// TestExplain_WorkloadWaypoint: a workload's own address whose workload
// uses a waypoint for workload traffic is explained as that workload
// through its waypoint, on any port, tunnelled with the authority
// podIP:port; without a CA, refused.
func TestExplain_WorkloadWaypoint(t *testing.T) {
	m := &model.Mesh{
		Gateways: []model.Gateway{{Name: "wp", Namespace: "default", Labels: map[string]string{model.LabelWaypointFor: "workload"}}},
		Workloads: []model.Workload{
			{Name: "client", Namespace: "default", Node: "node-a", Netns: "/run/netns/client", Weight: 1,
				Addresses: []netip.Addr{netip.MustParseAddr("10.1.1.10")}},
			{Name: "app", Namespace: "default", Node: "node-b", Netns: "/run/netns/app", Weight: 1,
				Addresses: []netip.Addr{netip.MustParseAddr("10.1.2.12")}, Labels: map[string]string{model.LabelUseWaypoint: "wp"}},
			{Name: "wp-1", Namespace: "default", Node: "node-b", Netns: "/run/netns/wp", Weight: 1, ServiceAccount: "wp",
				Addresses: []netip.Addr{netip.MustParseAddr("10.1.2.20")}, Labels: map[string]string{model.LabelGatewayName: "wp"}},
		},
	}
	m = model.WithWaypointRedirect(m)
	e, err := Explain(m, "node-a", []string{"/run/netns/client"}, nil, "cluster.local", "client", netip.MustParseAddrPort("10.1.2.12:9090"))
	if err != nil {
		t.Fatal(err)
	}
	if s := e.Service; s == nil || s.Workload != "default/app" || s.Waypoint != "default/wp" || s.Port != 9090 || s.TargetPort != 9090 {
		t.Fatalf("service %+v, want workload default/app through waypoint default/wp on port 9090", e.Service)
	}
	if len(e.Endpoints) != 1 || e.Endpoints[0].Address != "10.1.2.20:9090" || e.Endpoints[0].Tunnel == nil {
		t.Fatalf("endpoints %+v, want the waypoint's instance 10.1.2.20:9090 through the tunnel", e.Endpoints)
	}
	if !strings.Contains(e.Result, "to workload default/app through its waypoint default/wp (HBONE authority 10.1.2.12:9090)") {
		t.Errorf("result %q", e.Result)
	}
	e, err = Explain(m, "node-a", []string{"/run/netns/client"}, nil, "", "client", netip.MustParseAddrPort("10.1.2.12:9090"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(e.Result, "refused: workload default/app's own address goes to its waypoint default/wp only over HBONE") {
		t.Errorf("without a CA: result %q, want refused", e.Result)
	}
}
