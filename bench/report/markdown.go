package report

import (
	"fmt"
	"math"
	"strings"
)

// Group names of tests.
const (
	GroupLatency    = "latency"
	GroupThroughput = "throughput"
)

// Markdown renders results.md: every table of the run.
func Markdown(r *Results) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Kmesh benchmark, %s\n\n", r.Started.UTC().Format("2006-01-02 15:04 UTC"))
	b.WriteString(MachineLine(r) + "\n\n")
	if r.Settings.Kmeshd != "" {
		fmt.Fprintf(&b, "kmeshd: %s.\n\n", r.Settings.Kmeshd)
	}
	fmt.Fprintf(&b, "Run: %s, modes alternating within each round; %.0fs per latency point, %.0fs per throughput point; %.0f minutes in all (data plane %.0fs, control plane %.0fs, istiod tier %.0fs).\n\n",
		plural(r.Settings.Rounds, "round"), r.Settings.LatencySec, r.Settings.ThroughputSec, r.ElapsedSec/60, r.Durations.DataPlane, r.Durations.ControlPlane, r.Durations.IstiodTier)
	b.WriteString(Legend)
	b.WriteString("\n## Modes\n\n")
	for _, m := range r.Modes {
		avail := ""
		if !m.Available {
			avail = " **Not measured: " + m.Reason + ".**"
		}
		fmt.Fprintf(&b, "- **%s**: %s.%s\n", m.Name, m.Description, avail)
	}
	b.WriteString("\nTopologies: ")
	for i, t := range r.Topologies {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "**%s**, %s", t.Name, t.Description)
	}
	b.WriteString(".\n\n")
	b.WriteString(LatencyTable(r))
	b.WriteString("\n")
	b.WriteString(ThroughputTable(r))
	if r.KmeshdRSS.N > 0 {
		fmt.Fprintf(&b, "\nkmeshd resident memory during the data-plane runs: %s MiB.\n", cell(r.KmeshdRSS, 1))
	}
	if r.Scale != nil {
		b.WriteString("\n")
		b.WriteString(ScaleTable(r.Scale, true))
	}
	if r.Istiod != nil {
		b.WriteString("\n")
		b.WriteString(IstiodTable(r.Istiod))
	}
	b.WriteString("\n")
	b.WriteString(GoalTable(r.Goals))
	writeList(&b, "Notes", r.Notes)
	writeList(&b, "Errors", r.Errors)
	return b.String()
}

// Legend explains the cells of every table.
const Legend = "Cells are the median over the rounds, with the spread (min–max) in parentheses. " +
	"*Added* is the mode minus direct measured in the same round (its median and spread over rounds), " +
	"so it is not the difference of the two medians. CPU is the CPU time of every process of the test " +
	"(client, servers, proxy, kmeshd) per second, scaled to 1000 requests/s, in millicores; *mesh CPU* is the part " +
	"spent in the mesh's own processes (kmeshd, HAProxy). Kernel work (eBPF programs, iptables, conntrack) runs in the " +
	"client's and servers' context and shows only in CPU.\n"

// MachineLine names the machine of the run.
func MachineLine(r *Results) string {
	m := r.Machine
	return fmt.Sprintf("Machine: %d CPUs (%s), %.1f GiB, Linux %s, load average at start %s; %s, fortio %s, %s, %s.",
		m.CPUs, m.CPU, m.MemGiB, m.Kernel, m.LoadAvg, m.Go, m.Fortio, m.HAProxy, m.IPTables)
}

// LatencyTable is the table of the fixed-rate tests: p50/p90/p99 and what
// each mode adds over direct.
func LatencyTable(r *Results) string {
	var b strings.Builder
	b.WriteString("## Latency at a fixed request rate\n\n")
	b.WriteString(testList(r, GroupLatency))
	b.WriteString("\n| topology | test | mode | p50 µs | p90 µs | p99 µs | added p50 µs | added p90 µs | added p99 µs | CPU mc/krps | mesh CPU mc/krps |\n")
	b.WriteString("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, row := range rowsOf(r, GroupLatency) {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			row.Topology, label(r.Tests, row.Test), modeCell(row),
			cell(row.P50, 0), cell(row.P90, 0), cell(row.P99, 0),
			added(row, row.AddedP50), added(row, row.AddedP90), added(row, row.AddedP99), cell(row.CPU, 0), cell(row.MeshCPU, 0))
	}
	return b.String()
}

// ThroughputTable is the table of the as-fast-as-possible tests.
func ThroughputTable(r *Results) string {
	var b strings.Builder
	b.WriteString("## Throughput, connection rate, round trips\n\n")
	b.WriteString(testList(r, GroupThroughput))
	b.WriteString("\n| topology | test | mode | rate /s | × direct | p50 µs | p99 µs | added p50 µs | CPU mc/krps | mesh CPU mc/krps |\n")
	b.WriteString("|---|---|---|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, row := range rowsOf(r, GroupThroughput) {
		ratio := "–"
		if !row.Baseline {
			ratio = cell(row.RatioQPS, 2)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			row.Topology, label(r.Tests, row.Test), modeCell(row), cell(row.QPS, 0), ratio,
			cell(row.P50, 0), cell(row.P99, 0), added(row, row.AddedP50), cell(row.CPU, 0), cell(row.MeshCPU, 0))
	}
	return b.String()
}

// WallAndCPU is a first sync's wall time, with kmeshd's CPU time when
// the run measured it (results before it was measured have none).
func WallAndCPU(wallMs, cpuMs float64) string {
	if cpuMs <= 0 {
		return fmt.Sprintf("%.0f ms", wallMs)
	}
	return fmt.Sprintf("%.0f ms (CPU %.0f ms)", wallMs, cpuMs)
}

// ScaleTable is the control-plane table; with maps, also the memory of
// each BPF map.
func ScaleTable(s *Scale, maps bool) string {
	var b strings.Builder
	b.WriteString("## Control plane: file source\n\n")
	fmt.Fprintf(&b, "%d services and %d endpoints (10 per service, weight 1) in %d namespaces, in a %.1f MiB directory config "+
		"(`--config DIR`, 10 services and their endpoints per file). "+
		"First full sync: kmeshd exec to /healthz/ready (kmeshd's CPU time, user + system, until then in brackets). A change: one file renamed over to the service's new slot count in the pinned BPF maps.\n\n",
		s.Services, s.Endpoints, s.Namespaces, s.FileMiB)
	b.WriteString("| first full sync | parsing the files alone | one endpoint change in the maps: p50 (min–max) | p99 | changes | kmeshd RSS (peak) | BPF map memory |\n")
	b.WriteString("|--:|--:|--:|--:|--:|--:|--:|\n")
	fmt.Fprintf(&b, "| %s | %.0f ms | %s ms | %.0f ms | %d | %.0f MiB (%.0f) | %.1f MiB |\n\n",
		WallAndCPU(s.FirstSyncMs, s.FirstSyncCPUMs), s.ParseMs, cell(s.ChangeMs, 0), s.ChangeP99Ms, s.Changes, s.KmeshdRSSMiB, s.KmeshdPeakMiB, s.MapMemoryMiB)
	if s.XDSFirstSyncMs > 0 {
		b.WriteString("## Control plane: xDS (Istio's workload API, delta)\n\n")
		b.WriteString("The same services and endpoints from a go-control-plane delta server in the bench process, kmeshd with --xds-address. " +
			"First full sync: kmeshd exec to /healthz/ready (kmeshd's CPU time in brackets); the server's CPU: the bench process's meanwhile (the delta server on the cores kmeshd has, " +
			"which istiod would not share). A change: one endpoint added to (or removed from) a service in the server's cache " +
			"to the service's new slot count in the pinned BPF maps.\n\n")
		b.WriteString("| first full sync | the server's CPU | one endpoint change in the maps: p50 (min–max) | p99 | changes | kmeshd RSS (peak) |\n")
		b.WriteString("|--:|--:|--:|--:|--:|--:|\n")
		fmt.Fprintf(&b, "| %s | %.0f ms | %s ms | %.2f ms | %d | %.0f MiB (%.0f) |\n\n",
			WallAndCPU(s.XDSFirstSyncMs, s.XDSFirstSyncCPUMs), s.XDSFirstSyncServerCPUMs, cell(s.XDSChangeMs, 2), s.XDSChangeP99Ms, s.XDSChanges, s.XDSRSSMiB, s.XDSPeakMiB)
	}
	if maps && len(s.MapMemory) > 0 {
		b.WriteString("| map | max entries | memlock MiB |\n|---|--:|--:|\n")
		for _, m := range s.MapMemory {
			fmt.Fprintf(&b, "| %s | %d | %.2f |\n", m.Name, m.MaxEntries, m.MemlockMiB)
		}
		b.WriteString("\n")
	}
	if len(s.Startup) > 0 {
		b.WriteString("Workload start-up: time to the first balanced connection.\n\n| how | ms: median (min–max) | n |\n|---|--:|--:|\n")
		for _, st := range s.Startup {
			fmt.Fprintf(&b, "| %s | %s | %d |\n", st.What, cell(st.Ms, 0), st.Ms.N)
		}
	}
	return b.String()
}

// GoalTable lists the goals of issue 6 against this run.
func GoalTable(goals []Goal) string {
	if len(goals) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("## Goals\n\n| goal | target | measured | met | why / note |\n|---|---|---|---|---|\n")
	for _, g := range goals {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", g.Goal, g.Target, g.Measured, g.Met, g.Note)
	}
	return b.String()
}

// ReadmeSection is the body of the README's Benchmarks section: the
// machine, the plot, the latency, control-plane and goal tables, and links
// to the rest (throughput, map memory, notes).
func ReadmeSection(r *Results, dir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Latest run (%s): all tables, with throughput, connection rate and round trips, in [%s/results.md](%s/results.md); data in [results.json](%s/results.json).\n\n",
		r.Started.UTC().Format("2006-01-02"), dir, dir, dir)
	b.WriteString(MachineLine(r))
	if r.Settings.Kmeshd != "" {
		fmt.Fprintf(&b, " kmeshd %s.", r.Settings.Kmeshd)
	}
	b.WriteString("\n\n" + Legend + "\n")
	fmt.Fprintf(&b, "![latency by percentile and mode](%s/latency.png)\n\n", dir)
	b.WriteString(strings.Replace(LatencyTable(r), "## ", "### ", 1))
	if r.Scale != nil {
		b.WriteString("\n")
		b.WriteString(strings.Replace(ScaleTable(r.Scale, false), "## ", "### ", 1))
	}
	if r.Istiod != nil {
		b.WriteString("\n")
		b.WriteString(strings.Replace(IstiodTable(r.Istiod), "## ", "### ", 1))
	}
	b.WriteString("\n")
	b.WriteString(strings.Replace(GoalTable(r.Goals), "## ", "### ", 1))
	return b.String()
}

func rowsOf(r *Results, group string) []Row {
	var out []Row
	for _, row := range r.Summary {
		for _, t := range r.Tests {
			if t.Name == row.Test && t.Group == group {
				out = append(out, row)
			}
		}
	}
	return out
}

func testList(r *Results, group string) string {
	var b strings.Builder
	for _, t := range r.Tests {
		if t.Group == group {
			fmt.Fprintf(&b, "- %s: %s\n", label(r.Tests, t.Name), t.Description)
		}
	}
	return b.String()
}

func label(tests []Named, name string) string {
	for _, t := range tests {
		if t.Name == name && t.Label != "" {
			return t.Label
		}
	}
	return name
}

func modeCell(row Row) string {
	if row.Errors > 0 {
		return fmt.Sprintf("%s (%d errors)", row.Mode, row.Errors)
	}
	return row.Mode
}

// cell formats a stat as "median (min–max)".
func cell(s Stat, digits int) string {
	if s.N == 0 {
		return "–"
	}
	f := func(x float64) string { return fmt.Sprintf("%.*f", digits, x) }
	if s.N == 1 {
		return f(s.Median)
	}
	return fmt.Sprintf("%s (%s–%s)", f(s.Median), f(s.Min), f(s.Max))
}

// added formats a difference to the baseline, signed; the baseline's own
// row gets a dash.
func added(row Row, s Stat) string {
	if s.N == 0 || row.Baseline {
		return "–"
	}
	f := func(x float64) string {
		x = math.Round(x)
		if x > 0 {
			return fmt.Sprintf("+%.0f", x)
		}
		if x == 0 {
			return "0" // not "-0"
		}
		return fmt.Sprintf("%.0f", x)
	}
	if s.N == 1 {
		return f(s.Median)
	}
	return fmt.Sprintf("%s (%s…%s)", f(s.Median), f(s.Min), f(s.Max))
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func writeList(b *strings.Builder, title string, items []string) {
	if len(items) == 0 {
		return
	}
	fmt.Fprintf(b, "\n## %s\n\n", title)
	for _, it := range items {
		fmt.Fprintf(b, "- %s\n", it)
	}
}
