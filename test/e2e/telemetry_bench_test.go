//go:build e2e

package e2e

import (
	"sort"
	"strconv"
	"testing"
	"time"
)

// BenchmarkTelemetryCost measures new connections per second from the
// client pod to the service with connection telemetry on and off,
// alternating (on, off, on, off, ...) in one run so both see the same
// machine. Run: go test -tags e2e -run '^$' -bench TelemetryCost ./test/e2e/
func BenchmarkTelemetryCost(b *testing.B) {
	m := newMesh(b)
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, m.config("random", helloWorkloads))
	m.startKmeshd("node-b", cfg)
	const requests = 3000
	rates := map[bool][]float64{}
	for round := 0; round < 3; round++ {
		for _, on := range []bool{true, false} {
			k := m.startKmeshdBin(m.kmeshd, "node-a", cfg, "--telemetry="+strconv.FormatBool(on))
			start := time.Now()
			rs := m.get("client", "--url", "http://10.96.0.10/", "--count", strconv.Itoa(requests))
			rate := float64(len(rs)) / time.Since(start).Seconds()
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
}
