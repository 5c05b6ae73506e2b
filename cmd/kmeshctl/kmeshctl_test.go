package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden with the current output")

// now is the fixed time of the connection ages in testdata/connections.json.
var now = time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)

// fakeAdmin serves canned admin API documents from testdata and keeps the
// controls kmeshctl changes.
type fakeAdmin struct {
	*httptest.Server
	// socket serves the same API with its changes, as kmeshd's admin
	// socket does; the TCP server refuses changes, as kmeshd's does.
	socket      string
	mu          sync.Mutex
	level       string
	accessLog   bool
	notReady    bool
	notReadyWhy string
	queries     []string // queries of /explain
}

func newFakeAdmin(t *testing.T) *fakeAdmin {
	t.Helper()
	f := &fakeAdmin{level: "info"}
	file := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			data, err := os.ReadFile(filepath.Join("testdata", name))
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			w.Write(data)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", file("config_dump.json"))
	mux.HandleFunc("GET /connections", file("connections.json"))
	mux.HandleFunc("GET /maps", file("maps.txt"))
	mux.HandleFunc("GET /certs", file("certs.json"))
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, `{"version":"v9.9.9","commit":"0123abc","goVersion":"go1.26.8","platform":"linux/amd64"}`)
	})
	mux.HandleFunc("GET /explain", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.queries = append(f.queries, r.URL.RawQuery)
		f.mu.Unlock()
		if r.URL.Query().Get("source") == "nobody" {
			http.Error(w, "source default/nobody: unknown workload", http.StatusNotFound)
			return
		}
		file("explain.json")(w, r)
	})
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.notReady {
			why := f.notReadyWhy
			if why == "" {
				why = "config not applied yet"
			}
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/logging", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if r.Method == http.MethodPost {
			f.level = r.URL.Query().Get("level")
		}
		json.NewEncoder(w).Encode(map[string]string{"level": f.level})
	})
	mux.HandleFunc("/accesslog", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if r.Method == http.MethodPost {
			f.accessLog = r.URL.Query().Get("enabled") == "true"
		}
		json.NewEncoder(w).Encode(map[string]bool{"enabled": f.accessLog})
	})
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "changes are served on kmeshd's admin socket only", http.StatusForbidden)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(f.Close)
	admins[f.addr()] = f
	t.Cleanup(func() { delete(admins, f.addr()) })
	f.socket = filepath.Join(t.TempDir(), "admin.sock")
	ln, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatal(err)
	}
	sock := &httptest.Server{Listener: ln, Config: &http.Server{Handler: mux}}
	sock.Start()
	t.Cleanup(sock.Close)
	return f
}

// admins are the fake admins by address, for kmeshctl.
var admins = map[string]*fakeAdmin{}

func (f *fakeAdmin) addr() string { return strings.TrimPrefix(f.URL, "http://") }

// kmeshctl runs the command line against the admin address and returns
// what it printed. Changes go to fakeAdmin's socket if addr is its
// address.
func kmeshctl(t *testing.T, addr string, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCommand(options{now: func() time.Time { return now }})
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	sock := filepath.Join(t.TempDir(), "none.sock")
	if f := admins[addr]; f != nil {
		sock = f.socket
	}
	cmd.SetArgs(append(args, "--admin-address", addr, "--admin-socket", sock))
	err := cmd.Execute()
	return out.String(), err
}

// checkGolden compares got with testdata/name.golden, or rewrites it with
// -update.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it):\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func TestKmeshctl_OutputMatchesGolden(t *testing.T) {
	f := newFakeAdmin(t)
	tests := []struct {
		golden string
		args   string
	}{
		{"services.table", "get services"},
		{"services.wide", "get services -o wide"},
		{"services.json", "get services -o json"},
		{"services.yaml", "get services -o yaml"},
		{"workloads.table", "get workloads"},
		{"workloads.wide", "get workloads -o wide"},
		{"workloads.json", "get workloads -o json"},
		{"workloads.yaml", "get workloads -o yaml"},
		{"policies.table", "get policies"},
		{"policies.wide", "get policies -o wide"},
		{"connections.table", "get connections"},
		{"connections.wide", "get connections -o wide"},
		{"connections.json", "get connections -o json"},
		{"certs.table", "get certs"},
		{"certs.wide", "get certs -o wide"},
		{"certs.json", "get certs -o json"},
		{"status", "status"},
		{"maps", "dump maps"},
		{"explain.table", "explain client [fd00:96::10]:80"},
		{"explain.yaml", "explain client [fd00:96::10]:80 -o yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			got, err := kmeshctl(t, f.addr(), strings.Fields(tt.args)...)
			if err != nil {
				t.Fatalf("kmeshctl %s: %v\n%s", tt.args, err, got)
			}
			// The fake's port changes from run to run.
			checkGolden(t, tt.golden, strings.ReplaceAll(got, f.addr(), "127.0.0.1:15000"))
		})
	}
}

func TestKmeshctl_AliasesPrintTheSame(t *testing.T) {
	f := newFakeAdmin(t)
	for alias, name := range map[string]string{"svc": "services", "wl": "workloads", "policy": "policies", "conn": "connections"} {
		a, err := kmeshctl(t, f.addr(), "get", alias)
		if err != nil {
			t.Fatal(err)
		}
		b, err := kmeshctl(t, f.addr(), "get", name)
		if err != nil {
			t.Fatal(err)
		}
		if a != b {
			t.Errorf("get %s and get %s differ:\n%s\n%s", alias, name, a, b)
		}
	}
}

func TestKmeshctl_LogAndAccessLogChangeTheDaemon(t *testing.T) {
	f := newFakeAdmin(t)
	tests := []struct {
		args string
		out  string
	}{
		{"log", "log level: info\n"},
		{"log --level debug", "log level: debug\n"},
		{"log", "log level: debug\n"},
		{"accesslog", "access log: off\n"},
		{"accesslog on", "access log: on\n"},
		{"accesslog", "access log: on\n"},
		{"accesslog off", "access log: off\n"},
	}
	for _, tt := range tests {
		got, err := kmeshctl(t, f.addr(), strings.Fields(tt.args)...)
		if err != nil {
			t.Fatalf("kmeshctl %s: %v", tt.args, err)
		}
		if got != tt.out {
			t.Fatalf("kmeshctl %s: %q, want %q", tt.args, got, tt.out)
		}
	}
	if f.level != "debug" || f.accessLog {
		t.Fatalf("daemon has level %s, access log %v; want debug, false", f.level, f.accessLog)
	}
}

func TestKmeshctl_ExplainAsksForSourceAndDestination(t *testing.T) {
	f := newFakeAdmin(t)
	if _, err := kmeshctl(t, f.addr(), "explain", "shop/web", "10.96.0.10:80"); err != nil {
		t.Fatal(err)
	}
	if want := "destination=10.96.0.10%3A80&source=shop%2Fweb"; len(f.queries) != 1 || f.queries[0] != want {
		t.Fatalf("explain queries %q, want [%s]", f.queries, want)
	}
}

func TestKmeshctl_StatusNotReady(t *testing.T) {
	f := newFakeAdmin(t)
	f.notReady = true
	got, err := kmeshctl(t, f.addr(), "status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "READY:     no: config not applied yet") {
		t.Fatalf("status of a kmeshd not ready:\n%s", got)
	}
}

// kmeshctl status prints kmeshd's own reason for not being ready (on main
// before this, always "config not applied yet").
func TestKmeshctl_StatusSaysWhyNotReady(t *testing.T) {
	f := newFakeAdmin(t)
	f.notReady = true
	f.notReadyWhy = "2 authorization policies are not enforced: the kernel lacks bpf_loop in cgroup programs (5.17)"
	got, err := kmeshctl(t, f.addr(), "status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "READY:     no: "+f.notReadyWhy+"\n") {
		t.Fatalf("status of a kmeshd that cannot enforce its policies:\n%s", got)
	}
}

func TestKmeshctl_Errors(t *testing.T) {
	f := newFakeAdmin(t)
	// A port nothing listens on: a listener closed at once.
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	down := strings.TrimPrefix(closed.URL, "http://")
	tests := []struct {
		addr, args, err string
	}{
		{down, "get services", "cannot reach kmeshd at " + down + ": connection refused (is kmeshd running? is --admin-address right?)"},
		{f.addr(), "get services -o xml", `unknown output format "xml": want one of table, wide, json, yaml`},
		{f.addr(), "explain client 10.96.0.10", `destination "10.96.0.10": want IP:PORT, or [IPv6]:PORT`},
		{f.addr(), "explain client 10.96.0.10:80 -o wide", `unknown output format "wide": want one of table, json, yaml`},
		{f.addr(), "explain nobody 10.96.0.10:80", "kmeshd at " + f.addr() + ": source default/nobody: unknown workload"},
		{f.addr(), "explain client", "accepts 2 arg(s), received 1"},
		{f.addr(), "log --level loud", `unknown log level "loud": want debug, info, warn or error`},
		{f.addr(), "accesslog maybe", `invalid argument "maybe" for "kmeshctl accesslog"`},
		{f.addr(), "get nodes", `unknown command "nodes" for "kmeshctl get"`},
	}
	for _, tt := range tests {
		t.Run(tt.args, func(t *testing.T) {
			_, err := kmeshctl(t, tt.addr, strings.Fields(tt.args)...)
			if err == nil || err.Error() != tt.err {
				t.Fatalf("error %v\nwant   %s", err, tt.err)
			}
		})
	}
}

// TestKmeshctl_HelpReadsLikeIstioctl: every command has a one-line Short
// without a final period, a Long and an Example, as istioctl's do.
func TestKmeshctl_HelpReadsLikeIstioctl(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Name() == "help" || c.Name() == "completion" || c.HasParent() && c.Parent().Name() == "completion" {
			return // cobra's own
		}
		if c.Short == "" || strings.HasSuffix(c.Short, ".") || strings.Contains(c.Short, "\n") {
			t.Errorf("%s: Short %q: want one line, no final period", c.CommandPath(), c.Short)
		}
		if c.Long == "" {
			t.Errorf("%s: no Long", c.CommandPath())
		}
		if c.Example == "" {
			t.Errorf("%s: no Example", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	root := newRootCommand(options{})
	root.InitDefaultCompletionCmd()
	walk(root)
	out, err := kmeshctl(t, "127.0.0.1:1", "completion", "bash")
	if err != nil || !strings.Contains(out, "__start_kmeshctl") {
		t.Fatalf("completion bash: %v\n%.200s", err, out)
	}
}

// TestKmeshctl_ChangesGoToTheSocket: changes reach kmeshd through its
// admin socket, never the TCP address (which refuses them); a missing
// socket is named in the error.
func TestKmeshctl_ChangesGoToTheSocket(t *testing.T) {
	f := newFakeAdmin(t)
	if out, err := kmeshctl(t, f.addr(), "log", "--level", "debug"); err != nil || out != "log level: debug\n" {
		t.Fatalf("log --level debug: %v %q", err, out)
	}
	if f.level != "debug" {
		t.Fatalf("level %q after log --level debug", f.level)
	}
	missing := filepath.Join(t.TempDir(), "admin.sock")
	cmd := newRootCommand(options{})
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"accesslog", "on", "--admin-address", f.addr(), "--admin-socket", missing})
	err := cmd.Execute()
	want := "cannot reach kmeshd's admin socket " + missing + ": no such socket (is kmeshd running? is --admin-socket right?)"
	if err == nil || err.Error() != want {
		t.Fatalf("accesslog on without a socket: %v\nwant %s", err, want)
	}
	if f.accessLog {
		t.Fatal("the access log was switched without the socket")
	}
}

func TestKmeshctl_VersionShowsClientAndDaemon(t *testing.T) {
	f := newFakeAdmin(t)
	got, err := kmeshctl(t, f.addr(), "version")
	if err != nil {
		t.Fatalf("kmeshctl version: %v\n%s", err, got)
	}
	lines := strings.Split(strings.TrimSpace(got), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "client: ") {
		t.Fatalf("kmeshctl version printed %q, want a client and a daemon line", got)
	}
	if want := "daemon: v9.9.9 (commit 0123abc, go1.26.8, linux/amd64)"; lines[1] != want {
		t.Errorf("daemon line %q, want %q", lines[1], want)
	}
	// Without a daemon the client's line is printed and the command fails.
	got, err = kmeshctl(t, "127.0.0.1:1", "version")
	if err == nil || !strings.HasPrefix(got, "client: ") || !strings.Contains(err.Error(), "cannot reach kmeshd") {
		t.Errorf("no daemon: printed %q, err %v; want the client line and a reach error", got, err)
	}
	if got, err := kmeshctl(t, "127.0.0.1:1", "version", "--client"); err != nil || strings.Count(got, "\n") != 1 {
		t.Errorf("version --client: %q, %v", got, err)
	}
}
