package xds

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// The workload API's load_balancing as the model reads it. The first cases
// are what istiod sends for Kubernetes' Service fields
// (pilot/pkg/serviceregistry/ambient/services.go): trafficDistribution
// PreferClose (= PreferSameZone), PreferSameNode, internalTrafficPolicy
// Local and publishNotReadyAddresses.
func TestConvertService_LoadBalancing(t *testing.T) {
	const (
		network = workloadapi.LoadBalancing_NETWORK
		region  = workloadapi.LoadBalancing_REGION
		zone    = workloadapi.LoadBalancing_ZONE
		subzone = workloadapi.LoadBalancing_SUBZONE
		node    = workloadapi.LoadBalancing_NODE
		cluster = workloadapi.LoadBalancing_CLUSTER
	)
	lb := func(mode workloadapi.LoadBalancing_Mode, scopes ...workloadapi.LoadBalancing_Scope) *workloadapi.LoadBalancing {
		return &workloadapi.LoadBalancing{Mode: mode, RoutingPreference: scopes}
	}
	for _, tc := range []struct {
		name           string
		lb             *workloadapi.LoadBalancing
		want           *model.LocalityLB
		allowUnhealthy bool
		skip, note     string // substrings; "" = none
		err            string
	}{
		{name: "none: random over every endpoint", lb: nil},
		{
			name: "trafficDistribution PreferClose",
			lb:   lb(workloadapi.LoadBalancing_FAILOVER, network, region, zone),
			want: &model.LocalityLB{Mode: model.LocalityFailover, RoutingPreference: []model.LocalityScope{model.ScopeNetwork, model.ScopeRegion, model.ScopeZone}},
		},
		{
			name: "trafficDistribution PreferSameNode",
			lb:   lb(workloadapi.LoadBalancing_FAILOVER, network, region, zone, subzone, node),
			want: &model.LocalityLB{Mode: model.LocalityFailover, RoutingPreference: []model.LocalityScope{
				model.ScopeNetwork, model.ScopeRegion, model.ScopeZone, model.ScopeSubzone, model.ScopeNode}},
		},
		{
			name: "internalTrafficPolicy Local",
			lb:   lb(workloadapi.LoadBalancing_STRICT, node),
			want: &model.LocalityLB{Mode: model.LocalityStrict, RoutingPreference: []model.LocalityScope{model.ScopeNode}},
		},
		{
			name:           "publishNotReadyAddresses alone",
			lb:             &workloadapi.LoadBalancing{HealthPolicy: workloadapi.LoadBalancing_ALLOW_ALL},
			allowUnhealthy: true,
		},
		{
			name: "PreferClose with publishNotReadyAddresses",
			lb: &workloadapi.LoadBalancing{Mode: workloadapi.LoadBalancing_FAILOVER, HealthPolicy: workloadapi.LoadBalancing_ALLOW_ALL,
				RoutingPreference: []workloadapi.LoadBalancing_Scope{network, region, zone}},
			want:           &model.LocalityLB{Mode: model.LocalityFailover, RoutingPreference: []model.LocalityScope{model.ScopeNetwork, model.ScopeRegion, model.ScopeZone}},
			allowUnhealthy: true,
		},
		{
			name: "scopes keep their order",
			lb:   lb(workloadapi.LoadBalancing_STRICT, zone, region),
			want: &model.LocalityLB{Mode: model.LocalityStrict, RoutingPreference: []model.LocalityScope{model.ScopeZone, model.ScopeRegion}},
		},
		{
			name: "cluster scope",
			lb:   lb(workloadapi.LoadBalancing_FAILOVER, cluster, zone),
			want: &model.LocalityLB{Mode: model.LocalityFailover, RoutingPreference: []model.LocalityScope{model.ScopeCluster, model.ScopeZone}},
		},
		{
			// ztunnel: with no scope every endpoint matches, so STRICT
			// refuses nothing and FAILOVER has one priority.
			name: "strict without scopes ranks every endpoint the same",
			lb:   lb(workloadapi.LoadBalancing_STRICT),
		},
		{
			name: "failover without scopes",
			lb:   lb(workloadapi.LoadBalancing_FAILOVER),
		},
		{
			name: "scopes without a mode balance at random, with a note",
			lb:   lb(workloadapi.LoadBalancing_UNSPECIFIED_MODE, zone),
			note: "routing preference [ZONE] is not supported yet",
		},
		{
			name: "passthrough leaves the connection alone",
			lb:   lb(workloadapi.LoadBalancing_PASSTHROUGH),
			skip: "PASSTHROUGH",
		},
		{name: "scope listed twice", lb: lb(workloadapi.LoadBalancing_FAILOVER, zone, region, zone), err: "routing preference scope zone is listed twice"},
		{name: "unknown scope", lb: lb(workloadapi.LoadBalancing_FAILOVER, region, 42), err: "unknown routing preference scope 42"},
		{name: "unknown mode", lb: lb(17, zone), err: "unknown load balancing mode 17"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, a := xdstest.Service("default", "hello", []string{"10.96.0.10"}, xdstest.Port{Service: 80, Target: 8080})
			ps := a.GetService()
			ps.LoadBalancing = tc.lb
			got, err := convertService(ps)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("convertService = %+v, %v; want an error containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.s.Locality, tc.want) {
				t.Errorf("locality %+v, want %+v", got.s.Locality, tc.want)
			}
			if got.allowUnhealthy != tc.allowUnhealthy {
				t.Errorf("allowUnhealthy %v, want %v", got.allowUnhealthy, tc.allowUnhealthy)
			}
			if (tc.skip == "") != (got.skip == "") || !strings.Contains(got.skip, tc.skip) {
				t.Errorf("skip %q, want %q", got.skip, tc.skip)
			}
			if (tc.note == "") != (got.note == "") || !strings.Contains(got.note, tc.note) {
				t.Errorf("note %q, want %q", got.note, tc.note)
			}
			// Whatever was read is a valid model service (its target
			// ports filled in, as the build does from the workloads).
			if got.skip == "" {
				s := got.s
				s.Ports = slices.Clone(s.Ports)
				for i := range s.Ports {
					s.Ports[i].TargetPort = got.targets[s.Ports[i].Port]
				}
				m := &model.Mesh{Services: []model.Service{s}}
				if err := m.Validate(); err != nil {
					t.Errorf("model rejects the service: %v", err)
				}
			}
		})
	}
}

// A workload's locality is istiod's: the topology labels of its pod's node.
func TestConvertWorkload_Locality(t *testing.T) {
	_, a := xdstest.Workload{Namespace: "default", Name: "hello-1", Node: "node-a", IPs: []string{"10.1.1.11"}}.Address()
	pw := a.GetWorkload()
	pw.Locality = &workloadapi.Locality{Region: "eu-west-1", Zone: "eu-west-1a", Subzone: "rack-7"}
	pw.Network = "net-1"
	got, err := convertWorkload(pw, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := model.NewLocality("eu-west-1", "eu-west-1a", "rack-7")
	if got.w.Locality != want || got.w.Network != "net-1" || got.w.Node != "node-a" {
		t.Fatalf("locality %+v network %q node %q, want %+v net-1 node-a", got.w.Locality, got.w.Network, got.w.Node, want)
	}
	pw.Locality = nil
	if got, err = convertWorkload(pw, "", nil); err != nil || got.w.Locality != (model.Locality{}) {
		t.Fatalf("no locality: %+v, %v", got.w.Locality, err)
	}
}
