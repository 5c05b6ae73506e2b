//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkTelemetryCost measures new connections per second from the
// client pod to the service with connection telemetry on and off,
// alternating (on, off, on, off, ...) in one run so both see the same
// machine. It also reports the CPU time the kmeshd of each end (node-a: the
// client's, its telemetry switched; node-b: the servers', telemetry on)
// spent during the run, in millicores per 1,000 new connections/s; no
// scrape runs meanwhile (a scrape's cost is per scrape, not per connection).
// Run: go test -tags e2e -run '^$' -bench TelemetryCost ./test/e2e/
func BenchmarkTelemetryCost(b *testing.B) {
	m := newMesh(b)
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, m.config("random", helloWorkloads))
	kb := m.startKmeshd("node-b", cfg)
	// CPU time is counted in 10 ms ticks: 3,000 connections resolve about
	// 3 millicores per 1,000 conn/s; KMESH_BENCH_CONNS=30000 resolves 0.3.
	requests := 3000
	if v := os.Getenv("KMESH_BENCH_CONNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 {
			b.Fatalf("KMESH_BENCH_CONNS=%q: want a number >= 100", v)
		}
		requests = n
	}
	rates := map[bool][]float64{}
	cpuA, cpuB := map[bool][]float64{}, map[bool][]float64{}
	for round := 0; round < 3; round++ {
		for _, on := range []bool{true, false} {
			k := m.startKmeshdBin(m.kmeshd, "node-a", cfg, "--telemetry="+strconv.FormatBool(on))
			a0, b0 := cpuSeconds(b, k.proc.PID()), cpuSeconds(b, kb.proc.PID())
			start := time.Now()
			rs := m.get("client", "--url", "http://10.96.0.10/", "--count", strconv.Itoa(requests))
			elapsed := time.Since(start).Seconds()
			rate := float64(len(rs)) / elapsed
			// millicores per 1,000 conn/s = CPU seconds per 1,000 connections x 1,000
			perK := func(cpu float64) float64 { return cpu / float64(len(rs)) * 1000 * 1000 }
			cpuA[on] = append(cpuA[on], perK(cpuSeconds(b, k.proc.PID())-a0))
			cpuB[on] = append(cpuB[on], perK(cpuSeconds(b, kb.proc.PID())-b0))
			for _, r := range rs {
				if r.Error != "" {
					b.Fatalf("request failed: %s", r.Error)
				}
			}
			rates[on] = append(rates[on], rate)
			k.proc.Stop()
		}
	}
	median := func(xs []float64) float64 { sort.Float64s(xs); return xs[len(xs)/2] }
	on, off := median(rates[true]), median(rates[false])
	b.ReportMetric(on, "conn/s-telemetry-on")
	b.ReportMetric(off, "conn/s-telemetry-off")
	b.Logf("new connection + request per second, %d requests x 3 rounds: telemetry on %v, off %v (medians %.0f vs %.0f, %.1f%%)",
		requests, rates[true], rates[false], on, off, 100*(on-off)/off)
	b.ReportMetric(median(cpuA[true]), "mcores/1k-conn/s-client-kmeshd-on")
	b.ReportMetric(median(cpuA[false]), "mcores/1k-conn/s-client-kmeshd-off")
	b.ReportMetric(median(cpuB[true]), "mcores/1k-conn/s-server-kmeshd-on")
	b.Logf("kmeshd CPU, millicores per 1,000 new connections/s (rounds): client's node telemetry on %v, off %v; server's node (on) %v",
		cpuA[true], cpuA[false], cpuB[true])
}

// cpuSeconds is the user + system CPU time a process has used so far.
func cpuSeconds(tb testing.TB, pid int) float64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// Fields after the command name, which is in parentheses: utime and
	// stime are the 12th and 13th, in clock ticks (100 Hz on Linux).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100
}
