package xds

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

var (
	helloSvc = map[string][]xdstest.Port{"default/hello": {{Service: 80, Target: 8080}}}
	hello1   = xdstest.Workload{Namespace: "default", Name: "hello-1", Node: "node-a", IPs: []string{"10.1.1.11", "fd00:1:1::11"}, Services: helloSvc, Policies: []string{"default/allow-client"}}
	hello2   = xdstest.Workload{Namespace: "default", Name: "hello-2", Node: "node-b", IPs: []string{"10.1.2.12"}, Services: helloSvc}
	hello3   = xdstest.Workload{Namespace: "default", Name: "hello-3", Node: "node-b", IPs: []string{"10.1.2.13"}, Services: helloSvc, Unhealthy: true}
	hello4   = xdstest.Workload{Namespace: "default", Name: "hello-4", Node: "node-b", IPs: []string{"10.1.2.14"}, Services: helloSvc}
	client   = xdstest.Workload{Namespace: "default", Name: "client", Node: "node-a", IPs: []string{"10.1.1.10"}}
)

func allowClient() *security.Authorization {
	return &security.Authorization{
		Name: "allow-client", Namespace: "default", Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_ALLOW,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{
			Principals:       []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "cluster.local/ns/default/sa/client"}}},
			SourceIps:        []*security.Address{{Address: netip.MustParseAddr("10.1.1.0").AsSlice(), Length: 24}},
			DestinationPorts: []uint32{8080},
		}}}}}},
	}
}

// startWorkloadServer serves the hello service, its workloads and a
// policy.
func startWorkloadServer(t *testing.T, ws ...xdstest.Workload) *xdstest.Server {
	t.Helper()
	srv := xdstest.Start(t, "")
	name, svc := xdstest.Service("default", "hello", []string{"10.96.0.10", "fd00:96::10"}, xdstest.Port{Service: 80, Target: 8080})
	put(t, srv.Addresses, name, svc)
	for _, w := range ws {
		name, a := w.Address()
		put(t, srv.Addresses, name, a)
	}
	put(t, srv.Authorizations, "default/allow-client", allowClient())
	return srv
}

func TestWorkloadClient_AppliesServicesAndWorkloads(t *testing.T) {
	srv := startWorkloadServer(t, hello1, hello2, hello3, client)
	a := runClient(t, NewWorkloadClient, srv.Addr())

	got := a.next(t)
	wl := func(w xdstest.Workload, ips ...string) model.Workload {
		return model.Workload{
			Name: w.Name, Namespace: w.Namespace, Node: w.Node, Addresses: addrs(ips...), Weight: 1,
			UID: w.UID(), ServiceAccount: "default", Policies: w.Policies, TunnelProtocol: model.TunnelNone,
		}
	}
	want := &model.Mesh{
		Services: []model.Service{{
			Name: "hello", Namespace: "default", Addresses: addrs("10.96.0.10", "fd00:96::10"),
			Ports:     []model.ServicePort{{Port: 80, TargetPort: 8080, Protocol: model.ProtocolTCP}},
			LBMode:    model.LBRandom,
			Endpoints: []model.Endpoint{{Workload: "default/hello-1"}, {Workload: "default/hello-2"}}, // hello-3 is unhealthy
		}},
		Workloads: []model.Workload{
			wl(client, "10.1.1.10"), wl(hello1, "10.1.1.11", "fd00:1:1::11"), wl(hello2, "10.1.2.12"), wl(hello3, "10.1.2.13"),
		},
		Policies: []model.Policy{{
			Name: "allow-client", Namespace: "default", Scope: model.ScopeWorkloadSelector, Action: model.ActionAllow,
			Rules: []model.PolicyRule{{Clauses: []model.PolicyClause{{Matches: []model.PolicyMatch{{
				Principals:       []model.StringMatch{{Kind: model.MatchExact, Value: "cluster.local/ns/default/sa/client"}},
				SourceIPs:        []netip.Prefix{netip.MustParsePrefix("10.1.1.0/24")},
				DestinationPorts: []uint16{8080},
			}}}}}},
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("first mesh:\n%s\nwant:\n%s\n%#v", meshString(got), meshString(want), got)
	}

	// The client speaks as a ztunnel of node-a and ACKs both types.
	first, _ := srv.WaitDelta(t, 0, func(r *discovery.DeltaDiscoveryRequest) bool { return r.GetNode() != nil })
	if id := first.GetNode().GetId(); !strings.HasPrefix(id, "ztunnel~127.0.0.1~kmesh-node-a.kmesh-system~") {
		t.Errorf("node id %q, want a ztunnel id", id)
	}
	md := first.GetNode().GetMetadata().GetFields()
	for k, v := range map[string]string{"NODE_NAME": "node-a", "CLUSTER_ID": "Kubernetes", "NAMESPACE": "kmesh-system"} {
		if got := md[k].GetStringValue(); got != v {
			t.Errorf("metadata %s = %q, want %q", k, got, v)
		}
	}
	srv.WaitDelta(t, 0, isAck(AddressType))
	srv.WaitDelta(t, 0, isAck(AuthorizationType))

	t.Run("add_endpoint", func(t *testing.T) {
		name, w := hello4.Address()
		put(t, srv.Addresses, name, w)
		m := a.next(t)
		if eps := endpointsOf(m, "default/hello"); !slices.Equal(eps, []string{"default/hello-1", "default/hello-2", "default/hello-4"}) {
			t.Fatalf("endpoints %v after adding hello-4\n%s", eps, meshString(m))
		}
	})
	t.Run("remove_endpoint", func(t *testing.T) {
		if err := srv.Addresses.DeleteResource(hello1.UID()); err != nil {
			t.Fatal(err)
		}
		m := a.next(t)
		if eps := endpointsOf(m, "default/hello"); !slices.Equal(eps, []string{"default/hello-2", "default/hello-4"}) {
			t.Fatalf("endpoints %v after removing hello-1\n%s", eps, meshString(m))
		}
		if m.Workload("default/hello-1") != nil {
			t.Fatalf("hello-1 is still a workload")
		}
	})
	t.Run("remove_policy", func(t *testing.T) {
		if err := srv.Authorizations.DeleteResource("default/allow-client"); err != nil {
			t.Fatal(err)
		}
		if m := a.next(t); len(m.Policies) != 0 {
			t.Fatalf("policies %v after the delete", m.Policies)
		}
	})
	t.Run("remove_service", func(t *testing.T) {
		if err := srv.Addresses.DeleteResource("default/" + xdstest.Hostname("default", "hello")); err != nil {
			t.Fatal(err)
		}
		if m := a.next(t); len(m.Services) != 0 || len(m.Workloads) != 4 {
			t.Fatalf("after removing the service:\n%s", meshString(m))
		}
	})
}

// A workload that names a service before the service arrives is kept and
// becomes its endpoint when it does.
func TestWorkloadClient_WorkloadBeforeService(t *testing.T) {
	srv := xdstest.Start(t, "")
	name, w := hello2.Address()
	put(t, srv.Addresses, name, w)
	a := runClient(t, NewWorkloadClient, srv.Addr())
	if m := a.next(t); len(m.Services) != 0 || len(m.Workloads) != 1 {
		t.Fatalf("first mesh:\n%s", meshString(m))
	}
	name, svc := xdstest.Service("default", "hello", []string{"10.96.0.10"}, xdstest.Port{Service: 80, Target: 8080})
	put(t, srv.Addresses, name, svc)
	m := a.next(t)
	if eps := endpointsOf(m, "default/hello"); !slices.Equal(eps, []string{"default/hello-2"}) {
		t.Fatalf("endpoints %v, want hello-2\n%s", eps, meshString(m))
	}
}

func TestWorkloadClient_RejectsMalformedResourceAlone(t *testing.T) {
	srv := startWorkloadServer(t, hello1, hello2)
	a := runClient(t, NewWorkloadClient, srv.Addr())
	a.next(t)
	_, skip := srv.WaitDelta(t, 0, isAck(AuthorizationType))

	// One push: a workload with a 5-byte address, a resource that is not
	// an Address at all, and a good workload.
	_, bad := xdstest.Workload{Namespace: "default", Name: "bad", IPs: []string{"10.1.2.99"}, Services: helloSvc}.Address()
	bad.GetWorkload().Addresses[0] = []byte{10, 1, 2, 99, 7}
	name4, good := hello4.Address()
	err := srv.Addresses.UpdateResources(map[string]types.Resource{
		"Kubernetes//Pod/default/bad":     bad,
		"Kubernetes//Pod/default/garbage": wrapperspb.String("x"),
		name4:                             good,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := a.next(t)
	if eps := endpointsOf(m, "default/hello"); !slices.Equal(eps, []string{"default/hello-1", "default/hello-2", "default/hello-4"}) {
		t.Fatalf("endpoints %v: the good workload of the push should apply\n%s", eps, meshString(m))
	}
	nack, _ := srv.WaitDelta(t, skip, isNack)
	msg := nack.GetErrorDetail().GetMessage()
	for _, want := range []string{
		"resource Kubernetes//Pod/default/bad: address 0: 5 bytes is not an IPv4 or IPv6 address",
		"resource Kubernetes//Pod/default/garbage: decode:",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("NACK %q does not contain %q", msg, want)
		}
	}
	if strings.Contains(msg, "hello-4") {
		t.Errorf("NACK %q names the good resource", msg)
	}
	if !strings.Contains(a.log.String(), "config rejected") {
		t.Errorf("no warning logged:\n%s", a.log)
	}
}

// A service that takes an address already in use is left out and named in
// the NACK; the older service keeps it.
func TestWorkloadClient_RejectsClashingService(t *testing.T) {
	srv := startWorkloadServer(t, hello1)
	a := runClient(t, NewWorkloadClient, srv.Addr())
	a.next(t)
	name, svc := xdstest.Service("other", "thief", []string{"10.96.0.10"}, xdstest.Port{Service: 80, Target: 80})
	put(t, srv.Addresses, name, svc)
	nack, _ := srv.WaitDelta(t, 0, isNack)
	want := "resource other/thief.other.svc.cluster.local: address 10.96.0.10:80 is already used by service default/hello"
	if !strings.Contains(nack.GetErrorDetail().GetMessage(), want) {
		t.Fatalf("NACK %q, want %q", nack.GetErrorDetail().GetMessage(), want)
	}
	if m := a.next(t); len(m.Services) != 1 || m.Services[0].Key() != "default/hello" {
		t.Fatalf("mesh after the clash:\n%s", meshString(m))
	}
}

// When the data plane refuses a mesh, the response is NACKed with its
// error and the store keeps its previous state; the client then restarts
// the stream, so the control plane sends the refused change again and the
// apply is retried (with backoff while it keeps failing).
func TestWorkloadClient_ApplyFailureNACKsAndRetries(t *testing.T) {
	srv := startWorkloadServer(t, hello1, hello2)
	a := runClient(t, NewWorkloadClient, srv.Addr())
	a.next(t)
	_, skip := srv.WaitDelta(t, 0, isAck(AuthorizationType))

	a.setFail(errFull)
	name, w := hello4.Address()
	put(t, srv.Addresses, name, w)
	nack, skip := srv.WaitDelta(t, skip, isNack)
	if msg := nack.GetErrorDetail().GetMessage(); msg != "apply: dataplane is full" {
		t.Fatalf("NACK %q, want the apply error", msg)
	}
	// The resumed stream does not claim the refused workload, so the
	// control plane sends it again.
	resumed, _ := srv.WaitDelta(t, skip, func(r *discovery.DeltaDiscoveryRequest) bool {
		return r.GetTypeUrl() == AddressType && r.GetResponseNonce() == "" && r.GetInitialResourceVersions()[hello2.UID()] != ""
	})
	if _, ok := resumed.GetInitialResourceVersions()[hello4.UID()]; ok {
		t.Fatalf("resumed stream claims hello-4, which was never applied")
	}
	a.setFail(nil)
	m := a.until(t, func(m *model.Mesh) bool { return m.Workload("default/hello-4") != nil })
	if eps := endpointsOf(m, "default/hello"); !slices.Equal(eps, []string{"default/hello-1", "default/hello-2", "default/hello-4"}) {
		t.Fatalf("endpoints %v after the retry", eps)
	}
	if !strings.Contains(a.log.String(), "resyncing") {
		t.Errorf("no resync logged:\n%s", a.log)
	}
}

// The control plane goes away and comes back on the same port: the data
// plane keeps its state meanwhile, and the client resumes the stream with
// the versions it holds, so only what changed is sent again.
func TestWorkloadClient_Reconnects(t *testing.T) {
	srv := startWorkloadServer(t, hello1, hello2)
	a := runClient(t, NewWorkloadClient, srv.Addr())
	a.next(t)
	srv.WaitDelta(t, 0, isAck(AuthorizationType))

	srv.Stop()
	skip := len(srv.DeltaRequests())
	a.quiet(t) // nothing is applied while the control plane is away
	name, w := hello4.Address()
	put(t, srv.Addresses, name, w)
	srv.Restart(t)

	resumed, _ := srv.WaitDelta(t, skip, func(r *discovery.DeltaDiscoveryRequest) bool { return r.GetTypeUrl() == AddressType })
	held := resumed.GetInitialResourceVersions()
	for _, n := range []string{hello1.UID(), hello2.UID(), "default/" + xdstest.Hostname("default", "hello")} {
		if held[n] == "" {
			t.Errorf("initial_resource_versions %v lacks %s", held, n)
		}
	}
	if _, ok := held[hello4.UID()]; ok {
		t.Errorf("initial_resource_versions names hello-4, which the client never had")
	}
	m := a.next(t)
	if eps := endpointsOf(m, "default/hello"); !slices.Equal(eps, []string{"default/hello-1", "default/hello-2", "default/hello-4"}) {
		t.Fatalf("endpoints %v after reconnecting\n%s", eps, meshString(m))
	}
	if !strings.Contains(a.log.String(), "reconnecting") {
		t.Errorf("no reconnect logged:\n%s", a.log)
	}
	// The unchanged policy is not sent again, so nothing else is applied.
	a.quiet(t)
}

func TestConfig_TokenNeedsTLS(t *testing.T) {
	c := Config{Address: "127.0.0.1:1", TokenFile: "/dev/null"}
	if err := c.setDefaults(); err == nil || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("setDefaults = %v, want an error about TLS", err)
	}
}
