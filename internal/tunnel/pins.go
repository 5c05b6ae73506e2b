package tunnel

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/hbone"
)

// What the tunnel shares with kmeshd's programs, through kmeshd's pins:
// where each redirected connection was going (km_tunnel_dst), and the
// outlier detection of the services it balanced (km_lb_outcome).

// redirect is what the connect hook kept of a redirected connection.
type redirect struct {
	dst netip.AddrPort // the endpoint chosen
	svc netip.AddrPort // the service address dialed, when the kernel balanced it
	// lb is the backend a service with outlier detection chose; has says
	// whether there is one.
	lb  bpf.KmeshSockLb
	has bool
}

// origDst finds where a redirected connection from peer in the namespace
// of cookie was going, and forgets it.
func (t *Tunnel) origDst(cookie uint64, peer netip.AddrPort) (redirect, error) {
	key := bpf.KmeshTunnelKey{NetnsCookie: cookie, Addr: bpf.AddrWords(peer.Addr()), Port: peer.Port()}
	var v bpf.KmeshTunnelDst
	cur, prev, err := t.tunnelDstMaps(false)
	for attempt := 0; err == nil; attempt++ {
		if err = takeDst(key, &v, cur, prev); err == nil || attempt > 0 || !errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		// A restarted kmeshd may have replaced the map: open the pin
		// again and look once more.
		cur, prev, err = t.tunnelDstMaps(true)
	}
	if err != nil {
		return redirect{}, fmt.Errorf("original destination of %s: %w", peer, err)
	}
	r := redirect{dst: netip.AddrPortFrom(bpf.WordsAddr(v.Addr).Unmap(), bpf.NetPort(v.Port))}
	if v.HasSvc != 0 {
		r.svc = netip.AddrPortFrom(bpf.WordsAddr(v.SvcAddr).Unmap(), bpf.NetPort(v.SvcPort))
	}
	r.lb, r.has = v.Lb, v.HasLb != 0
	return r, nil
}

// takeDst looks key up in each map in turn (a nil one is skipped) and
// deletes it where found.
func takeDst(key bpf.KmeshTunnelKey, v *bpf.KmeshTunnelDst, maps ...*ebpf.Map) error {
	err := ebpf.ErrKeyNotExist
	for _, m := range maps {
		if m == nil {
			continue
		}
		err = m.LookupAndDelete(key, v)
		if errors.Is(err, ebpf.ErrNotSupported) {
			// LRU maps take lookup-and-delete from 5.14 on; otherwise
			// two steps.
			if err = m.Lookup(key, v); err == nil {
				m.Delete(key)
			}
		}
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return err
}

// tunnelDstMaps are the km_tunnel_dst maps to look in, the pin opened
// first if reopen or none is held: the one the pin named when the tunnel
// last opened it, and the one it held before (nil if none). kmeshd
// creates the map anew on another --max-sockets and copies the old map's
// entries into it at its Commit twice: before the pin moves, and again
// once its programs are switched. A tunnel that opened the new map in
// between still finds, in the old one, what the old programs wrote after
// the first copy.
func (t *Tunnel) tunnelDstMaps(reopen bool) (cur, prev *ebpf.Map, err error) {
	t.mapMu.Lock()
	defer t.mapMu.Unlock()
	if reopen || t.dstMap == nil {
		if err := t.openTunnelDstLocked(); err != nil {
			return nil, nil, err
		}
	}
	return t.dstMap, t.prevDstMap, nil
}

// openTunnelDstLocked opens the pin. When it names another map than the
// one held, the held one becomes the previous map (and the one before it
// is closed). km_lb_outcome is opened again on its next use: a restarted
// kmeshd may have replaced its program.
func (t *Tunnel) openTunnelDstLocked() error {
	m, err := ebpf.LoadPinnedMap(filepath.Join(t.cfg.BPFDir, bpf.KmeshMapKmTunnelDst), nil)
	if err != nil {
		return fmt.Errorf("open %s in %s (is kmeshd's data plane loaded?): %w", bpf.KmeshMapKmTunnelDst, t.cfg.BPFDir, err)
	}
	if t.outcome != nil {
		t.outcome.Close()
		t.outcome = nil
	}
	if t.dstMap != nil && sameMap(m, t.dstMap) {
		m.Close()
		return nil
	}
	if t.prevDstMap != nil {
		t.prevDstMap.Close()
	}
	t.prevDstMap, t.dstMap = t.dstMap, m
	return nil
}

// sameMap says whether a and b are one kernel map.
func sameMap(a, b *ebpf.Map) bool {
	ai, err1 := a.Info()
	bi, err2 := b.Info()
	if err1 != nil || err2 != nil {
		return false
	}
	aid, ok1 := ai.ID()
	bid, ok2 := bi.ID()
	return ok1 && ok2 && aid == bid
}

// credit tells outlier detection how the HBONE connect to a balanced
// backend went, as sockops does for a direct connect: a connect that got
// through (200) is a success; one that failed on the way (no TCP or TLS
// connection, no answer, 5xx: the peer could not reach the application) a
// failure. A 4xx is the peer's policy or our request, not the backend's
// health, and counts as neither.
func (t *Tunnel) credit(r redirect, err error) {
	if !r.has {
		return
	}
	var st *hbone.StatusError
	if errors.As(err, &st) && st.Code < http.StatusInternalServerError {
		return
	}
	ok := uint32(0)
	if err == nil {
		ok = 1
	}
	in := bpf.KmeshLbOutcome{ServiceId: r.lb.ServiceId, BackendId: r.lb.BackendId, Ok: ok}
	prog, perr := t.outcomeProgram()
	if perr == nil {
		_, perr = prog.Run(&ebpf.RunOptions{Context: in})
	}
	if perr != nil {
		// Lost for outlier detection only; the connection is unaffected.
		t.log.Warn("outlier detection missed a connect outcome", "service_id", in.ServiceId, "backend_id", in.BackendId, "ok", ok == 1, "err", perr)
	}
}

// outcomeProgram opens kmeshd's km_lb_outcome pin, again whenever the
// km_tunnel_dst pin was opened again (a restarted kmeshd may have
// replaced both).
func (t *Tunnel) outcomeProgram() (*ebpf.Program, error) {
	t.mapMu.Lock()
	defer t.mapMu.Unlock()
	if t.outcome != nil {
		return t.outcome, nil
	}
	pin := bpf.ProgramPin(t.cfg.BPFDir, bpf.KmeshProgKmLbOutcome)
	p, err := ebpf.LoadPinnedProgram(pin, nil)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", pin, err)
	}
	t.outcome = p
	return p, nil
}

func (t *Tunnel) closeMap() {
	t.mapMu.Lock()
	defer t.mapMu.Unlock()
	t.closeMapLocked()
}

func (t *Tunnel) closeMapLocked() {
	for _, m := range []*ebpf.Map{t.dstMap, t.prevDstMap} {
		if m != nil {
			m.Close()
		}
	}
	t.dstMap, t.prevDstMap = nil, nil
	if t.outcome != nil {
		t.outcome.Close()
		t.outcome = nil
	}
}
