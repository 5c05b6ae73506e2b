//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/admin/api"
)

// metricsLine is one sample of the Prometheus text format.
var metricsLine = regexp.MustCompile(`^(\w+)(?:\{(.*)\})? (\S+)$`)

// metricSum adds up the samples of name whose labels include want.
func metricSum(t *testing.T, addr, name string, want map[string]string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sum := 0.0
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		m := metricsLine.FindStringSubmatch(s.Text())
		if m == nil || m[1] != name {
			continue
		}
		ok := true
		for k, v := range want {
			if !strings.Contains(m[2], fmt.Sprintf("%s=%q", k, v)) {
				ok = false
				break
			}
		}
		if ok {
			v, _ := strconv.ParseFloat(m[3], 64)
			sum += v
		}
	}
	return sum
}

// waitMetric waits until metricSum reaches want, and fails if it passes it.
func waitMetric(t *testing.T, addr, name string, labels map[string]string, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var got float64
	for time.Now().Before(deadline) {
		if got = metricSum(t, addr, name, labels); got >= want {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got != want {
		t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
	}
}

func connections(t *testing.T, admin string) []api.Connection {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/connections")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var cs []api.Connection
	if err := json.Unmarshal(body, &cs); err != nil {
		t.Fatalf("/connections %q: %v", body, err)
	}
	return cs
}

// TestTelemetryCountsExactly sends a known number of connections and bytes
// through the service and finds exactly those in the metrics of both ends,
// in the access log, and in the live connections while one is open.
func TestTelemetryCountsExactly(t *testing.T) {
	m := newMesh(t)
	for _, p := range allHello {
		proc, err := m.pods[p].Start(m.echo, "tcp-serve", "--listen", "[::]:9000", "--reply", "2000")
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
	logA, logB := filepath.Join(m.dir, "access-a.log"), filepath.Join(m.dir, "access-b.log")
	ka := m.startKmeshdBin(m.kmeshd, "node-a", cfg, "--access-log", "--access-log-file", logA, "--accelerate")
	kb := m.startKmeshdBin(m.kmeshd, "node-b", cfg, "--access-log", "--access-log-file", logB)

	const conns, sent, reply = 5, 1000, 2000
	for _, line := range runLines(t, m, "client", "tcp-send", "--addr", "10.96.0.10:9000", "--bytes", strconv.Itoa(sent), "--count", strconv.Itoa(conns)) {
		var r struct {
			Sent, Received int64
			Error          string
		}
		json.Unmarshal([]byte(line), &r)
		if r.Error != "" || r.Sent != sent || r.Received != reply {
			t.Fatalf("tcp-send: %s, want %d bytes each way without error", line, sent)
		}
	}

	source := map[string]string{
		"reporter": "source", "source_workload": "client", "source_workload_namespace": "default",
		"destination_service": "hello.default.svc.cluster.local", "destination_workload_namespace": "default",
		"request_protocol": "tcp",
	}
	waitMetric(t, ka.metrics, "istio_tcp_connections_opened_total", source, conns)
	waitMetric(t, ka.metrics, "istio_tcp_connections_closed_total", source, conns)
	// Istio's directions: received is what the source sent, sent what the
	// destination answered.
	waitMetric(t, ka.metrics, "istio_tcp_received_bytes_total", source, conns*sent)
	waitMetric(t, ka.metrics, "istio_tcp_sent_bytes_total", source, conns*reply)

	// The destinations report the same connections, wherever they run.
	dest := map[string]string{"reporter": "destination", "source_workload": "client",
		"destination_service": "hello.default.svc.cluster.local", "connection_security_policy": "none"}
	deadline := time.Now().Add(10 * time.Second)
	for {
		a := metricSum(t, ka.metrics, "istio_tcp_connections_closed_total", dest)
		b := metricSum(t, kb.metrics, "istio_tcp_connections_closed_total", dest)
		if a+b == conns {
			recv := metricSum(t, ka.metrics, "istio_tcp_received_bytes_total", dest) + metricSum(t, kb.metrics, "istio_tcp_received_bytes_total", dest)
			snt := metricSum(t, ka.metrics, "istio_tcp_sent_bytes_total", dest) + metricSum(t, kb.metrics, "istio_tcp_sent_bytes_total", dest)
			if recv != conns*sent || snt != conns*reply {
				t.Fatalf("destination reporters: received %v sent %v bytes, want %d and %d", recv, snt, conns*sent, conns*reply)
			}
			break
		}
		if a+b > conns || time.Now().After(deadline) {
			t.Fatalf("destination reporters closed %v+%v connections, want %d", a, b, conns)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// One access log line per connection, on the client's node.
	var lines []map[string]any
	for _, l := range readLines(t, logA) {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("access log line %q: %v", l, err)
		}
		if rec["reporter"] == "source" {
			lines = append(lines, rec)
		}
	}
	if len(lines) != conns {
		t.Fatalf("%d source access log lines, want %d: %v", len(lines), conns, lines)
	}
	for _, rec := range lines {
		if rec["src_workload"] != "default/client" || rec["dst_service"] != "hello.default.svc.cluster.local" ||
			rec["service_addr"] != "10.96.0.10:9000" || rec["bytes_received"] != float64(sent) || rec["bytes_sent"] != float64(reply) || rec["end"] != "closed" {
			t.Fatalf("access log line %v", rec)
		}
	}

	// A connection that moved data and stays open shows in the live
	// connections with its bytes and state, and its bytes reach the
	// counters before it closes (as Istio reports long-lived connections).
	// It goes to hello-2 on node-b: node-a accelerates same-node
	// connections, whose bytes skip TCP and are counted at the close.
	const heldBytes = 1234
	toHello2 := map[string]string{"reporter": "source", "source_workload": "client", "destination_workload": "hello-2"}
	receivedBefore := metricSum(t, ka.metrics, "istio_tcp_received_bytes_total", toHello2)
	closedBefore := metricSum(t, ka.metrics, "istio_tcp_connections_closed_total", toHello2)
	hello2 := netip.AddrPortFrom(m.pods["hello-2"].Addrs[0], 9000).String()
	held, err := m.pods["client"].Start(m.echo, "tcp-send", "--addr", hello2, "--bytes", strconv.Itoa(heldBytes), "--hold", "8s", "--write-first")
	if err != nil {
		t.Fatal(err)
	}
	if line := <-held.Lines(); !strings.Contains(line, `"holding":true`) {
		t.Fatalf("tcp-send --hold: %q", line)
	}
	var live *api.Connection
	var seen []api.Connection
	// Held 8 s, looked for during 6: on a loaded machine the checks below
	// still run while it is open.
	for deadline := time.Now().Add(6 * time.Second); time.Now().Before(deadline) && live == nil; time.Sleep(50 * time.Millisecond) {
		list := connections(t, ka.admin)
		if len(list) > 0 {
			seen = list
		}
		for _, c := range list {
			if c.Source.Workload == "default/client" && c.Destination.Workload == "default/hello-2" && c.BytesSent == heldBytes {
				live = &c
				break
			}
		}
	}
	if live == nil {
		t.Fatalf("held connection with %d bytes sent not in /connections: last seen %+v", heldBytes, seen)
	}
	if live.BytesReceived != 0 || live.State != "established" {
		t.Fatalf("held connection %+v: want 0 bytes received (the server answers at EOF) and state established", *live)
	}
	if got := metricSum(t, ka.metrics, "istio_tcp_received_bytes_total", toHello2); got != receivedBefore+heldBytes {
		t.Fatalf("istio_tcp_received_bytes_total{reporter=source} %v while the connection is open, want %v", got, receivedBefore+heldBytes)
	}
	if got := metricSum(t, ka.metrics, "istio_tcp_connections_closed_total", toHello2); got != closedBefore {
		t.Fatalf("closed connections %v while one is held, want %v", got, closedBefore)
	}
	held.Wait()
	// Closed: counted once, its bytes not twice, and gone from the list.
	waitMetric(t, ka.metrics, "istio_tcp_connections_closed_total", toHello2, closedBefore+1)
	if got := metricSum(t, ka.metrics, "istio_tcp_received_bytes_total", toHello2); got != receivedBefore+heldBytes {
		t.Fatalf("istio_tcp_received_bytes_total{reporter=source} %v after the close, want %v", got, receivedBefore+heldBytes)
	}
	for _, c := range connections(t, ka.admin) {
		if c.Source.Address == live.Source.Address {
			t.Fatalf("closed connection still in /connections: %+v", c)
		}
	}

	// --telemetry=false records nothing, and traffic still flows.
	ka.proc.Stop()
	off := m.startKmeshdBin(m.kmeshd, "node-a", cfg, "--telemetry=false")
	runLines(t, m, "client", "tcp-send", "--addr", "10.96.0.10:9000", "--bytes", "10", "--count", "3")
	time.Sleep(500 * time.Millisecond)
	if n := metricSum(t, off.metrics, "istio_tcp_connections_opened_total", source); n != 0 {
		t.Fatalf("with --telemetry=false, %v connections recorded", n)
	}
}

func runLines(t *testing.T, m *mesh, pod string, args ...string) []string {
	t.Helper()
	p, err := m.pods[pod].Start(m.echo, args...)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for l := range p.Lines() {
		out = append(out, l)
	}
	if err := p.Wait(); err != nil {
		t.Fatalf("%v: %v: %s", args, err, p.Stderr())
	}
	return out
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}
