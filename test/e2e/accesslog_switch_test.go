//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestAccessLogSwitchedAtRunTime: with the access log off at start the
// kernel sends no connection records (kmeshd's reader sleeps); switched on
// through the admin socket (as kmeshctl accesslog on does), the next
// connections are logged, one line each, and switched off again, none are.
func TestAccessLogSwitchedAtRunTime(t *testing.T) {
	m := newMesh(t)
	for _, p := range allHello {
		proc, err := m.pods[p].Start(m.echo, "tcp-serve", "--listen", "[::]:9000", "--reply", "100")
		if err != nil {
			t.Fatal(err)
		}
		if line := <-proc.Lines(); !strings.HasPrefix(line, "listening") {
			t.Fatalf("tcp-serve in %s: %q: %s", p, line, proc.Stderr())
		}
	}
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, strings.Replace(m.config("random", helloWorkloads),
		"ports: [{port: 80, targetPort: 8080}]", "ports: [{port: 80, targetPort: 8080}, {port: 9000}]", 1))
	logA := filepath.Join(m.dir, "access-a.log")
	ka := m.startKmeshdBin(m.kmeshd, "node-a", cfg, "--access-log=false", "--access-log-file", logA)

	send := func(n int) {
		t.Helper()
		for _, line := range runLines(t, m, "client", "tcp-send", "--addr", "10.96.0.10:9000", "--bytes", "100", "--count", strconv.Itoa(n)) {
			var r struct{ Error string }
			if json.Unmarshal([]byte(line), &r); r.Error != "" {
				t.Fatalf("tcp-send: %s", line)
			}
		}
	}
	sourceLines := func() int {
		n := 0
		for _, l := range readLines(t, logA) {
			var rec map[string]any
			if l != "" && json.Unmarshal([]byte(l), &rec) == nil && rec["reporter"] == "source" {
				n++
			}
		}
		return n
	}
	// waitLines waits for want lines, then a second more to see no extra.
	waitLines := func(want int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for sourceLines() < want && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(time.Second)
		if got := sourceLines(); got != want {
			t.Fatalf("%d source access log lines, want %d", got, want)
		}
	}
	sock := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", ka.socket)
	}}}
	switchLog := func(on bool) {
		t.Helper()
		resp, err := sock.Post("http://kmeshd/accesslog?enabled="+strconv.FormatBool(on), "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST /accesslog?enabled=%v: %s", on, resp.Status)
		}
	}

	send(3)
	waitLines(0)
	switchLog(true)
	send(4)
	waitLines(4)
	switchLog(false)
	send(2)
	waitLines(4)
}
