//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/metrics"
)

// authorizationPolicies is Istio's AuthorizationPolicy resource.
var authorizationPolicies = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}

// applyPolicy creates an AuthorizationPolicy on the API server, as kubectl
// apply would; istiod turns it into the workload API's Authorization.
func (e *istioEnv) applyPolicy(ns, name string, spec map[string]any) {
	e.t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", e.kubeconfig)
	if err != nil {
		e.t.Fatal(err)
	}
	dc, err := dynamic.NewForConfig(rc)
	if err != nil {
		e.t.Fatal(err)
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     spec,
	}}
	if _, err := dc.Resource(authorizationPolicies).Namespace(ns).Create(e.ctx(), obj, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// TestIstioAuthz: an AuthorizationPolicy applied to the API server reaches
// kmeshd through istiod, and kmeshd checks it at connect() for pods it
// enrolled from Kubernetes (istiod's workloads name no network namespace):
// the denied pod's connect() fails at once with EACCES, another pod of the
// same node still connects, and /explain says so.
func TestIstioAuthz(t *testing.T) {
	pods := []istioPod{
		{"client-a", "node-a", "10.71.1.10", istioAppsNs, map[string]string{"app": "client"}},
		{"client-2", "node-a", "10.71.1.12", istioAppsNs, map[string]string{"app": "client"}},
		{"hello-1", "node-a", "10.71.1.11", istioAppsNs, map[string]string{"app": "hello"}},
		{"hello-2", "node-b", "10.71.2.12", istioAppsNs, map[string]string{"app": "hello"}},
	}
	m, env := newIstioMesh(t, pods)
	ka := m.startIstioKmeshd(env, "node-a")
	kb := m.startIstioKmeshd(env, "node-b")
	for _, k := range []*kmeshd{ka, kb} {
		waitHello(t, k, "10.71.1.11", "10.71.2.12")
	}
	want := map[string]string{}
	for _, p := range []string{"client-a", "client-2", "hello-1"} {
		want[istioAppsNs+"/"+p] = m.pods[p].NetnsPath
	}
	ka.waitDump(t, "pods matched to workloads", 30*time.Second, func(d dumpView) string {
		if !mapsEqual(d.EnrolledWorkloads, want) {
			return fmt.Sprintf("enrolled workloads %v, want %v", d.EnrolledWorkloads, want)
		}
		return ""
	})
	// Before the policy, both clients reach the service.
	for _, c := range []string{"client-a", "client-2"} {
		checkOnly(t, m.get(c, "--url", istioHelloURL, "--count", "20"), "hello-1", "hello-2")
	}

	env.applyPolicy(istioAppsNs, "deny-client-a", map[string]any{
		"selector": map[string]any{"matchLabels": map[string]any{"app": "hello"}},
		"action":   "DENY",
		"rules":    []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"ipBlocks": []any{"10.71.1.10/32"}}}}}},
	})
	for _, k := range []*kmeshd{ka, kb} {
		k.waitDump(t, "policy from istiod", 30*time.Second, func(d dumpView) string {
			for _, p := range d.Policies {
				if p.Namespace == istioAppsNs && p.Name == "deny-client-a" {
					return ""
				}
			}
			return "no policy apps/deny-client-a"
		})
	}

	for _, u := range []string{istioHelloURL, "http://10.71.2.12:8080/"} {
		rs, took := m.getTimed("client-a", "--url", u, "--count", "1", "--timeout", "5s")
		if len(rs) != 1 || !strings.Contains(rs[0].Error, "connect: permission denied") {
			t.Fatalf("client-a to %s: %+v, want connect: permission denied (EACCES) at once, not the destination's SYN drop", u, rs)
		}
		if took > 2*time.Second {
			t.Fatalf("client-a to %s: failed after %v, not at once", u, took)
		}
	}
	if got := metricSum(t, ka.metrics, metrics.AuthzDecisions, map[string]string{
		"policy": istioAppsNs + "/deny-client-a", "action": "DENY", "decision": metrics.DecisionDeny, "reporter": metrics.ReporterSource}); got < 2 {
		t.Fatalf("source-side denials by apps/deny-client-a on node-a: %v, want at least 2", got)
	}
	rs := m.get("client-2", "--url", istioHelloURL, "--count", "20")
	checkOnly(t, rs, "hello-1", "hello-2")

	explain := func(source string) api.Explanation {
		t.Helper()
		code, body := httpGet(t, "http://"+ka.admin+"/explain?source="+source+"&destination="+url.QueryEscape(istioClusterIP+":80"))
		if code != 200 {
			t.Fatalf("/explain %s: %d %s", source, code, body)
		}
		var e api.Explanation
		if err := json.Unmarshal([]byte(body), &e); err != nil {
			t.Fatal(err)
		}
		return e
	}
	if e := explain(istioAppsNs + "/client-a"); !e.Source.Enrolled || !strings.HasPrefix(e.Result, "denied: policies deny every eligible endpoint") {
		t.Fatalf("/explain from client-a: source %+v, result %q", e.Source, e.Result)
	}
	if e := explain(istioAppsNs + "/client-2"); !e.Source.Enrolled || !strings.HasPrefix(e.Result, "balanced") {
		t.Fatalf("/explain from client-2: source %+v, result %q", e.Source, e.Result)
	}
}
