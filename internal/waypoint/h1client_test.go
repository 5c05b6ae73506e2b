package waypoint

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestH1Client_ReusesAndRecoversStale sends requests through the upstream
// HTTP/1.1 client to a real server: sequential requests share one
// connection; "Connection: close" from the server is honoured; a pooled
// connection the server closed while idle is replaced without the caller
// seeing an error (the body is sent again); a request whose context ends
// fails with the context's error and its connection is not reused.
func TestH1Client_ReusesAndRecoversStale(t *testing.T) {
	var newConns atomic.Int64
	var mu sync.Mutex
	var closeIdle bool
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			if r.URL.Path == "/bye" {
				w.Header().Set("Connection", "close")
			}
			if r.URL.Path == "/hold" {
				time.Sleep(50 * time.Millisecond) // so concurrent requests take a connection each
			}
			if r.URL.Path == "/slow" {
				select {
				case <-time.After(5 * time.Second):
				case <-r.Context().Done():
				}
			}
			io.WriteString(w, r.URL.Path+":"+string(b))
		}),
		ConnState: func(c net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				newConns.Add(1)
			case http.StateIdle:
				mu.Lock()
				if closeIdle {
					c.Close()
				}
				mu.Unlock()
			}
		},
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	var d net.Dialer
	h := &h1Client{dial: d.DialContext}
	t.Cleanup(func() { h.closeIdle(true) })
	do := func(ctx context.Context, path, body string) (string, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+ln.Addr().String()+path, strings.NewReader(body))
		if !h.fits(req) {
			t.Fatalf("a %d-byte POST does not fit", len(body))
		}
		resp, err := h.RoundTrip(req)
		if err != nil {
			return "", err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		return string(b), err
	}
	for i := range 20 {
		got, err := do(context.Background(), "/a", "x")
		if err != nil || got != "/a:x" {
			t.Fatalf("request %d: %q, %v", i, got, err)
		}
	}
	if n := newConns.Load(); n != 1 {
		t.Fatalf("20 sequential requests opened %d connections, want 1", n)
	}
	if got, err := do(context.Background(), "/bye", "y"); err != nil || got != "/bye:y" {
		t.Fatalf("/bye: %q, %v", got, err)
	}
	if got, err := do(context.Background(), "/a", "z"); err != nil || got != "/a:z" || newConns.Load() != 2 {
		t.Fatalf("after Connection: close: %q, %v, %d connections, want a second one", got, err, newConns.Load())
	}

	// Three pooled connections, all of which the server closes once idle.
	mu.Lock()
	closeIdle = true
	mu.Unlock()
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got, err := do(context.Background(), "/hold", "1"); err != nil || got != "/hold:1" {
				t.Errorf("concurrent request %d: %q, %v", i, got, err)
			}
		}()
	}
	wg.Wait()
	time.Sleep(50 * time.Millisecond) // the server closes the idle connections
	mu.Lock()
	closeIdle = false
	mu.Unlock()
	if got, err := do(context.Background(), "/a", "stale"); err != nil || got != "/a:stale" {
		t.Fatalf("on a connection the server closed: %q, %v, want the request sent again", got, err)
	}
	h.mu.Lock()
	idle := len(h.idle[netip.MustParseAddrPort(ln.Addr().String())])
	h.mu.Unlock()
	if idle != 1 {
		t.Fatalf("%d idle connections after the stale ones were found, want 1 (the new one)", idle)
	}

	before := newConns.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := do(ctx, "/slow", "t"); err == nil || ctx.Err() == nil {
		t.Fatalf("slow request: err %v, ctx %v; want a failure when the context ends", err, ctx.Err())
	}
	if got, err := do(context.Background(), "/a", "after"); err != nil || got != "/a:after" || newConns.Load() != before+1 {
		t.Fatalf("after a timed-out request: %q, %v, connections %d -> %d, want a new one", got, err, before, newConns.Load())
	}
}

// TestProxy_AnswersKeepTheirHeadersAcrossReusedConnections: concurrent
// clients through the waypoint to a service of two endpoints, so upstream
// connections go back and forth between the downstream connections' pins
// and the pool; every answer, with a body or empty, carries the header its
// own request asked for. (Under -race this also checks that an answer's
// header map and header values are not shared with the next exchange on
// its upstream connection.)
func TestProxy_AnswersKeepTheirHeadersAcrossReusedConnections(t *testing.T) {
	b := newBed(t)
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Echo", r.Header.Get("X-Id"))
		if r.URL.Path == "/body" {
			io.WriteString(w, r.Header.Get("X-Id"))
		}
	})
	b.workload("v1", 8080, map[string]string{"app": "web"}, echo)
	b.workload("v2", 8080, map[string]string{"app": "web"}, echo)
	b.service("web", "10.96.0.1", 8080, "web", true)
	b.start()
	c := b.client("10.96.0.1", false)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				id := strconv.Itoa(g*1000 + i)
				path := "/body"
				if i%2 == 0 {
					path = "/empty"
				}
				req, _ := http.NewRequest(http.MethodGet, "http://web"+path, nil)
				req.Header.Set("X-Id", id)
				resp, err := c.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				want := id
				if path == "/empty" {
					want = ""
				}
				if got := resp.Header.Get("X-Echo"); got != id || string(body) != want {
					t.Errorf("%s with X-Id %s: X-Echo %q, body %q", path, id, got, body)
					return
				}
			}
		}()
	}
	wg.Wait()
}
