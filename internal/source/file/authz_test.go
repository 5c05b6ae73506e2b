package file

import (
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/internal/model"
)

const policyWorkloads = `workloads:
- name: hello-1
  labels: {app: hello}
  node: node-a
  serviceAccount: hello
- name: hello-2
  labels: {app: hello, track: canary}
  node: node-a
- name: db
  namespace: prod
  labels: {app: hello}
  node: node-a
authorizationPolicies:
`

func TestParse_AuthorizationPolicies(t *testing.T) {
	data := policyWorkloads + `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata:
    name: allow-client
    namespace: default
    labels: {team: web}
  spec:
    selector:
      matchLabels: {app: hello}
    action: ALLOW
    rules:
    - from:
      - source:
          principals: ["cluster.local/ns/default/sa/client", "*/sa/admin"]
          notNamespaces: ["test*"]
      - source:
          ipBlocks: ["10.1.0.0/16", "fd00:1::5"]
          notIpBlocks: ["10.1.2.3/24"]
      to:
      - operation:
          ports: ["8080", 9090]
      when:
      - key: destination.ip
        notValues: ["10.1.1.99"]
- apiVersion: security.istio.io/v1beta1
  kind: AuthorizationPolicy
  metadata:
    name: deny-legacy
    namespace: prod
    annotations: {istio.io/dry-run: "true"}
  spec:
    action: DENY
    rules:
    - from:
      - source:
          serviceAccounts: [legacy, other/old]
          notServiceAccounts: [prod/keep]
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: mesh-wide, namespace: istio-system}
  spec:
    action: AUDIT
    rules: [{}]
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: canary, namespace: istio-system}
  spec:
    selector: {matchLabels: {track: canary}}
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: allow-nothing}
  spec: {}
`
	m, err := Parse("mesh.yaml", []byte(data), "")
	if err != nil {
		t.Fatal(err)
	}
	pfx := func(s string) netip.Prefix { return netip.MustParsePrefix(s) }
	want := []model.Policy{{
		Name: "allow-client", Namespace: "default", Scope: model.ScopeWorkloadSelector, Action: model.ActionAllow,
		Rules: []model.PolicyRule{{Clauses: []model.PolicyClause{
			{Matches: []model.PolicyMatch{{DestinationPorts: []uint16{8080, 9090}}}},
			{Matches: []model.PolicyMatch{
				{
					Principals:    []model.StringMatch{{Kind: model.MatchExact, Value: "cluster.local/ns/default/sa/client"}, {Kind: model.MatchSuffix, Value: "/sa/admin"}},
					NotNamespaces: []model.StringMatch{{Kind: model.MatchPrefix, Value: "test"}},
				},
				{SourceIPs: []netip.Prefix{pfx("10.1.0.0/16"), pfx("fd00:1::5/128")}, NotSourceIPs: []netip.Prefix{pfx("10.1.2.0/24")}},
			}},
			{Matches: []model.PolicyMatch{{NotDestinationIPs: []netip.Prefix{pfx("10.1.1.99/32")}}}},
		}}},
	}, {
		Name: "deny-legacy", Namespace: "prod", Scope: model.ScopeNamespace, Action: model.ActionDeny, DryRun: true,
		Rules: []model.PolicyRule{{Clauses: []model.PolicyClause{{Matches: []model.PolicyMatch{{
			ServiceAccounts:    []model.ServiceAccountMatch{{Namespace: "prod", Name: "legacy"}, {Namespace: "other", Name: "old"}},
			NotServiceAccounts: []model.ServiceAccountMatch{{Namespace: "prod", Name: "keep"}},
		}}}}}},
	}, {
		Name: "mesh-wide", Namespace: "istio-system", Scope: model.ScopeGlobal, Action: model.ActionAudit,
		Rules: []model.PolicyRule{{}},
	}, {
		Name: "canary", Namespace: "istio-system", Scope: model.ScopeWorkloadSelector, Action: model.ActionAllow,
	}, {
		Name: "allow-nothing", Namespace: "default", Scope: model.ScopeNamespace, Action: model.ActionAllow,
	}}
	if !reflect.DeepEqual(m.Policies, want) {
		t.Errorf("policies:\n%+v\nwant\n%+v", m.Policies, want)
	}
	selected := map[string][]string{}
	for _, w := range m.Workloads {
		selected[w.Key()] = w.Policies
	}
	wantSel := map[string][]string{
		"default/hello-1": {"default/allow-client"},
		"default/hello-2": {"default/allow-client", "istio-system/canary"},
		"prod/db":         nil, // app=hello, but allow-client is of namespace default
	}
	if !reflect.DeepEqual(selected, wantSel) {
		t.Errorf("selected policies %v, want %v", selected, wantSel)
	}
	if m.Workloads[0].ServiceAccount != "hello" || m.Workloads[1].ServiceAccount != "default" {
		t.Errorf("service accounts %q %q, want hello and the default", m.Workloads[0].ServiceAccount, m.Workloads[1].ServiceAccount)
	}
}

// L7 attributes follow istiod's translation for ztunnel: left out and
// named; a match or condition with nothing else drops its clause.
func TestParse_AuthorizationPolicyL7(t *testing.T) {
	data := policyWorkloads + `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: deny-get}
  spec:
    action: DENY
    rules:
    - to:
      - operation: {methods: [GET], ports: ["8080"]}
      from:
      - source: {requestPrincipals: ["*"]}
      - source: {namespaces: [prod]}
      when:
      - key: request.headers[x-user]
        values: [bob]
      - key: source.principal
        values: ["cluster.local/ns/prod/sa/db"]
`
	m, err := Parse("mesh.yaml", []byte(data), "")
	if err != nil {
		t.Fatal(err)
	}
	want := model.PolicyRule{
		Clauses: []model.PolicyClause{
			{Matches: []model.PolicyMatch{{DestinationPorts: []uint16{8080}}}},
			// from: a source with only requestPrincipals matches anyone,
			// so the clause goes.
			{Matches: []model.PolicyMatch{{Principals: []model.StringMatch{{Kind: model.MatchExact, Value: "cluster.local/ns/prod/sa/db"}}}}},
		},
		L7: []string{
			"authorizationPolicies[0].spec.rules[0].to[0].operation.methods",
			"authorizationPolicies[0].spec.rules[0].from[0].source.requestPrincipals",
			"authorizationPolicies[0].spec.rules[0].when[0] request.headers[x-user]",
		},
	}
	if got := m.Policies[0].Rules[0]; !reflect.DeepEqual(got, want) {
		t.Errorf("rule:\n%+v\nwant\n%+v", got, want)
	}
}

var badPolicyFiles = []struct {
	name, yaml, want string
}{
	{"missing apiVersion", `- kind: AuthorizationPolicy
  metadata: {name: a}
`, "mesh.yaml:14: authorizationPolicies[0].apiVersion: missing"},
	{"wrong kind", `- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: a}
`, `mesh.yaml:15: authorizationPolicies[0].kind: "PeerAuthentication": only AuthorizationPolicy`},
	{"wrong version", `- apiVersion: security.istio.io/v2
  kind: AuthorizationPolicy
  metadata: {name: a}
`, `mesh.yaml:14: authorizationPolicies[0].apiVersion: "security.istio.io/v2" is not an AuthorizationPolicy version`},
	{"custom action without a provider", `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: a}
  spec: {action: CUSTOM}
`, "authorizationPolicies[0].spec.provider: missing: a CUSTOM policy names its provider"},
	{"provider without custom", `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: a}
  spec: {action: ALLOW, provider: {name: ext}}
`, "authorizationPolicies[0].spec.provider: only a CUSTOM action takes a provider"},
	{"target refs with a selector", `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: a}
  spec:
    selector: {matchLabels: {app: x}}
    targetRefs: [{kind: Gateway, name: waypoint}]
`, "mesh.yaml:18: authorizationPolicies[0].spec.selector: cannot be set with targetRefs"},
	{"target ref of another kind", `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: a}
  spec:
    targetRefs: [{kind: Pod, name: waypoint}]
`, `mesh.yaml:18: authorizationPolicies[0].spec.targetRefs[0].kind: "Pod": only Service and Gateway are supported`},
	{"unknown source field", `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: a}
  spec:
    rules:
    - from:
      - source: {principal: [x]}
`, `mesh.yaml:20: authorizationPolicies[0].spec.rules[0].from[0].source: unknown field "principal"`},
	{"bad ip block", `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: a}
  spec:
    rules:
    - from:
      - source:
          ipBlocks: ["10.0.0.0/33"]
`, `mesh.yaml:21: authorizationPolicies[0].spec.rules[0].from[0].source.ipBlocks[0]: "10.0.0.0/33" is not an IP address or CIDR block`},
	{"bad port", `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: a}
  spec:
    rules:
    - to:
      - operation: {ports: ["http"]}
`, `mesh.yaml:20: authorizationPolicies[0].spec.rules[0].to[0].operation.ports[0]: "http" is not a port`},
	{"empty source", `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: a}
  spec:
    rules:
    - from:
      - source: {}
`, "mesh.yaml:20: authorizationPolicies[0].spec.rules[0].from[0].source: must not be empty"},
	{"empty from", `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: a}
  spec:
    rules:
    - from: []
`, "mesh.yaml:19: authorizationPolicies[0].spec.rules[0].from: must not be empty"},
	{"unknown condition", `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: a}
  spec:
    rules:
    - when:
      - key: source.user
        values: [x]
`, `mesh.yaml:20: authorizationPolicies[0].spec.rules[0].when[0].key: unknown condition key "source.user"`},
	{"condition without values", `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: a}
  spec:
    rules:
    - when:
      - key: source.ip
`, "mesh.yaml:20: authorizationPolicies[0].spec.rules[0].when[0]: needs values or notValues"},
	{"wildcard inside", `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: a}
  spec:
    rules:
    - from:
      - source: {principals: ["cluster.local/*/sa/x"]}
`, `'*' may only start or end a value`},
	{"service accounts with principals", `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: a}
  spec:
    rules:
    - from:
      - source: {principals: [a], serviceAccounts: [b]}
`, "serviceAccounts: cannot be set with principals"},
	{"dry run value", `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata:
    name: a
    annotations: {istio.io/dry-run: "yes"}
`, `istio.io/dry-run: "yes" is not "true" or "false"`},
	{"defined twice", `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: a}
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: a}
`, "mesh.yaml:19: authorizationPolicies[1].metadata.name: policy default/a is defined twice (first at authorizationPolicies[0], line 16)"},
}

func TestParse_BadAuthorizationPolicies(t *testing.T) {
	for _, tc := range badPolicyFiles {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("mesh.yaml", []byte(policyWorkloads+tc.yaml), "")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse = %v\nwant an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParse_WorkloadServiceAccount(t *testing.T) {
	_, err := Parse("mesh.yaml", []byte("workloads:\n- name: a\n  node: n\n  serviceAccount: Bad_SA\n"), "")
	if want := `mesh.yaml:4: workloads[0].serviceAccount: "Bad_SA" is not a DNS subdomain`; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Parse = %v, want %q", err, want)
	}
}

// The example of docs/config.md parses, policy included.
func TestParse_DocsExample(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```yaml\n")
	example, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("docs/config.md has no yaml example")
	}
	m, err := Parse("config.md", []byte(example), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Policies) != 1 || len(m.Workloads[0].Policies) != 1 {
		t.Fatalf("example: policies %+v, selected by %s: %v", m.Policies, m.Workloads[0].Key(), m.Workloads[0].Policies)
	}
}

// TestParse_AcceptsWhatIstioAccepts: a CUSTOM policy (which Istio's node
// proxy ignores) is accepted and listed as not enforced, without refusing
// the file or touching the other policies; source.serviceAccount is a
// condition key like from.source.serviceAccounts.
func TestParse_AcceptsWhatIstioAccepts(t *testing.T) {
	m, err := Parse("mesh.yaml", []byte(policyWorkloads+`- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: ext-authz, namespace: default}
  spec:
    selector: {matchLabels: {app: hello}}
    action: CUSTOM
    provider: {name: my-ext-authz}
    rules:
    - to:
      - operation: {paths: ["/admin"]}
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: by-sa, namespace: default}
  spec:
    rules:
    - when:
      - key: source.serviceAccount
        values: ["client", "other/sa"]
        notValues: ["default/blocked"]
`), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(m.UnenforcedPolicies) != 1 || m.UnenforcedPolicies[0].Key() != "default/ext-authz" || m.UnenforcedPolicies[0].Action != "custom" ||
		!strings.Contains(m.UnenforcedPolicies[0].Reason, `"my-ext-authz"`) {
		t.Fatalf("unenforced %+v, want default/ext-authz (custom, naming its provider)", m.UnenforcedPolicies)
	}
	if len(m.Policies) != 1 || m.Policies[0].Key() != "default/by-sa" {
		t.Fatalf("policies %+v, want default/by-sa alone in force", m.Policies)
	}
	for _, w := range m.Workloads {
		if slices.Contains(w.Policies, "default/ext-authz") {
			t.Fatalf("workload %s lists the CUSTOM policy for enforcement", w.Key())
		}
	}
	match := m.Policies[0].Rules[0].Clauses[0].Matches[0]
	want := []model.ServiceAccountMatch{{Namespace: "default", Name: "client"}, {Namespace: "other", Name: "sa"}}
	if !slices.Equal(match.ServiceAccounts, want) || !slices.Equal(match.NotServiceAccounts, []model.ServiceAccountMatch{{Namespace: "default", Name: "blocked"}}) {
		t.Fatalf("source.serviceAccount: %+v / %+v, want %+v / default/blocked", match.ServiceAccounts, match.NotServiceAccounts, want)
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
}
