//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// nobody is the uid and gid the unprivileged user runs as.
const nobody = "65534"

// asNobody runs a command as uid and gid 65534 with no supplementary
// groups, and returns its output, whatever its exit status.
func asNobody(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("setpriv", append([]string{"--reuid=" + nobody, "--regid=" + nobody, "--clear-groups", "--"}, args...)...)
	done := make(chan struct{})
	var out []byte
	go func() {
		out, _ = cmd.CombinedOutput()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("%s as uid %s: still running after 20s", strings.Join(args, " "), nobody)
	}
	return string(out)
}

// TestAdminChangesNeedRoot: an unprivileged user on the host, who can reach
// kmeshd's TCP admin address, can change neither enrollment, the log level
// nor the access log, through TCP or the admin socket, and cannot make
// kmeshd hang with a FIFO; kmeshd keeps answering.
func TestAdminChangesNeedRoot(t *testing.T) {
	m := newMesh(t)
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, m.config("random", helloWorkloads))
	k := m.startKmeshd("node-a", cfg)
	before := k.configDump(t).Enrolled

	// A copy of kmeshctl and a FIFO where uid 65534 can reach them.
	pub, err := os.MkdirTemp("", "kmesh-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(pub) })
	os.Chmod(pub, 0o755)
	ctl, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshctl")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(ctl)
	if err != nil {
		t.Fatal(err)
	}
	pubCtl := filepath.Join(pub, "kmeshctl")
	if err := os.WriteFile(pubCtl, data, 0o755); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(pub, "fifo")
	if err := syscall.Mkfifo(fifo, 0o666); err != nil {
		t.Fatal(err)
	}
	client := m.pods["client"].NetnsPath

	t.Run("tcp", func(t *testing.T) {
		for _, path := range []string{
			"/enroll?netns=/proc/self/ns/net", "/enroll?netns=" + fifo, "/unenroll?netns=" + client,
			"/logging?level=error", "/accesslog?enabled=true",
		} {
			for _, method := range []string{"POST", "PUT"} {
				out := asNobody(t, "curl", "-s", "-m", "10", "-w", " %{http_code}", "-X", method, "http://"+k.admin+path)
				if path[:3] != "/lo" && path[:3] != "/ac" && method == "PUT" {
					// /enroll and /unenroll take POST alone.
					if !strings.HasSuffix(out, " 405") {
						t.Errorf("%s %s as uid %s: %q, want 405", method, path, nobody, out)
					}
					continue
				}
				if !strings.HasSuffix(out, " 403") || !strings.Contains(out, "admin socket") {
					t.Errorf("%s %s as uid %s: %q, want 403 naming the admin socket", method, path, nobody, out)
				}
			}
		}
	})
	t.Run("socket", func(t *testing.T) {
		out := asNobody(t, "curl", "-s", "-m", "10", "-w", " %{http_code}", "-X", "POST", "--unix-socket", k.socket, "http://kmeshd/logging?level=error")
		if !strings.HasSuffix(out, " 000") {
			t.Errorf("POST /logging on the admin socket as uid %s: %q, want no connection", nobody, out)
		}
		for _, args := range [][]string{
			{"enroll", "--netns", "/proc/self/ns/net"},
			{"enroll", "--netns", fifo},
			{"unenroll", "--netns", client},
			{"log", "--level", "error"},
			{"accesslog", "on"},
		} {
			out := asNobody(t, append([]string{pubCtl, "--admin-address", k.admin, "--admin-socket", k.socket}, args...)...)
			if !strings.Contains(out, "permission denied (changes to kmeshd need root)") {
				t.Errorf("kmeshctl %s as uid %s: %q, want permission denied", strings.Join(args, " "), nobody, out)
			}
		}
		// Reads still work for anyone on the host.
		if out := asNobody(t, pubCtl, "--admin-address", k.admin, "status"); !strings.Contains(out, "READY:     yes") {
			t.Errorf("kmeshctl status as uid %s: %q", nobody, out)
		}
	})

	// Nothing changed, and kmeshd answers at once.
	get := func(path string, v any) {
		t.Helper()
		code, body := httpGet(t, "http://"+k.admin+path)
		if code != 200 {
			t.Fatalf("GET %s: %d %s", path, code, body)
		}
		if err := json.Unmarshal([]byte(body), v); err != nil {
			t.Fatal(err)
		}
	}
	var l api.Logging
	get("/logging", &l)
	var al api.AccessLog
	get("/accesslog", &al)
	if l.Level != "debug" || al.Enabled {
		t.Fatalf("log level %s, access log %v; want debug (its flag) and off", l.Level, al.Enabled)
	}
	if after := k.configDump(t).Enrolled; !slices.Equal(after, before) {
		t.Fatalf("enrolled %v, was %v", after, before)
	}
	if code, _ := httpGet(t, "http://"+k.admin+"/healthz/ready"); code != 200 {
		t.Fatalf("ready: %d", code)
	}
}
