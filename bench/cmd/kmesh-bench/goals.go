package main

import (
	"fmt"
	"strings"

	"github.com/kmesh-go/kmesh/bench/report"
)

// Verdicts of the goals table. noise is for a run whose rounds do not agree
// on the answer (they fall on both sides of the target) or whose effect is
// below what the machine can measure (kmesh "faster" than direct): neither
// met nor missed, whatever the median says.
const (
	verdictMet    = "yes"
	verdictMissed = "no"
	verdictNoise  = "noise"
)

// goals checks the run against the goals of issue 6. They are reported,
// met or not; the method is never tuned to meet them.
func goals(res *report.Results) []report.Goal {
	var out []report.Goal
	topos := []string{topoSame, topoCross}
	pct := func(ratio float64) string { return fmt.Sprintf("%+.1f%%", (ratio-1)*100) }
	met := func(ok bool) string {
		if ok {
			return verdictMet
		}
		return verdictMissed
	}
	// verdict is met(ok) unless a noise note says the rounds cannot tell.
	verdict := func(ok bool, noise string) string {
		if noise != "" {
			return verdictNoise
		}
		return met(ok)
	}

	for _, topo := range topos {
		k, ok := report.Find(res.Summary, "lat-c16", topo, modeKmesh)
		if !ok {
			continue
		}
		for _, p := range []struct {
			name         string
			ratio, added report.Stat
		}{{"p50", k.RatioP50, k.AddedP50}, {"p99", k.RatioP99, k.AddedP99}} {
			out = append(out, report.Goal{
				Goal:     fmt.Sprintf("kmesh adds little to direct at %s, 1000 qps, 16 conns, %s", p.name, topo),
				Target:   "≤ +5%",
				Measured: fmt.Sprintf("%s (%+.0f µs; rounds %s…%s)", pct(p.ratio.Median), p.added.Median, pct(p.ratio.Min), pct(p.ratio.Max)),
				Met:      verdict(p.ratio.Median <= 1.05, join(straddles(p.ratio, 1.05), negative(p.added))),
				Note:     join(straddles(p.ratio, 1.05), negative(p.added)),
			})
		}
	}
	for _, topo := range topos {
		k, ok := report.Find(res.Summary, "close-c1", topo, modeKmesh)
		if !ok {
			continue
		}
		out = append(out, report.Goal{
			Goal:   "kmesh adds little to the connection-per-request cost (p50 of connect + request), " + topo,
			Target: "≤ +5%",
			Measured: fmt.Sprintf("%s (%+.0f µs; rounds %s…%s); rate %.2f× direct", pct(k.RatioP50.Median), k.AddedP50.Median,
				pct(k.RatioP50.Min), pct(k.RatioP50.Max), k.RatioQPS.Median),
			Met:  verdict(k.RatioP50.Median <= 1.05, join(straddles(k.RatioP50, 1.05), negative(k.AddedP50))),
			Note: join(straddles(k.RatioP50, 1.05), negative(k.AddedP50), meshCPU(k)),
		})
	}
	for _, topo := range topos {
		// Issue 12: the connection telemetry (istio_tcp_*) is counted in
		// the kernel, so kmeshd's own CPU does not grow with the
		// connection rate. kmeshd runs with telemetry on (its default) and
		// the access log off in every kmesh mode of this bench.
		k, ok := report.Find(res.Summary, "close-c1", topo, modeKmesh)
		if !ok || k.KmeshdCPU.N == 0 {
			continue
		}
		out = append(out, report.Goal{
			Goal:   "kmeshd CPU per 1,000 new connections/s, telemetry on, access log off (connection per request; the busier kmeshd), " + topo,
			Target: "≤ 5 millicores",
			Measured: fmt.Sprintf("%.1f millicores (rounds %.1f…%.1f) at %.0f connections/s",
				k.KmeshdCPU.Median, k.KmeshdCPU.Min, k.KmeshdCPU.Max, k.QPS.Median),
			Met:  verdict(k.KmeshdCPU.Median <= 5, straddles(k.KmeshdCPU, 5)),
			Note: straddles(k.KmeshdCPU, 5),
		})
	}
	for _, topo := range topos {
		k, ok1 := report.Find(res.Summary, "lat-c16", topo, modeKmesh)
		h, ok2 := report.Find(res.Summary, "lat-c16", topo, modeHAProxy)
		if !ok1 || !ok2 {
			continue
		}
		for _, p := range []struct {
			name         string
			kmesh, proxy float64
			spread       report.Stat
		}{{"p50", k.AddedP50.Median, h.AddedP50.Median, k.AddedP50}, {"p99", k.AddedP99.Median, h.AddedP99.Median, k.AddedP99}} {
			g := report.Goal{
				Goal:   fmt.Sprintf("kmesh adds 10× less than the proxy hop at %s, 1000 qps, 16 conns, %s", p.name, topo),
				Target: "≥ 10×",
			}
			switch {
			case p.spread.Min < 0 && p.spread.Max > 0:
				g.Note = fmt.Sprintf("kmesh's added latency changes sign between rounds (%+.0f…%+.0f µs): within this machine's noise", p.spread.Min, p.spread.Max)
			case p.spread.N > 1 && p.spread.Min > 0 && p.proxy/p.spread.Max < 10 && p.proxy/p.spread.Min >= 10:
				g.Note = fmt.Sprintf("kmesh's added latency over the rounds (%+.0f…%+.0f µs) puts the ratio on both sides of the target: "+
					"the noise between rounds is larger than the effect", p.spread.Min, p.spread.Max)
			}
			// A ratio to an added latency that is zero, negative or changes
			// sign between rounds measures the noise, not kmesh.
			switch {
			case p.kmesh <= 0:
				g.Measured = fmt.Sprintf("kmesh %+.0f µs, proxy %+.0f µs", p.kmesh, p.proxy)
				g.Met = verdictNoise
				g.Note = "kmesh's added latency is at or below zero: within the noise of direct"
			default:
				g.Measured = fmt.Sprintf("%.1f× (kmesh %+.0f µs, proxy %+.0f µs)", p.proxy/p.kmesh, p.kmesh, p.proxy)
				g.Met = verdict(p.proxy/p.kmesh >= 10, g.Note)
			}
			out = append(out, g)
		}
	}

	// Zero trust: both HBONE hops together against one plaintext proxy hop
	// (Istio ambient publishes +0.17 ms p90 for its two ztunnel hops).
	for _, topo := range []string{topoCross, topoPinned} {
		for _, test := range []string{"lat-c1", "lat-c16", "lat-c64"} {
			m, ok1 := report.Find(res.Summary, test, topo, modeMTLS)
			h, ok2 := report.Find(res.Summary, test, topo, modeHAProxy)
			if !ok1 || !ok2 {
				continue
			}
			g := report.Goal{
				Goal:   fmt.Sprintf("kmesh-mtls (two HBONE hops) adds no more than one plaintext HAProxy hop at p90, 1000 qps, %s, %s", conns(strings.TrimPrefix(test, "lat-c")), topo),
				Target: "≤ haproxy",
				Measured: fmt.Sprintf("kmesh-mtls %+.0f µs, haproxy %+.0f µs (p50 %+.0f vs %+.0f, p99 %+.0f vs %+.0f µs)", m.AddedP90.Median, h.AddedP90.Median,
					m.AddedP50.Median, h.AddedP50.Median, m.AddedP99.Median, h.AddedP99.Median),
				Note: meshCPU(m),
			}
			if r, ok := report.Find(res.Summary, test, topo, modeHAProxyMTLS); ok {
				g.Note = join(g.Note, reference(r))
			}
			g.Met = met(m.AddedP90.Median <= h.AddedP90.Median)
			if topo == topoPinned {
				// One CPU per node takes away the overlap of node-b's
				// tunnel with the server that a node of several cores
				// has (docs/hbone.md): shown beside, not judged.
				g.Met = "n/a"
				g.Note = join("reported beside cross-node, where the goal is judged (docs/hbone.md: the benchmark's two nodes)", g.Note)
			}
			out = append(out, g)
		}
	}

	// The L7 waypoint (issue 11) against HAProxy in HTTP mode, both one
	// userspace hop that parses every request: all three percentiles must
	// be lower, so a low median cannot hide a worse tail.
	for _, topo := range topos {
		w, ok1 := report.Find(res.Summary, "lat-c16", topo, modeWaypoint)
		h, ok2 := report.Find(res.Summary, "lat-c16", topo, modeHAProxyHTTP)
		if !ok1 || !ok2 {
			continue
		}
		out = append(out, report.Goal{
			Goal:   "kmesh-waypoint adds less than HAProxy's HTTP mode at p50, p90 and p99, 1000 qps, 16 conns, " + topo,
			Target: "< haproxy-http",
			Measured: fmt.Sprintf("kmesh-waypoint %+.0f/%+.0f/%+.0f µs, haproxy-http %+.0f/%+.0f/%+.0f µs; mesh CPU %.0f vs %.0f mc/krps",
				w.AddedP50.Median, w.AddedP90.Median, w.AddedP99.Median, h.AddedP50.Median, h.AddedP90.Median, h.AddedP99.Median,
				w.MeshCPU.Median, h.MeshCPU.Median),
			Met: met(w.AddedP50.Median < h.AddedP50.Median && w.AddedP90.Median < h.AddedP90.Median &&
				w.AddedP99.Median < h.AddedP99.Median),
		})
	}

	accel := report.Goal{Goal: "same-node acceleration: request rate of small messages (TCP round trip, 1 conn)", Target: "≥ 1.5× direct"}
	if a, ok := report.Find(res.Summary, "tcp-c1", topoSame, modeAccel); ok {
		accel.Measured = fmt.Sprintf("%.2f× (%.0f/s; rounds %.2f…%.2f×)", a.RatioQPS.Median, a.QPS.Median, a.RatioQPS.Min, a.RatioQPS.Max)
		accel.Met = verdict(a.RatioQPS.Median >= 1.5, straddles(a.RatioQPS, 1.5))
		accel.Note = straddles(a.RatioQPS, 1.5)
	} else {
		accel.Measured, accel.Met = "–", "n/a"
		accel.Note = "kmesh-accel not measured"
		for _, m := range res.Modes {
			if m.Name == modeAccel && m.Reason != "" {
				accel.Note = m.Reason
			}
		}
	}
	out = append(out, accel)

	if s := res.Scale; s != nil && s.FirstSyncMs > 0 {
		scaleNote := fmt.Sprintf("of which parsing the %.0f MiB of files (kmeshd's parser, timed alone) takes %.0f ms", s.FileMiB, s.ParseMs)
		if s.Endpoints < 100000 {
			scaleNote = fmt.Sprintf("measured at %d endpoints, not 100,000 (-quick or -endpoints); ", s.Endpoints) + scaleNote
		}
		sync, rss := scaleGoals(s.Endpoints)
		out = append(out, report.Goal{
			Goal:     fmt.Sprintf("first full sync of %d services / %d endpoints (file source: exec to ready)", s.Services, s.Endpoints),
			Target:   sync.target,
			Measured: report.WallAndCPU(s.FirstSyncMs, s.FirstSyncCPUMs),
			Met:      met(sync.ok && s.FirstSyncMs <= sync.limit),
			Note:     scaleNote,
		}, report.Goal{
			Goal:     fmt.Sprintf("kmeshd resident memory at steady state, %d endpoints (file source; peak reported)", s.Endpoints),
			Target:   rss.target,
			Measured: fmt.Sprintf("%.0f MiB (peak %.0f MiB)", s.KmeshdRSSMiB, s.KmeshdPeakMiB),
			Met:      met(rss.ok && s.KmeshdRSSMiB <= rss.limit),
		})
		if s.Changes > 0 {
			out = append(out, report.Goal{
				Goal:     "one endpoint change in one file of a directory config (rename to map update)",
				Target:   "≤ 50 ms p99, the watcher's 20 ms debounce included",
				Measured: fmt.Sprintf("p99 %.0f ms, p50 %.0f ms (%d changes)", s.ChangeP99Ms, s.ChangeMs.Median, s.Changes),
				Met:      met(s.ChangeP99Ms <= 50),
				Note: fmt.Sprintf("only the changed file (10 services, their endpoints) is parsed and its changes applied; "+
					"parsing every file takes %.0f ms", s.ParseMs),
			})
		}
	}
	if s := res.Scale; s != nil && s.XDSFirstSyncMs > 0 {
		var short string
		if s.Endpoints < 100000 {
			short = fmt.Sprintf("measured at %d endpoints, not 100,000 (-quick or -endpoints)", s.Endpoints)
		}
		sync, rss := scaleGoals(s.Endpoints)
		out = append(out, report.Goal{
			Goal:     fmt.Sprintf("first full sync of %d services / %d endpoints (xDS delta: exec to ready)", s.Services, s.Endpoints),
			Target:   sync.target,
			Measured: report.WallAndCPU(s.XDSFirstSyncMs, s.XDSFirstSyncCPUMs),
			Met:      met(sync.ok && s.XDSFirstSyncMs <= sync.limit),
			Note:     short,
		}, report.Goal{
			Goal:     fmt.Sprintf("kmeshd resident memory at steady state, %d endpoints (xDS delta; peak reported)", s.Endpoints),
			Target:   rss.target,
			Measured: fmt.Sprintf("%.0f MiB (peak %.0f MiB)", s.XDSRSSMiB, s.XDSPeakMiB),
			Met:      met(rss.ok && s.XDSRSSMiB <= rss.limit),
			Note:     short,
		})
		if s.XDSChanges > 0 {
			out = append(out, report.Goal{
				Goal:     "one endpoint change in the maps (xDS delta: server's cache update to map update)",
				Target:   "< 10 ms p99",
				Measured: fmt.Sprintf("p99 %.2f ms, p50 %.2f ms (%d changes)", s.XDSChangeP99Ms, s.XDSChangeMs.Median, s.XDSChanges),
				Met:      met(s.XDSChangeP99Ms < 10),
				Note:     short,
			})
		}
	}
	return append(out, istiodGoals(res.Istiod)...)
}

// sizeGoal is one of issue 12's limits at the size a run measured.
type sizeGoal struct {
	target string
	limit  float64
	ok     bool // the run is at a size the issue names; smaller runs never meet it
}

// scaleGoals returns issue 12's first-sync (ms) and steady RSS (MiB) goals
// for a mesh of this many endpoints: the 500,000-endpoint ones from there
// up, else the 100,000-endpoint ones, which a smaller run (-quick,
// -endpoints) cannot meet.
func scaleGoals(endpoints int) (sync, rss sizeGoal) {
	if endpoints >= 500000 {
		return sizeGoal{"≤ 10 s at 500,000 endpoints", 10000, true}, sizeGoal{"≤ 1 GiB at 500,000 endpoints", 1024, true}
	}
	ok := endpoints >= 100000
	return sizeGoal{"≤ 2 s at 100,000 endpoints", 2000, ok}, sizeGoal{"≤ 200 MiB at 100,000 endpoints", 200, ok}
}

// straddles notes when the rounds fall on both sides of a ratio target, so
// the verdict of the median is not one the rounds agree on.
func straddles(ratio report.Stat, target float64) string {
	if ratio.N > 1 && ratio.Min < target && ratio.Max > target {
		return "rounds fall on both sides of the target: the noise between rounds is larger than the effect"
	}
	return ""
}

// negative notes an added latency whose median is below zero: kmesh cannot
// make a connection faster than direct, so the difference is noise.
func negative(added report.Stat) string {
	if added.N > 0 && added.Median < 0 {
		return fmt.Sprintf("kmesh's added latency is negative (%+.0f µs): within the noise of direct", added.Median)
	}
	return ""
}

// meshCPU notes the CPU the mesh's own processes spent on a test, when it
// is enough to matter.
func meshCPU(row report.Row) string {
	if row.MeshCPU.Median < 10 {
		return ""
	}
	return fmt.Sprintf("the mesh's own processes (kmeshd; its tunnels in kmesh-mtls) used %.0f millicores per 1000 requests/s in this test (direct: none), "+
		"userspace work per connection that competes with the client and server for the CPUs", row.MeshCPU.Median)
}

// reference notes what haproxy-mtls added in the same test: the same two
// hops done by a C proxy, what the tunnels' cost is to be read against.
// Not a goal of its own, so it gets no verdict.
func reference(r report.Row) string {
	return fmt.Sprintf("reference: the same two hops by HAProxy with mutual TLS (haproxy-mtls) %+.0f µs at p90 (p50 %+.0f, p99 %+.0f µs), mesh CPU %.0f millicores per 1000 requests/s",
		r.AddedP90.Median, r.AddedP50.Median, r.AddedP99.Median, r.MeshCPU.Median)
}

func join(notes ...string) string {
	var out []string
	for _, n := range notes {
		if n != "" {
			out = append(out, n)
		}
	}
	return strings.Join(out, "; ")
}

func conns(n string) string {
	if n == "1" {
		return "1 conn"
	}
	return n + " conns"
}
