package admin

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// fakeEnrollment records what the admin API asked for.
type fakeEnrollment struct{ calls []string }

func (f *fakeEnrollment) Enroll(p string) error { f.calls = append(f.calls, "enroll "+p); return nil }
func (f *fakeEnrollment) Unenroll(p string) error {
	f.calls = append(f.calls, "unenroll "+p)
	return nil
}

// TestAdmin_TCPRefusesChanges: the TCP handler serves reads but refuses
// every change with 403, and the state stays as it was.
func TestAdmin_TCPRefusesChanges(t *testing.T) {
	level, accessLog, enr := new(slog.LevelVar), new(atomic.Bool), &fakeEnrollment{}
	ts := httptest.NewServer(Handler(&fakeState{mesh: helloMesh()}, Controls{LogLevel: level, AccessLog: accessLog, Enrollment: enr}, slog.New(slog.DiscardHandler)))
	defer ts.Close()
	for _, req := range []struct{ method, path string }{
		{"POST", "/logging?level=debug"},
		{"PUT", "/logging?level=debug"},
		{"POST", "/accesslog?enabled=true"},
		{"PUT", "/accesslog?enabled=true"},
		{"POST", "/enroll?netns=/proc/self/ns/net"},
		{"POST", "/unenroll?netns=/var/run/netns/client"},
	} {
		r, _ := http.NewRequest(req.method, ts.URL+req.path, nil)
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "admin socket") {
			t.Errorf("%s %s over TCP: %d %q, want 403 naming the admin socket", req.method, req.path, resp.StatusCode, body)
		}
	}
	if level.Level() != slog.LevelInfo || accessLog.Load() || len(enr.calls) != 0 {
		t.Fatalf("state changed over TCP: level %v, access log %v, enrollment %v", level.Level(), accessLog.Load(), enr.calls)
	}
	for _, path := range []string{"/logging", "/accesslog", "/config_dump"} {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET %s over TCP: %d, want 200", path, resp.StatusCode)
		}
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("KMESH_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("needs root, and KMESH_REQUIRE_PRIVILEGED=1")
		}
		t.Skip("needs root (to run a client as another uid)")
	}
}

// unixClient is an HTTP client of the socket at path.
func unixClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
}

// TestListenUnix_RootOnly: the control socket is mode 0600 in a 0700
// directory, serves root, and refuses a non-root peer by its credentials
// even when the file mode is opened up.
func TestListenUnix_RootOnly(t *testing.T) {
	requireRoot(t)
	// Not t.TempDir: its parent is 0700, and uid 65534 must reach the
	// socket for the credential check to be what refuses it.
	base, err := os.MkdirTemp("", "kmesh-admin-sock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	path := filepath.Join(base, "node-a", "admin.sock")
	enr := &fakeEnrollment{}
	srv, err := ListenUnix("admin", path, ControlHandler(&fakeState{mesh: helloMesh()}, Controls{Enrollment: enr}, slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Serve(ctx)

	for p, want := range map[string]os.FileMode{path: 0o600 | os.ModeSocket, filepath.Dir(path): 0o700 | os.ModeDir} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
	}

	resp, err := unixClient(path).Post("http://kmeshd/enroll?netns=/var/run/netns/a", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || len(enr.calls) != 1 {
		t.Fatalf("root POST /enroll: %d, calls %v", resp.StatusCode, enr.calls)
	}

	// Open the file mode so only the credential check stands.
	os.Chmod(filepath.Dir(path), 0o755)
	os.Chmod(path, 0o666)
	out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"curl", "-s", "-w", " %{http_code}", "-X", "POST", "--unix-socket", path, "http://kmeshd/enroll?netns=/proc/self/ns/net").CombinedOutput()
	if err != nil {
		t.Fatalf("curl as uid 65534: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "uid 65534 is not root") || !strings.HasSuffix(string(out), " 403") {
		t.Fatalf("uid 65534 through an opened-up socket: %q, want 403 naming the uid", out)
	}
	if len(enr.calls) != 1 {
		t.Fatalf("a non-root peer changed enrollment: %v", enr.calls)
	}

	// A second instance on the same path is refused; a stale file is not.
	if _, err := ListenUnix("admin", path, http.NotFoundHandler()); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second listener on a live socket: %v", err)
	}
	stale := filepath.Join(base, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	s2, err := ListenUnix("admin", stale, http.NotFoundHandler())
	if err != nil {
		t.Fatalf("listen over a stale socket file: %v", err)
	}
	s2.Close()
	notSock := filepath.Join(base, "file")
	os.WriteFile(notSock, nil, 0o600)
	if _, err := ListenUnix("admin", notSock, http.NotFoundHandler()); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("listen over a regular file: %v", err)
	}
}
