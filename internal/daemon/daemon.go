// Package daemon is kmeshd: it loads the data plane, takes the mesh from
// its config source, writes it into the maps, enrolls this node's workloads
// and serves the admin API, until its context ends. The data plane outlives
// it: stopping the daemon leaves programs and maps pinned and in force.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kmesh-go/kmesh/internal/admin"
	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/cgroupv2"
	"github.com/kmesh-go/kmesh/internal/dataplane"
	"github.com/kmesh-go/kmesh/internal/enroll"
	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/metrics"
	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/file"
	"github.com/kmesh-go/kmesh/internal/source/kube"
	"github.com/kmesh-go/kmesh/internal/source/xds"
	"github.com/kmesh-go/kmesh/internal/telemetry"
	"github.com/kmesh-go/kmesh/internal/tunnel"
)

// Config is kmeshd's command line.
type Config struct {
	ConfigFile   string // YAML mesh file; "" = the embedded default
	Node         string
	Cgroup       string // "" = the root of the cgroup v2 hierarchy
	BPFDir       string // "" = DefaultBPFDir(Node)
	AdminAddress string
	// AdminSocket is the control socket: the admin API with its changes
	// (enroll, log level, access log), root only. "" =
	// admin.DefaultSocket(Node).
	AdminSocket string
	Limits      bpf.Limits
	// XDS, when its Address is set, is the config source instead of the
	// file (see xds.go).
	XDS XDSConfig
	// EnrollNetns are network namespaces this node enrolls whatever the
	// config says: static enrollment for hosts without Kubernetes. xDS
	// never enrolls anything (its workloads have no netns).
	EnrollNetns []string
	// Kube, when enabled (a kubeconfig, or running in a pod), enrolls this
	// node's pods labelled for the mesh (see internal/source/kube).
	Kube kube.Config
	// Identity selects the CA of workload certificates: a local CA, istiod,
	// or none (see internal/identity).
	Identity identity.Config

	// Accelerate moves data between enrolled sockets of this node socket
	// to socket (sockops + sk_msg).
	Accelerate bool
	// Telemetry records every connection of enrolled workloads for the
	// istio_tcp_* metrics, the access log and /connections.
	Telemetry bool
	// AccessLog is the access log's state at start; /accesslog switches it.
	AccessLog bool
	// AccessLogFile receives the access log, one JSON line per closed
	// connection; "" is standard output.
	AccessLogFile string
	// TunnelStateDir is where kmeshd writes the HBONE tunnel's state
	// (kmeshd tunnel reads it); "" = tunnel.DefaultStateDir(Node).
	TunnelStateDir string

	// features, when set, edits the kernel probe's result (bpf.Options);
	// tests in this package simulate a kernel without bpf_loop with it.
	features func(bpf.Features) bpf.Features

	MetricsAddress   string         // Prometheus /metrics
	ReadinessAddress string         // /healthz/ready alone, for probes
	LogLevel         *slog.LevelVar // the log handler's level, changed through /logging; nil: fixed
}

// XDSConfig makes an xDS control plane kmeshd's config source instead of
// the file. Its address selects it.
type XDSConfig struct {
	xds.Config        // Node is filled from the daemon's
	Mode       string // xds.ModeWorkload (default) or xds.ModeADS
}

// DefaultBPFDir is where a node's pins live unless --bpf-dir says otherwise.
func DefaultBPFDir(node string) string { return filepath.Join("/sys/fs/bpf/kmesh", node) }

// Run runs the daemon until ctx ends. It returns an error, and the daemon
// exits non-zero, when start-up fails: a bad config file, a data plane
// that cannot load, an admin address in use.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if cfg.Node == "" {
		return errors.New("--node is required")
	}
	// One source owns the mesh. A file that would be read and then ignored
	// (and "reloaded" on SIGHUP to no effect) misleads whoever wrote it.
	if cfg.ConfigFile != "" && cfg.XDS.Address != "" {
		return fmt.Errorf("--config %s and --xds-address %s both set: the mesh comes from one source; drop --config to use xDS, or --xds-address to use the file", cfg.ConfigFile, cfg.XDS.Address)
	}
	if cfg.BPFDir == "" {
		cfg.BPFDir = DefaultBPFDir(cfg.Node)
	}
	if cfg.AdminSocket == "" {
		cfg.AdminSocket = admin.DefaultSocket(cfg.Node)
	}
	if cfg.Cgroup == "" {
		root, err := cgroupv2.Root()
		if err != nil {
			return err
		}
		cfg.Cgroup = root
	}
	log = log.With("node", cfg.Node)
	var took startup
	began := time.Now()
	startupMemory()

	src := file.New(cfg.ConfigFile, cfg.Node, log.With("component", "file"))
	xsrc, err := newXDSSource(cfg, log)
	if err != nil {
		return err
	}
	if err := checkNetns(cfg.EnrollNetns); err != nil {
		return err
	}
	ksrc, err := newKubeSource(cfg, log)
	if err != nil {
		return err
	}
	certs, err := newCertSource(cfg, log)
	if err != nil {
		return err
	}
	opts := bpf.Options{Dir: cfg.BPFDir, Cgroup: cfg.Cgroup, Limits: cfg.Limits, Accelerate: cfg.Accelerate, Telemetry: cfg.Telemetry, Features: cfg.features}
	bpfLog := log.With("component", "bpf")
	var mesh *model.Mesh
	var dp *bpf.Datapath
	if xsrc == nil {
		// The programs load while the config is read: two CPU-bound
		// steps of a first sync, on cores of their own when there are
		// two. Open changes nothing in force; a config that is refused
		// is the error, and the data plane loaded meanwhile goes, with
		// the directory it made.
		opened := make(chan error, 1)
		go func() {
			var err error
			dp, err = bpf.Open(opts, bpfLog)
			took.open = time.Since(began)
			opened <- err
		}()
		mesh, err = src.Load()
		took.config = time.Since(began)
		took.cpu.config = processCPU()
		if openErr := <-opened; err != nil {
			if openErr == nil {
				dp.Discard()
			}
			return err
		} else if openErr != nil {
			return openErr
		}
	}
	xctx, stopXDS := context.WithCancel(ctx)
	defer stopXDS()
	if xsrc != nil {
		if ksrc == nil {
			// The client receives, decodes and builds the first push
			// while the programs load, as the file is read above; its
			// first mesh waits in wait until the daemon takes it. With
			// Kubernetes the client starts later, once the affinity
			// overlay it goes through exists.
			xsrc.start(xctx)
		}
		openStart := time.Now()
		if dp, err = bpf.Open(opts, bpfLog); err != nil {
			return err
		}
		took.open = time.Since(openStart)
	}
	defer dp.Close()
	writer, err := dataplane.New(dataplane.MapStore(&dp.KmeshMaps), cfg.Limits, log.With("component", "dataplane"))
	if err != nil {
		return err
	}
	if certs != nil {
		// Connections from other nodes prove who they are with a
		// certificate; an address there proves nothing.
		writer.SetIdentityNode(cfg.Node)
	}
	adminEnrolled, err := bpf.OpenEnrollments(cfg.BPFDir, cfg.Limits.Workloads)
	if err != nil {
		return err
	}
	defer adminEnrolled.Close()
	d := &daemon{
		node:          cfg.Node,
		source:        sourceName(cfg.ConfigFile),
		writer:        writer,
		enroller:      enroll.New(dp.KmManage, log.With("component", "enroll")),
		log:           log,
		static:        cfg.EnrollNetns,
		maps:          &dp.KmeshMaps,
		adminEnrolled: adminEnrolled,
		certs:         certs,
		authzOff:      !dp.AuthzEnforced(),
	}
	if certs != nil {
		if cfg.TunnelStateDir == "" {
			cfg.TunnelStateDir = tunnel.DefaultStateDir(cfg.Node)
		}
		d.tunnelView = newTunnelView(cfg.TunnelStateDir)
		d.tunnel = newTunnelHandoff(cfg.TunnelStateDir, cfg.Node, d.currentState, d.enrolledWorkloads, log.With("component", "tunnel"))
		tctx, stopTunnel := context.WithCancel(ctx)
		defer stopTunnel()
		go d.tunnel.run(tctx)
	}
	if err := d.loadAdminEnrolled(); err != nil {
		return err
	}
	if stats, err := metrics.EnableProgramStats(); err != nil {
		log.Warn("BPF program statistics unavailable; kmesh_bpf_program_* stay 0", "err", err)
	} else {
		defer stats.Close()
	}
	kctx, stopKube := context.WithCancel(ctx)
	defer stopKube()
	d.startKube(kctx, ksrc)
	if ksrc != nil && xsrc != nil {
		// istiod's workload API has no sessionAffinity: read it from
		// the Services.
		xsrc.affinity = newAffinityOverlay(d.update, log.With("component", "kube"))
		xsrc.affinity.run(kctx, ksrc)
	}
	d.runCerts(kctx)
	d.metrics = metrics.New(metrics.Sources{Maps: d.mapStats, Programs: metrics.PinnedPrograms(cfg.BPFDir), Authz: d.authzStats, Outliers: d.outlierStats}, log.With("component", "metrics"))
	d.kind = sourceFile
	if xsrc != nil {
		d.kind = sourceXDS
	}
	d.metrics.ConfigSource(d.kind)
	src.OnReject(func(err error) { d.metrics.ConfigUpdate(sourceFile, err) })

	accessLog, closeAccessLog, err := openAccessLog(cfg.AccessLogFile)
	if err != nil {
		return err
	}
	defer closeAccessLog()
	d.accessLog.Store(cfg.AccessLog)
	d.telemetry, err = telemetry.Start(telemetry.Options{
		Maps: &dp.KmeshMaps, Metrics: d.metrics, AccessLog: &d.accessLog, AccessLogger: accessLog,
		Iter: dp.Program(bpf.KmeshProgKmConnIter), Namespaces: d.enroller.Enrolled,
		Log: log.With("component", "telemetry"),
	})
	if err != nil {
		return err
	}
	defer d.telemetry.Close()
	d.metrics.BeforeScrape(d.telemetry.Flush)

	surfaces, err := d.listen(cfg)
	if err != nil {
		return err
	}
	// Fill the maps before the programs are swapped in: until Commit, a
	// previous instance's programs keep serving with their maps.
	if xsrc != nil {
		// The control plane's first full push is the initial state; the
		// daemon is not ready until it is applied.
		d.source = xsrc.name
		if ksrc != nil {
			xsrc.start(xctx)
		}
		log.Info("waiting for the control plane's first push", "source", d.source)
		if mesh, err = xsrc.wait(xctx); err != nil {
			return err
		}
		took.config = time.Since(began)
		took.cpu.config = processCPU()
		applyStart := time.Now()
		err = d.apply(mesh)
		took.apply = time.Since(applyStart)
		took.cpu.apply = processCPU()
		xsrc.applied(d.apply, d.update, err)
	} else {
		applyStart := time.Now()
		err = d.apply(mesh)
		took.apply = time.Since(applyStart)
		took.cpu.apply = processCPU()
	}
	if err != nil {
		return err
	}
	commitStart := time.Now()
	if err := dp.Commit(); err != nil {
		return err
	}
	took.commit = time.Since(commitStart)
	// Before ready, not beside the first changes: the forced collection
	// marks the whole live heap (~130 MB at 100,000 endpoints) on both
	// cores, and a change that arrives meanwhile waited for a core and
	// paid mark assists (10-95 ms instead of 1-2 ms for the changes
	// pushed in the first ~0.6 s after ready).
	settleStart := time.Now()
	settleMemory(log)
	took.settle = time.Since(settleStart)
	took.total = time.Since(began)
	took.cpu.settle = processCPU()
	log.Info("kmeshd ready", "restart", dp.Reused, "cgroup", cfg.Cgroup, "bpf_dir", cfg.BPFDir, "admin", surfaces[0].Addr().String(), "metrics", surfaces[1].Addr().String(), "readiness", surfaces[2].Addr().String(), "admin_socket", cfg.AdminSocket, "source", d.source, took.attr(), took.cpuAttr())

	ctx, stop := context.WithCancel(ctx)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				if xsrc != nil {
					log.Info("SIGHUP ignored: the mesh comes from xDS, which pushes every change", "source", d.source)
					continue
				}
				log.Info("SIGHUP: reloading config")
				src.Reload()
			case <-ctx.Done():
				return
			}
		}
	}()

	errc := make(chan error, 2)
	go func() { errc <- surfaces.Serve(ctx) }()
	go func() {
		if xsrc != nil {
			errc <- <-xsrc.done
			return
		}
		errc <- src.RunChanges(ctx, d.apply, d.update)
	}()
	err = <-errc
	stop()
	err = errors.Join(err, <-errc)
	log.Info("kmeshd stopped; the data plane stays in force", "bpf_dir", cfg.BPFDir)
	return err
}

// Cleanup removes the data plane of the instance pinned in dir.
func Cleanup(dir string) error { return bpf.Remove(dir) }

func sourceName(path string) string {
	if path == "" {
		return "<embedded default>"
	}
	return path
}

// daemon is the state the admin API shows.
type daemon struct {
	node   string
	static []string // --enroll-netns
	// adminEnrolled keeps the namespaces enrolled through the admin API
	// (kmeshctl enroll) across restarts.
	adminEnrolled *bpf.Enrollments
	source        string
	writer        *dataplane.Dataplane
	enroller      *enroll.Enroller
	log           *slog.Logger
	maps          *bpf.KmeshMaps
	metrics       *metrics.Metrics
	kind          string // source label of the config metrics: file or xds
	// accessLog is the access log switch (/accesslog); the connection
	// telemetry reads it.
	accessLog atomic.Bool
	telemetry *telemetry.Telemetry
	// certs holds this node's workload certificates; nil without a CA.
	certs *identity.Cache
	// tunnel hands the HBONE tunnel process its state (tunnel.go);
	// tunnelView asks it what it carries (tunnelview.go). Both nil
	// without a CA.
	tunnel     *tunnelHandoff
	tunnelView *tunnelView
	// authzOff is set when the kernel cannot enforce policies (no
	// bpf_loop): kmeshd is then not ready while the mesh has any.
	authzOff bool

	// mu serializes changes; state is the mesh as the maps hold it.
	mu       sync.Mutex
	state    *model.State
	version  uint64
	retrying bool // a failed write is being retried (retryLocked)

	enrolling enrollment
	// unresolvedWaypoints are the services whose control-plane waypoint
	// is unknown (service key -> why): their connects are refused.
	unresolvedWaypoints map[string]string
	// unservedWorkloads are the workloads with a waypoint of their own
	// (workload key -> waypoint), reached only through it.
	unservedWorkloads map[string]string
}

// apply hands a whole mesh from a source (a file, the first xDS state)
// to the dataplane: the first one as a full sync (which adopts a previous
// instance's entries), later ones as the changes against the state kept.
func (d *daemon) apply(m *model.Mesh) error {
	// Services with a waypoint are balanced over its instances; the maps,
	// the dump and explain all see that mesh.
	m = model.WithWaypointRedirect(m)
	d.mu.Lock()
	st := d.state
	d.mu.Unlock()
	if st == nil {
		return d.applyFull(m)
	}
	// L7 objects are whole-mesh data for kmesh-waypoint and the dump;
	// the dataplane does not read them.
	st.SetL7(m)
	return d.update(st.DiffMesh(m))
}

func (d *daemon) applyFull(m *model.Mesh) error {
	if err := d.applyTunnels(m); err != nil {
		d.metrics.ConfigUpdate(d.kind, err)
		return fmt.Errorf("apply config: %w", err)
	}
	// The state is built while the maps are written, on the other core:
	// both only read m, and at 500,000 endpoints the state is ~1.4 s of
	// CPU, the translation ~1 s and the writes ~1.7 s. (An xDS source's
	// change index, once a third task here, is built before the apply.)
	st := model.NewState()
	diffed := make(chan *model.Changes, 1)
	go func() {
		c := st.DiffMesh(m)
		st.Apply(c)
		diffed <- c
	}()
	err := d.writer.Apply(m)
	c := <-diffed
	if err != nil {
		d.metrics.ConfigUpdate(d.kind, err)
		return fmt.Errorf("apply config: %w", err)
	}
	st.SetL7(m)
	d.writer.FollowState(st)
	d.telemetry.SetState(st)
	d.mu.Lock()
	d.state = st
	d.mu.Unlock()
	return d.applied(c, &model.Changes{}, true)
}

// update applies one change to the state and the maps. A change that does
// not fit, or names what does not exist, is refused and nothing changes.
// A failed map write undoes the state and leaves the maps to be brought
// back to it: by the source's retry (xDS resyncs), and by a retry here
// with backoff, so a file source converges without waiting for its next
// change.
func (d *daemon) update(c *model.Changes) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state == nil {
		return errors.New("apply config: no initial state")
	}
	if c.Empty() {
		return nil
	}
	if err := d.state.Check(c); err != nil {
		d.metrics.ConfigUpdate(d.kind, err)
		return fmt.Errorf("apply config: %w", err)
	}
	undo := d.state.Apply(c)
	// Tunnels first: a new HBONE destination is tunnelled from its first
	// connect, never sent in plaintext meanwhile.
	if err := d.updateTunnels(c, undo); err != nil {
		d.state.Apply(undo)
		d.updateTunnels(c, undo)
		d.metrics.ConfigUpdate(d.kind, err)
		return fmt.Errorf("apply config: %w", err)
	}
	if err := d.writer.Update(c, d.state); err != nil {
		d.state.Apply(undo)
		d.updateTunnels(c, undo)
		d.metrics.ConfigUpdate(d.kind, err)
		if !errors.Is(err, dataplane.ErrMapFull) {
			d.retryLocked()
		}
		return fmt.Errorf("apply config: %w", err)
	}
	d.mu.Unlock()
	err := d.applied(c, undo, false)
	d.mu.Lock() // for the deferred unlock
	return err
}

// touchesNode reports whether c (undo: what it replaced) changes a
// workload of node.
func touchesNode(c, undo *model.Changes, node string) bool {
	for _, ws := range [][]*model.Workload{c.Workloads, undo.Workloads} {
		for _, w := range ws {
			if w.Node == node {
				return true
			}
		}
	}
	return false
}

// retryLocked writes the kept state again after a failed write, with
// backoff, until it applies or a newer change does. d.mu is held.
func (d *daemon) retryLocked() {
	if d.retrying {
		return
	}
	d.retrying = true
	go func() {
		for wait := 100 * time.Millisecond; ; wait = min(2*wait, 15*time.Second) {
			time.Sleep(wait)
			d.mu.Lock()
			err := d.writer.Apply(d.state.Mesh())
			if err == nil {
				d.writer.FollowState(d.state) // not the snapshot's copy
				d.retrying = false
				d.mu.Unlock()
				d.log.Info("maps brought back to the kept state after a failed write")
				return
			}
			d.mu.Unlock()
			d.log.Warn("retrying a failed map write", "err", err, "retry_in", 2*wait)
		}
	}()
}

// applied finishes a change the maps hold: metrics, certificates,
// enrollment, the log.
func (d *daemon) applied(c, undo *model.Changes, full bool) error {
	d.metrics.ConfigUpdate(d.kind, nil)
	notEnforced := map[string]int{}
	// Not d.state.Mesh(): a snapshot of the whole mesh per change is the
	// O(mesh) cost changes exist to avoid.
	for _, p := range d.state.UnenforcedPolicies() {
		notEnforced[p.Action]++
		d.log.Warn("policy accepted but not enforced on this node", "policy", p.Key(), "reason", p.Reason)
	}
	if d.authzOff {
		// The kernel enforces none of them: policy never fails open, so
		// they are counted and kmeshd is not ready (NotReady).
		n := 0
		for a, k := range d.state.PolicyActions() {
			notEnforced[string(a)] += k
			n += k
		}
		if n > 0 && (full || len(c.Policies)+len(c.RemovedPolicies) > 0) {
			d.log.Error("authorization policies not enforced: kmeshd is not ready", "policies", n, "reason", bpf.NoAuthzReason)
		}
	}
	d.metrics.SetPoliciesNotEnforced(notEnforced)
	d.trackWaypoints(c, full)
	if d.certs != nil && (full || touchesNode(c, undo, d.node)) {
		d.trackIdentities(d.state.Mesh())
	}
	enrolled, enrollErr := d.enrollChanged(c, undo, full)
	d.mu.Lock()
	d.version++
	v := d.version
	d.mu.Unlock()
	d.publishTunnelState(v)
	services, workloads, policies := d.state.Counts()
	if full || c.Len() > 16 {
		d.log.Info("config applied", "version", v, "services", services, "workloads", workloads, "policies", policies, "enrolled", enrolled, "changes", c.String())
	} else {
		d.log.Debug("config applied", "version", v, "changes", c.String())
	}
	if enrollErr != nil {
		d.log.Error("enrollment incomplete", "err", enrollErr)
	}
	return nil
}

// trackWaypoints keeps the services whose waypoint is unknown, logs each
// one that becomes so, and sets kmesh_waypoint_unresolved_services; and
// the same for workloads with a waypoint of their own (reached only
// through it) and kmesh_waypoint_unserved_workloads. It looks only at what c changes.
func (d *daemon) trackWaypoints(c *model.Changes, full bool) {
	if full || d.unresolvedWaypoints == nil {
		d.unresolvedWaypoints = map[string]string{}
	}
	for _, s := range c.Services {
		key := s.Key()
		if s.Waypoint == nil || s.Waypoint.Unresolved == "" {
			if _, was := d.unresolvedWaypoints[key]; was {
				d.log.Info("waypoint resolved", "service", key, "waypoint", s.Waypoint)
			}
			delete(d.unresolvedWaypoints, key)
			continue
		}
		if d.unresolvedWaypoints[key] != s.Waypoint.Unresolved {
			d.log.Warn("service waypoint unknown: connections refused", "service", key,
				"waypoint", s.Waypoint.Address, "reason", s.Waypoint.Unresolved)
		}
		d.unresolvedWaypoints[key] = s.Waypoint.Unresolved
	}
	for _, key := range c.RemovedServices {
		delete(d.unresolvedWaypoints, key)
	}
	d.metrics.SetWaypointUnresolved(len(d.unresolvedWaypoints))

	if full || d.unservedWorkloads == nil {
		d.unservedWorkloads = map[string]string{}
	}
	for _, w := range c.Workloads {
		key := w.Key()
		if w.Waypoint == "" {
			if _, was := d.unservedWorkloads[key]; was {
				d.log.Info("workload waypoint removed: connections go to the workload again", "workload", key)
			}
			delete(d.unservedWorkloads, key)
			continue
		}
		if d.unservedWorkloads[key] != w.Waypoint {
			d.log.Info("workload waypoint: connections to its address go through the waypoint", "workload", key, "waypoint", w.Waypoint)
		}
		d.unservedWorkloads[key] = w.Waypoint
	}
	for _, key := range c.RemovedWorkloads {
		delete(d.unservedWorkloads, key)
	}
	d.metrics.SetWaypointUnserved(len(d.unservedWorkloads))
}

// NotReady says why kmeshd is not ready, "" when it is (admin.State):
// before the first config is in the maps; and while the mesh has policies
// the kernel cannot enforce, so that a node without bpf_loop never takes
// traffic as if they were (policy never fails open).
func (d *daemon) NotReady() string {
	d.mu.Lock()
	st := d.state
	d.mu.Unlock()
	if st == nil {
		return "config not applied yet"
	}
	if d.authzOff {
		if _, _, n := st.Counts(); n > 0 {
			return fmt.Sprintf("%d authorization policies are not enforced: %s", n, bpf.NoAuthzReason)
		}
	}
	return ""
}

func (d *daemon) ConfigDump() api.ConfigDump {
	d.mu.Lock()
	st, v := d.state, d.version
	d.mu.Unlock()
	var m *model.Mesh
	if st != nil {
		m = st.Mesh()
	}
	dump := api.ConfigDump{Node: d.node, Version: v, Source: d.source, Enrolled: d.enroller.Enrolled(), EnrolledWorkloads: d.enrolledWorkloads()}
	if m != nil {
		dump.Services, dump.Workloads = api.FromModel(m)
		dump.Policies = api.PoliciesFromModel(m)
		if d.authzOff {
			// get policies must not list them as if in force.
			for i := range dump.Policies {
				if dump.Policies[i].NotEnforced == "" {
					dump.Policies[i].NotEnforced = bpf.NoAuthzReason
				}
			}
		}
	}
	return dump
}

// Source labels of kmesh_config_updates_total.
const (
	sourceFile = "file"
	sourceXDS  = "xds"
)

// listen binds the admin, metrics and readiness addresses and the control
// socket, in that order: all of them, or none.
func (d *daemon) listen(cfg Config) (admin.Group, error) {
	ctl := admin.Controls{LogLevel: cfg.LogLevel, AccessLog: &d.accessLog, Enrollment: d}
	if d.telemetry != nil {
		ctl.AccessLogChanged = func(bool) { d.telemetry.AccessLogChanged() }
	}
	if d.certs != nil {
		ctl.Certs = func() api.Certs { return d.certsDoc() }
		ctl.TrustDomain = d.certs.TrustDomain()
	}
	alog := d.log.With("component", "admin")
	surfaces := []struct {
		name, addr string
		h          http.Handler
		unix       bool
	}{
		{"admin", cfg.AdminAddress, admin.Handler(d, ctl, alog), false},
		{"metrics", cfg.MetricsAddress, d.metrics.Handler(), false},
		{"readiness", cfg.ReadinessAddress, admin.ReadinessHandler(d), false},
		{"admin", cfg.AdminSocket, admin.ControlHandler(d, ctl, alog), true},
	}
	var g admin.Group
	for _, s := range surfaces {
		listen := admin.Listen
		if s.unix {
			listen = admin.ListenUnix
		}
		srv, err := listen(s.name, s.addr, s.h)
		if err != nil {
			for _, l := range g {
				l.Close()
			}
			return nil, err
		}
		g = append(g, srv)
	}
	return g, nil
}

func (d *daemon) Mesh() *model.Mesh {
	d.mu.Lock()
	st := d.state
	d.mu.Unlock()
	if st == nil {
		return nil
	}
	return st.Mesh()
}

func (d *daemon) DumpMaps() ([]string, error) { return dataplane.DumpMaps(d.maps) }

// Outliers and Affinity give /explain what the kernel's balancer decided
// on its own (admin.LBState).
func (d *daemon) Outliers() ([]dataplane.OutlierStat, error) { return d.writer.Outliers() }

func (d *daemon) Affinity(service string, client netip.Addr) (string, time.Duration, bool, error) {
	return d.writer.Affinity(service, client)
}

// openAccessLog opens where access log records go: one JSON object per line.
func openAccessLog(path string) (*slog.Logger, func() error, error) {
	if path == "" {
		return slog.New(slog.NewJSONHandler(os.Stdout, nil)), func() error { return nil }, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("access log: %w", err)
	}
	return slog.New(slog.NewJSONHandler(f, nil)), f.Close, nil
}

func (d *daemon) mapStats() ([]metrics.MapStat, error) {
	stats := d.writer.MapStats()
	out := make([]metrics.MapStat, 0, len(stats)+1)
	n, capacity, err := d.enroller.Entries()
	out = append(out, metrics.MapStat{Name: bpf.KmeshMapKmManage, Entries: uint64(n), Capacity: uint64(capacity)})
	for _, s := range stats {
		out = append(out, metrics.MapStat{Name: s.Name, Entries: uint64(s.Entries), Capacity: uint64(s.Capacity)})
	}
	return out, err
}

// authzStats reads the authorization decision counters for /metrics.
func (d *daemon) outlierStats() ([]metrics.OutlierStat, error) {
	stats, err := d.writer.Outliers()
	out := make([]metrics.OutlierStat, 0, len(stats))
	for _, s := range stats {
		out = append(out, metrics.OutlierStat{Service: s.Service, Total: s.Total, Ejected: len(s.Ejected)})
	}
	return out, err
}

func (d *daemon) authzStats() ([]metrics.AuthzStat, error) {
	stats, err := d.writer.AuthzStats()
	out := make([]metrics.AuthzStat, 0, len(stats))
	for _, s := range stats {
		reporter := metrics.ReporterSource
		if s.Side == dataplane.SideDestination {
			reporter = metrics.ReporterDestination
		}
		out = append(out, metrics.AuthzStat{
			Policy: s.Policy.Key, Action: strings.ToUpper(string(s.Policy.Action)), DryRun: s.Policy.DryRun,
			Reporter: reporter, Allowed: s.Allowed, Denied: s.Denied, Matched: s.Matched,
		})
	}
	return out, err
}

// currentState is the state the daemon holds, nil before the first apply.
func (d *daemon) currentState() *model.State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state
}
