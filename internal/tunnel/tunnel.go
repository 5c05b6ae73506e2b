// Package tunnel is kmeshd's HBONE tunnel: a process of its own, apart from
// kmeshd, that carries the connections the connect hook redirects to it
// over mutual TLS to other nodes, and terminates HBONE for this node's
// workloads. It listens inside each enrolled pod's network namespace, as
// ztunnel's in-pod mode does: on the pod's loopback, port 15001, for its
// redirected outbound connections, and on port 15008 for HBONE from peers.
//
// kmeshd hands it the mesh through a state file ([State]); the tunnel keeps
// the last copy it read, so a kmeshd restart cuts nothing: the programs and
// maps stay pinned, the redirect keeps working, and the tunnel keeps
// serving with what it knew. Stopping the tunnel is what cuts connections;
// its upgrade does not: the new process takes the listening sockets over
// and the old one drains (handoff.go, drain.go).
package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/fsnotify/fsnotify"

	"github.com/kmesh-go/kmesh/internal/admin"
	"github.com/kmesh-go/kmesh/internal/authz"
	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/enroll"
	"github.com/kmesh-go/kmesh/internal/hbone"
	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/metrics"
	"github.com/kmesh-go/kmesh/internal/model"
)

// OutboundPort is the tunnel's loopback listener in each pod.
const OutboundPort = uint16(bpf.KmeshKmTunnelConstKM_TUNNEL_OUTBOUND_PORT)

// Config is what the tunnel process needs.
type Config struct {
	Node     string
	StateDir string // where kmeshd writes the state
	BPFDir   string // kmeshd's pins: km_tunnel_dst, km_lb_outcome
	Certs    identity.Source
	Log      *slog.Logger
	// Events, if set, receives every tunnelled connection when it is
	// carried and when it ends.
	Events func(Event)
	// Metrics, if set, counts the carried connections in Istio's
	// istio_tcp_* metrics, with both proven identities (telemetry.go).
	Metrics *metrics.Metrics
	// AccessLog, if set, gets one line per carried connection that ended.
	AccessLog *slog.Logger
	// DrainTimeout bounds how long the tunnel carries its connections
	// after it handed its listeners to a successor; 0 is
	// DefaultDrainTimeout.
	DrainTimeout time.Duration
}

// Tunnel is the running tunnel.
type Tunnel struct {
	cfg    Config
	log    *slog.Logger
	dialer *hbone.Dialer

	view atomic.Pointer[view]

	mapMu      sync.Mutex
	dstMap     *ebpf.Map
	prevDstMap *ebpf.Map     // the km_tunnel_dst held before dstMap (pins.go)
	outcome    *ebpf.Program // km_lb_outcome, opened with dstMap

	mu      sync.Mutex
	pods    map[string]*pod // by netns path
	carried atomic.Int64    // connections in flight, until they end
	live    live            // the same, once carried, for /connections

	// The hand-off (handoff.go): handoffMu keeps pods from opening or
	// closing while their listeners change hands; stopping is set once
	// the tunnel shuts down, so it hands nothing over after; released
	// closes when a successor took the listeners: this tunnel drains.
	handoffMu    sync.Mutex
	stopping     bool
	released     chan struct{}
	inherited    map[string]*inheritedPod
	closeSockets func() // closes tunnel.sock and the hand-off socket
	// owner: the node's listeners are this tunnel's: from after the
	// hand-off (or its own binds) until it hands them over or stops.
	owner atomic.Bool

	ctx      context.Context
	reloadMu sync.Mutex
	lastFile os.FileInfo // the state file last read
}

// view is one state, indexed.
type view struct {
	state  *State
	byAddr map[netip.Addr]*model.Workload
	// waypointed holds the addresses of services that use a waypoint:
	// a connection the kernel balanced from one of them goes to the
	// waypoint with the service's VIP:port as its authority.
	waypointed map[netip.Addr]bool
	authz      *authz.Index
}

func newView(s *State) *view {
	v := &view{state: s, byAddr: map[netip.Addr]*model.Workload{}, waypointed: map[netip.Addr]bool{}, authz: authz.NewIndex(s.Mesh)}
	for i := range s.Mesh.Services {
		svc := &s.Mesh.Services[i]
		if s.Mesh.ServiceWaypoint(svc) == "" && svc.Waypoint == nil {
			continue
		}
		for _, a := range svc.Addresses {
			v.waypointed[a.Unmap()] = true
		}
	}
	for i := range s.Mesh.Workloads {
		w := &s.Mesh.Workloads[i]
		for _, a := range w.Addresses {
			if _, dup := v.byAddr[a.Unmap()]; !dup {
				v.byAddr[a.Unmap()] = w
			}
		}
	}
	return v
}

// New returns a tunnel; Run starts it.
func New(cfg Config) (*Tunnel, error) {
	if cfg.Certs == nil {
		return nil, errors.New("tunnel: no CA: --ca-cert/--ca-key or --ca-address is required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	t := &Tunnel{cfg: cfg, log: cfg.Log, pods: map[string]*pod{}, released: make(chan struct{})}
	t.dialer = &hbone.Dialer{Certs: cfg.Certs, DialTCP: t.dialHBONE, Log: cfg.Log.With("component", "hbone")}
	return t, nil
}

// Run serves until ctx ends. It first takes the listeners over from a
// tunnel that serves the same state directory, if one does (handoff.go),
// then serves tunnel.sock and the hand-off socket there. When ctx ends
// before a successor took over, it resets every connection it carries and
// returns; after, it drains first (drainOut).
func (t *Tunnel) Run(ctx context.Context) error {
	// Dials and streams in flight must outlive ctx (SIGTERM) while the
	// tunnel drains: its own context ends when Run returns.
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	t.ctx = rctx
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("tunnel: watch %s: %w", t.cfg.StateDir, err)
	}
	defer w.Close()
	if err := os.MkdirAll(t.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("tunnel: state dir: %w", err)
	}
	if err := w.Add(t.cfg.StateDir); err != nil {
		return fmt.Errorf("tunnel: watch %s: %w", t.cfg.StateDir, err)
	}
	t.warm(rctx)
	pred := t.takeOver()
	t.reload()
	t.closeInherited()
	if pred != nil {
		if t.view.Load() == nil {
			pred.conn.Close() // it keeps serving
			t.shutdown()
			return fmt.Errorf("tunnel: a tunnel serves %s but its state cannot be read: not taking over", t.cfg.StateDir)
		}
		if err := pred.finish(t); err != nil {
			t.log.Warn("predecessor did not confirm the hand-off; it may still serve its own connections", "pid", pred.pid, "err", err)
		}
		t.log.Info("tunnel took over", "predecessor_pid", pred.pid, "pods", t.podCount())
	}
	if err := t.serveSockets(rctx); err != nil {
		t.shutdown()
		return err
	}
	t.owner.Store(true)
	tick := time.NewTicker(2 * time.Second) // a missed event costs at most this
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			t.handoffMu.Lock() // a hand-off under way ends first
			t.stopping = true
			t.owner.Store(false)
			t.handoffMu.Unlock()
			select {
			case <-t.released:
				return t.drainOut(ctx)
			default:
			}
			t.closeSockets()
			t.shutdown()
			return nil
		case <-t.released:
			return t.drainOut(ctx)
		case ev := <-w.Events:
			if filepath.Base(ev.Name) == StateFile {
				t.reload()
			}
		case err := <-w.Errors:
			t.log.Warn("state watch", "err", err)
		case <-tick.C:
			t.reload()
		}
	}
}

// serveSockets binds tunnel.sock (the admin API) and the hand-off socket
// in the state directory and serves them until closeSockets or ctx.
func (t *Tunnel) serveSockets(ctx context.Context) error {
	sock, err := admin.ListenUnix("tunnel", SocketPath(t.cfg.StateDir), t.Handler())
	if err != nil {
		return err
	}
	hl, err := listenHandoff(HandoffPath(t.cfg.StateDir))
	if err != nil {
		sock.Close()
		return err
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := sock.Serve(sctx); err != nil {
			t.log.Error("tunnel socket", "err", err)
		}
	}()
	go t.serveHandoff(hl)
	var once sync.Once
	// Closing the listeners removes their files, so a successor binds
	// the same paths after.
	t.closeSockets = func() {
		once.Do(func() {
			hl.Close()
			stop()
			<-served
		})
	}
	return nil
}

func (t *Tunnel) podCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pods)
}

// reload reads the state file and applies it if it changed. A state that
// cannot be read leaves the last good one in force.
func (t *Tunnel) reload() {
	t.reloadMu.Lock()
	defer t.reloadMu.Unlock()
	fi, err := os.Stat(filepath.Join(t.cfg.StateDir, StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return // kmeshd has not written one yet; keep what we have
	}
	if err == nil && os.SameFile(fi, t.lastFile) && fi.ModTime().Equal(t.lastFile.ModTime()) {
		return // the file kmeshd replaces on every write is the same one
	}
	s, err := ReadState(t.cfg.StateDir)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		t.log.Error("tunnel state refused; keeping the last good one", "err", err)
		return
	}
	t.lastFile = fi
	if s.Node != t.cfg.Node {
		t.log.Error("tunnel state is of another node; ignored", "state_node", s.Node)
		return
	}
	if cur := t.view.Load(); cur != nil && reflect.DeepEqual(cur.state, s) {
		return
	}
	t.view.Store(newView(s))
	t.syncPods(s)
	t.log.Info("tunnel state applied", "version", s.Version, "pods", len(s.Pods), "workloads", len(s.Mesh.Workloads))
}

// Ready reports whether the tunnel owns the node's listeners (it took them
// over from its predecessor, if one ran, and has not handed them on), has
// a state, and listens in every pod the state names.
func (t *Tunnel) Ready() bool {
	v := t.view.Load()
	if v == nil || !t.owner.Load() {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range v.state.Pods {
		if t.pods[p.Netns] == nil {
			return false
		}
	}
	return true
}

// identityOf is a workload's SPIFFE identity in the CA's trust domain.
func (t *Tunnel) identityOf(w *model.Workload) identity.Identity {
	return identity.OfWorkload(t.cfg.Certs.TrustDomain(), w.Namespace, w.ServiceAccount)
}

// cookieOf reads a pod namespace's cookie, as the programs see it.
func cookieOf(path string) (uint64, error) { return enroll.Cookie(path) }

// reset closes c with a TCP reset, so the application sees the failure
// as a refused or broken connection, never as a clean end.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// splice copies both ways between a and b, passing half-closes on, until
// both directions end; it returns the bytes copied a->b and b->a.
func splice(a, b net.Conn) (ab, ba int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ba = copyHalf(a, b)
	}()
	ab = copyHalf(b, a)
	wg.Wait()
	return ab, ba
}

// copyHalf copies src to dst until src ends, then half-closes dst; on an
// error it closes both, so the other direction ends too.
func copyHalf(dst, src net.Conn) int64 {
	n, err := hbone.Copy(dst, src)
	if err != nil && !isClosedErr(err) {
		reset(dst)
		reset(src)
		return n
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			return n
		}
	}
	dst.Close()
	return n
}

func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe)
}
