package model

import (
	"net/netip"
	"strings"
	"testing"
)

func TestState_CheckNamesWhatIsWrong(t *testing.T) {
	w := func(name string, policies ...string) *Workload {
		return &Workload{Name: name, Namespace: "default", Weight: 1, Addresses: []netip.Addr{netip.MustParseAddr("10.1.1.1")}, Policies: policies}
	}
	svc := func(name, vip string, eps ...string) *Service {
		s := &Service{Name: name, Namespace: "default", LBMode: LBRandom, Addresses: []netip.Addr{netip.MustParseAddr(vip)},
			Ports: []ServicePort{{Port: 80, TargetPort: 8080, Protocol: ProtocolTCP}}}
		for _, e := range eps {
			s.Endpoints = append(s.Endpoints, Endpoint{Workload: "default/" + e})
		}
		return s
	}
	pol := &Policy{Name: "p", Namespace: "default", Scope: ScopeWorkloadSelector, Action: ActionAllow}
	st := NewState()
	base := &Changes{Workloads: []*Workload{w("a"), w("b")}, Services: []*Service{svc("s", "10.96.0.1", "a")}}
	if err := st.Check(base); err != nil {
		t.Fatal(err)
	}
	st.Apply(base)
	for _, tt := range []struct {
		name string
		c    *Changes
		want string // "" = applies
	}{
		{"policy and the workload naming it together", &Changes{Policies: []*Policy{pol}, Workloads: []*Workload{w("a", "default/p")}}, ""},
		{"workload names a missing policy", &Changes{Workloads: []*Workload{w("a", "default/q")}}, "workload default/a: policy default/q does not exist"},
		{"removed workload still an endpoint", &Changes{RemovedWorkloads: []string{"default/a"}}, "service default/s: endpoint workload default/a does not exist"},
		{"endpoint leaves with its workload", &Changes{RemovedWorkloads: []string{"default/a"}, Services: []*Service{svc("s", "10.96.0.1")}}, ""},
		{"address taken by another service", &Changes{Services: []*Service{svc("t", "10.96.0.1")}}, "service default/t: address 10.96.0.1:80 is already used by service default/s"},
		{"address moves to another service", &Changes{Services: []*Service{svc("t", "10.96.0.1"), svc("s", "10.96.0.2", "a")}}, ""},
		{"bad weight", &Changes{Workloads: []*Workload{{Name: "c", Namespace: "default", Weight: 0}}}, "workload default/c: weight 0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := st.Check(tt.c)
			if tt.want == "" && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
	// Apply and its undo give back the state.
	before := st.Mesh()
	undo := st.Apply(&Changes{RemovedWorkloads: []string{"default/a"}, Services: []*Service{svc("s", "10.96.0.3", "b")}})
	st.Apply(undo)
	if d := st.DiffMesh(before); !d.Empty() {
		t.Fatalf("undo left %s", d)
	}
}

// Sort compares namespace and name without building keys; the order must
// be the keys' order, also where one namespace is a prefix of another.
func TestMesh_SortOrdersByKey(t *testing.T) {
	m := &Mesh{}
	for _, ns := range []string{"a", "ab", "a-b", "b", "a.b", "aa"} {
		for _, name := range []string{"x", "a", "x-1", "0"} {
			m.Services = append(m.Services, Service{Namespace: ns, Name: name})
			m.Workloads = append(m.Workloads, Workload{Namespace: ns, Name: name})
		}
	}
	m.Sort()
	for i := 1; i < len(m.Services); i++ {
		if m.Services[i-1].Key() >= m.Services[i].Key() {
			t.Errorf("service %s before %s", m.Services[i-1].Key(), m.Services[i].Key())
		}
		if m.Workloads[i-1].Key() >= m.Workloads[i].Key() {
			t.Errorf("workload %s before %s", m.Workloads[i-1].Key(), m.Workloads[i].Key())
		}
	}
}
