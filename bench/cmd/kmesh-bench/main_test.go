package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/bench/report"
)

func TestUpdateReadme(t *testing.T) {
	path := filepath.Join(t.TempDir(), "README.md")
	in := "# X\n\n## Benchmarks\n\nHow.\n\n" + readmeBegin + "\nold table\n" + readmeEnd + "\n\n## Layout\n"
	if err := os.WriteFile(path, []byte(in), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 { // idempotent
		if err := updateReadme(path, "new table\n"); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := os.ReadFile(path)
	want := "# X\n\n## Benchmarks\n\nHow.\n\n" + readmeBegin + "\nnew table\n" + readmeEnd + "\n\n## Layout\n"
	if string(got) != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	os.WriteFile(path, []byte("no markers"), 0o644)
	if err := updateReadme(path, "x"); err == nil {
		t.Error("README without markers accepted")
	}
}

func TestBenchTests(t *testing.T) {
	tests, named := benchTests(config{})
	if len(tests) != len(named) {
		t.Fatalf("%d tests, %d descriptions", len(tests), len(named))
	}
	groups := map[string]int{}
	for i, n := range named {
		if n.Name != tests[i].Name || n.Label == "" || n.Description == "" {
			t.Errorf("test %d: %+v for %s", i, n, tests[i].Name)
		}
		groups[n.Group]++
	}
	// Istio's method: 1000 qps at 1, 16 and 64 connections.
	if groups[report.GroupLatency] != 3 || groups[report.GroupThroughput] != 3 {
		t.Errorf("groups %v", groups)
	}
	for _, test := range tests[:3] {
		if test.QPS != 1000 || test.Payload != 1024 || !test.KeepAlive {
			t.Errorf("latency test %+v", test)
		}
	}
}

func TestGoals(t *testing.T) {
	var samples []report.Sample
	for round := 1; round <= 3; round++ {
		for _, m := range []struct {
			mode string
			p50  float64
		}{{modeDirect, 100}, {modeKmesh, 102}, {modeHAProxy, 200}} {
			samples = append(samples, report.Sample{Round: round, Mode: m.mode, Topology: topoSame, Test: "lat-c16",
				P50: m.p50, P90: m.p50, P99: 3 * m.p50, QPS: 1000})
		}
	}
	res := &report.Results{Summary: report.Summarize(samples, modeDirect),
		Modes: []report.Mode{{Name: modeAccel, Reason: "not available yet"}}}
	got := map[string]report.Goal{}
	for _, g := range goals(res) {
		got[g.Goal] = g
	}
	for goal, met := range map[string]string{
		"kmesh adds little to direct at p50, 1000 qps, 16 conns, same-node":               "yes", // +2%
		"kmesh adds little to direct at p99, 1000 qps, 16 conns, same-node":               "yes", // +2%
		"kmesh adds 10× less than the proxy hop at p50, 1000 qps, 16 conns, same-node":    "yes", // 100/2 = 50×
		"same-node acceleration: request rate of small messages (TCP round trip, 1 conn)": "n/a",
	} {
		g, ok := got[goal]
		if !ok || g.Met != met {
			t.Errorf("goal %q: %+v, want met %s", goal, g, met)
		}
	}
	if g := got["same-node acceleration: request rate of small messages (TCP round trip, 1 conn)"]; !strings.Contains(g.Note, "not available") {
		t.Errorf("accel goal note %q", g.Note)
	}
}
