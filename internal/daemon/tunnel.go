package daemon

import (
	"context"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"github.com/kmesh-go/kmesh/internal/dataplane"
	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/tunnel"
)

// tunnelHandoff keeps the HBONE tunnel process (kmeshd tunnel) told of the
// mesh: km_tunnel says which destinations the connect hook sends to it,
// and the state file what the tunnel needs to carry them (identities,
// policies, this node's pods). Only a mesh with a CA tunnels.
type tunnelHandoff struct {
	dir string
	log *slog.Logger

	node  string
	state func() *model.State // the daemon's, read when a write is due
	// enrolled is the workload of each enrolled namespace (workload key ->
	// netns path), whatever enrolled it: the tunnel's pods. Read then too.
	enrolled func() map[string]string

	mu      sync.Mutex
	version uint64 // the last applied config version; 0: none yet
	pending bool   // a write is due
	wake    chan struct{}
}

func newTunnelHandoff(dir, node string, state func() *model.State, enrolled func() map[string]string, log *slog.Logger) *tunnelHandoff {
	return &tunnelHandoff{dir: dir, node: node, state: state, enrolled: enrolled, log: log, wake: make(chan struct{}, 1)}
}

// applyTunnels writes km_tunnel for m. It runs before the service maps
// take m, so a new HBONE destination is tunnelled from its first connect,
// never sent in plaintext meanwhile.
func (d *daemon) applyTunnels(m *model.Mesh) error {
	return d.writer.ApplyTunnels(dataplane.TunnelAddrs(m, d.node, d.certs != nil))
}

// updateTunnels brings km_tunnel in line with the state for the
// workloads a change (undo: what it replaced) touched.
func (d *daemon) updateTunnels(c, undo *model.Changes) error {
	var affected []netip.Addr
	for _, ws := range [][]*model.Workload{c.Workloads, undo.Workloads} {
		for _, w := range ws {
			affected = append(affected, w.Addresses...)
		}
	}
	if len(affected) == 0 {
		return nil
	}
	return d.writer.UpdateTunnels(d.state, affected, d.node, d.certs != nil)
}

// publishTunnelState tells the writer that config version v is applied;
// it writes the state as it is when it gets to it (the latest wins).
func (d *daemon) publishTunnelState(v uint64) {
	if d.tunnel == nil {
		return
	}
	d.tunnel.mu.Lock()
	d.tunnel.version = v
	d.tunnel.mu.Unlock()
	d.tunnel.due()
}

// enrollmentChanged has the state written again: a namespace that joined
// or left the mesh gains or loses the tunnel's listeners.
func (d *daemon) tunnelEnrollmentChanged() {
	if d.tunnel != nil {
		d.tunnel.due()
	}
}

func (h *tunnelHandoff) due() {
	h.mu.Lock()
	h.pending = true
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// run writes queued states until ctx ends. Writing is O(mesh), so it is
// off the apply path; the tunnel re-reads the file when it meets a
// destination it does not know yet.
func (h *tunnelHandoff) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.wake:
		}
		h.mu.Lock()
		v, pending := h.version, h.pending
		h.pending = false
		h.mu.Unlock()
		st := h.state()
		if v == 0 || !pending || st == nil {
			continue // no config applied yet: its first apply writes
		}
		m := st.Mesh()
		s := &tunnel.State{Version: v, Node: h.node, MeshHasCA: true, Mesh: m, Pods: podsOf(m, h.enrolled())}
		if err := tunnel.WriteState(h.dir, s); err != nil {
			h.log.Error("tunnel state not written; the tunnel keeps its last copy", "err", err)
			continue
		}
		h.log.Debug("tunnel state written", "version", s.Version, "pods", len(s.Pods))
	}
}

// podsOf is the tunnel's pods: every enrolled namespace kmeshd matched to a
// workload of the mesh (workload key -> netns path), whatever enrolled it
// (a mesh file's netns, Kubernetes, --enroll-netns, the admin API; see
// enrollment.workloadOf). A namespace matched to no workload gets no
// listener: its connections to HBONE destinations are refused.
func podsOf(m *model.Mesh, who map[string]string) []tunnel.Pod {
	out := make([]tunnel.Pod, 0, len(who))
	for _, key := range slices.Sorted(maps.Keys(who)) {
		if m.Workload(key) != nil {
			out = append(out, tunnel.Pod{Workload: key, Netns: who[key]})
		}
	}
	return out
}
