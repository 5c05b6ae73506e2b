package dataplane

import (
	"errors"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/internal/authz/authztest"
	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/model"
)

// policyMesh is the authz test mesh with n ALLOW policies in namespace
// default, each from one principal on one port.
func policyMesh(n int) *model.Mesh {
	c := authztest.Case{}
	m := c.Mesh()
	for i := range n {
		m.Policies = append(m.Policies, model.Policy{
			Name: "p" + string(rune('a'+i)), Namespace: "default", Scope: model.ScopeNamespace, Action: model.ActionAllow,
			Rules: []model.PolicyRule{{Clauses: []model.PolicyClause{{Matches: []model.PolicyMatch{{
				Principals:       []model.StringMatch{{Kind: model.MatchExact, Value: "cluster.local/ns/default/sa/client"}},
				DestinationPorts: []uint16{8080},
			}}}}}},
		})
	}
	return m
}

func TestDataplane_AuthzDump(t *testing.T) {
	maps := newMaps(t, bpf.DefaultLimits)
	d, err := New(maps, bpf.DefaultLimits, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(policyMesh(1)); err != nil {
		t.Fatal(err)
	}
	got := dump(t, maps)
	for _, want := range []string{
		"authz_policy 1 action=allow gen=0 matches=1",
		"authz_list 1[0] policy=1",
		"authz_match policy=1 gen=0 index=0 next_rule=1 flags=clause_start,clause_end,rule_end,identity,port",
		"authz_val policy=1 gen=0 index=0 port=8080 label=1",
		"authz_addr 10.1.1.11 identity=",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("dump lacks %q:\n%s", want, got)
		}
	}
	// The policy changes: its other generation is written, then flipped.
	m := policyMesh(1)
	m.Policies[0].Rules[0].Clauses[0].Matches[0].DestinationPorts = []uint16{9090}
	if err := d.Apply(m); err != nil {
		t.Fatal(err)
	}
	got = dump(t, maps)
	if !strings.Contains(got, "authz_policy 1 action=allow gen=1 matches=1") || !strings.Contains(got, "port=9090") || strings.Contains(got, "gen=0") {
		t.Errorf("after a change, want generation 1 alone:\n%s", got)
	}
}

func TestDataplane_AuthzFullMapNamesFlag(t *testing.T) {
	for _, tc := range []struct {
		limit func(*bpf.Limits)
		want  string
	}{
		{func(l *bpf.Limits) { l.Policies = 1 }, "km_authz_pol needs 2 entries for this config, it holds 1 (raise --max-policies)"},
		{func(l *bpf.Limits) { l.PolicyMatches = 1 }, "km_authz_match needs 2 entries for this config, it holds 1 (raise --max-policy-matches)"},
		{func(l *bpf.Limits) { l.PolicyValues = 3 }, "(raise --max-policy-values)"},
		{func(l *bpf.Limits) { l.WorkloadAddresses = 4 }, "(raise --max-workload-addresses)"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			limits := bpf.DefaultLimits
			tc.limit(&limits)
			maps := newMaps(t, limits)
			d, err := New(maps, limits, discard)
			if err != nil {
				t.Fatal(err)
			}
			err = d.Apply(policyMesh(2))
			if !errors.Is(err, ErrMapFull) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Apply = %v, want ErrMapFull with %q", err, tc.want)
			}
			if got := dump(t, maps); got != "" {
				t.Fatalf("a refused config wrote:\n%s", got)
			}
		})
	}
}

// TestDataplane_AuthzIdentityNode: with a CA, only this node's workload
// addresses stand for an identity; another node's are sources without one
// (its plaintext connections have no principal).
func TestDataplane_AuthzIdentityNode(t *testing.T) {
	maps := newMaps(t, bpf.DefaultLimits)
	d, err := New(maps, bpf.DefaultLimits, discard)
	if err != nil {
		t.Fatal(err)
	}
	m := policyMesh(1)
	for i := range m.Workloads {
		if m.Workloads[i].Name == "hello-2" {
			m.Workloads[i].Node = "node-b"
		}
	}
	if err := d.Apply(m); err != nil {
		t.Fatal(err)
	}
	zero := "identity=0x0000000000000000"
	got := dump(t, maps)
	if strings.Contains(got, "authz_addr 10.1.2.12 "+zero) {
		t.Fatalf("without a CA, another node's address lost its identity:\n%s", got)
	}
	d.SetIdentityNode("node-a")
	if err := d.Apply(m); err != nil {
		t.Fatal(err)
	}
	got = dump(t, maps)
	for _, line := range strings.Split(got, "\n") {
		if !strings.HasPrefix(line, "authz_addr ") {
			continue
		}
		remote := strings.HasPrefix(line, "authz_addr 10.1.2.12 ") || strings.HasPrefix(line, "authz_addr fd00:1:2::12 ")
		if remote != strings.Contains(line, zero) {
			t.Errorf("node-a's view: %s (remote %v)", line, remote)
		}
	}
}
