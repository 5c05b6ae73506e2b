package waypoint

import (
	"io"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// TestProxy_PinsUpstreamToDownstreamConnection: each keep-alive client
// connection sends its requests to the backend on an upstream connection
// of its own, even when the clients take turns (the pool alone would
// serve both on one); once the client connection closes, its upstream
// connection is pooled and the next client's first request reuses it; an
// endpoint whose identity changed (dropUpstreams) is reached on a new
// connection, not the pinned one.
func TestProxy_PinsUpstreamToDownstreamConnection(t *testing.T) {
	b := newBed(t)
	var mu sync.Mutex
	seen := map[string]int{} // the backend's view: the proxy's source address per request
	b.workload("v1", 8080, map[string]string{"app": "v1"}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.RemoteAddr]++
		mu.Unlock()
		io.WriteString(w, r.RemoteAddr)
	}))
	b.service("web", "10.96.0.1", 8080, "v1", true)
	b.start()
	ca, cb := b.client("10.96.0.1", false), b.client("10.96.0.1", false)
	upstreamOf := func(c *http.Client) string {
		_, body := get(t, c, "http://web/")
		return body
	}
	a0, b0 := upstreamOf(ca), upstreamOf(cb)
	if a0 == b0 {
		t.Fatalf("two client connections share the upstream connection %s", a0)
	}
	for i := range 10 {
		if a, bb := upstreamOf(ca), upstreamOf(cb); a != a0 || bb != b0 {
			t.Fatalf("request pair %d went out on %s and %s, want %s and %s (each client's own)", i, a, bb, a0, b0)
		}
	}
	mu.Lock()
	conns := len(seen)
	mu.Unlock()
	if conns != 2 {
		t.Fatalf("the backend saw %d connections, want 2", conns)
	}

	ca.Transport.(*http.Transport).CloseIdleConnections()
	waitFor(t, func() bool {
		b.proxy.h1c.mu.Lock()
		defer b.proxy.h1c.mu.Unlock()
		for _, conns := range b.proxy.h1c.idle {
			if len(conns) > 0 {
				return true
			}
		}
		return false
	}, "the closed client's upstream connection in the pool")
	if c := upstreamOf(b.client("10.96.0.1", false)); c != a0 {
		t.Fatalf("a new client's first request went out on %s, want the pooled %s", c, a0)
	}

	b.proxy.dropUpstreams(map[netip.Addr]bool{b.mesh.Workloads[1].Addresses[0]: true})
	if bb := upstreamOf(cb); bb == b0 {
		t.Fatalf("after the endpoint's identity changed the request still went out on the pinned %s", b0)
	}
}

// waitFor polls cond for up to two seconds.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for range 200 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("waited 2s for %s", what)
}
