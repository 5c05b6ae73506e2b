package main

import (
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/bench/meshfile"
	"github.com/kmesh-go/kmesh/bench/report"
	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
	"github.com/kmesh-go/kmesh/internal/testbed"
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

// TestBenchTests_Only: -tests keeps the named tests, with their own
// descriptions, in their order.
func TestBenchTests_Only(t *testing.T) {
	tests, named := benchTests(config{tests: "close-c1,lat-c16"})
	if len(tests) != 2 || tests[0].Name != "lat-c16" || tests[1].Name != "close-c1" || tests[0].Connections != 16 {
		t.Fatalf("tests %+v", tests)
	}
	if named[0].Name != "lat-c16" || named[0].Label != "16 conns" || named[1].Name != "close-c1" ||
		named[1].Description != "http, max rate, 1 conn, new connection per request, 1 KB each way: the cost of connect-time balancing" {
		t.Errorf("descriptions %+v", named)
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

// TestGoals_NoiseIsNotMet: rounds on both sides of a target, or kmesh
// "faster" than direct, are noise, whatever the median says.
func TestGoals_NoiseIsNotMet(t *testing.T) {
	lat := func(direct, kmesh, proxy []float64) *report.Results {
		var samples []report.Sample
		for i := range direct {
			for _, m := range []struct {
				mode string
				p50  float64
			}{{modeDirect, direct[i]}, {modeKmesh, kmesh[i]}, {modeHAProxy, proxy[i]}} {
				samples = append(samples, report.Sample{Round: i + 1, Mode: m.mode, Topology: topoSame, Test: "lat-c16",
					P50: m.p50, P90: m.p50, P99: m.p50, QPS: 1000})
			}
		}
		return &report.Results{Summary: report.Summarize(samples, modeDirect)}
	}
	const (
		little = "kmesh adds little to direct at p50, 1000 qps, 16 conns, same-node"
		tenX   = "kmesh adds 10× less than the proxy hop at p50, 1000 qps, 16 conns, same-node"
	)
	for _, tc := range []struct {
		name                 string
		direct, kmesh, proxy []float64
		want                 map[string]string
	}{
		{"clear", []float64{100, 100, 100}, []float64{102, 102, 102}, []float64{200, 200, 200},
			map[string]string{little: "yes", tenX: "yes"}},
		{"clearly missed", []float64{100, 100, 100}, []float64{150, 150, 150}, []float64{200, 200, 200},
			map[string]string{little: "no", tenX: "no"}},
		// Median +2%, but one round at +20%: the rounds straddle 5%.
		// and kmesh's +1…+20 µs against the proxy's +150 µs: 7.5× to 150×.
		{"straddles", []float64{100, 100, 100}, []float64{102, 101, 120}, []float64{250, 250, 250},
			map[string]string{little: "noise", tenX: "noise"}},
		// kmesh below direct in every round: met by the median, but noise.
		{"negative", []float64{100, 100, 100}, []float64{90, 95, 97}, []float64{300, 300, 300},
			map[string]string{little: "noise", tenX: "noise"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := map[string]report.Goal{}
			for _, g := range goals(lat(tc.direct, tc.kmesh, tc.proxy)) {
				got[g.Goal] = g
			}
			for goal, want := range tc.want {
				g, ok := got[goal]
				if !ok {
					t.Fatalf("goal %q missing", goal)
				}
				if g.Met != want {
					t.Errorf("goal %q: met %q (%s; %s), want %q", goal, g.Met, g.Measured, g.Note, want)
				}
				if want == "noise" && g.Note == "" {
					t.Errorf("goal %q is noise without a note saying why", goal)
				}
			}
		})
	}
}

// The xDS phase's endpoints must serve the services it creates: a workload
// naming another service leaves every service with no endpoint, and the
// phase fails before its first change ("has 0 slots, want 10").
func TestXDSWorkload_ServesItsService(t *testing.T) {
	for _, svc := range []int{0, 13, 9999} {
		name, _ := xdstest.Service("default", meshfile.SyntheticService(svc), []string{meshfile.SyntheticAddress(svc).String()},
			xdstest.Port{Service: 80, Target: 8080})
		_, a := xdsWorkload(svc, 7).Address()
		w := a.GetType().(*workloadapi.Address_Workload).Workload
		if _, ok := w.Services[name]; !ok || len(w.Services) != 1 {
			t.Errorf("endpoint of service %d serves %v, want only %q", svc, w.Services, name)
		}
	}
}

// The xDS phase's figures reach the goals table, against issue 6's goals,
// and the directory config's change goal is issue 12's (p99 <= 50 ms).
func TestGoals_XDS(t *testing.T) {
	scale := &report.Scale{Services: 10000, Endpoints: 100000, FirstSyncMs: 9000, ParseMs: 5000,
		ChangeMs: report.Over([]float64{2000}), ChangeP99Ms: 2900, Changes: 50,
		XDSFirstSyncMs: 1500, XDSChangeMs: report.Over([]float64{1.2, 2.5}), XDSChangeP99Ms: 12.5, XDSChanges: 50}
	got := map[string]report.Goal{}
	for _, g := range goals(&report.Results{Scale: scale}) {
		got[g.Goal] = g
	}
	for goal, met := range map[string]string{
		"first full sync of 10000 services / 100000 endpoints (xDS delta: exec to ready)":  "yes",
		"one endpoint change in the maps (xDS delta: server's cache update to map update)": "no", // p99 12.5 ms
		"one endpoint change in one file of a directory config (rename to map update)":     "no", // p99 2.9 s
	} {
		if g, ok := got[goal]; !ok || g.Met != met {
			t.Errorf("goal %q: %+v, want met %s", goal, g, met)
		}
	}
	scale.ChangeP99Ms = 50
	for _, g := range goals(&report.Results{Scale: scale}) {
		if strings.HasPrefix(g.Goal, "one endpoint change in one file") && g.Met != "yes" {
			t.Errorf("%q at p99 50 ms: met %s, want yes (the goal is <= 50 ms)", g.Goal, g.Met)
		}
	}
	scale.Endpoints = 10000 // -quick
	for _, g := range goals(&report.Results{Scale: scale}) {
		if strings.HasPrefix(g.Goal, "first full sync") && g.Met != "no" {
			t.Errorf("%q at 10,000 endpoints: met %s, want no (the goal is at 100,000)", g.Goal, g.Met)
		}
	}
}

// At 50,000 services / 500,000 endpoints the first full sync is judged
// against issue 12's 10 s and the resident memory against 1 GiB, not the
// 100,000-endpoint limits.
func TestGoals_ScaleAt500k(t *testing.T) {
	scale := &report.Scale{Services: 50000, Endpoints: 500000, FirstSyncMs: 7850, KmeshdRSSMiB: 775, KmeshdPeakMiB: 1048,
		XDSFirstSyncMs: 12354, XDSRSSMiB: 1100, XDSPeakMiB: 1200, XDSChangeMs: report.Over([]float64{0.9}), XDSChanges: 1}
	got := map[string]string{}
	for _, g := range goals(&report.Results{Scale: scale}) {
		got[g.Goal+" "+g.Target] = g.Met
	}
	want := map[string]string{
		"first full sync of 50000 services / 500000 endpoints (file source: exec to ready) ≤ 10 s at 500,000 endpoints":      "yes",
		"first full sync of 50000 services / 500000 endpoints (xDS delta: exec to ready) ≤ 10 s at 500,000 endpoints":        "no",
		"kmeshd resident memory at steady state, 500000 endpoints (file source; peak reported) ≤ 1 GiB at 500,000 endpoints": "yes",
		"kmeshd resident memory at steady state, 500000 endpoints (xDS delta; peak reported) ≤ 1 GiB at 500,000 endpoints":   "no",
	}
	for goal, met := range want {
		if got[goal] != met {
			t.Errorf("%q: met %q, want %q (goals: %v)", goal, got[goal], met, got)
		}
	}
	scale.Endpoints = 100000 // the same figures at 100,000 endpoints: 2 s and 200 MiB
	for _, g := range goals(&report.Results{Scale: scale}) {
		if (strings.HasPrefix(g.Goal, "first full sync") || strings.HasPrefix(g.Goal, "kmeshd resident memory")) && g.Met != "no" {
			t.Errorf("%q %s at 100,000 endpoints: met %s, want no", g.Goal, g.Target, g.Met)
		}
	}
}

func TestGoals_Istiod(t *testing.T) {
	ist := &report.Istiod{Services: 2000, Pods: 10000, DebounceAfterMs: 100, ConvergeMs: 30000, KmeshdReadyMs: 20000,
		FlipMs: report.Over([]float64{105, 108}), FlipP99Ms: 110, Flips: 2}
	verdicts := func() map[string]string {
		got := map[string]string{}
		for _, g := range goals(&report.Results{Istiod: ist}) {
			if strings.Contains(g.Goal, "istiod") {
				got[strings.Fields(g.Goal)[0]+" "+g.Target] = g.Met
			}
		}
		return got
	}
	const flipGoal = "one ≤ istiod's debounce + 10 ms p99 (each flip after the debounce istiod logged for it; configured 100 ms)"
	want := map[string]string{"kmeshd converges": "yes", flipGoal: "yes"}
	if got := verdicts(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("p99 at the debounce + 10 ms: %v, want %v", got, want)
	}
	// Not split at istiod's log: the whole flip against the configured
	// debounce.
	ist.FlipP99Ms = 111
	if got := verdicts()[flipGoal]; got != "no" {
		t.Errorf("p99 111 ms with a 100 ms debounce: met %s, want no", got)
	}
	// Split at istiod's log, each flip is timed from the end of the
	// debounce istiod logged for it: a slow API server no longer counts,
	// nor a debounce istiod drew out; a slow push does.
	ist.FlipsSplit, ist.FromIstiodMs, ist.FromIstiodP99Ms, ist.ToIstiodP99Ms = 2, report.Over([]float64{102, 104}), 104, 900
	ist.PushToMapsMs, ist.PushToMapsP99Ms = report.Over([]float64{2, 4}), 4
	ist.FlipP99Ms = 1000
	if got := verdicts()[flipGoal]; got != "yes" {
		t.Errorf("push -> maps p99 4 ms, write -> maps 1000 ms: met %s, want yes", got)
	}
	ist.FromIstiodP99Ms, ist.DebounceMs = 125, report.Over([]float64{100.2, 121})
	if got := verdicts()[flipGoal]; got != "yes" {
		t.Errorf("istiod -> maps p99 125 ms of which istiod's debounce 121 ms, push -> maps p99 4 ms: met %s, want yes", got)
	}
	ist.PushToMapsP99Ms = 11
	if got := verdicts()[flipGoal]; got != "no" {
		t.Errorf("push -> maps p99 11 ms: met %s, want no", got)
	}
	ist.PushToMapsP99Ms = 4
	ist.FlipP99Ms, ist.Pods = 100, 1000 // -quick
	for goal, met := range verdicts() {
		if met != "no" {
			t.Errorf("%s at 1,000 pods: met %s, want no (the goal is at 10,000)", goal, met)
		}
	}
	ist.NotMeasured = "no tools"
	for goal, met := range verdicts() {
		if met != "n/a" {
			t.Errorf("%s without the tools: met %s, want n/a", goal, met)
		}
	}
}

// TestGoals_KmeshdCPUPerConnection: the connection-per-request test's
// busier kmeshd, per 1,000 connections/s, against issue 12's 5 millicores.
func TestGoals_KmeshdCPUPerConnection(t *testing.T) {
	res := func(kmeshd ...float64) map[string]report.Goal {
		var samples []report.Sample
		for i, k := range kmeshd {
			samples = append(samples,
				report.Sample{Round: i + 1, Mode: modeDirect, Topology: topoCross, Test: "close-c1", P50: 100, QPS: 900},
				report.Sample{Round: i + 1, Mode: modeKmesh, Topology: topoCross, Test: "close-c1", P50: 101, QPS: 880, KmeshdCPU: k})
		}
		got := map[string]report.Goal{}
		for _, g := range goals(&report.Results{Summary: report.Summarize(samples, modeDirect)}) {
			got[g.Goal] = g
		}
		return got
	}
	const goal = "kmeshd CPU per 1,000 new connections/s, telemetry on, access log off (connection per request; the busier kmeshd), " + topoCross
	for _, tc := range []struct {
		kmeshd []float64
		met    string
	}{
		{[]float64{2, 3, 2.5}, verdictMet},
		{[]float64{7, 8, 9}, verdictMissed},
		{[]float64{4, 6, 7}, verdictNoise},
	} {
		g, ok := res(tc.kmeshd...)[goal]
		if !ok || g.Met != tc.met || !strings.Contains(g.Measured, "connections/s") {
			t.Errorf("kmeshd %v: %+v, want met %s", tc.kmeshd, g, tc.met)
		}
	}
	if _, ok := res()[goal]; ok {
		t.Error("goal reported without a kmeshd measurement")
	}
}

// TestSplitFlips_AtIstiodsLog splits flips at istiod's debounce lines as
// pilot-discovery writes them: a pod pushed alone is split, a push that
// merged several events is not; the push's send (its WDS line) splits
// istiod's work on the push from what follows.
func TestSplitFlips_AtIstiodsLog(t *testing.T) {
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339Nano, "2026-12-02T"+s+"Z")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	log := strings.Join([]string{
		"2026-12-02T05:48:00.537261Z\tinfo\tads\tPush debounce stable[10] 1 for config Address//Kubernetes//Pod/scale-3/svc-3-0: 101.716533ms since last change, 101.716482ms since last push, forced=false",
		"2026-12-02T05:48:00.537524Z\tinfo\tads\tXDS: Pushing Services:2001 ConnectedEndpoints:1 Version:2026-12-02T05:48:00Z/10",
		"2026-12-02T05:48:00.537900Z\tinfo\tdelta\tWDS: PUSH for node:kmesh-node-i.kmesh-system resources:1 removed:0 size:181B",
		"2026-12-02T05:48:00.703594Z\tinfo\tads\tPush debounce stable[11] 1 for config Endpoints/scale-3/svc-3.scale-3.svc.cluster.local: 130.894347ms since last change, 130.894187ms since last push, forced=false",
		"2026-12-02T05:48:02.450144Z\tinfo\tads\tPush debounce stable[12] 2 for config Address//Kubernetes//Pod/scale-3/svc-3-1 and 1 more configs: 100.454235ms since last change, 100.454166ms since last push, forced=false",
	}, "\n")
	flips := []timedFlip{
		{pod: "scale-3/svc-3-0", t0: at("05:47:46.975"), inMaps: at("05:48:00.539")},
		{pod: "scale-3/svc-3-1", t0: at("05:48:01.000"), inMaps: at("05:48:02.452")},
	}
	var out report.Istiod
	splitFlips(&out, flips, log)
	if out.FlipsSplit != 1 {
		t.Fatalf("split %d flips, want 1 (the second push merged two events)", out.FlipsSplit)
	}
	// istiod had it at 00.537261 - 101.716533 ms = 00.435544.
	for name, c := range map[string]struct{ got, want float64 }{
		"to istiod":     {out.ToIstiodMs.Median, 13460.544},
		"istiod → maps": {out.FromIstiodMs.Median, 103.456},
		"push → maps":   {out.PushToMapsMs.Median, 1.739},
		"send → maps":   {out.SendToMapsMs.Median, 1.100},
	} {
		if math.Abs(c.got-c.want) > 0.01 {
			t.Errorf("%s: %.3f ms, want %.3f", name, c.got, c.want)
		}
	}
}

// TestGoals_WaypointAgainstHAProxyHTTP: issue 11's goal is met only when the
// waypoint adds less than HAProxy's HTTP mode at every percentile.
func TestGoals_WaypointAgainstHAProxyHTTP(t *testing.T) {
	verdict := func(waypoint, haproxy [3]float64) string {
		var samples []report.Sample
		for r := 1; r <= 3; r++ {
			samples = append(samples,
				report.Sample{Round: r, Mode: modeDirect, Topology: topoSame, Test: "lat-c16", P50: 500, P90: 800, P99: 1500},
				report.Sample{Round: r, Mode: modeWaypoint, Topology: topoSame, Test: "lat-c16",
					P50: 500 + waypoint[0], P90: 800 + waypoint[1], P99: 1500 + waypoint[2]},
				report.Sample{Round: r, Mode: modeHAProxyHTTP, Topology: topoSame, Test: "lat-c16",
					P50: 500 + haproxy[0], P90: 800 + haproxy[1], P99: 1500 + haproxy[2]})
		}
		for _, g := range goals(&report.Results{Summary: report.Summarize(samples, modeDirect)}) {
			if strings.HasPrefix(g.Goal, "kmesh-waypoint adds less than HAProxy's HTTP mode") && strings.HasSuffix(g.Goal, topoSame) {
				return g.Met
			}
		}
		return "missing"
	}
	if got := verdict([3]float64{500, 700, 900}, [3]float64{600, 800, 1000}); got != verdictMet {
		t.Errorf("waypoint below haproxy-http at every percentile: %s, want %s", got, verdictMet)
	}
	if got := verdict([3]float64{500, 700, 1100}, [3]float64{600, 800, 1000}); got != verdictMissed {
		t.Errorf("waypoint's p99 above haproxy-http's: %s, want %s", got, verdictMissed)
	}
}

// The kmesh-mtls goal is judged on cross-node; cross-node-pinned's row,
// with the same numbers, is shown beside it without a verdict.
func TestGoals_MTLSJudgedOnSharedCPUs(t *testing.T) {
	var samples []report.Sample
	for r := 1; r <= 3; r++ {
		for _, topo := range []string{topoCross, topoPinned} {
			samples = append(samples,
				report.Sample{Round: r, Mode: modeDirect, Topology: topo, Test: "lat-c16", P50: 500, P90: 800, P99: 1500},
				report.Sample{Round: r, Mode: modeHAProxy, Topology: topo, Test: "lat-c16", P50: 900, P90: 1400, P99: 2500},
				report.Sample{Round: r, Mode: modeMTLS, Topology: topo, Test: "lat-c16", P50: 1000, P90: 1300, P99: 2600})
		}
	}
	got := map[string]string{}
	for _, g := range goals(&report.Results{Summary: report.Summarize(samples, modeDirect)}) {
		if strings.HasPrefix(g.Goal, "kmesh-mtls (two HBONE hops)") {
			got[g.Goal[strings.LastIndex(g.Goal, ", ")+2:]] = g.Met
		}
	}
	if got[topoCross] != verdictMet || got[topoPinned] != "n/a" || len(got) != 2 {
		t.Errorf("verdicts by topology %v, want %s on %s and n/a on %s", got, verdictMet, topoCross, topoPinned)
	}
}

// The kmesh-mtls rows keep their goal and verdict against the haproxy hop;
// haproxy-mtls, measured in the same test, is only a reference in the note.
func TestGoals_MTLSReferenceInNote(t *testing.T) {
	summary := func(withReference bool) []report.Row {
		var samples []report.Sample
		for r := 1; r <= 3; r++ {
			samples = append(samples,
				report.Sample{Round: r, Mode: modeDirect, Topology: topoCross, Test: "lat-c16", P50: 500, P90: 800, P99: 1500},
				report.Sample{Round: r, Mode: modeHAProxy, Topology: topoCross, Test: "lat-c16", P50: 900, P90: 1400, P99: 2500},
				report.Sample{Round: r, Mode: modeMTLS, Topology: topoCross, Test: "lat-c16", P50: 1000, P90: 1500, P99: 2600, MeshCPU: 90})
			if withReference {
				samples = append(samples, report.Sample{Round: r, Mode: modeHAProxyMTLS, Topology: topoCross, Test: "lat-c16",
					P50: 1100, P90: 1600 + float64(r), P99: 2900, MeshCPU: 110})
			}
		}
		return report.Summarize(samples, modeDirect)
	}
	mtlsGoals := func(rows []report.Row) []report.Goal {
		var out []report.Goal
		for _, g := range goals(&report.Results{Summary: rows}) {
			if strings.Contains(g.Goal, "mtls") {
				out = append(out, g)
			}
		}
		return out
	}
	with, without := mtlsGoals(summary(true)), mtlsGoals(summary(false))
	if len(with) != 1 || len(without) != 1 {
		t.Fatalf("goals with the reference %+v, without %+v: want the one kmesh-mtls row each", with, without)
	}
	g := with[0]
	if g.Goal != without[0].Goal || g.Target != "≤ haproxy" || g.Met != verdictMissed || g.Measured != without[0].Measured {
		t.Errorf("the reference changed the goal: %+v, without it %+v", g, without[0])
	}
	want := "reference: the same two hops by HAProxy with mutual TLS (haproxy-mtls) +802 µs at p90 (p50 +600, p99 +1400 µs), mesh CPU 110 millicores per 1000 requests/s"
	if !strings.Contains(g.Note, want) || strings.Contains(without[0].Note, "reference") {
		t.Errorf("note %q, want it to contain %q (and none without haproxy-mtls: %q)", g.Note, want, without[0].Note)
	}
}

// haproxy-mtls runs in every round, cross-node only, next to kmesh-mtls,
// and -modes can pick it alone.
func TestModes_HAProxyMTLS(t *testing.T) {
	d := &dataplane{}
	var names []string
	for _, m := range d.modes("") {
		names = append(names, m.Name)
		if m.Name == modeHAProxyMTLS && (!m.crossNodeOnly || m.sameNodeOnly || m.httpOnly || !m.Available) {
			t.Errorf("%s: %+v, want available, cross-node only, every test", m.Name, m)
		}
	}
	if got := strings.Join(names, " "); !strings.Contains(got, " haproxy-mtls kmesh-mtls") {
		t.Errorf("modes %q: want haproxy-mtls right before kmesh-mtls", got)
	}
	for _, m := range d.modes("haproxy-mtls") {
		if want := m.Name == modeDirect || m.Name == modeHAProxyMTLS; m.Available != want {
			t.Errorf("-modes haproxy-mtls: %s available %v", m.Name, m.Available)
		}
	}
}

// Each TLS port of the server end forwards to its target port on the pod's
// loopback, and the client end sends each remote service port to the TLS
// port of its target: a mix-up would measure the wrong server.
func TestHAProxyMTLSPorts(t *testing.T) {
	d := &dataplane{topos: []topology{{server: &testbed.Pod{Addrs: []netip.Addr{localAddr}}, vip: localVIP},
		{server: &testbed.Pod{Addrs: []netip.Addr{remoteAddr}}, vip: remoteVIP, crossNode: true}}}
	target := map[netip.AddrPort]netip.AddrPort{}
	for _, l := range mtlsListeners(remoteAddr) {
		if l.Listen.Addr() != remoteAddr || l.Target.Addr() != netip.MustParseAddr("127.0.0.1") || l.Listen.Port() == 15008 {
			t.Errorf("listener %+v", l)
		}
		target[l.Listen] = l.Target
	}
	fes := d.mtlsFrontends(remoteAddr)
	if len(fes) != len(servicePorts) {
		t.Fatalf("frontends %+v, want one per port of the remote service", fes)
	}
	for _, f := range fes {
		var want uint16
		for _, p := range servicePorts {
			if p[0] == f.Service.Port() {
				want = p[1]
			}
		}
		if f.Service.Addr() != remoteVIP || len(f.Backends) != 1 || target[f.Backends[0]].Port() != want {
			t.Errorf("frontend %+v reaches %v, want target port %d", f, target[f.Backends[0]], want)
		}
		if f.Listen < 16201 {
			t.Errorf("frontend %+v listens on a port of the other HAProxys", f)
		}
	}
}
