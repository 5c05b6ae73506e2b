package waypoint

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/internal/model"
)

// requestCounts reads istio_requests_total from the proxy's registry as
// "code/flags/destination_workload/destination_version" -> count.
func requestCounts(t *testing.T, p *Proxy) map[string]float64 {
	t.Helper()
	mfs, err := p.opts.Metrics.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != RequestsTotal {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			k := strings.Join([]string{l["response_code"], l["response_flags"], l["destination_workload"], l["destination_version"]}, "/")
			out[k] += m.GetCounter().GetValue()
		}
	}
	return out
}

func keys(m map[string]float64) string {
	var s []string
	for k, v := range m {
		s = append(s, fmt.Sprintf("%s=%v", k, v))
	}
	sort.Strings(s)
	return strings.Join(s, " ")
}

// Requests on one keep-alive connection with different outcomes are each
// counted under their own labels (the connection keeps its last request's
// series, which must not stick to the next one), and a config change
// relabels the next request on the same connection.
func TestProxy_MetricsPerRequestOnOneConnection(t *testing.T) {
	b := newBed(t)
	b.workload("v1", 8080, map[string]string{"app": "v1", "version": "one"}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok"))
	}))
	b.service("web", "10.96.0.1", 8080, "v1", true)
	b.mesh.WaypointPolicies = []model.L7Policy{{Name: "deny-admin", Namespace: "default", Action: model.ActionDeny,
		TargetRefs: []model.ParentRef{{Kind: "Service", Name: "web"}},
		Rules:      []model.L7Rule{{To: []model.L7Operation{{Paths: []string{"/admin"}}}}}}}
	b.start()
	c := b.client("10.96.0.1", false)
	for _, path := range []string{"/", "/fail", "/", "/admin", "/", "/"} {
		get(t, c, "http://web"+path)
	}
	want := map[string]float64{"200/-/v1/one": 4, "503/-/v1/one": 1, "403/-/unknown/unknown": 1}
	if got := requestCounts(t, b.proxy); keys(got) != keys(want) {
		t.Fatalf("istio_requests_total by code/flags/workload/version:\n got %s\nwant %s", keys(got), keys(want))
	}

	b.mesh.Workloads[1].Labels["version"] = "two"
	if err := b.proxy.Update(b.mesh); err != nil {
		t.Fatal(err)
	}
	get(t, c, "http://web/")
	want["200/-/v1/two"] = 1
	if got := requestCounts(t, b.proxy); keys(got) != keys(want) {
		t.Fatalf("after the version label changed:\n got %s\nwant %s", keys(got), keys(want))
	}
}
