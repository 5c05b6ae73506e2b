package file

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/model"
)

// lbFile is a service hello (lines 1-6, its extra fields from line 7 on)
// and two workloads whose locality lines are given.
func lbFile(service, loc1, loc2 string) string {
	return `services:
- name: hello
  addresses: ["10.96.0.10"]
  ports: [{port: 80, targetPort: 8080}]
  selector: {app: hello}
` + service + `workloads:
- name: hello-1
  labels: {app: hello}
  addresses: ["10.1.1.11"]
  node: node-a
` + loc1 + `- name: hello-2
  labels: {app: hello}
  addresses: ["10.1.2.12"]
  node: node-b
` + loc2
}

func TestParse_LoadBalancing(t *testing.T) {
	for _, tc := range []struct {
		name, service string
		check         func(t *testing.T, s model.Service)
	}{
		{"nothing: random", "", func(t *testing.T, s model.Service) {
			if s.LBMode != model.LBRandom || s.Locality != nil || s.SessionAffinity != nil || s.OutlierDetection != nil {
				t.Fatalf("%+v", s)
			}
		}},
		{"failover is the default locality mode", "  loadBalancing: {routingPreference: [region, zone]}\n", func(t *testing.T, s model.Service) {
			want := &model.LocalityLB{Mode: model.LocalityFailover, RoutingPreference: []model.LocalityScope{model.ScopeRegion, model.ScopeZone}}
			if !reflect.DeepEqual(s.Locality, want) {
				t.Fatalf("locality %+v, want %+v", s.Locality, want)
			}
		}},
		{"strict, every scope, in order", "  loadBalancing:\n    routingPreference: [network, region, zone, subzone, node]\n    localityMode: strict\n", func(t *testing.T, s model.Service) {
			want := &model.LocalityLB{Mode: model.LocalityStrict, RoutingPreference: []model.LocalityScope{
				model.ScopeNetwork, model.ScopeRegion, model.ScopeZone, model.ScopeSubzone, model.ScopeNode}}
			if !reflect.DeepEqual(s.Locality, want) {
				t.Fatalf("locality %+v, want %+v", s.Locality, want)
			}
		}},
		{"maglev", "  loadBalancing: {mode: maglev}\n", func(t *testing.T, s model.Service) {
			if s.LBMode != model.LBMaglev || s.Locality != nil {
				t.Fatalf("mode %q locality %+v", s.LBMode, s.Locality)
			}
		}},
		{"session affinity with kube-proxy's default timeout", "  sessionAffinity: {}\n", func(t *testing.T, s model.Service) {
			if s.SessionAffinity == nil || s.SessionAffinity.Timeout != 3*time.Hour {
				t.Fatalf("affinity %+v, want 10800s", s.SessionAffinity)
			}
		}},
		{"session affinity timeout", "  sessionAffinity: {timeoutSeconds: 30}\n", func(t *testing.T, s model.Service) {
			if s.SessionAffinity == nil || s.SessionAffinity.Timeout != 30*time.Second {
				t.Fatalf("affinity %+v, want 30s", s.SessionAffinity)
			}
		}},
		{"outlier detection: Envoy's defaults", "  outlierDetection: {}\n", func(t *testing.T, s model.Service) {
			want := &model.OutlierDetection{ConsecutiveFailures: 5, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 10}
			if !reflect.DeepEqual(s.OutlierDetection, want) {
				t.Fatalf("outlier detection %+v, want %+v", s.OutlierDetection, want)
			}
		}},
		{"outlier detection", "  outlierDetection: {consecutiveFailures: 3, baseEjectionTime: 1500ms, maxEjectionPercent: 0}\n", func(t *testing.T, s model.Service) {
			want := &model.OutlierDetection{ConsecutiveFailures: 3, BaseEjectionTime: 1500 * time.Millisecond, MaxEjectionPercent: 0}
			if !reflect.DeepEqual(s.OutlierDetection, want) {
				t.Fatalf("outlier detection %+v, want %+v", s.OutlierDetection, want)
			}
		}},
		{"all three together", "  loadBalancing: {routingPreference: [zone], localityMode: strict}\n  sessionAffinity: {timeoutSeconds: 5}\n  outlierDetection: {consecutiveFailures: 2}\n", func(t *testing.T, s model.Service) {
			if s.Locality == nil || s.Locality.Mode != model.LocalityStrict || s.SessionAffinity == nil || s.SessionAffinity.Timeout != 5*time.Second ||
				s.OutlierDetection == nil || s.OutlierDetection.ConsecutiveFailures != 2 {
				t.Fatalf("%+v %+v %+v", s.Locality, s.SessionAffinity, s.OutlierDetection)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Parse("mesh.yaml", []byte(lbFile(tc.service, "", "")), "")
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, m.Services[0])
		})
	}
}

func TestParse_WorkloadLocality(t *testing.T) {
	m, err := Parse("mesh.yaml", []byte(lbFile("", "  locality: eu-west/eu-west-1a/rack-7\n", "  locality: eu-west\n")), "")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]model.Locality{}
	for _, w := range m.Workloads {
		got[w.Name] = w.Locality
	}
	want := map[string]model.Locality{
		"hello-1": model.NewLocality("eu-west", "eu-west-1a", "rack-7"),
		"hello-2": model.NewLocality("eu-west", "", ""),
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("localities %+v, want %+v", got, want)
	}
}

// Each bad value is named with the file, its line and its path, and says
// what is accepted.
func TestParse_BadLoadBalancing(t *testing.T) {
	for _, tc := range []struct{ name, service, loc, want string }{
		{"unknown mode", "  loadBalancing: {mode: least_request}\n", "",
			`mesh.yaml:6: services[0].loadBalancing.mode: unknown load balancing mode "least_request" (want random, round_robin or maglev)`},
		{"unknown scope", "  loadBalancing:\n    routingPreference: [region, rack]\n", "",
			`mesh.yaml:7: services[0].loadBalancing.routingPreference[1]: unknown scope "rack" (want network, region, zone, subzone or node)`},
		{"cluster scope is xDS only", "  loadBalancing: {routingPreference: [cluster]}\n", "",
			`mesh.yaml:6: services[0].loadBalancing.routingPreference[0]: unknown scope "cluster"`},
		{"scope twice", "  loadBalancing:\n    routingPreference:\n    - zone\n    - region\n    - zone\n", "",
			"mesh.yaml:10: services[0].loadBalancing.routingPreference[2]: scope zone is listed twice"},
		{"no scope", "  loadBalancing: {routingPreference: []}\n", "",
			"mesh.yaml:6: services[0].loadBalancing.routingPreference: at least one scope is required"},
		{"routingPreference not a list", "  loadBalancing: {routingPreference: zone}\n", "",
			`mesh.yaml:6: services[0].loadBalancing.routingPreference: expected a list, got "zone"`},
		{"unknown locality mode", "  loadBalancing:\n    routingPreference: [zone]\n    localityMode: prefer\n", "",
			`mesh.yaml:8: services[0].loadBalancing.localityMode: unknown locality mode "prefer" (want failover or strict)`},
		{"locality mode alone", "  loadBalancing: {localityMode: strict}\n", "",
			"mesh.yaml:6: services[0].loadBalancing.localityMode: needs loadBalancing.routingPreference"},
		{"maglev with a routing preference", "  loadBalancing:\n    mode: maglev\n    routingPreference: [zone]\n", "",
			"mesh.yaml:7: services[0].loadBalancing.routingPreference: cannot be combined with mode maglev"},
		{"unknown loadBalancing field", "  loadBalancing: {hashKey: source}\n", "",
			`mesh.yaml:6: services[0].loadBalancing: unknown field "hashKey"`},
		{"affinity timeout zero", "  sessionAffinity: {timeoutSeconds: 0}\n", "",
			"mesh.yaml:6: services[0].sessionAffinity.timeoutSeconds: 0 is out of range 1..86400"},
		{"affinity timeout above kube's", "  sessionAffinity:\n    timeoutSeconds: 86401\n", "",
			"mesh.yaml:7: services[0].sessionAffinity.timeoutSeconds: 86401 is out of range 1..86400"},
		{"affinity as kube's ClientIP string", "  sessionAffinity: ClientIP\n", "",
			`mesh.yaml:6: services[0].sessionAffinity: expected a mapping, got "ClientIP"`},
		{"unknown affinity field", "  sessionAffinity: {clientIP: {timeoutSeconds: 10}}\n", "",
			`mesh.yaml:6: services[0].sessionAffinity: unknown field "clientIP"`},
		{"zero failures", "  outlierDetection: {consecutiveFailures: 0}\n", "",
			"mesh.yaml:6: services[0].outlierDetection.consecutiveFailures: 0 is out of range 1..65535"},
		{"ejection time not a duration", "  outlierDetection:\n    baseEjectionTime: 30\n", "",
			`mesh.yaml:7: services[0].outlierDetection.baseEjectionTime: not a duration such as 30s: "30"`},
		{"ejection time too short", "  outlierDetection: {baseEjectionTime: 10us}\n", "",
			"mesh.yaml:6: services[0].outlierDetection.baseEjectionTime: 10µs out of range 1ms..24h"},
		{"ejection percent above 100", "  outlierDetection: {maxEjectionPercent: 101}\n", "",
			"mesh.yaml:6: services[0].outlierDetection.maxEjectionPercent: 101 is out of range 0..100"},
		{"Envoy field kmesh does not have", "  outlierDetection: {interval: 10s}\n", "",
			`mesh.yaml:6: services[0].outlierDetection: unknown field "interval"`},
		{"locality with four parts", "", "  locality: a/b/c/d\n",
			`mesh.yaml:11: workloads[0].locality: want region/zone/subzone, got "a/b/c/d"`},
		{"empty locality", "", "  locality: \"\"\n",
			`mesh.yaml:11: workloads[0].locality: want region/zone/subzone, got ""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Parse("mesh.yaml", []byte(lbFile(tc.service, tc.loc, "")), "")
			if err == nil {
				t.Fatalf("Parse succeeded with %+v, want an error containing %q", m.Services, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse error:\n%v\nwant it to contain:\n%s", err, tc.want)
			}
		})
	}
}
