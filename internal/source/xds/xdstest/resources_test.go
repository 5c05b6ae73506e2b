package xdstest

import (
	"strings"
	"testing"

	"istio.io/istio/pkg/workloadapi"
)

// A workload names its services by namespace/name; the key in its Address
// must be the service's resource name, or the service gets no endpoint.
func TestWorkloadAddress_NamesTheService(t *testing.T) {
	name, _ := Service("default", "svc-13", []string{"10.96.0.14"}, Port{Service: 80, Target: 8080})
	_, a := Workload{Namespace: "default", Name: "ep-1", IPs: []string{"10.128.0.1"},
		Services: map[string][]Port{"default/svc-13": {{Service: 80, Target: 8080}}}}.Address()
	w := a.GetType().(*workloadapi.Address_Workload).Workload
	if _, ok := w.Services[name]; !ok || len(w.Services) != 1 {
		t.Fatalf("workload's services %v, want only the service's resource name %q", w.Services, name)
	}
}

func TestWorkloadAddress_RefusesAHostname(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "not a hostname") {
			t.Fatalf("recovered %v, want a panic naming the hostname", r)
		}
	}()
	Workload{Namespace: "default", Name: "ep-1", IPs: []string{"10.128.0.1"},
		Services: map[string][]Port{"default/" + Hostname("default", "svc-13"): {{Service: 80, Target: 8080}}}}.Address()
}
