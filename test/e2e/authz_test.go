//go:build e2e

package e2e

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/metrics"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// authzConfig renders the hello mesh with a service account per workload
// (client runs as "client", the hello pods as "hello") and the given
// authorizationPolicies items.
func authzConfig(m *mesh, policies string) string {
	cfg := m.config("random", helloWorkloads)
	for _, w := range helloWorkloads {
		cfg = strings.Replace(cfg, "- name: "+w.name+"\n", "- name: "+w.name+"\n  serviceAccount: "+w.app+"\n", 1)
	}
	if policies != "" {
		cfg += "authorizationPolicies:\n" + policies
	}
	return cfg
}

const (
	// Only client may reach the hello pods.
	allowClientOnly = `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: hello-from-client, namespace: default}
  spec:
    selector: {matchLabels: {app: hello}}
    action: ALLOW
    rules:
    - from:
      - source: {principals: ["cluster.local/ns/default/sa/client"]}
`
	// client may not reach the hello pods on their port.
	denyClient = `- apiVersion: security.istio.io/v1beta1
  kind: AuthorizationPolicy
  metadata: {name: deny-client, namespace: default}
  spec:
    selector: {matchLabels: {app: hello}}
    action: DENY
    rules:
    - from:
      - source: {principals: ["cluster.local/ns/default/sa/client"]}
      to:
      - operation: {ports: ["8080"]}
`
)

// getTimed is get, with the wall time the whole run took.
func (m *mesh) getTimed(pod string, args ...string) ([]result, time.Duration) {
	start := time.Now()
	rs := m.get(pod, args...)
	return rs, time.Since(start)
}

// TestAuthz enforces AuthorizationPolicies from the config file on two
// nodes: a denied mesh client's connect() fails at once with EACCES, a
// denied client outside the mesh on another node never completes a
// handshake, allowed clients work, and every policy change (a rewrite of
// the file) applies to the next connection.
func TestAuthz(t *testing.T) {
	m := newMesh(t)
	// Outside the mesh, on the node without hello-1.
	m.addPod("node-b", "outsider-b", "10.1.2.20", "fd00:1:2::20")
	ctl, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshctl")
	if err != nil {
		t.Fatal(err)
	}
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, authzConfig(m, allowClientOnly))
	ka := m.startKmeshd("node-a", cfg)
	kb := m.startKmeshd("node-b", cfg)
	version := uint64(1)
	rewrite := func(policies string) {
		t.Helper()
		m.writeConfig(cfg, authzConfig(m, policies))
		version++
		ka.waitVersion(t, version)
		kb.waitVersion(t, version)
	}

	t.Run("allowed_client_works", func(t *testing.T) {
		for _, u := range []string{"http://10.96.0.10/", "http://[fd00:96::10]/"} {
			rs := m.get("client", "--url", u, "--count", "30")
			checkOnly(t, rs, allHello...)
			if c := counts(rs); len(c) != 3 {
				t.Fatalf("%s: answers %v, want all of %v", u, c, allHello)
			}
		}
		// Allowed at connect on client's node, and again on the SYN at
		// each server's node.
		allowed := map[string]string{"policy": "default/hello-from-client", "action": "ALLOW", "decision": metrics.DecisionAllow}
		src := metricSum(t, ka.metrics, metrics.AuthzDecisions, withLabel(allowed, "reporter", metrics.ReporterSource))
		dst := metricSum(t, ka.metrics, metrics.AuthzDecisions, withLabel(allowed, "reporter", metrics.ReporterDestination)) +
			metricSum(t, kb.metrics, metrics.AuthzDecisions, withLabel(allowed, "reporter", metrics.ReporterDestination))
		if src != 60 || dst != 60 {
			t.Fatalf("connections allowed by default/hello-from-client: %v at the source, %v at the destinations; want 60 and 60", src, dst)
		}
	})

	t.Run("denied_outsider_on_another_node_never_connects", func(t *testing.T) {
		before := metricSum(t, ka.metrics, metrics.AuthzDecisions, map[string]string{
			"policy": metrics.NoPolicy, "decision": metrics.DecisionDeny, "reporter": metrics.ReporterDestination})
		for _, u := range []string{"http://10.1.1.11:8080/", "http://[fd00:1:1::11]:8080/"} {
			rs, took := m.getTimed("outsider-b", "--url", u, "--count", "1", "--timeout", "2s")
			if len(rs) != 1 || !strings.Contains(rs[0].Error, "Timeout") && !strings.Contains(rs[0].Error, "timeout") {
				t.Fatalf("%s from outside the mesh: %+v, want a timeout (no SYN-ACK, no reset)", u, rs)
			}
			if took < 2*time.Second {
				t.Fatalf("%s: failed after %v, before the 2s timeout: the handshake was refused, not ignored", u, took)
			}
		}
		// hello-1's node dropped the SYNs: counted, and no connection ever
		// reached the server.
		if got := metricSum(t, ka.metrics, metrics.AuthzDecisions, map[string]string{
			"policy": metrics.NoPolicy, "decision": metrics.DecisionDeny, "reporter": metrics.ReporterDestination}); got < before+2 {
			t.Fatalf("destination-side denials %v, want at least %v", got, before+2)
		}
		if n := metricSum(t, ka.metrics, metrics.TCPConnectionsOpened, map[string]string{
			"reporter": metrics.ReporterDestination, "source_workload": metrics.Unknown}); n != 0 {
			t.Fatalf("%v connections from outside the mesh opened at hello-1", n)
		}
		// On its own node too: hello-2's node drops the SYN.
		rs := m.get("outsider-b", "--url", "http://10.1.2.12:8080/", "--count", "1", "--timeout", "2s")
		if !strings.Contains(rs[0].Error, "imeout") {
			t.Fatalf("outsider to hello-2 on its own node: %+v, want a timeout", rs[0])
		}
	})

	t.Run("allowed_outsider_after_change_connects", func(t *testing.T) {
		rewrite(allowClientOnly + `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: hello-from-node-b-pods, namespace: default}
  spec:
    selector: {matchLabels: {app: hello}}
    rules:
    - from:
      - source: {ipBlocks: ["10.1.2.0/24", "fd00:1:2::/64"]}
`)
		for _, u := range []string{"http://10.1.1.11:8080/", "http://[fd00:1:1::11]:8080/"} {
			rs := m.get("outsider-b", "--url", u, "--count", "1", "--timeout", "5s")
			if rs[0].Error != "" || rs[0].Pod != "hello-1" {
				t.Fatalf("%s after the ipBlocks policy: %+v, want hello-1's answer", u, rs[0])
			}
		}
	})

	t.Run("denied_mesh_client_fails_at_once_with_eacces", func(t *testing.T) {
		rewrite(denyClient)
		for _, u := range []string{"http://10.96.0.10/", "http://[fd00:96::10]/", "http://10.1.2.13:8080/"} {
			rs, took := m.getTimed("client", "--url", u, "--count", "1", "--timeout", "5s")
			if len(rs) != 1 || !strings.Contains(rs[0].Error, "connect: permission denied") {
				t.Fatalf("%s: %+v, want connect: permission denied (EACCES)", u, rs)
			}
			// A process start and one connect: far below the timeout.
			if took > 2*time.Second {
				t.Fatalf("%s: failed after %v, not at once", u, took)
			}
		}
		if got := metricSum(t, ka.metrics, metrics.AuthzDecisions, map[string]string{
			"policy": "default/deny-client", "action": "DENY", "decision": metrics.DecisionDeny, "reporter": metrics.ReporterSource}); got < 3 {
			t.Fatalf("client-side denials by default/deny-client: %v, want at least 3", got)
		}
		// Another workload of the mesh still gets through.
		rs := m.get("hello-1", "--url", "http://10.1.2.12:8080/", "--count", "1")
		if rs[0].Error != "" {
			t.Fatalf("hello-1 to hello-2 under a policy that denies only client: %+v", rs[0])
		}
	})

	t.Run("kmeshctl_and_explain_show_policies", func(t *testing.T) {
		out, err := execOutput(ctl, "get", "policies", "--admin-address", ka.admin)
		if err != nil || !strings.Contains(out, "deny-client") || !strings.Contains(out, "deny") {
			t.Fatalf("kmeshctl get policies: %v\n%s", err, out)
		}
		code, body := httpGet(t, "http://"+ka.admin+"/explain?source=client&destination="+url.QueryEscape("10.96.0.10:80"))
		if code != 200 {
			t.Fatalf("/explain: %d %s", code, body)
		}
		var e api.Explanation
		if err := json.Unmarshal([]byte(body), &e); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(e.Result, "denied: policies deny every eligible endpoint") {
			t.Fatalf("/explain result %q", e.Result)
		}
		for _, ep := range e.Endpoints {
			if ep.Policy != "denied by DENY policy default/deny-client" {
				t.Fatalf("/explain endpoint %s: policy %q", ep.Workload, ep.Policy)
			}
		}
	})

	t.Run("removed_policies_restore_access", func(t *testing.T) {
		rewrite("")
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "30")
		checkOnly(t, rs, allHello...)
		rs = m.get("outsider-b", "--url", "http://10.1.1.11:8080/", "--count", "1", "--timeout", "5s")
		if rs[0].Error != "" {
			t.Fatalf("outsider after the policies went: %+v", rs[0])
		}
		code, body := httpGet(t, "http://"+ka.admin+"/maps")
		if code != 200 || strings.Contains(body, "authz_") {
			t.Fatalf("/maps after the policies went still holds authorization entries:\n%s", body)
		}
	})
}

func withLabel(labels map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for lk, lv := range labels {
		out[lk] = lv
	}
	return out
}
