package waypoint

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/model"
)

// bed is a waypoint on loopback in front of real HTTP backends: each
// workload is a server on its own 127.1.x.y address, and the client's
// connections are handed to the proxy as addressed to the service VIP.
type bed struct {
	t     testing.TB
	mesh  *model.Mesh
	proxy *Proxy
	ln    net.Listener
	log   bytes.Buffer
	logMu sync.Mutex
	opts  Options // start's options beyond the defaults (HBONE upstream)
}

const gwKey = "default/waypoint"

// workloadAddrs numbers the backends of every bed in the test binary. An
// address is never bound twice: a backend's closed connection can linger
// (FIN_WAIT_2 while the proxy's pooled end is not closed yet), and a later
// bed binding the same address and port would fail with EADDRINUSE.
var workloadAddrs atomic.Uint32

// nextWorkloadAddr returns a loopback address no bed has used yet.
func nextWorkloadAddr() netip.Addr {
	n := workloadAddrs.Add(1) - 1
	return netip.AddrFrom4([4]byte{127, 1, byte(n / 250), byte(n%250 + 1)})
}

func newBed(t testing.TB) *bed {
	b := &bed{t: t, mesh: &model.Mesh{Gateways: []model.Gateway{{Name: "waypoint", Namespace: "default", ClassName: model.WaypointClass,
		Listeners: []model.GatewayListener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}}}}}
	b.mesh.Workloads = append(b.mesh.Workloads, model.Workload{Name: "client", Namespace: "default", ServiceAccount: "client",
		Addresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Weight: 1, Node: "n"})
	return b
}

// workload starts a backend server for a workload named name with handler h
// on port; it returns the workload key.
func (b *bed) workload(name string, port uint16, labels map[string]string, h http.Handler) {
	addr := nextWorkloadAddr()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(addr, port).String())
	if err != nil {
		b.t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go srv.Serve(ln)
	b.t.Cleanup(func() { srv.Close() })
	b.mesh.Workloads = append(b.mesh.Workloads, model.Workload{Name: name, Namespace: "default", Labels: labels,
		Addresses: []netip.Addr{addr}, Weight: 1, Node: "n"})
}

// service adds a service at vip:80 -> targetPort over the workloads with
// app=app.
func (b *bed) service(name, vip string, targetPort uint16, app string, waypoint bool) {
	s := model.Service{Name: name, Namespace: "default", LBMode: model.LBRandom,
		Addresses: []netip.Addr{netip.MustParseAddr(vip)},
		Ports:     []model.ServicePort{{Port: 80, TargetPort: targetPort, Protocol: model.ProtocolTCP}}}
	if waypoint {
		s.Labels = map[string]string{model.LabelUseWaypoint: "waypoint"}
	}
	for _, w := range b.mesh.Workloads {
		if w.Labels["app"] == app {
			s.Endpoints = append(s.Endpoints, model.Endpoint{Workload: w.Key()})
		}
	}
	b.mesh.Services = append(b.mesh.Services, s)
}

func (b *bed) Write(p []byte) (int, error) {
	b.logMu.Lock()
	defer b.logMu.Unlock()
	return b.log.Write(p)
}

// start starts the proxy; connections to the returned client reach the
// service vip:80.
func (b *bed) start() {
	if err := b.mesh.Validate(); err != nil {
		b.t.Fatal(err)
	}
	opts := b.opts
	opts.Gateway, opts.Metrics, opts.AccessLog = gwKey, NewMetrics(), b
	p, err := New(b.mesh, opts)
	if err != nil {
		b.t.Fatal(err)
	}
	b.proxy = p
	b.t.Cleanup(func() { p.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.t.Fatal(err)
	}
	b.ln = ln
	b.t.Cleanup(func() { ln.Close() })
}

// client returns an HTTP client whose connections reach the waypoint as if
// addressed to vip:80 (h2 for prior-knowledge h2c).
func (b *bed) client(vip string, h2 bool) *http.Client {
	dst := netip.AddrPortFrom(netip.MustParseAddr(vip), 80)
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		c, s := net.Pipe()
		b.proxy.ServeConn(s, dst, Peer{Addr: netip.MustParseAddrPort("127.0.0.1:40000")})
		return c, nil
	}
	tr := &http.Transport{DialContext: dial, DisableCompression: true}
	tr.Protocols = new(http.Protocols)
	if h2 {
		tr.Protocols.SetUnencryptedHTTP2(true)
	} else {
		tr.Protocols.SetHTTP1(true)
	}
	b.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// named answers with the workload's name.
func named(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", name)
		w.Header().Set("X-Saw-Path", r.URL.Path)
		w.Header().Set("X-Saw-Host", r.Host)
		w.Header().Set("X-Saw-Foo", r.Header.Get("Foo"))
		fmt.Fprint(w, name)
	})
}

func get(t *testing.T, c *http.Client, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

func routeTo(backend ...model.BackendRef) model.RouteRule {
	return model.RouteRule{BackendRefs: backend}
}

func ref(name string, weight int) model.BackendRef {
	return model.BackendRef{Name: name, Port: 80, Weight: weight}
}

func svcParent(name string) []model.ParentRef {
	return []model.ParentRef{{Kind: "Service", Name: name}}
}

func TestProxy_RoutesByPathAndHeader(t *testing.T) {
	b := newBed(t)
	b.workload("v1", 8080, map[string]string{"app": "v1"}, named("v1"))
	b.workload("v2", 8080, map[string]string{"app": "v2"}, named("v2"))
	b.service("web", "10.96.0.1", 8080, "v1", true)
	b.service("web-v1", "10.96.0.2", 8080, "v1", false)
	b.service("web-v2", "10.96.0.3", 8080, "v2", false)
	b.mesh.Routes = []model.Route{{Kind: model.KindHTTPRoute, Name: "web", Namespace: "default", ParentRefs: svcParent("web"),
		Rules: []model.RouteRule{
			{Matches: []model.RouteMatch{{Path: &model.PathMatch{Type: model.MatchTypePathPrefix, Value: "/v2"}}},
				BackendRefs: []model.BackendRef{ref("web-v2", 1)}},
			{Matches: []model.RouteMatch{{Headers: []model.ValueMatch{{Type: model.MatchTypeExact, Name: "x-version", Value: "2"}}}},
				BackendRefs: []model.BackendRef{ref("web-v2", 1)}},
			{Matches: []model.RouteMatch{{Path: &model.PathMatch{Type: model.MatchTypeExact, Value: "/rewrite/me"}}},
				Filters: []model.RouteFilter{
					{Type: model.FilterURLRewrite, URLRewrite: &model.URLRewrite{Hostname: "rewritten", Path: &model.PathModifier{Type: model.PathReplaceFull, Value: "/new"}}},
					{Type: model.FilterRequestHeaderModifier, RequestHeaderModifier: &model.HeaderModifier{Set: []model.Header{{Name: "foo", Value: "bar"}}}},
					{Type: model.FilterResponseHeaderModifier, ResponseHeaderModifier: &model.HeaderModifier{Add: []model.Header{{Name: "x-added", Value: "yes"}}}},
				},
				BackendRefs: []model.BackendRef{ref("web-v1", 1)}},
			{Matches: []model.RouteMatch{{Path: &model.PathMatch{Type: model.MatchTypePathPrefix, Value: "/old"}}},
				Filters: []model.RouteFilter{{Type: model.FilterRequestRedirect, RequestRedirect: &model.RequestRedirect{
					Path: &model.PathModifier{Type: model.PathReplacePrefix, Value: "/new"}, StatusCode: 301}}}},
			{Matches: []model.RouteMatch{{Path: &model.PathMatch{Type: model.MatchTypePathPrefix, Value: "/"}}},
				BackendRefs: []model.BackendRef{ref("web-v1", 1)}},
		}}}
	b.start()
	c := b.client("10.96.0.1", false)
	cases := []struct {
		name, path string
		hdr        []string
		want       string
	}{
		{"default prefix", "/", nil, "v1"},
		{"path prefix", "/v2/x", nil, "v2"},
		{"prefix is element-wise", "/v2x", nil, "v1"},
		{"header", "/a", []string{"X-Version", "2"}, "v2"},
		{"header other value", "/a", []string{"X-Version", "3"}, "v1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(t, c, "http://web"+tc.path, tc.hdr...)
			if resp.StatusCode != 200 || body != tc.want {
				t.Fatalf("GET %s: %d %q, want 200 %q", tc.path, resp.StatusCode, body, tc.want)
			}
		})
	}
	resp, _ := get(t, c, "http://web/rewrite/me")
	if got := [...]string{resp.Header.Get("X-Saw-Path"), resp.Header.Get("X-Saw-Host"), resp.Header.Get("X-Saw-Foo"), resp.Header.Get("X-Added")}; got != [...]string{"/new", "rewritten", "bar", "yes"} {
		t.Errorf("rewrite: backend saw path, host, foo, added = %q", got)
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, _ = get(t, c, "http://web/old/page?q=1")
	if resp.StatusCode != 301 || resp.Header.Get("Location") != "http://web/new/page?q=1" {
		t.Errorf("redirect: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestProxy_WeightedSplit(t *testing.T) {
	b := newBed(t)
	b.workload("v1", 8080, map[string]string{"app": "v1"}, named("v1"))
	b.workload("v2", 8080, map[string]string{"app": "v2"}, named("v2"))
	b.service("web", "10.96.0.1", 8080, "v1", true)
	b.service("web-v1", "10.96.0.2", 8080, "v1", false)
	b.service("web-v2", "10.96.0.3", 8080, "v2", false)
	b.mesh.Routes = []model.Route{{Kind: model.KindHTTPRoute, Name: "split", Namespace: "default", ParentRefs: svcParent("web"),
		Rules: []model.RouteRule{routeTo(ref("web-v1", 80), ref("web-v2", 20))}}}
	b.start()
	c := b.client("10.96.0.1", false)
	counts := map[string]int{}
	const n = 1000
	for range n {
		_, body := get(t, c, "http://web/")
		counts[body]++
	}
	// Chi-square with 1 degree of freedom; 10.83 is p = 0.001.
	chi := sq(float64(counts["v1"])-0.8*n)/(0.8*n) + sq(float64(counts["v2"])-0.2*n)/(0.2*n)
	if chi > 10.83 || counts["v1"]+counts["v2"] != n {
		t.Fatalf("split %v: chi-square %.2f > 10.83 for 80/20", counts, chi)
	}
}

func sq(x float64) float64 { return x * x }

func TestProxy_RetryHidesOneFailure(t *testing.T) {
	b := newBed(t)
	var calls atomic.Int32
	b.workload("flaky", 8080, map[string]string{"app": "flaky"}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ok %s", body)
	}))
	b.service("flaky", "10.96.0.1", 8080, "flaky", true)
	b.start()
	c := b.client("10.96.0.1", false)
	// No route: Istio's default retry policy (503 is retried) applies.
	resp, err := c.Post("http://flaky/", "text/plain", strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok payload" || calls.Load() != 2 {
		t.Fatalf("got %d %q after %d calls, want 200 \"ok payload\" after 2", resp.StatusCode, body, calls.Load())
	}
}

func TestProxy_RouteRetryCodesAndAttempts(t *testing.T) {
	b := newBed(t)
	var calls atomic.Int32
	b.workload("bad", 8080, map[string]string{"app": "bad"}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
	}))
	b.service("bad", "10.96.0.1", 8080, "bad", true)
	b.mesh.Routes = []model.Route{{Kind: model.KindHTTPRoute, Name: "r", Namespace: "default", ParentRefs: svcParent("bad"),
		Rules: []model.RouteRule{{BackendRefs: []model.BackendRef{ref("bad", 1)},
			Retry: &model.RouteRetry{Codes: []int{500}, Attempts: 3, Backoff: time.Millisecond}}}}}
	b.start()
	resp, _ := get(t, b.client("10.96.0.1", false), "http://bad/")
	if resp.StatusCode != 500 || calls.Load() != 4 {
		t.Fatalf("got %d after %d calls, want 500 after 4 (1 + 3 retries)", resp.StatusCode, calls.Load())
	}
}

func TestProxy_TimeoutIs504(t *testing.T) {
	b := newBed(t)
	b.workload("slow", 8080, map[string]string{"app": "slow"}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
		fmt.Fprint(w, "late")
	}))
	b.service("slow", "10.96.0.1", 8080, "slow", true)
	b.mesh.Routes = []model.Route{{Kind: model.KindHTTPRoute, Name: "r", Namespace: "default", ParentRefs: svcParent("slow"),
		Rules: []model.RouteRule{{BackendRefs: []model.BackendRef{ref("slow", 1)}, Timeouts: model.RouteTimeouts{Request: 200 * time.Millisecond}}}}}
	b.start()
	resp, body := get(t, b.client("10.96.0.1", false), "http://slow/")
	if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(body, "upstream request timeout") {
		t.Fatalf("got %d %q, want 504 upstream request timeout", resp.StatusCode, body)
	}
}

func TestProxy_FaultAbortAndDelay(t *testing.T) {
	b := newBed(t)
	b.workload("v1", 8080, map[string]string{"app": "v1"}, named("v1"))
	b.service("web", "10.96.0.1", 8080, "v1", true)
	b.mesh.VirtualServices = []model.VirtualService{{Name: "faults", Namespace: "default", Hosts: []string{"web"},
		HTTP: []model.VirtualServiceHTTP{
			{Match: []model.VirtualServiceMatch{{URI: &model.PathMatch{Type: model.MatchTypePathPrefix, Value: "/abort"}}},
				Fault: &model.Fault{Abort: &model.FaultAbort{HTTPStatus: 418, Percent: 100}}},
			{Match: []model.VirtualServiceMatch{{URI: &model.PathMatch{Type: model.MatchTypePathPrefix, Value: "/delay"}}},
				Fault: &model.Fault{Delay: &model.FaultDelay{Fixed: 300 * time.Millisecond, Percent: 100}}},
		}}}
	b.start()
	c := b.client("10.96.0.1", false)
	if resp, _ := get(t, c, "http://web/abort"); resp.StatusCode != 418 {
		t.Errorf("abort: %d, want 418", resp.StatusCode)
	}
	start := time.Now()
	if resp, body := get(t, c, "http://web/delay"); resp.StatusCode != 200 || body != "v1" || time.Since(start) < 300*time.Millisecond {
		t.Errorf("delay: %d %q after %v, want 200 v1 after >= 300ms", resp.StatusCode, body, time.Since(start))
	}
	if resp, _ := get(t, c, "http://web/other"); resp.StatusCode != 200 {
		t.Errorf("other path: %d, want 200", resp.StatusCode)
	}
}

func TestProxy_L7DenyIs403AndConnectionLives(t *testing.T) {
	b := newBed(t)
	b.workload("v1", 8080, map[string]string{"app": "v1"}, named("v1"))
	b.service("web", "10.96.0.1", 8080, "v1", true)
	b.mesh.WaypointPolicies = []model.L7Policy{
		{Name: "deny-admin", Namespace: "default", Action: model.ActionDeny, TargetRefs: []model.ParentRef{{Kind: "Service", Name: "web"}},
			Rules: []model.L7Rule{{To: []model.L7Operation{{Paths: []string{"/admin*"}, Methods: []string{"GET"}}}}}},
		{Name: "allow-client", Namespace: "default", Action: model.ActionAllow,
			TargetRefs: []model.ParentRef{{Kind: "Gateway", Group: "gateway.networking.k8s.io", Name: "waypoint"}},
			Rules:      []model.L7Rule{{From: []model.L7Source{{Principals: []string{"cluster.local/ns/default/sa/client"}}}}}},
	}
	b.start()
	var conns atomic.Int32
	c := b.client("10.96.0.1", false)
	tr := c.Transport.(*http.Transport)
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, n, a string) (net.Conn, error) { conns.Add(1); return dial(ctx, n, a) }
	if resp, body := get(t, c, "http://web/admin/x"); resp.StatusCode != 403 || !strings.Contains(body, "RBAC: access denied") {
		t.Errorf("GET /admin/x: %d %q, want 403 RBAC: access denied", resp.StatusCode, body)
	}
	if resp, _ := get(t, c, "http://web/public"); resp.StatusCode != 200 {
		t.Errorf("GET /public: %d, want 200", resp.StatusCode)
	}
	if conns.Load() != 1 {
		t.Errorf("%d connections, want 1: the denial must not close the connection", conns.Load())
	}
	// A client the ALLOW policy does not name is denied everything.
	b.mesh.Workloads[0].ServiceAccount = "other"
	if err := b.proxy.Update(b.mesh); err != nil {
		t.Fatal(err)
	}
	if resp, _ := get(t, c, "http://web/public"); resp.StatusCode != 403 {
		t.Errorf("GET /public as sa/other: %d, want 403", resp.StatusCode)
	}
}

func TestProxy_H2CStreamingAndTrailers(t *testing.T) {
	b := newBed(t)
	b.workload("echo", 8080, map[string]string{"app": "echo"}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		buf := make([]byte, 64)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(bytes.ToUpper(buf[:n]))
				w.(http.Flusher).Flush()
			}
			if err != nil {
				break
			}
		}
		w.Header().Set("X-Checksum", "done")
	}))
	b.service("echo", "10.96.0.1", 8080, "echo", true)
	b.start()
	c := b.client("10.96.0.1", true)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", "http://echo/stream", pr)
	respc := make(chan *http.Response, 1)
	errc := make(chan error, 1)
	go func() {
		resp, err := c.Do(req)
		if err != nil {
			errc <- err
			return
		}
		respc <- resp
	}()
	// Full duplex: each message comes back before the next is sent.
	pw.Write([]byte("one"))
	var resp *http.Response
	select {
	case resp = <-respc:
	case err := <-errc:
		t.Fatal(err)
	case <-time.After(5 * time.Second):
		t.Fatal("no response headers while the request streams")
	}
	if resp.ProtoMajor != 2 {
		t.Fatalf("proto %s, want HTTP/2", resp.Proto)
	}
	buf := make([]byte, 16)
	for _, msg := range []string{"one", "two"} {
		if msg != "one" {
			pw.Write([]byte(msg))
		}
		n, err := io.ReadAtLeast(resp.Body, buf, len(msg))
		if err != nil || string(buf[:n]) != strings.ToUpper(msg) {
			t.Fatalf("stream: %q %v, want %q", buf[:n], err, strings.ToUpper(msg))
		}
	}
	pw.Close()
	io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := resp.Trailer.Get("X-Checksum"); got != "done" {
		t.Errorf("trailer X-Checksum = %q, want done", got)
	}
}

func TestProxy_NoRouteMatchIs404(t *testing.T) {
	b := newBed(t)
	b.workload("v1", 8080, map[string]string{"app": "v1"}, named("v1"))
	b.service("web", "10.96.0.1", 8080, "v1", true)
	b.mesh.Routes = []model.Route{{Kind: model.KindHTTPRoute, Name: "r", Namespace: "default", ParentRefs: svcParent("web"),
		Rules: []model.RouteRule{{Matches: []model.RouteMatch{{Path: &model.PathMatch{Type: model.MatchTypeExact, Value: "/only"}}},
			BackendRefs: []model.BackendRef{ref("web", 1)}}}}}
	b.start()
	c := b.client("10.96.0.1", false)
	if resp, _ := get(t, c, "http://web/other"); resp.StatusCode != 404 {
		t.Errorf("unmatched: %d, want 404", resp.StatusCode)
	}
	if resp, body := get(t, c, "http://web/only"); resp.StatusCode != 200 || body != "v1" {
		t.Errorf("matched: %d %q", resp.StatusCode, body)
	}
}

// TestProxy_ConsumerRoute: a route from another namespace than the
// service's (a GAMMA consumer route) applies to that namespace's clients
// only, and for them instead of the service's own routes.
func TestProxy_ConsumerRoute(t *testing.T) {
	b := newBed(t)
	b.workload("v1", 8080, map[string]string{"app": "v1"}, named("v1"))
	b.workload("v2", 8080, map[string]string{"app": "v2"}, named("v2"))
	b.workload("v3", 8080, map[string]string{"app": "v3"}, named("v3"))
	b.service("web", "10.96.0.1", 8080, "v1", true)
	b.service("web-v2", "10.96.0.2", 8080, "v2", false)
	b.service("web-v3", "10.96.0.3", 8080, "v3", false)
	b.mesh.Routes = []model.Route{
		{Kind: model.KindHTTPRoute, Name: "producer", Namespace: "default", ParentRefs: svcParent("web"),
			Rules: []model.RouteRule{{BackendRefs: []model.BackendRef{ref("web-v3", 1)}}}},
		{Kind: model.KindHTTPRoute, Name: "consumer", Namespace: "shop",
			ParentRefs: []model.ParentRef{{Kind: "Service", Name: "web", Namespace: "default"}},
			Rules:      []model.RouteRule{{BackendRefs: []model.BackendRef{{Name: "web-v2", Namespace: "default", Port: 80, Weight: 1}}}}},
	}
	b.start()
	client := func(principal string) *http.Client {
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, s := net.Pipe()
			b.proxy.ServeConn(s, netip.MustParseAddrPort("10.96.0.1:80"),
				Peer{Addr: netip.MustParseAddrPort("127.0.0.9:40000"), Principal: principal, MutualTLS: true})
			return c, nil
		}}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	for principal, want := range map[string]string{
		"cluster.local/ns/shop/sa/buyer":    "v2", // the consumer route
		"cluster.local/ns/default/sa/x":     "v3", // the producer's route
		"cluster.local/ns/elsewhere/sa/any": "v3",
	} {
		resp, _ := get(t, client(principal), "http://web/")
		if got := resp.Header.Get("X-Backend"); got != want {
			t.Errorf("client %s: answered by %q, want %s", principal, got, want)
		}
	}
	d := b.proxy.Dump()
	found := false
	for _, r := range d.Routes {
		if r.ConsumerNamespace == "shop" && r.Service == "default/web:80" {
			found = true
		}
	}
	if !found {
		t.Errorf("config dump lacks the consumer route: %+v", d.Routes)
	}
}

// TestProxy_RouteWithoutRetryGetsIstioDefault: a route rule that says
// nothing of retries gets Istio's default policy: a 503 is tried 3 times
// in all (2 retries), a 500 once.
func TestProxy_RouteWithoutRetryGetsIstioDefault(t *testing.T) {
	b := newBed(t)
	var calls atomic.Int32
	b.workload("down", 8080, map[string]string{"app": "down"}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.URL.Path == "/500" {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	b.service("web", "10.96.0.1", 8080, "down", true)
	b.service("down", "10.96.0.2", 8080, "down", false)
	b.mesh.Routes = []model.Route{{Kind: model.KindHTTPRoute, Name: "web", Namespace: "default", ParentRefs: svcParent("web"),
		Rules: []model.RouteRule{routeTo(ref("down", 1))}}}
	b.start()
	c := b.client("10.96.0.1", false)
	for path, want := range map[string][2]int{"/503": {503, 3}, "/500": {500, 1}} {
		calls.Store(0)
		if resp, _ := get(t, c, "http://web"+path); resp.StatusCode != want[0] || int(calls.Load()) != want[1] {
			t.Errorf("GET %s: %d after %d tries, want %d after %d", path, resp.StatusCode, calls.Load(), want[0], want[1])
		}
	}
}
