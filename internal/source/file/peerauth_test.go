package file

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/internal/authz"
	"github.com/kmesh-go/kmesh/internal/model"
)

const peerAuthWorkloads = `workloads:
- name: hello-1
  labels: {app: hello}
  node: node-a
- name: hello-2
  labels: {app: hello, track: canary}
  node: node-a
- name: db
  namespace: prod
  labels: {app: db}
  node: node-a
- name: web
  namespace: web
  labels: {app: web}
  node: node-a
peerAuthentications:
`

func pa(ns, name, body string) string {
	return "- apiVersion: security.istio.io/v1\n  kind: PeerAuthentication\n  metadata: {name: " + name + ", namespace: " + ns + "}\n  spec:\n" + body
}

// TestParse_PeerAuthentications: the mode of each workload follows Istio's
// precedence, and becomes the policies istiod would send ztunnel.
func TestParse_PeerAuthentications(t *testing.T) {
	data := peerAuthWorkloads +
		pa("istio-system", "mesh", "    mtls: {mode: STRICT}\n") +
		pa("prod", "prod", "    mtls: {mode: PERMISSIVE}\n") +
		pa("default", "canary", "    selector: {matchLabels: {track: canary}}\n    mtls: {mode: STRICT}\n    portLevelMtls:\n      9090: {mode: PERMISSIVE}\n") +
		pa("web", "web-metrics", "    selector: {matchLabels: {app: web}}\n    mtls: {mode: UNSET}\n    portLevelMtls: {15020: {mode: DISABLE}}\n")
	m, err := Parse("mesh.yaml", []byte(data), "")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	lists := map[string][]string{}
	for _, w := range m.Workloads {
		lists[w.Key()] = w.Policies
	}
	static := "istio-system/istio_converted_static_strict"
	want := map[string][]string{
		"default/hello-1": {static},                                          // mesh-wide STRICT
		"default/hello-2": {"default/converted_peer_authentication_canary"},  // STRICT but 9090
		"prod/db":         nil,                                               // namespace PERMISSIVE
		"web/web":         {"web/converted_peer_authentication_web-metrics"}, // inherits STRICT, 15020 plaintext
	}
	for k, v := range want {
		if !slices.Equal(lists[k], v) {
			t.Errorf("%s lists %v, want %v", k, lists[k], v)
		}
	}
	pols := map[string]*model.Policy{}
	for i := range m.Policies {
		pols[m.Policies[i].Key()] = &m.Policies[i]
	}
	if len(pols) != 3 {
		t.Fatalf("policies %v, want 3", pols)
	}
	// What the policies decide, for a connection with and without a
	// principal (tunnelled or same node, versus plaintext from elsewhere).
	client := &authz.Identity{Namespace: "default", ServiceAccount: "client"}
	for _, tc := range []struct {
		policy string
		port   uint16
		id     *authz.Identity
		denied bool
	}{
		{static, 8080, nil, true},
		{static, 8080, client, false},
		{"default/converted_peer_authentication_canary", 8080, nil, true},
		{"default/converted_peer_authentication_canary", 9090, nil, false},
		{"default/converted_peer_authentication_canary", 8080, client, false},
		{"web/converted_peer_authentication_web-metrics", 15020, nil, false},
		{"web/converted_peer_authentication_web-metrics", 8080, nil, true},
	} {
		p := pols[tc.policy]
		if p == nil || p.Action != model.ActionDeny {
			t.Fatalf("%s: %+v", tc.policy, p)
		}
		if got := authz.Matches(p, authzConn(tc.port, tc.id)); got != tc.denied {
			t.Errorf("%s port %d principal %v: denies %v, want %v", tc.policy, tc.port, tc.id, got, tc.denied)
		}
	}
}

func authzConn(port uint16, id *authz.Identity) authz.Conn {
	c := authz.Conn{Identity: id}
	c.Dst = netip.AddrPortFrom(netip.MustParseAddr("10.1.1.11"), port)
	c.Src = c.Dst.Addr()
	return c
}

func TestParse_BadPeerAuthentications(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"mode", pa("default", "a", "    mtls: {mode: strict}\n"), `mesh.yaml:21: peerAuthentications[0].spec.mtls.mode: unknown mode "strict" (want UNSET, DISABLE, PERMISSIVE or STRICT)`},
		{"kind", "- apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  metadata: {name: a}\n", `mesh.yaml:18: peerAuthentications[0].kind: "AuthorizationPolicy": only PeerAuthentication objects belong here`},
		{"port without selector", pa("default", "a", "    portLevelMtls: {8080: {mode: STRICT}}\n"), "mesh.yaml:21: peerAuthentications[0].spec.portLevelMtls: needs spec.selector"},
		{"bad port", pa("default", "a", "    selector: {matchLabels: {app: hello}}\n    portLevelMtls: {http: {mode: STRICT}}\n"), `mesh.yaml:22: peerAuthentications[0].spec.portLevelMtls: "http" is not a port`},
		{"unknown field", pa("default", "a", "    mtl: {mode: STRICT}\n"), `mesh.yaml:21: peerAuthentications[0].spec: unknown field "mtl"`},
		{"twice", pa("default", "a", "    mtls: {mode: STRICT}\n") + pa("default", "a", "    mtls: {mode: STRICT}\n"),
			"mesh.yaml:24: peerAuthentications[1].metadata.name: peer authentication default/a is defined twice (first at peerAuthentications[0], line 19)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("mesh.yaml", []byte(peerAuthWorkloads+tc.yaml), "")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse = %v\nwant an error containing %q", err, tc.want)
			}
		})
	}
}
