// Package report holds the benchmark's results and turns them into
// results.json, a markdown table (results.md and the README's Benchmarks
// section) and a PNG plot of latency by percentile and mode.
//
// Every number quoted is a median over the rounds of a run with its spread
// (min–max). A mode's cost is quoted as "added over the baseline": the
// difference to the baseline mode (direct) measured in the same round, so a
// round that the machine made slow for everyone cancels out.
package report

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// Results is everything one run measured.
type Results struct {
	Started    time.Time     `json:"started"`
	ElapsedSec float64       `json:"elapsed_s"`
	Machine    Machine       `json:"machine"`
	Settings   Settings      `json:"settings"`
	Modes      []Mode        `json:"modes"`
	Topologies []Named       `json:"topologies"`
	Tests      []Named       `json:"tests"`
	Samples    []Sample      `json:"samples"`
	Summary    []Row         `json:"summary"`
	KmeshdRSS  Stat          `json:"kmeshd_rss_mib"` // data-plane runs, over rounds
	Scale      *Scale        `json:"control_plane,omitempty"`
	Istiod     *Istiod       `json:"istiod_tier,omitempty"`
	Goals      []Goal        `json:"goals"`
	Errors     []string      `json:"errors,omitempty"`
	Notes      []string      `json:"notes,omitempty"`
	Durations  PhaseDuration `json:"phase_seconds"`
}

// Machine is where the run happened.
type Machine struct {
	CPUs     int     `json:"nproc"`
	Kernel   string  `json:"kernel"`
	CPU      string  `json:"cpu"`
	MemGiB   float64 `json:"mem_gib"`
	LoadAvg  string  `json:"loadavg_at_start"`
	Go       string  `json:"go"`
	Fortio   string  `json:"fortio"`
	HAProxy  string  `json:"haproxy"`
	IPTables string  `json:"iptables"`
}

// Settings are the knobs of the run.
type Settings struct {
	Rounds        int     `json:"rounds"`
	LatencySec    float64 `json:"latency_test_s"`
	ThroughputSec float64 `json:"throughput_test_s"`
	Quick         bool    `json:"quick"`
	Kmeshd        string  `json:"kmeshd"` // which kmeshd was measured
}

// PhaseDuration is how long each part of the run took.
type PhaseDuration struct {
	DataPlane    float64 `json:"data_plane"`
	ControlPlane float64 `json:"control_plane"`
	IstiodTier   float64 `json:"istiod_tier,omitempty"`
}

// Mode is one way of reaching the service.
type Mode struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Available   bool   `json:"available"`
	Reason      string `json:"reason,omitempty"` // why not available
}

// Named is a topology or a test with what it means.
type Named struct {
	Name        string `json:"name"`
	Label       string `json:"label"` // short, for table cells and plot titles
	Description string `json:"description"`
	// Group is the table a test goes to: "latency" (fixed rate; plotted)
	// or "throughput". Empty for topologies.
	Group string `json:"group,omitempty"`
}

// Sample is one test point of one mode, measured once.
type Sample struct {
	Round    int     `json:"round"`
	Mode     string  `json:"mode"`
	Topology string  `json:"topology"`
	Test     string  `json:"test"`
	P50      float64 `json:"p50_us"`
	P90      float64 `json:"p90_us"`
	P99      float64 `json:"p99_us"`
	Avg      float64 `json:"avg_us"`
	QPS      float64 `json:"qps"`
	Count    int     `json:"count"`
	Errors   int     `json:"errors"`
	// CPU is the CPU time of every process of the bench (client, servers,
	// proxy, kmeshd: the test bed's cgroups) per second of the test,
	// scaled to 1000 requests per second, in millicores.
	CPU float64 `json:"cpu_millicores_per_krps"`
	// MeshCPU is the part of CPU spent in the mesh's own processes
	// (kmeshd, HAProxy). Kernel work (eBPF programs, iptables, conntrack)
	// runs in the context of the client and server and is only in CPU.
	MeshCPU float64 `json:"mesh_cpu_millicores_per_krps"`
	// KmeshdCPU is the CPU of the busier of the two kmeshd processes
	// (their threads' run time), per 1000 requests per second, in
	// millicores; 0 in modes without kmeshd.
	KmeshdCPU float64 `json:"kmeshd_cpu_millicores_per_krps,omitempty"`
}

// Stat is a median over rounds with its spread.
type Stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// Row is one mode on one test point, over all rounds.
type Row struct {
	Mode     string `json:"mode"`
	Topology string `json:"topology"`
	Test     string `json:"test"`
	P50      Stat   `json:"p50_us"`
	P90      Stat   `json:"p90_us"`
	P99      Stat   `json:"p99_us"`
	QPS      Stat   `json:"qps"`
	CPU      Stat   `json:"cpu_millicores_per_krps"`
	MeshCPU  Stat   `json:"mesh_cpu_millicores_per_krps"`
	// KmeshdCPU is Sample.KmeshdCPU over the rounds.
	KmeshdCPU Stat `json:"kmeshd_cpu_millicores_per_krps"`
	// Added* are this mode minus the baseline in the same round (µs or
	// millicores); Ratio* this mode over the baseline in the same round.
	AddedP50 Stat `json:"added_p50_us"`
	AddedP90 Stat `json:"added_p90_us"`
	AddedP99 Stat `json:"added_p99_us"`
	AddedCPU Stat `json:"added_cpu_millicores_per_krps"`
	RatioP50 Stat `json:"ratio_p50"`
	RatioP99 Stat `json:"ratio_p99"`
	RatioQPS Stat `json:"ratio_qps"`
	Errors   int  `json:"errors"`   // failed calls, all rounds
	Baseline bool `json:"baseline"` // this is the mode the others are compared with
}

// Goal is one target of issue 6 and whether this run met it.
type Goal struct {
	Goal     string `json:"goal"`
	Target   string `json:"target"`
	Measured string `json:"measured"`
	// Met is "yes", "no", "noise" when the rounds straddle the target or
	// the effect is below zero (neither met nor missed), or "n/a" when the
	// run could not measure it.
	Met  string `json:"met"`
	Note string `json:"note,omitempty"`
}

// Scale is the control-plane run through the file source.
type Scale struct {
	Services        int       `json:"services"`
	Endpoints       int       `json:"endpoints"`
	Namespaces      int       `json:"namespaces"`
	FileMiB         float64   `json:"file_mib"`
	FirstSyncMs     float64   `json:"first_sync_ms"`               // kmeshd exec to /healthz/ready
	FirstSyncCPUMs  float64   `json:"first_sync_cpu_ms,omitempty"` // kmeshd's CPU time (user+system) at ready
	ParseMs         float64   `json:"parse_ms"`                    // of which reading the file (kmeshd's parser, timed in-process)
	ChangeMs        Stat      `json:"change_ms"`                   // file rename to the change in the maps
	ChangeP99Ms     float64   `json:"change_p99_ms"`               // over all changes
	Changes         int       `json:"changes"`                     // how many were measured
	ChangeSamplesMs []float64 `json:"change_samples_ms,omitempty"` // every change, in the order timed
	ChangeCPUMs     float64   `json:"change_cpu_ms,omitempty"`     // kmeshd's CPU time per change, averaged over them
	KmeshdRSSMiB    float64   `json:"kmeshd_rss_mib"`              // after the changes
	KmeshdPeakMiB   float64   `json:"kmeshd_peak_mib"`             // VmHWM
	MapMemory       []Map     `json:"maps"`                        // pinned maps of the instance
	MapMemoryMiB    float64   `json:"map_memory_mib"`              // their memlock, summed
	Startup         []Startup `json:"startup"`

	// The same mesh from a go-control-plane delta server (workload API).
	XDSFirstSyncMs    float64 `json:"xds_first_sync_ms,omitempty"`     // kmeshd exec to /healthz/ready
	XDSFirstSyncCPUMs float64 `json:"xds_first_sync_cpu_ms,omitempty"` // kmeshd's CPU time (user+system) at ready
	// The bench process's CPU time from kmeshd's exec to ready: the delta
	// server (building and sending the first state, its GC) on the cores
	// kmeshd has, and the bench polling kmeshd's readiness.
	XDSFirstSyncServerCPUMs float64 `json:"xds_first_sync_server_cpu_ms,omitempty"`
	XDSChangeMs             Stat    `json:"xds_change_ms"` // cache update to the change in the maps
	XDSChangeP99Ms          float64 `json:"xds_change_p99_ms,omitempty"`
	XDSChanges              int     `json:"xds_changes,omitempty"`
	// Every change, in the order timed (the first ones start right after
	// kmeshd is ready).
	XDSChangeSamplesMs []float64 `json:"xds_change_samples_ms,omitempty"`
	XDSChangeCPUMs     float64   `json:"xds_change_cpu_ms,omitempty"`   // kmeshd's CPU time per change, averaged over them
	XDSRSSMiB          float64   `json:"xds_kmeshd_rss_mib,omitempty"`  // after the changes
	XDSPeakMiB         float64   `json:"xds_kmeshd_peak_mib,omitempty"` // VmHWM
}

// Map is the memory of one BPF map.
type Map struct {
	Name       string  `json:"name"`
	MaxEntries uint32  `json:"max_entries"`
	MemlockMiB float64 `json:"memlock_mib"`
}

// Startup is how long a new workload waits for its first balanced
// connection, one way of getting there.
type Startup struct {
	What string `json:"what"`
	Ms   Stat   `json:"ms"`
}

// Summarize groups samples by test, topology and mode (in the order they
// first appear) and compares each mode with baseline in the same round.
func Summarize(samples []Sample, baseline string) []Row {
	type key struct{ test, topo, mode string }
	order := map[string]map[string]int{"test": {}, "topo": {}, "mode": {}}
	rank := func(dim, v string) {
		if _, ok := order[dim][v]; !ok {
			order[dim][v] = len(order[dim])
		}
	}
	groups := map[key][]Sample{}
	base := map[[3]any]Sample{} // test, topology, round
	for _, s := range samples {
		rank("test", s.Test)
		rank("topo", s.Topology)
		rank("mode", s.Mode)
		k := key{s.Test, s.Topology, s.Mode}
		groups[k] = append(groups[k], s)
		if s.Mode == baseline {
			base[[3]any{s.Test, s.Topology, s.Round}] = s
		}
	}
	keys := make([]key, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b key) int {
		return cmp.Or(
			cmp.Compare(order["test"][a.test], order["test"][b.test]),
			cmp.Compare(order["topo"][a.topo], order["topo"][b.topo]),
			cmp.Compare(order["mode"][a.mode], order["mode"][b.mode]))
	})

	rows := make([]Row, 0, len(keys))
	for _, k := range keys {
		ss := groups[k]
		r := Row{Mode: k.mode, Topology: k.topo, Test: k.test, Baseline: k.mode == baseline}
		var v [7][]float64 // p50 p90 p99 qps cpu mesh-cpu kmeshd-cpu
		var d [4][]float64 // added p50 p90 p99 cpu
		var q [3][]float64 // ratio p50 p99 qps
		for _, s := range ss {
			r.Errors += s.Errors
			for i, x := range []float64{s.P50, s.P90, s.P99, s.QPS, s.CPU, s.MeshCPU, s.KmeshdCPU} {
				v[i] = append(v[i], x)
			}
			b, ok := base[[3]any{s.Test, s.Topology, s.Round}]
			if !ok {
				continue
			}
			for i, x := range []float64{s.P50 - b.P50, s.P90 - b.P90, s.P99 - b.P99, s.CPU - b.CPU} {
				d[i] = append(d[i], x)
			}
			for i, x := range []float64{ratio(s.P50, b.P50), ratio(s.P99, b.P99), ratio(s.QPS, b.QPS)} {
				q[i] = append(q[i], x)
			}
		}
		r.P50, r.P90, r.P99, r.QPS, r.CPU, r.MeshCPU, r.KmeshdCPU = Over(v[0]), Over(v[1]), Over(v[2]), Over(v[3]), Over(v[4]), Over(v[5]), Over(v[6])
		r.AddedP50, r.AddedP90, r.AddedP99, r.AddedCPU = Over(d[0]), Over(d[1]), Over(d[2]), Over(d[3])
		r.RatioP50, r.RatioP99, r.RatioQPS = Over(q[0]), Over(q[1]), Over(q[2])
		rows = append(rows, r)
	}
	return rows
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}

// Over returns the median and spread of xs, ignoring NaNs. The median of
// an even count is the mean of the middle two.
func Over(xs []float64) Stat {
	xs = slices.DeleteFunc(slices.Clone(xs), math.IsNaN)
	if len(xs) == 0 {
		return Stat{}
	}
	slices.Sort(xs)
	n := len(xs)
	med := xs[n/2]
	if n%2 == 0 {
		med = (xs[n/2-1] + xs[n/2]) / 2
	}
	return Stat{Median: med, Min: xs[0], Max: xs[n-1], N: n}
}

// Percentile returns the p-th percentile (0..100) of xs by nearest rank.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Sorted(slices.Values(xs))
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// Find returns the row of mode on test and topology.
func Find(rows []Row, test, topology, mode string) (Row, bool) {
	for _, r := range rows {
		if r.Test == test && r.Topology == topology && r.Mode == mode {
			return r, true
		}
	}
	return Row{}, false
}
