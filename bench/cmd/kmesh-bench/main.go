// Command kmesh-bench is `make bench`: it measures Kmesh against the
// physical floor and the alternatives a user would pick, on test-bed nodes
// built from network namespaces (internal/testbed), and writes
// bench/results/<time>/ with results.json, results.md and latency.png.
//
// The data-plane part builds two nodes (a client and a server pod on
// node-a, another server pod on node-b) and, round after round, measures
// each mode in turn (A B C A B C ...) with fortio: direct to the pod
// address, kmesh (kmeshd balancing the service address), iptables
// (kube-proxy style DNAT in node-a's namespace), haproxy (a userspace hop in
// the client pod), kmesh-accel (kmeshd --accelerate, when kmeshd has the
// flag), the L7 hops (haproxy-http, kmesh-waypoint) and, cross-node,
// kmesh-mtls (two HBONE tunnel hops) with its reference haproxy-mtls (the
// same two hops by HAProxy with mutual TLS). The control-plane part starts
// kmeshd on a generated file of 10,000 services and 100,000 endpoints and
// times the first sync, endpoint changes and a new workload's first
// balanced connection.
//
// It runs as root and changes nothing outside the namespaces, cgroups and
// bpffs directories it creates: iptables rules live in test-bed namespaces,
// and everything goes when the run ends, Ctrl-C included.
//
// `kmesh-bench probe` is a helper the benchmark runs inside pods.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kmesh-go/kmesh/bench/fortio"
	"github.com/kmesh-go/kmesh/bench/report"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// config is the command line.
type config struct {
	out        string
	readme     string
	fortio     string
	kmeshdRev  string
	rounds     int
	latencyDur time.Duration
	tputDur    time.Duration
	modes      string
	tests      string
	quick      bool
	skipData   bool
	skipScale  bool
	xdsOnly    bool
	services   int
	endpoints  int
	namespaces int
	changes    int
	changeTime time.Duration
	startups   int
	verbose    bool
	render     string
	// tunnelPprof: kmesh-mtls's tunnels serve Go's profiles from here.
	tunnelPprof string
	// tunnelMaxProcs: kmesh-mtls's tunnels run with --max-procs this (0:
	// the tunnel's default).
	tunnelMaxProcs int
	// cpuPerNode adds the cross-node-pinned topology (pinned.go).
	cpuPerNode bool
	// The Istio tier at scale (istiod.go).
	skipIstiod                                   bool
	istioTools                                   string
	istiodServices, istiodPods, istiodNamespaces int
	istiodFlips                                  int
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "probe" {
		os.Exit(probeMain(os.Args[2:]))
	}
	cfg := parseFlags()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, cfg)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kmesh-bench:", err)
		os.Exit(1)
	}
}

func parseFlags() config {
	var c config
	flag.StringVar(&c.out, "out", "bench/results", "directory for the results; each run writes a <time> directory in it and points latest at it")
	flag.StringVar(&c.readme, "readme", "", "README to update between its <!-- bench:begin --> and <!-- bench:end --> lines, after a full run without errors (empty: none)")
	flag.StringVar(&c.kmeshdRev, "kmeshd-rev", "", "git revision to build kmeshd from, such as HEAD (default: the working tree as it is)")
	flag.StringVar(&c.fortio, "fortio", "bin/fortio", "fortio binary (make bench installs fortio "+fortio.Version+" there)")
	flag.IntVar(&c.rounds, "rounds", 3, "rounds; each measures every mode once, in turn")
	flag.DurationVar(&c.latencyDur, "latency-duration", 3*time.Second, "length of each fixed-rate latency test")
	flag.DurationVar(&c.tputDur, "throughput-duration", 2*time.Second, "length of each max-rate test")
	flag.StringVar(&c.modes, "modes", "", "comma-separated modes to run (default: all)")
	flag.StringVar(&c.tests, "tests", "", "comma-separated data-plane tests to run: lat-c1, lat-c16, lat-c64, max-c16, close-c1, tcp-c1 (default: all)")
	flag.BoolVar(&c.quick, "quick", false, "a short run: 1s tests, 1,000 services / 10,000 endpoints, fewer changes")
	flag.BoolVar(&c.skipData, "skip-dataplane", false, "skip the data-plane tests")
	flag.BoolVar(&c.skipScale, "skip-scale", false, "skip the control-plane tests")
	flag.BoolVar(&c.xdsOnly, "xds-only", false, "run only the xDS part of the control-plane test (first sync, endpoint changes, memory), to iterate on it")
	flag.IntVar(&c.services, "services", 10000, "services of the control-plane test")
	flag.IntVar(&c.endpoints, "endpoints", 100000, "endpoints of the control-plane test")
	flag.IntVar(&c.namespaces, "namespaces", 100, "namespaces the control-plane test's services and endpoints are spread over")
	flag.IntVar(&c.changes, "changes", 50, "endpoint changes timed in the control-plane test, at most")
	flag.DurationVar(&c.changeTime, "change-time", 2*time.Minute, "stop timing endpoint changes after this long (at least 3 are timed)")
	flag.IntVar(&c.startups, "startups", 5, "workload start-ups timed per way (at most 3 on the big mesh, where each costs a full re-read)")
	flag.BoolVar(&c.verbose, "verbose", false, "copy the processes' logs to stderr (they always go to bench.log)")
	flag.IntVar(&c.tunnelMaxProcs, "tunnel-max-procs", 0, "kmesh-mtls: run both kmeshd tunnels with --max-procs N (0: the tunnel's default), to compare settings")
	flag.BoolVar(&c.cpuPerNode, "cpu-per-node", false, "also measure the cross-node path with each node's processes on a CPU of its own (topology "+topoPinned+": node-a's on the first CPU, node-b's on the second)")
	flag.StringVar(&c.tunnelPprof, "tunnel-pprof", "", "kmesh-mtls: node-a's kmeshd tunnel serves /debug/pprof/ on this address, node-b's on the next port (to profile the tunnels under load)")
	flag.BoolVar(&c.skipIstiod, "skip-istiod", false, "skip the Istio tier at scale (stock istiod, kube-apiserver)")
	flag.StringVar(&c.istioTools, "istio-tools", istioToolsDir(), "directory of kube-control-plane, pilot-discovery and istio-crds.yaml (make tools; default $KMESH_TOOLS_DIR or ~/.cache/kmesh-tools/bin)")
	flag.IntVar(&c.istiodServices, "istiod-services", 2000, "Services registered in the API server of the Istio tier")
	flag.IntVar(&c.istiodPods, "istiod-pods", 10000, "Pods registered in the API server of the Istio tier, spread over its Services")
	flag.IntVar(&c.istiodNamespaces, "istiod-namespaces", 10, "namespaces of the Istio tier's Services and Pods")
	flag.IntVar(&c.istiodFlips, "istiod-flips", 30, "pod readiness flips timed in the Istio tier")
	flag.StringVar(&c.render, "render", "", "measure nothing: re-read DIR/results.json and rewrite its tables, plot and goals (and -readme)")
	flag.Parse()
	if c.quick {
		c.latencyDur, c.tputDur = time.Second, time.Second
		c.services, c.endpoints, c.namespaces = 1000, 10000, 10
		c.changes, c.startups, c.changeTime = 10, 2, 30*time.Second
		c.istiodServices, c.istiodPods, c.istiodNamespaces, c.istiodFlips = 200, 1000, 2, 10
	}
	if c.rounds < 1 {
		c.rounds = 1
	}
	// Two minutes per 100,000 endpoints: a first sync of 500,000 on a
	// busy machine takes more than the two minutes that hold at 100,000.
	readyTimeout = max(readyTimeout, time.Duration(c.endpoints/100000)*2*time.Minute)
	return c
}

func run(ctx context.Context, cfg config) error {
	if cfg.render != "" {
		return render(cfg)
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: it builds network namespaces and loads eBPF programs (sudo make bench)")
	}
	start := time.Now()
	res := &report.Results{
		Started: start,
		Settings: report.Settings{Rounds: cfg.rounds, LatencySec: cfg.latencyDur.Seconds(),
			ThroughputSec: cfg.tputDur.Seconds(), Quick: cfg.quick},
	}
	var err error
	if cfg.fortio, err = filepath.Abs(cfg.fortio); err != nil {
		return err
	}
	if res.Machine, err = machine(cfg.fortio); err != nil {
		return err
	}

	dir := filepath.Join(cfg.out, start.UTC().Format("20060102-150405"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(dir, "bench.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	var logw io.Writer = logFile
	if cfg.verbose {
		logw = io.MultiWriter(logFile, os.Stderr)
	}
	logf("results go to %s; process logs to %s", dir, logFile.Name())

	kmeshd, desc, err := buildKmeshd(cfg.kmeshdRev)
	if err != nil {
		return err
	}
	if cfg.kmeshdRev != "" {
		defer os.RemoveAll(filepath.Dir(kmeshd))
	}
	res.Settings.Kmeshd = desc
	logf("kmeshd: %s", desc)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bed, err := testbed.New(testbed.Options{Prefix: "kmbench", Log: logw})
	if err != nil {
		return err
	}
	defer func() {
		logf("removing the test bed")
		if err := bed.Close(); err != nil {
			logf("close test bed: %v", err)
		}
	}()
	flags, err := flagsOf(kmeshd)
	if err != nil {
		return err
	}
	tools := tools{kmeshd: kmeshd, kmeshdFlags: flags, fortio: cfg.fortio, self: self}

	if !cfg.skipData {
		t0 := time.Now()
		if err := runDataplane(ctx, bed, tools, cfg, res); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			res.Errors = append(res.Errors, "data plane: "+err.Error())
			logf("data plane: %v", err)
		}
		res.Durations.DataPlane = time.Since(t0).Seconds()
	}
	if !cfg.skipScale {
		t0 := time.Now()
		scale, err := runScale(ctx, bed, tools, cfg)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			res.Errors = append(res.Errors, "control plane: "+err.Error())
			logf("control plane: %v", err)
		}
		res.Scale = scale
		res.Durations.ControlPlane = time.Since(t0).Seconds()
	}
	if !cfg.skipIstiod {
		t0 := time.Now()
		ist, err := runIstiod(ctx, bed, tools, cfg)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			res.Errors = append(res.Errors, "istiod tier: "+err.Error())
			logf("istiod tier: %v", err)
		}
		res.Istiod = ist
		res.Durations.IstiodTier = time.Since(t0).Seconds()
	}
	res.Notes = methodNotes
	res.Summary = report.Summarize(res.Samples, modeDirect)
	res.Goals = goals(res)
	res.ElapsedSec = time.Since(start).Seconds()
	if err := write(res, dir, cfg); err != nil {
		return err
	}
	logf("done in %s; see %s", time.Since(start).Round(time.Second), filepath.Join(dir, "results.md"))
	if len(res.Errors) > 0 {
		return fmt.Errorf("%d parts failed: %s", len(res.Errors), strings.Join(res.Errors, "; "))
	}
	return nil
}

// render rewrites the outputs of an earlier run from its results.json, with
// this build's tables, goals and notes: for when the report, not the
// measurement, changed.
func render(cfg config) error {
	dir := filepath.Clean(cfg.render)
	data, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		return err
	}
	var res report.Results
	if err := json.Unmarshal(data, &res); err != nil {
		return fmt.Errorf("%s/results.json: %w", dir, err)
	}
	res.Notes = methodNotes
	res.Summary = report.Summarize(res.Samples, modeDirect)
	res.Goals = goals(&res)
	cfg.out, cfg.quick = filepath.Dir(dir), res.Settings.Quick
	return write(&res, dir, cfg)
}

// buildKmeshd builds kmeshd from the working tree, or from a git revision
// (exported with git archive into a temporary directory, so the
// repository is not touched), and says which.
func buildKmeshd(rev string) (bin, desc string, err error) {
	git := func(args ...string) (string, error) {
		out, err := exec.Command("git", args...).Output()
		return strings.TrimSpace(string(out)), err
	}
	if rev == "" {
		bin, err = testbed.Build("./cmd/kmeshd")
		d, gerr := git("describe", "--always", "--dirty")
		if gerr != nil {
			d = "unknown"
		}
		return bin, "built from the working tree at " + d, err
	}
	commit, err := git("rev-parse", "--short", rev)
	if err != nil {
		return "", "", fmt.Errorf("kmeshd revision %s: %w", rev, err)
	}
	dir, err := os.MkdirTemp("", "kmesh-bench-src-")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(dir)
	archive := exec.Command("sh", "-c", `git archive "$1" | tar -x -C "$2"`, "sh", commit, dir)
	if out, err := archive.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("git archive %s: %w: %s", commit, err, out)
	}
	binDir, err := os.MkdirTemp("", "kmesh-bench-bin-")
	if err != nil {
		return "", "", err
	}
	bin = filepath.Join(binDir, "kmeshd")
	build := exec.Command("go", "build", "-o", bin, "./cmd/kmeshd")
	build.Dir = dir
	if out, err := build.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("build kmeshd at %s: %w: %s", commit, err, out)
	}
	return bin, "built from commit " + commit, nil
}

// methodNotes go into every results.md, to read the numbers by.
var methodNotes = []string{
	"fortio runs as Istio's runner does (no jitter, not uniform, -httpbufferkb 128) but with -r 0.00001: 10 µs histogram resolution, buckets 10–20% of the value wide, so differences of a few µs are below what one sample resolves; the medians over rounds are what to compare.",
	"Each mode's set-up is applied only for its turn and removed after it: kmeshd is stopped and its programs detached (kmeshd cleanup), iptables nat tables are flushed, which also unhooks conntrack. Other modes see a clean path.",
	"The test-bed nodes bridge their pods (like a bridge CNI) and the kernel default bridge-nf-call-iptables=1 holds in every namespace, so in the iptables mode bridged pod traffic passes node-a's nat hooks, as kube-proxy on a bridge CNI needs.",
	"CPU includes the load generator and the servers; the mesh's own cost is the added column.",
	"All processes share the machine's CPUs with each other (client, servers, proxy, kmeshd) and with whatever else runs on it.",
}

// tools are the binaries a run uses.
type tools struct {
	kmeshd, fortio, self string
	kmeshdFlags          map[string]bool // the long flags of kmeshd --help
}

// write writes results.json, results.md and latency.png into dir, points
// <out>/latest at dir and updates the README section.
func write(res *report.Results, dir string, cfg config) error {
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(report.Markdown(res)), 0o644); err != nil {
		return err
	}
	if len(res.Summary) > 0 {
		f, err := os.Create(filepath.Join(dir, "latency.png"))
		if err != nil {
			return err
		}
		err = report.PNG(f, res)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	latest := filepath.Join(cfg.out, "latest")
	os.Remove(latest)
	if err := os.Symlink(filepath.Base(dir), latest); err != nil {
		return err
	}
	switch {
	case cfg.readme == "":
	case cfg.quick || cfg.xdsOnly || cfg.tests != "" || len(res.Errors) > 0:
		logf("%s left as it was: a quick, partial (-xds-only, -tests) or failed run", cfg.readme)
	default:
		return updateReadme(cfg.readme, report.ReadmeSection(res, filepath.ToSlash(dir)))
	}
	return nil
}

const (
	readmeBegin = "<!-- bench:begin -->"
	readmeEnd   = "<!-- bench:end -->"
)

// updateReadme replaces what lies between the bench markers of the README.
func updateReadme(path, section string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(data)
	i, j := strings.Index(s, readmeBegin), strings.Index(s, readmeEnd)
	if i < 0 || j < i {
		return fmt.Errorf("%s: no %s ... %s lines to put the results between", path, readmeBegin, readmeEnd)
	}
	s = s[:i+len(readmeBegin)] + "\n" + section + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}

// logf prints progress to stdout.
func logf(format string, args ...any) {
	fmt.Printf("%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
