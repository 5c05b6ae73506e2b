package tunnel

import (
	"context"
	"time"
)

// DefaultDrainTimeout is how long a tunnel that handed its listeners over
// carries its connections before it resets what is left: the Kubernetes
// pod's default grace period, so a DaemonSet whose pods keep that period
// (or more) is never killed before the drain ends.
const DefaultDrainTimeout = 30 * time.Second

// release stops this tunnel taking connections, once its successor accepts
// on the same sockets: it closes its descriptors of the listeners (the
// sockets live on in the successor, queue and all), tells HBONE clients to
// open new streams elsewhere (GOAWAY), takes no new stream from its own
// pool, and gives up the sockets of the state directory, which the
// successor binds next. Called with handoffMu held.
func (t *Tunnel) release() {
	t.owner.Store(false)
	t.mu.Lock()
	for _, p := range t.pods {
		p.stopAccepting()
	}
	t.mu.Unlock()
	t.dialer.Drain()
	if t.closeSockets != nil {
		t.closeSockets()
	}
}

// stopAccepting closes the pod's listeners and waits for its accept loops;
// the connections they took go on. Its HBONE server drains.
func (p *pod) stopAccepting() {
	for _, pl := range p.listeners {
		pl.l.Close()
	}
	p.done.Wait()
	if p.srv != nil {
		p.srv.Drain()
	}
}

// drainOut is what a tunnel that handed over does until it exits: carry
// its connections until they end or the drain timeout, reset what is left,
// and exit once drained and told to (ctx: SIGTERM). It does not exit on
// its own: in a DaemonSet kubelet would restart it, and the restarted
// process would take the listeners back from its successor.
func (t *Tunnel) drainOut(ctx context.Context) error {
	timeout := t.cfg.DrainTimeout
	if timeout <= 0 {
		timeout = DefaultDrainTimeout
	}
	start := time.Now()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for t.busy() {
		select {
		case <-tick.C:
		case <-deadline.C:
			n := t.carried.Load()
			t.log.Warn("drain timeout; resetting the connections left", "connections", n, "drain_timeout", timeout)
			t.shutdown()
			t.log.Info("tunnel drained", "took", time.Since(start).Round(time.Millisecond), "reset", n)
			return t.exitOn(ctx)
		}
	}
	t.log.Info("tunnel drained", "took", time.Since(start).Round(time.Millisecond), "reset", 0)
	t.shutdown()
	return t.exitOn(ctx)
}

// busy reports whether the tunnel still carries a connection, or serves
// an HBONE connection: one that drains closes once the peer answered its
// PING and its last stream ended, and until then a stream it took may not
// have reached the Connect hook, where it is counted in carried.
func (t *Tunnel) busy() bool {
	if t.carried.Load() > 0 {
		return true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.pods {
		if p.srv != nil && p.srv.Active() > 0 {
			return true
		}
	}
	return false
}

// exitOn waits for ctx (SIGTERM) before Run returns.
func (t *Tunnel) exitOn(ctx context.Context) error {
	if ctx.Err() == nil {
		t.log.Info("drained tunnel waits for SIGTERM to exit")
		<-ctx.Done()
	}
	t.log.Info("tunnel exiting")
	return nil
}

// shutdown ends everything the tunnel still carries, each with a reset,
// never a clean end that could pass for a complete one, and closes its
// listeners, pods and pins. Closing the HTTP/2 connections fails their
// streams, whose relays reset the application's sockets; those left are
// reset after.
func (t *Tunnel) shutdown() {
	t.mu.Lock()
	for _, p := range t.pods {
		if p.srv != nil {
			p.srv.Close()
		}
	}
	t.mu.Unlock()
	t.dialer.Close()
	t.live.resetAll()
	t.closePods()
	t.closeMap()
}
