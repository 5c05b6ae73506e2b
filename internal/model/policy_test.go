package model

import (
	"net/netip"
	"strings"
	"testing"
)

func TestMesh_ValidatePolicies(t *testing.T) {
	valid := func() *Mesh {
		return &Mesh{
			Workloads: []Workload{{Name: "hello-1", Namespace: "default", Weight: 1, Policies: []string{"default/allow"}}},
			Policies: []Policy{{
				Name: "allow", Namespace: "default", Scope: ScopeWorkloadSelector, Action: ActionAllow,
				Rules: []PolicyRule{{Clauses: []PolicyClause{{Matches: []PolicyMatch{{
					Principals:       []StringMatch{{Kind: MatchPrefix, Value: "cluster.local/ns/default/"}},
					SourceIPs:        []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")},
					DestinationPorts: []uint16{8080},
				}}}}}},
			}},
		}
	}
	if err := valid().Validate(); err != nil {
		t.Fatalf("valid mesh: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(m *Mesh)
		want   string
	}{
		{"empty name", func(m *Mesh) { m.Policies[0].Name = "" }, "policy 0: name is empty"},
		{"twice", func(m *Mesh) { m.Policies = append(m.Policies, m.Policies[0]) }, "policy default/allow: defined twice"},
		{"scope", func(m *Mesh) { m.Policies[0].Scope = "cluster" }, `unknown scope "cluster"`},
		{"namespace scope needs namespace", func(m *Mesh) {
			m.Policies[0].Namespace, m.Policies[0].Scope, m.Workloads[0].Policies = "", ScopeNamespace, nil
		}, "scope namespace needs a namespace"},
		{"action", func(m *Mesh) { m.Policies[0].Action = "custom" }, `unknown action "custom"`},
		{"unmasked prefix", func(m *Mesh) {
			m.Policies[0].Rules[0].Clauses[0].Matches[0].SourceIPs[0] = netip.PrefixFrom(netip.MustParseAddr("10.1.2.3"), 16)
		}, "rule 0: clause 0: match 0: invalid address block"},
		{"port 0", func(m *Mesh) { m.Policies[0].Rules[0].Clauses[0].Matches[0].DestinationPorts[0] = 0 }, "port 0"},
		{"match kind", func(m *Mesh) { m.Policies[0].Rules[0].Clauses[0].Matches[0].Principals[0].Kind = "regex" }, `unknown string match kind "regex"`},
		{"unknown reference", func(m *Mesh) { m.Workloads[0].Policies = []string{"default/nope"} }, "workload default/hello-1: policy default/nope does not exist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := valid()
			tc.change(m)
			err := m.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}
