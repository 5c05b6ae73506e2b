//go:build e2e

package e2e

import (
	"strings"
	"testing"
)

// TestHBONE_OutlierDetectionSeesTunnelledFailures: the client's connect to
// an endpoint on another node goes to the local tunnel and always
// succeeds there, so outlier detection must learn the endpoint's health
// from the tunnel's HBONE connect. hello-4 on node-b is in the service but
// nothing listens in it: its peer tunnel answers 503, the tunnel resets
// the client and credits the failure, and after consecutiveFailures of
// them hello-4 is ejected and every request succeeds.
func TestHBONE_OutlierDetectionSeesTunnelledFailures(t *testing.T) {
	m := newMesh(t)
	m.addPod("node-b", "hello-4", "10.1.2.14", "fd00:1:2::14")
	workloads := append(append([]workloadSpec{}, helloWorkloads...),
		workloadSpec{"hello-4", "hello", "node-b", []string{"10.1.2.14", "fd00:1:2::14"}, 1})
	cfg := strings.Replace(m.config("random", workloads), "  loadBalancing: {mode: random}\n",
		"  loadBalancing: {mode: random}\n  outlierDetection: {consecutiveFailures: 2, baseEjectionTime: 5m, maxEjectionPercent: 50}\n", 1)
	h := startHBONE(m, map[string]string{"node-a": cfg, "node-b": cfg})

	rs := h.get("client", "--url", "http://10.96.0.10/", "--count", "60", "--timeout", "2s")
	fails := failures(rs)
	if fails > 2 {
		t.Fatalf("%d of 60 requests failed, want at most 2 before hello-4 is ejected: %v", fails, counts(rs))
	}
	rs = h.get("client", "--url", "http://10.96.0.10/", "--count", "40", "--timeout", "2s")
	checkOnly(t, rs, "hello-1", "hello-2", "hello-3")

	ka := h.kmeshd["node-a"]
	for _, ep := range explain(t, ka).Endpoints {
		if (ep.Workload == "default/hello-4") != strings.HasPrefix(ep.Ejected, "ejected by outlier detection") {
			t.Fatalf("/explain endpoint %s: ejected %q", ep.Workload, ep.Ejected)
		}
	}
	if n := metricSum(t, ka.metrics, "kmesh_outlier_ejections_total", map[string]string{"service": "default/hello"}); n != 1 {
		t.Fatalf("kmesh_outlier_ejections_total = %v, want 1", n)
	}
}
