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
// serving with what it knew. A tunnel restart is what cuts connections:
// see handoff.go for how an upgrade avoids it.
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
}

// Tunnel is the running tunnel.
type Tunnel struct {
	cfg    Config
	log    *slog.Logger
	dialer *hbone.Dialer

	view atomic.Pointer[view]

	mapMu   sync.Mutex
	dstMap  *ebpf.Map
	outcome *ebpf.Program // km_lb_outcome, opened with dstMap

	mu   sync.Mutex
	pods map[string]*pod // by netns path
	wg   sync.WaitGroup  // connections in flight
	live live            // the same, for /connections

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
	t := &Tunnel{cfg: cfg, log: cfg.Log, pods: map[string]*pod{}}
	t.dialer = &hbone.Dialer{Certs: cfg.Certs, DialTCP: t.dialHBONE, Log: cfg.Log.With("component", "hbone")}
	return t, nil
}

// Run serves until ctx ends: it follows the state file and keeps a
// listener set in every pod it names. On return the listeners are closed;
// connections in flight are cut unless they were handed over (handoff.go).
func (t *Tunnel) Run(ctx context.Context) error {
	t.ctx = ctx
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
	t.reload()
	tick := time.NewTicker(2 * time.Second) // a missed event costs at most this
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			t.closePods()
			t.dialer.Close()
			t.closeMap()
			return nil
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

// Ready reports whether the tunnel has a state and listens in every pod it
// names.
func (t *Tunnel) Ready() bool {
	v := t.view.Load()
	if v == nil {
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

// Wait waits for every tunnelled connection to end.
func (t *Tunnel) Wait() { t.wg.Wait() }

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
