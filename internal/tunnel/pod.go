package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netns"

	"github.com/kmesh-go/kmesh/internal/authz"
	"github.com/kmesh-go/kmesh/internal/hbone"
	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/model"
)

// pod is the tunnel's presence in one enrolled pod: its listeners and who
// the pod is.
type pod struct {
	netns    string
	cookie   uint64
	nsMu     sync.RWMutex
	ns       netns.NsHandle // open while the pod is; -1 once closed
	workload atomic.Pointer[model.Workload]
	id       atomic.Pointer[identity.Identity]

	listeners []podListener
	srv       *hbone.Server // on the 15008 listener
	cancel    context.CancelFunc
	done      sync.WaitGroup // the accept loops
}

// podListener is one listening socket of a pod and what it is, as the
// hand-off names it.
type podListener struct {
	kind, addr string
	l          net.Listener
}

// syncPods opens listeners in every pod of s that has none and closes
// those of pods gone from s. Connections in flight are not cut.
func (t *Tunnel) syncPods(s *State) {
	t.handoffMu.Lock()
	defer t.handoffMu.Unlock()
	select {
	case <-t.released:
		return // the successor's now
	default:
	}
	if t.stopping {
		return
	}
	v := t.view.Load()
	want := map[string]*model.Workload{}
	for _, p := range s.Pods {
		if w := s.Mesh.Workload(p.Workload); w != nil {
			want[p.Netns] = w
		}
	}
	t.track(want)
	t.mu.Lock()
	defer t.mu.Unlock()
	for path, p := range t.pods {
		if _, ok := want[path]; !ok {
			p.close()
			delete(t.pods, path)
			t.log.Info("pod left the tunnel", "netns", path)
		}
	}
	for path, w := range want {
		id := t.identityOf(w)
		if p := t.pods[path]; p != nil {
			p.workload.Store(w)
			p.id.Store(&id)
			continue
		}
		p, err := t.openPod(path, w, id, v)
		if err != nil {
			t.log.Error("cannot listen in pod; its tunnelled connections fail until it can", "netns", path, "workload", w.Key(), "err", err)
			continue
		}
		t.pods[path] = p
		t.log.Info("pod joined the tunnel", "netns", path, "workload", w.Key(), "identity", id.String())
	}
}

// tracker is a Source that renews the certificates of identities it is
// told are in use ahead of time (identity.Cache).
type tracker interface {
	SetTracked(map[identity.Identity]int)
}

// track has the certificates of the pods' identities fetched now and
// renewed at half-life, so no handshake waits for the CA and a
// certificate never expires under a pod that serves.
func (t *Tunnel) track(pods map[string]*model.Workload) {
	tr, ok := t.cfg.Certs.(tracker)
	if !ok {
		return
	}
	counts := map[identity.Identity]int{}
	for _, w := range pods {
		counts[t.identityOf(w)]++
	}
	tr.SetTracked(counts)
}

func (t *Tunnel) closePods() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for path, p := range t.pods {
		p.close()
		delete(t.pods, path)
	}
}

func (p *pod) close() {
	p.cancel()
	for _, pl := range p.listeners {
		pl.l.Close()
	}
	p.done.Wait()
	p.nsMu.Lock()
	p.ns.Close()
	p.ns = -1
	p.nsMu.Unlock()
}

// dial makes a marked TCP connection from the pod's namespace. Streams
// still open on a pod that left may ask after close: they get an error,
// never another namespace's socket.
func (p *pod) dial(ctx context.Context, addr string) (net.Conn, error) {
	p.nsMu.RLock()
	defer p.nsMu.RUnlock()
	if !p.ns.IsOpen() {
		return nil, fmt.Errorf("pod %s left the tunnel", p.netns)
	}
	return dialIn(ctx, p.ns, addr)
}

// openPod listens in the pod's namespace: loopback:15001 per address
// family the pod has (redirected outbound connections) and [::]:15008
// (HBONE from peers), on the sockets a predecessor handed over where it
// did (handoff.go).
func (t *Tunnel) openPod(path string, w *model.Workload, id identity.Identity, v *view) (*pod, error) {
	cookie, err := cookieOf(path)
	if err != nil {
		return nil, err
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	p := &pod{netns: path, cookie: cookie, ns: ns}
	p.workload.Store(w)
	p.id.Store(&id)
	ctx, cancel := context.WithCancel(t.ctx)
	p.cancel = cancel
	var v4, v6 bool
	for _, a := range w.Addresses {
		if a.Unmap().Is4() {
			v4 = true
		} else {
			v6 = true
		}
	}
	var specs []struct{ network, addr string }
	if v4 || !v6 {
		specs = append(specs, struct{ network, addr string }{"tcp4", "127.0.0.1:" + strconv.Itoa(int(OutboundPort))})
	}
	if v6 {
		specs = append(specs, struct{ network, addr string }{"tcp6", "[::1]:" + strconv.Itoa(int(OutboundPort))})
	}
	listen := func(kind, network, addr string) (net.Listener, error) {
		if l := t.takeListener(path, cookie, addr); l != nil {
			p.listeners = append(p.listeners, podListener{kind, addr, l})
			return l, nil
		}
		l, err := listenIn(path, network, addr)
		if err != nil {
			return nil, err
		}
		p.listeners = append(p.listeners, podListener{kind, addr, l})
		return l, nil
	}
	for _, s := range specs {
		l, err := listen("outbound", s.network, s.addr)
		if err != nil {
			p.close()
			return nil, err
		}
		p.done.Add(1)
		go func() {
			defer p.done.Done()
			t.acceptOutbound(ctx, p, l)
		}()
	}
	l, err := listen("hbone", "tcp", ":"+strconv.Itoa(hbone.Port))
	if err != nil {
		p.close()
		return nil, err
	}
	srv := &hbone.Server{
		Certs:    t.cfg.Certs,
		Identity: func() identity.Identity { return *p.id.Load() },
		Connect:  func(ctx context.Context, r *hbone.Request) (net.Conn, error) { return t.inbound(ctx, p, r) },
		Done:     func(r *hbone.Request, sent, received int64) { t.inboundDone(p, r, sent, received) },
		Log:      t.log.With("component", "hbone", "netns", path),
	}
	p.srv = srv
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		if err := srv.Serve(ctx, l); err != nil {
			t.log.Error("hbone listener failed", "netns", path, "err", err)
		}
	}()
	return p, nil
}

func (t *Tunnel) acceptOutbound(ctx context.Context, p *pod, l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				t.log.Error("outbound listener failed", "netns", p.netns, "err", err)
			}
			return
		}
		t.carried.Add(1)
		go func() {
			defer t.carried.Add(-1)
			t.outbound(ctx, p, c.(*net.TCPConn))
		}()
	}
}

// outbound carries one redirected connection of the pod to its
// destination over HBONE. Anything that keeps it from going encrypted
// resets the application's connection: it is never sent in plaintext.
func (t *Tunnel) outbound(ctx context.Context, p *pod, c *net.TCPConn) {
	peer := addrPortOf(c.RemoteAddr())
	r, err := t.origDst(p.cookie, peer)
	if err != nil {
		t.log.Warn("redirected connection without a destination; reset", "netns", p.netns, "peer", peer.String(), "err", err)
		reset(c)
		return
	}
	dst, svc := r.dst, r.svc
	v := t.view.Load()
	dw := v.byAddr[dst.Addr()]
	if dw == nil {
		// The kernel may know a new destination before the state file's
		// change reached us: read it now.
		t.reload()
		v = t.view.Load()
		dw = v.byAddr[dst.Addr()]
	}
	if dw == nil || dw.TunnelFor(v.state.MeshHasCA) != model.TunnelHBONE {
		t.log.Warn("destination is no HBONE workload the tunnel knows; reset", "dst", dst.String())
		reset(c)
		return
	}
	src := *p.id.Load()
	dstID := t.identityOf(dw)
	// As ztunnel: a destination pod is asked for podIP:targetPort, a
	// waypoint for the service the client dialed (VIP:port), so it knows
	// which service, whatever port it listens on.
	authority := dst.String()
	if svc.IsValid() && v.waypointed[svc.Addr()] {
		authority = svc.String()
	}
	target := &hbone.Target{
		Source:      src,
		SourceAddr:  sourceAddr(p.workload.Load(), dst.Addr()),
		Destination: []identity.Identity{dstID},
		Addr:        netip.AddrPortFrom(dst.Addr(), hbone.Port),
		Authority:   authority,
		Header:      http.Header{},
	}
	ev := Event{Direction: Outbound, Start: time.Now(), Pod: p.workload.Load().Key(), Source: src, Destination: dstID, Client: peer, Target: dst, Peer: target.Addr}
	hc, err := t.dialer.Dial(ctx, target)
	t.credit(r, err)
	if err != nil {
		t.log.Warn("tunnel refused; connection reset", "src", src.String(), "dst", dst.String(), "peer_identity", dstID.String(), "err", err)
		reset(c)
		ev.Err = err
		t.emit(ev)
		return
	}
	t.log.Debug("tunnelled", "src", src.String(), "dst", dst.String(), "peer_identity", dstID.String(), "authority", authority)
	open := ev
	open.Open = true
	t.emit(open)
	t.live.track(open, c)
	ev.Sent, ev.Received = splice(c, hc)
	t.live.forget(ev)
	c.Close()
	hc.Close()
	t.emit(ev)
}

// sourceAddr is the pod's address of dst's family: the tunnel's source.
func sourceAddr(w *model.Workload, dst netip.Addr) netip.Addr {
	for _, a := range w.Addresses {
		if a.Unmap().Is4() == dst.Is4() {
			return a.Unmap()
		}
	}
	return netip.Addr{}
}

// dialHBONE makes the TCP connection of a tunnel from the source pod's
// network namespace, so it leaves from the pod's own address.
func (t *Tunnel) dialHBONE(ctx context.Context, target *hbone.Target) (net.Conn, error) {
	p := t.podAt(target.SourceAddr)
	if p == nil {
		return nil, fmt.Errorf("no enrolled pod at %s", target.SourceAddr)
	}
	return p.dial(ctx, target.Addr.String())
}

func (t *Tunnel) podAt(a netip.Addr) *pod {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.pods {
		for _, pa := range p.workload.Load().Addresses {
			if pa.Unmap() == a {
				return p
			}
		}
	}
	return nil
}

// inbound is the HBONE server's hook for a pod: the authority must be
// this pod's address, the policies must allow the peer's certificate
// identity, and the application must accept, before the client gets 200.
func (t *Tunnel) inbound(ctx context.Context, p *pod, r *hbone.Request) (net.Conn, error) {
	target, err := r.DirectTarget()
	if err != nil {
		return nil, err
	}
	if target.Port() == OutboundPort {
		return nil, hbone.Reject(http.StatusBadRequest, fmt.Errorf("authority %s: the tunnel's own port", target))
	}
	v := t.view.Load()
	w := p.workload.Load()
	id := authz.Identity{Namespace: r.Peer.Namespace, ServiceAccount: r.Peer.ServiceAccount}
	conn := authz.Conn{Src: r.PeerAddr.Addr(), Dst: target, Identity: &id}
	if d := authz.Evaluate(v.authz.Applicable(w), conn); !d.Allowed {
		t.emit(Event{Direction: Inbound, Source: r.Peer, Destination: *p.id.Load(), Client: r.PeerAddr, Target: target,
			Err: fmt.Errorf("denied: %s", d.Reason)})
		return nil, hbone.Reject(http.StatusUnauthorized, fmt.Errorf("policy %s: %s", d.Policy, d.Reason))
	}
	up, err := p.dial(ctx, target.String())
	if err != nil {
		return nil, hbone.Reject(http.StatusServiceUnavailable, err)
	}
	t.log.Debug("hbone inbound", "src", r.Peer.String(), "dst", target.String(), "peer", r.PeerAddr.String())
	open := Event{Direction: Inbound, Open: true, Start: r.Start, Pod: p.workload.Load().Key(), Source: r.Peer, Destination: *p.id.Load(),
		Client: r.PeerAddr, Target: target, Peer: r.PeerAddr}
	t.emit(open)
	t.live.track(open, up)
	t.carried.Add(1) // until inboundDone
	return up, nil
}

func (t *Tunnel) inboundDone(p *pod, r *hbone.Request, sent, received int64) {
	defer t.carried.Add(-1)
	target, _ := r.Target()
	ev := Event{Direction: Inbound, Start: r.Start, Pod: p.workload.Load().Key(), Source: r.Peer, Destination: *p.id.Load(), Client: r.PeerAddr, Target: target,
		Peer: r.PeerAddr, Sent: sent, Received: received}
	t.live.forget(ev)
	t.emit(ev)
}

func addrPortOf(a net.Addr) netip.AddrPort {
	ta := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ta.Addr().Unmap(), ta.Port())
}
