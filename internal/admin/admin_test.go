package admin

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/version"
)

// fakeState is a daemon with the hello mesh applied on node-a.
type fakeState struct {
	mesh  *model.Mesh
	conns []api.Connection
}

func (f *fakeState) NotReady() string {
	if f.mesh == nil {
		return "config not applied yet"
	}
	return ""
}
func (f *fakeState) Mesh() *model.Mesh { return f.mesh }
func (f *fakeState) ConfigDump() api.ConfigDump {
	d := api.ConfigDump{Node: "node-a", Version: 1, Source: "mesh.yaml"}
	if f.mesh != nil {
		d.Services, d.Workloads = api.FromModel(f.mesh)
		d.Enrolled = []string{"/var/run/netns/client", "/var/run/netns/hello-1"}
	}
	return d
}
func (f *fakeState) DumpMaps() ([]string, error) {
	return []string{"frontend 10.96.0.10:80/TCP service=1 target_port=8080", "service 1 mode=random gen=0 slots_v4=3 slots_v6=3"}, nil
}
func (f *fakeState) Connections() []api.Connection { return f.conns }

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// helloMesh is examples/hello.yaml, with hello-3 reachable over IPv4 only
// and a workload outside the mesh.
func helloMesh() *model.Mesh {
	w := func(name, app, node string, weight uint32, a ...string) model.Workload {
		netns := "/var/run/netns/" + name
		if name == "outsider" {
			netns = ""
		}
		return model.Workload{Name: name, Namespace: "default", Labels: map[string]string{"app": app}, Addresses: addrs(a...), Node: node, Netns: netns, Weight: weight}
	}
	return &model.Mesh{
		Services: []model.Service{{
			Name: "hello", Namespace: "default", LBMode: model.LBRandom,
			Addresses: addrs("10.96.0.10", "fd00:96::10"),
			Ports:     []model.ServicePort{{Port: 80, TargetPort: 8080, Protocol: model.ProtocolTCP}},
			Endpoints: []model.Endpoint{{Workload: "default/hello-1"}, {Workload: "default/hello-2"}, {Workload: "default/hello-3"}},
		}},
		Workloads: []model.Workload{
			w("client", "client", "node-a", 1, "10.1.1.10", "fd00:1:1::10"),
			w("hello-1", "hello", "node-a", 1, "10.1.1.11", "fd00:1:1::11"),
			w("hello-2", "hello", "node-b", 2, "10.1.2.12", "fd00:1:2::12"),
			w("hello-3", "hello", "node-b", 1, "10.1.2.13"),
			w("outsider", "none", "node-a", 1, "10.1.1.20"),
		},
	}
}

type testServer struct {
	*httptest.Server
	level     *slog.LevelVar
	accessLog *atomic.Bool
}

func newTestServer(t *testing.T, st State) *testServer {
	t.Helper()
	ts := &testServer{level: new(slog.LevelVar), accessLog: new(atomic.Bool)}
	// The control socket's handler: changes are served (socket_test.go
	// covers who may reach it).
	ts.Server = httptest.NewServer(ControlHandler(st, Controls{LogLevel: ts.level, AccessLog: ts.accessLog}, slog.New(slog.DiscardHandler)))
	t.Cleanup(ts.Close)
	return ts
}

func (ts *testServer) do(t *testing.T, method, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, ts.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func decode[T any](t *testing.T, body string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	return v
}

func TestAdmin_ReadyAfterFirstConfig(t *testing.T) {
	st := &fakeState{}
	ts := newTestServer(t, st)
	if code, _ := ts.do(t, "GET", "/healthz/ready"); code != http.StatusServiceUnavailable {
		t.Fatalf("before config: %d, want 503", code)
	}
	st.mesh = helloMesh()
	if code, body := ts.do(t, "GET", "/healthz/ready"); code != 200 || body != "ready\n" {
		t.Fatalf("after config: %d %q", code, body)
	}
	// The readiness address serves the probe and nothing else.
	rs := httptest.NewServer(ReadinessHandler(st))
	defer rs.Close()
	for path, want := range map[string]int{"/healthz/ready": 200, "/config_dump": 404} {
		resp, err := http.Get(rs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("readiness %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
}

func TestAdmin_ConfigDumpHasEmptyListsNotNull(t *testing.T) {
	ts := newTestServer(t, &fakeState{})
	_, body := ts.do(t, "GET", "/config_dump")
	for _, field := range []string{`"services": []`, `"workloads": []`, `"policies": []`, `"enrolled": []`} {
		if !strings.Contains(body, field) {
			t.Errorf("config dump lacks %s:\n%s", field, body)
		}
	}
}

func TestAdmin_MapsOneLinePerEntry(t *testing.T) {
	ts := newTestServer(t, &fakeState{mesh: helloMesh()})
	code, body := ts.do(t, "GET", "/maps")
	want := "frontend 10.96.0.10:80/TCP service=1 target_port=8080\nservice 1 mode=random gen=0 slots_v4=3 slots_v6=3\n"
	if code != 200 || body != want {
		t.Fatalf("/maps: %d %q, want %q", code, body, want)
	}
}

func TestAdmin_ConnectionsIsAList(t *testing.T) {
	st := &fakeState{mesh: helloMesh()}
	ts := newTestServer(t, st)
	if _, body := ts.do(t, "GET", "/connections"); strings.TrimSpace(body) != "[]" {
		t.Fatalf("no connections: %q, want []", body)
	}
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st.conns = []api.Connection{{
		Source:      api.Peer{Workload: "default/client", Address: "10.1.1.10:40000"},
		Destination: api.Peer{Workload: "default/hello-1", Address: "10.1.1.11:8080"},
		Service:     "default/hello", BytesSent: 10, BytesReceived: 20, Start: start, State: "established",
	}}
	_, body := ts.do(t, "GET", "/connections")
	got := decode[[]api.Connection](t, body)
	if len(got) != 1 || got[0].Destination.Workload != "default/hello-1" || !got[0].Start.Equal(start) {
		t.Fatalf("connections %+v", got)
	}
}

func TestAdmin_LoggingShowsAndChangesLevel(t *testing.T) {
	ts := newTestServer(t, &fakeState{})
	tests := []struct {
		name, method, path string
		code               int
		level              string
	}{
		{"show", "GET", "/logging", 200, "info"},
		{"set debug", "POST", "/logging?level=debug", 200, "debug"},
		{"set by PUT", "PUT", "/logging?level=WARN", 200, "warn"},
		{"GET never changes", "GET", "/logging?level=error", 405, "warn"},
		{"bad level", "POST", "/logging?level=loud", 400, "warn"},
		{"no level", "POST", "/logging", 400, "warn"},
		{"other method", "DELETE", "/logging", 405, "warn"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := ts.do(t, tt.method, tt.path)
			if code != tt.code {
				t.Fatalf("%s %s: %d %s, want %d", tt.method, tt.path, code, body, tt.code)
			}
			if code == 200 {
				if got := decode[api.Logging](t, body).Level; got != tt.level {
					t.Fatalf("answer says level %s, want %s", got, tt.level)
				}
			}
			if got := levelName(ts.level.Level()); got != tt.level {
				t.Fatalf("handler level %s, want %s", got, tt.level)
			}
		})
	}
}

func TestAdmin_AccessLogSwitch(t *testing.T) {
	ts := newTestServer(t, &fakeState{})
	tests := []struct {
		name, method, path string
		code               int
		on                 bool
	}{
		{"off by default", "GET", "/accesslog", 200, false},
		{"on", "POST", "/accesslog?enabled=true", 200, true},
		{"on again", "PUT", "/accesslog?enabled=1", 200, true},
		{"GET never changes", "GET", "/accesslog?enabled=false", 405, true},
		{"bad value", "POST", "/accesslog?enabled=maybe", 400, true},
		{"off", "POST", "/accesslog?enabled=false", 200, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := ts.do(t, tt.method, tt.path)
			if code != tt.code {
				t.Fatalf("%s %s: %d %s, want %d", tt.method, tt.path, code, body, tt.code)
			}
			if code == 200 && decode[api.AccessLog](t, body).Enabled != tt.on {
				t.Fatalf("answer %s, want enabled=%v", body, tt.on)
			}
			if ts.accessLog.Load() != tt.on {
				t.Fatalf("switch %v, want %v", ts.accessLog.Load(), tt.on)
			}
		})
	}
}

func TestAdmin_ControlsLeftOutWhenNil(t *testing.T) {
	ts := httptest.NewServer(Handler(&fakeState{}, Controls{}, slog.New(slog.DiscardHandler)))
	defer ts.Close()
	for _, path := range []string{"/logging", "/accesslog"} {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("%s without its control: %d, want 404", path, resp.StatusCode)
		}
	}
}

func TestAdmin_ExplainRequests(t *testing.T) {
	ts := newTestServer(t, &fakeState{mesh: helloMesh()})
	tests := []struct {
		name, query string
		code        int
	}{
		{"ok", "source=default/client&destination=10.96.0.10:80", 200},
		{"name in default namespace", "source=client&destination=[fd00:96::10]:80", 200},
		{"unknown source", "source=default/nobody&destination=10.96.0.10:80", 404},
		{"no source", "destination=10.96.0.10:80", 400},
		{"no port", "source=client&destination=10.96.0.10", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code, body := ts.do(t, "GET", "/explain?"+tt.query); code != tt.code {
				t.Fatalf("%d %s, want %d", code, body, tt.code)
			}
		})
	}
	notReady := newTestServer(t, &fakeState{})
	if code, _ := notReady.do(t, "GET", "/explain?source=client&destination=10.96.0.10:80"); code != 503 {
		t.Fatalf("explain before config: %d, want 503", code)
	}
}

func TestGroup_StopsWithContextAndOnFailure(t *testing.T) {
	var g Group
	for _, name := range []string{"admin", "metrics"} {
		s, err := Listen(name, "127.0.0.1:0", http.NotFoundHandler())
		if err != nil {
			t.Fatal(err)
		}
		g = append(g, s)
	}
	// A port in use fails at Listen, naming the surface.
	if _, err := Listen("readiness", g[0].Addr().String(), http.NotFoundHandler()); err == nil || !strings.Contains(err.Error(), "readiness address") {
		t.Fatalf("listen on a used port: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("group still serving 5s after its context ended")
	}
}

func TestAdmin_VersionIsTheBinarys(t *testing.T) {
	defer func(v, c string) { version.Version, version.Commit = v, c }(version.Version, version.Commit)
	version.Version, version.Commit = "v1.2.3", "feedbeef"
	ts := newTestServer(t, &fakeState{})
	code, body := ts.do(t, "GET", "/version")
	v := decode[api.Version](t, body)
	if code != 200 || v.Version != "v1.2.3" || v.Commit != "feedbeef" || v.GoVersion == "" || v.Platform == "" {
		t.Fatalf("/version: %d %+v", code, v)
	}
}

// The heap profile is how a user breaks kmeshd's memory down (issue 12):
// it must be a real profile that go tool pprof reads, on the read-only
// address.
func TestAdmin_ServesHeapProfile(t *testing.T) {
	ts := httptest.NewServer(Handler(&fakeState{}, Controls{}, slog.New(slog.DiscardHandler)))
	defer ts.Close()
	resp, err := http.Get(ts.URL + "/debug/pprof/heap")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	// A pprof profile is gzipped protobuf.
	if resp.StatusCode != 200 || len(body) < 2 || body[0] != 0x1f || body[1] != 0x8b {
		t.Fatalf("/debug/pprof/heap: %d, %d bytes (%q...), want 200 and a gzipped profile", resp.StatusCode, len(body), body[:min(len(body), 40)])
	}
	resp, err = http.Post(ts.URL+"/debug/pprof/heap", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /debug/pprof/heap: %d, want 405 (GET only)", resp.StatusCode)
	}
}
