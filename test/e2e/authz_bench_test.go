//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// authzScenario is a set of policies around the client -> hello-1
// connection, which they all allow in the end.
type authzScenario struct {
	name       string
	applicable int // policies that apply to hello-1: applicable-1 DENY that do not match, then the ALLOW that does
	elsewhere  int // policies that apply to no workload
}

func (s authzScenario) policies() string {
	if s.applicable+s.elsewhere == 0 {
		return ""
	}
	var b strings.Builder
	item := func(name, action, selector, principal string) {
		fmt.Fprintf(&b, `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: %s, namespace: default}
  spec:
    selector: {matchLabels: {%s}}
    action: %s
    rules:
    - from:
      - source: {principals: [%q]}
`, name, selector, action, principal)
	}
	for i := range s.applicable - 1 {
		item(fmt.Sprintf("deny-%d", i), "DENY", "app: hello", fmt.Sprintf("cluster.local/ns/other-%d/sa/x", i))
	}
	for i := range s.elsewhere {
		item(fmt.Sprintf("elsewhere-%d", i), "DENY", fmt.Sprintf("app: none-%d", i), "cluster.local/ns/default/sa/client")
	}
	if s.applicable > 0 {
		item("allow-client", "ALLOW", "app: hello", "cluster.local/ns/default/sa/client")
	}
	return b.String()
}

// BenchmarkAuthzConnect measures the cost of one connection (connect() to
// close) from the client pod to hello-1 on the same node, with 0, 10 and
// 1,000 policies applying to hello-1 (all DENY that do not match, then one
// ALLOW that does: every one is evaluated, at connect on the client's side
// and again on the SYN at hello-1's), and with 1,000 policies in the mesh
// of which one applies. Scenarios alternate in each round, so all see the
// same machine; the metrics are medians.
//
//	go test -tags e2e -run '^$' -bench AuthzConnect -benchtime 1x ./test/e2e/
func BenchmarkAuthzConnect(b *testing.B) {
	m := newMesh(b)
	loop, err := testbed.Build("github.com/kmesh-go/kmesh/test/e2e/connloop")
	if err != nil {
		b.Fatal(err)
	}
	cfg := configPath(m, "mesh.yaml")
	last := authzConfig(m, "")
	m.writeConfig(cfg, last)
	k := m.startKmeshd("node-a", cfg)
	version := uint64(1)
	scenarios := []authzScenario{
		{name: "0-policies"},
		{name: "10-apply", applicable: 10},
		{name: "1000-apply", applicable: 1000},
		{name: "1000-in-mesh-1-applies", applicable: 1, elsewhere: 999},
	}
	const connects, rounds = 5000, 5
	ns := map[string][]float64{}
	for range b.N {
		for round := 0; round < rounds; round++ {
			for _, s := range scenarios {
				// kmeshd ignores a file whose bytes did not change.
				if next := authzConfig(m, s.policies()); next != last {
					m.writeConfig(cfg, next)
					last = next
					version++
					waitApplied(b, k, version)
				}
				ns[s.name] = append(ns[s.name], connectCost(b, m, loop, "10.1.1.11:8080", connects))
			}
		}
	}
	median := func(xs []float64) float64 { sort.Float64s(xs); return xs[len(xs)/2] }
	var summary []string
	for _, s := range scenarios {
		v := median(ns[s.name])
		b.ReportMetric(v, "ns/connect-"+s.name)
		summary = append(summary, fmt.Sprintf("%s %.1f µs %v", s.name, v/1000, ns[s.name]))
	}
	b.Logf("%d connects per run, %d rounds; median cost per connection: %s", connects, rounds*b.N, strings.Join(summary, "; "))
}

// connectCost runs connloop in the client pod and returns ns per connect.
func connectCost(b *testing.B, m *mesh, loop, addr string, count int) float64 {
	b.Helper()
	proc, err := m.pods["client"].Start(loop, "--addr", addr, "--count", strconv.Itoa(count))
	if err != nil {
		b.Fatal(err)
	}
	var out struct {
		Errors       int    `json:"errors"`
		NsPerConnect int64  `json:"ns_per_connect"`
		FirstError   string `json:"first_error"`
	}
	select {
	case line := <-proc.Lines():
		if err := json.Unmarshal([]byte(line), &out); err != nil {
			b.Fatalf("connloop: %q: %v", line, err)
		}
	case <-time.After(2 * time.Minute):
		b.Fatalf("connloop not done: %s", proc.Stderr())
	}
	if err := proc.Wait(); err != nil || out.Errors > 0 {
		b.Fatalf("connloop: %v, %d errors (first: %s) %s", err, out.Errors, out.FirstError, proc.Stderr())
	}
	return float64(out.NsPerConnect)
}

// waitApplied waits until kmeshd has applied config version v.
func waitApplied(tb testing.TB, k *kmeshd, v uint64) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + k.admin + "/config_dump")
		if err != nil {
			tb.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var d api.ConfigDump
		if json.Unmarshal(body, &d) == nil && d.Version >= v {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	tb.Fatalf("kmeshd did not apply config version %d in 30s:\n%s", v, k.proc.Stderr())
}
