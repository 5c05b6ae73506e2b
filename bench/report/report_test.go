package report

import (
	"bytes"
	"image/png"
	"math"
	"strings"
	"testing"
	"time"
)

func TestOver(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want Stat
	}{
		{"empty", nil, Stat{}},
		{"one", []float64{3}, Stat{3, 3, 3, 1}},
		{"odd", []float64{5, 1, 3}, Stat{3, 1, 5, 3}},
		{"even", []float64{4, 1, 3, 10}, Stat{3.5, 1, 10, 4}},
		{"NaN ignored", []float64{math.NaN(), 2, 4}, Stat{3, 2, 4, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Over(tt.in); got != tt.want {
				t.Errorf("Over(%v) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	xs := []float64{}
	for i := 100; i >= 1; i-- {
		xs = append(xs, float64(i))
	}
	for _, tt := range []struct{ p, want float64 }{{50, 50}, {99, 99}, {100, 100}, {0, 1}} {
		if got := Percentile(xs, tt.p); got != tt.want {
			t.Errorf("p%v = %v, want %v", tt.p, got, tt.want)
		}
	}
}

// samples: direct and kmesh over three rounds; round 2 is slow for both,
// which the paired difference cancels.
func samples() []Sample {
	var ss []Sample
	for round, slow := range []float64{0, 100, 0} {
		for _, m := range []struct {
			mode string
			p50  float64
		}{{"direct", 100}, {"kmesh", 103}, {"haproxy", 150}} {
			for _, test := range []string{"lat-c16", "max-c16"} {
				ss = append(ss, Sample{Round: round + 1, Mode: m.mode, Topology: "same-node", Test: test,
					P50: m.p50 + slow, P90: 2*m.p50 + slow, P99: 3*m.p50 + slow, QPS: 1e5 / (m.p50 + slow),
					Count: 1000, CPU: m.p50})
			}
		}
	}
	return ss
}

func TestSummarize_PairsRoundsWithTheBaseline(t *testing.T) {
	rows := Summarize(samples(), "direct")
	if len(rows) != 6 {
		t.Fatalf("%d rows, want 6", len(rows))
	}
	// Order of first appearance: test, then topology, then mode.
	var order []string
	for _, r := range rows {
		order = append(order, r.Test+"/"+r.Mode)
	}
	if got := strings.Join(order, " "); got != "lat-c16/direct lat-c16/kmesh lat-c16/haproxy max-c16/direct max-c16/kmesh max-c16/haproxy" {
		t.Errorf("order %s", got)
	}
	k, ok := Find(rows, "lat-c16", "same-node", "kmesh")
	if !ok {
		t.Fatal("no kmesh row")
	}
	if k.P50 != (Stat{103, 103, 203, 3}) {
		t.Errorf("p50 %+v", k.P50)
	}
	// The slow round adds 100 µs to both: the difference stays 3.
	if k.AddedP50 != (Stat{3, 3, 3, 3}) || k.AddedP99 != (Stat{9, 9, 9, 3}) {
		t.Errorf("added p50 %+v, p99 %+v; want 3 and 9 in every round", k.AddedP50, k.AddedP99)
	}
	if k.RatioP50.Max != 1.03 || k.RatioP50.Min != 203.0/200 {
		t.Errorf("ratio p50 %+v", k.RatioP50)
	}
	if d, _ := Find(rows, "lat-c16", "same-node", "direct"); d.AddedP50 != (Stat{0, 0, 0, 3}) {
		t.Errorf("direct added %+v, want zeros", d.AddedP50)
	}
}

func results() *Results {
	r := &Results{
		Started:  time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Machine:  Machine{CPUs: 2, CPU: "AMD EPYC", Kernel: "6.18.0", MemGiB: 7.8, LoadAvg: "1.00 0.50 0.25", Go: "go1.26", Fortio: "1.66.5", HAProxy: "HAProxy 2.6.12", IPTables: "iptables v1.8.9 (nf_tables)"},
		Settings: Settings{Rounds: 3, LatencySec: 4, ThroughputSec: 3},
		Modes: []Mode{{Name: "direct", Description: "pod address", Available: true},
			{Name: "kmesh-accel", Description: "with acceleration", Reason: "kmeshd has no --accelerate flag yet"},
			{Name: "kmesh", Description: "service address", Available: true},
			{Name: "haproxy", Description: "proxy hop", Available: true}},
		Topologies: []Named{{Name: "same-node", Description: "client and server on one node"}},
		Tests: []Named{
			{Name: "lat-c16", Label: "16 conns", Description: "http, 1000 qps, 16 conn", Group: GroupLatency},
			{Name: "max-c16", Label: "max rate", Description: "http, max rate, 16 conn", Group: GroupThroughput},
		},
		Samples: samples(),
		Goals:   []Goal{{Goal: "kmesh added p50", Target: "≤ 5%", Measured: "3%", Met: "yes"}},
	}
	r.Summary = Summarize(r.Samples, "direct")
	return r
}

func TestMarkdown(t *testing.T) {
	md := Markdown(results())
	for _, want := range []string{
		"Machine: 2 CPUs (AMD EPYC), 7.8 GiB, Linux 6.18.0",
		"| same-node | 16 conns | kmesh | 103 (103–203) | 206 (206–306) | 309 (309–409) | +3 (+3…+3) | +6 (+6…+6) | +9 (+9…+9) | 103 (103–103) | 0 (0–0) |\n",
		"| same-node | 16 conns | direct | 100 (100–200) | 200 (200–300) | 300 (300–400) | – | – | – |",
		"| same-node | max rate | haproxy | 667 (400–667) | 0.67 (0.67–0.80) |",
		"| same-node | max rate | direct | 1000 (500–1000) | – |",
		"**kmesh-accel**: with acceleration. **Not measured: kmeshd has no --accelerate flag yet.**",
		"| kmesh added p50 | ≤ 5% | 3% | yes |  |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("missing %q in\n%s", want, md)
		}
	}
	if strings.Contains(LatencyTable(results()), "max rate") {
		t.Error("throughput test in the latency table")
	}
	sec := ReadmeSection(results(), "bench/results/latest")
	if !strings.Contains(sec, "](bench/results/latest/latency.png)") || !strings.Contains(sec, "### Latency at a fixed request rate") {
		t.Errorf("README section:\n%s", sec)
	}
}

func TestAdded_NoNegativeZero(t *testing.T) {
	if got := added(Row{}, Stat{-0.2, -0.4, 0.3, 3}); got != "0 (0…0)" {
		t.Errorf("got %q", got)
	}
}

func TestPNG(t *testing.T) {
	var buf bytes.Buffer
	if err := PNG(&buf, results()); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != 1400 || b.Dy() < 300 {
		t.Errorf("size %v", b)
	}
	// A bar of each mode was drawn.
	found := map[[3]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			found[[3]uint32{r >> 8, g >> 8, bl >> 8}] = true
		}
	}
	for _, i := range []int{0, 2, 3} { // direct; kmesh and haproxy after kmesh-accel, which has no rows
		c := palette[i]
		if !found[[3]uint32{uint32(c.R), uint32(c.G), uint32(c.B)}] {
			t.Errorf("no pixel of mode %d's colour %v", i, c)
		}
	}
	if err := PNG(&buf, &Results{}); err == nil {
		t.Error("PNG of no results succeeded")
	}
}

func TestGlyphs(t *testing.T) {
	for r, g := range glyphs {
		for _, row := range g {
			if len(row) != glyphW || strings.Trim(row, ".#") != "" {
				t.Errorf("glyph %q: row %q", r, row)
			}
		}
	}
}

func TestNiceStep(t *testing.T) {
	for _, tt := range []struct{ in, want float64 }{{0, 1}, {0.3, 0.5}, {1, 1}, {130, 200}, {4100, 5000}, {720, 1000}} {
		if got := niceStep(tt.in); got != tt.want {
			t.Errorf("niceStep(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestScaleTable_XDS(t *testing.T) {
	s := &Scale{Services: 10, Endpoints: 100, FirstSyncMs: 90, XDSFirstSyncMs: 80, XDSFirstSyncServerCPUMs: 30,
		XDSChangeMs: Over([]float64{1.25, 2.5, 3.75}), XDSChangeP99Ms: 3.7, XDSChanges: 3, XDSRSSMiB: 40, XDSPeakMiB: 50}
	got := ScaleTable(s, false)
	for _, want := range []string{"## Control plane: xDS (Istio's workload API, delta)", "| 80 ms | 30 ms | 2.50 (1.25–3.75) ms | 3.70 ms | 3 | 40 MiB (50) |"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	s.XDSFirstSyncMs = 0 // the phase did not run
	if strings.Contains(ScaleTable(s, false), "xDS") {
		t.Error("xDS table without an xDS run")
	}
}

// The legend of a full run's nine modes wraps instead of running off the
// image, and the panels start below its last row.
func TestLegend_Wraps(t *testing.T) {
	modes := []string{"direct", "kmesh", "kmesh-accel", "iptables", "haproxy", "haproxy-http", "kmesh-waypoint", "haproxy-mtls", "kmesh-mtls"}
	keys := legend(modes, 1400, 20)
	for i, k := range keys {
		if right := k.X + 20 + textWidth(modes[i], 2); right > 1400-20 {
			t.Errorf("%s's key ends at x=%d, past the margin", modes[i], right)
		}
	}
	if last := keys[len(keys)-1]; last.Y <= 80 {
		t.Errorf("nine modes in one row: %v", keys)
	}
	if keys := legend(modes[:3], 1400, 20); keys[2].Y != 80 {
		t.Errorf("three modes wrapped: %v", keys)
	}
}
