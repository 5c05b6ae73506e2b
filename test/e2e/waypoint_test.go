//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/testbed"
)

// waypointConfig is the mesh of the waypoint tests: service reviews (v1 on
// node-a, v2 on node-b) uses the waypoint on node-b; service plain selects
// the same pods without one; service grpc uses the waypoint too.
const waypointConfig = `services:
- name: reviews
  addresses: ["10.96.0.20"]
  ports: [{port: 80, targetPort: 8080, appProtocol: http}]
  selector: {app: reviews}
  labels: {istio.io/use-waypoint: waypoint}
- name: reviews-v1
  addresses: ["10.96.0.21"]
  ports: [{port: 80, targetPort: 8080}]
  selector: {app: reviews, version: v1}
- name: reviews-v2
  addresses: ["10.96.0.22"]
  ports: [{port: 80, targetPort: 8080}]
  selector: {app: reviews, version: v2}
- name: plain
  addresses: ["10.96.0.30"]
  ports: [{port: 80, targetPort: 8080}]
  selector: {app: reviews}
- name: grpc
  addresses: ["10.96.0.40"]
  ports: [{port: 9090, targetPort: 9090, appProtocol: grpc}]
  selector: {app: grpc}
  labels: {istio.io/use-waypoint: waypoint}
workloads:
- {name: client, labels: {app: client}, addresses: ["10.1.1.10"], node: node-a, netns: %[1]s, serviceAccount: client}
- {name: other, labels: {app: other}, addresses: ["10.1.1.12"], node: node-a, netns: %[2]s, serviceAccount: other}
- {name: reviews-v1, labels: {app: reviews, version: v1}, addresses: ["10.1.1.11"], node: node-a, netns: %[3]s}
- {name: reviews-v2, labels: {app: reviews, version: v2}, addresses: ["10.1.2.12"], node: node-b, netns: %[4]s}
- {name: grpc, labels: {app: grpc}, addresses: ["10.1.2.30"], node: node-b, netns: %[5]s}
- name: waypoint
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
  addresses: ["10.1.2.20"]
  node: node-b
  netns: %[6]s
  serviceAccount: waypoint
gateways:
- apiVersion: gateway.networking.k8s.io/v1
  kind: Gateway
  metadata: {name: waypoint, labels: {istio.io/waypoint-for: service}}
  spec:
    gatewayClassName: kmesh-waypoint
    listeners: [{name: mesh, port: 15008, protocol: HBONE}]
httpRoutes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {name: reviews}
  spec:
    parentRefs: [{group: "", kind: Service, name: reviews, port: 80}]
    rules:
    - matches:
      - path: {type: PathPrefix, value: /v2}
      - headers: [{name: x-version, value: "2"}]
      backendRefs: [{name: reviews-v2, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /delay}}]
      backendRefs: [{name: reviews-v1, port: 80}]
      timeouts: {request: 300ms}
    - backendRefs:
      - {name: reviews-v1, port: 80, weight: 70}
      - {name: reviews-v2, port: 80, weight: 30}
virtualServices:
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata: {name: reviews-faults}
  spec:
    hosts: [reviews]
    http:
    - match: [{uri: {prefix: /fault-abort}}]
      fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
      route: [{destination: {host: reviews}}]
    - match: [{uri: {prefix: /fault-delay}}]
      fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}}
      route: [{destination: {host: reviews}}]
authorizationPolicies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: no-admin}
  spec:
    targetRefs: [{kind: Service, group: "", name: reviews}]
    action: DENY
    rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: only-client-deletes}
  spec:
    targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
    action: DENY
    rules: [{from: [{source: {notPrincipals: ["cluster.local/ns/default/sa/client"]}}], to: [{operation: {methods: [DELETE]}}]}]
`

// TestWaypoint runs kmesh-waypoint in its own pod on node-b, with kmeshd on
// both nodes redirecting the service's connections to it.
func TestWaypoint(t *testing.T) {
	m, wpBin := newWaypointMesh(t)
	var err error
	m.addNode("node-a", cidrA4, cidrA6)
	m.addNode("node-b", cidrB4, cidrB6)
	m.addPod("node-a", "client", "10.1.1.10")
	m.addPod("node-a", "other", "10.1.1.12")
	m.addPod("node-a", "reviews-v1", "10.1.1.11")
	m.addPod("node-b", "reviews-v2", "10.1.2.12")
	m.addPod("node-b", "grpc", "10.1.2.30")
	m.addPod("node-b", "waypoint", "10.1.2.20")
	m.serve("reviews-v1")
	m.serve("reviews-v2")
	gp, err := m.pods["grpc"].Start(m.echo, "grpc-serve", "--listen", "[::]:9090")
	if err != nil {
		t.Fatal(err)
	}
	waitLine(t, gp, "listening ")
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, fmt.Sprintf(waypointConfig, m.pods["client"].NetnsPath, m.pods["other"].NetnsPath,
		m.pods["reviews-v1"].NetnsPath, m.pods["reviews-v2"].NetnsPath, m.pods["grpc"].NetnsPath, m.pods["waypoint"].NetnsPath))
	m.startKmeshd("node-a", cfg)
	m.startKmeshd("node-b", cfg)
	wp, err := m.pods["waypoint"].Start(wpBin, "--config", cfg, "--gateway", "default/waypoint",
		"--admin-address", "10.1.2.20:15000", "--metrics-address", "10.1.2.20:15020", "--log-level", "debug")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(wp.Stderr(), "waypoint ready") {
		if time.Now().After(deadline) {
			t.Fatalf("waypoint not ready: %s", wp.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}

	// One request each; Error is set for any status but 200.
	one := func(t *testing.T, pod, path string, args ...string) result {
		t.Helper()
		rs := m.get(pod, append([]string{"--url", "http://10.96.0.20" + path}, args...)...)
		if len(rs) != 1 {
			t.Fatalf("%d results", len(rs))
		}
		return rs[0]
	}

	t.Run("weighted split", func(t *testing.T) {
		const n = 400
		rs := m.get("client", "--url", "http://10.96.0.20/", "--count", fmt.Sprint(n), "--keepalive")
		c := counts(rs)
		v1, v2 := float64(c["reviews-v1"]), float64(c["reviews-v2"])
		// Chi-square, 1 degree of freedom; 10.83 is p = 0.001.
		chi := math.Pow(v1-0.7*n, 2)/(0.7*n) + math.Pow(v2-0.3*n, 2)/(0.3*n)
		if v1+v2 != n || chi > 10.83 {
			t.Fatalf("split %v: chi-square %.2f for 70/30 (want <= 10.83, all answered)", c, chi)
		}
		// Through the waypoint: the backend sees the waypoint, not the client.
		if !strings.HasPrefix(rs[0].ServerSaw, "10.1.2.20:") {
			t.Errorf("backend saw %s, want the waypoint 10.1.2.20", rs[0].ServerSaw)
		}
	})
	t.Run("path and header routing", func(t *testing.T) {
		if r := one(t, "client", "/v2/page"); r.Pod != "reviews-v2" {
			t.Errorf("/v2/page went to %q (%s), want reviews-v2", r.Pod, r.Error)
		}
		for range 5 {
			if r := one(t, "client", "/page", "--header", "x-version:2"); r.Pod != "reviews-v2" {
				t.Fatalf("x-version: 2 went to %q (%s), want reviews-v2", r.Pod, r.Error)
			}
		}
	})
	t.Run("retry hides one failure", func(t *testing.T) {
		// Each backend answers 503 to the first request of a path; Istio's
		// default retry policy retries 503.
		for i := range 5 {
			if r := one(t, "client", fmt.Sprintf("/fail-once/%d", i)); r.Status != 200 {
				t.Fatalf("/fail-once/%d: status %d (%s), want 200 after a retry", i, r.Status, r.Error)
			}
		}
		// The access log shows the failure the client did not see.
		if e := waitAccessLog(t, wp, "/fail-once/4"); e.Attempts != 2 || e.Code != 200 {
			t.Errorf("access log of /fail-once/4: %+v, want 200 after 2 attempts", e)
		}
	})
	t.Run("timeout is 504", func(t *testing.T) {
		r := one(t, "client", "/delay/3s")
		if r.Status != 504 || r.Millis > 2500 {
			t.Fatalf("/delay/3s: status %d after %d ms, want 504 after about 300 ms", r.Status, r.Millis)
		}
	})
	t.Run("fault abort and delay", func(t *testing.T) {
		if r := one(t, "client", "/fault-abort"); r.Status != 418 || r.Pod != "" {
			t.Errorf("/fault-abort: status %d from %q, want 418 from the waypoint", r.Status, r.Pod)
		}
		if r := one(t, "client", "/fault-delay"); r.Status != 200 || r.Millis < 400 {
			t.Errorf("/fault-delay: status %d after %d ms, want 200 after >= 400 ms", r.Status, r.Millis)
		}
	})
	t.Run("L7 deny is 403 while other paths work", func(t *testing.T) {
		if r := one(t, "client", "/admin/users"); r.Status != 403 {
			t.Errorf("/admin/users: status %d, want 403", r.Status)
		}
		if r := one(t, "client", "/users"); r.Status != 200 {
			t.Errorf("/users: status %d (%s), want 200", r.Status, r.Error)
		}
		// DELETE is denied to everyone but sa/client (by the client's
		// address until HBONE carries its certificate).
		if r := one(t, "other", "/x", "--method", "DELETE"); r.Status != 403 {
			t.Errorf("DELETE from other: status %d, want 403", r.Status)
		}
		if r := one(t, "client", "/x", "--method", "DELETE"); r.Status != 200 {
			t.Errorf("DELETE from client: status %d (%s), want 200", r.Status, r.Error)
		}
		if r := one(t, "other", "/x"); r.Status != 200 {
			t.Errorf("GET from other: status %d (%s), want 200", r.Status, r.Error)
		}
	})
	t.Run("service without waypoint is one hop", func(t *testing.T) {
		rs := m.get("client", "--url", "http://10.96.0.30/", "--count", "10")
		for _, r := range rs {
			if r.Error != "" || !strings.HasPrefix(r.ServerSaw, "10.1.1.10:") {
				t.Fatalf("plain service: %+v, want the backend to see the client 10.1.1.10 itself", r)
			}
		}
	})
	t.Run("grpc unary and streaming", func(t *testing.T) {
		p, err := m.pods["client"].Start(m.echo, "grpc-check", "--addr", "10.96.0.40:9090", "--watch", "4")
		if err != nil {
			t.Fatal(err)
		}
		line := waitLine(t, p, "{")
		var out struct {
			Unary    string   `json:"unary"`
			Messages []string `json:"messages"`
			Error    string   `json:"error"`
		}
		if err := json.Unmarshal([]byte(line), &out); err != nil {
			t.Fatal(err)
		}
		if out.Error != "" || out.Unary != "SERVING" || len(out.Messages) != 4 {
			t.Fatalf("grpc through the waypoint: %+v", out)
		}
	})
	t.Run("metrics and access log", func(t *testing.T) {
		rs := m.get("client", "--url", "http://10.1.2.20:15020/metrics", "--print-body")
		body := rs[0].Body
		for _, want := range []string{
			`istio_requests_total{`,
			`reporter="waypoint"`,
			`response_code="403"`,
			`response_code="504"`,
			`destination_service="reviews.default.svc.cluster.local"`,
			`source_principal="spiffe://cluster.local/ns/default/sa/client"`,
			`istio_request_duration_milliseconds_bucket{`,
			`istio_request_bytes_bucket{`,
			`istio_response_bytes_bucket{`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("waypoint metrics lack %s", want)
			}
		}
		// The access log is the waypoint's stdout, one JSON line per request.
		if e := waitAccessLog(t, wp, "/admin/users"); e.Code != 403 || !strings.HasPrefix(e.Source, "10.1.1.10:") {
			t.Errorf("access log of the denied request: %+v", e)
		}
	})
	t.Run("explain", func(t *testing.T) {
		rs := m.get("client", "--url", "http://10.1.2.20:15000/explain?src=10.1.1.10&url=http://10.96.0.20/v2/x", "--print-body")
		var ex struct {
			Route    string   `json:"route"`
			Backends []string `json:"backends"`
		}
		if err := json.Unmarshal([]byte(rs[0].Body), &ex); err != nil {
			t.Fatalf("explain %q: %v", rs[0].Body, err)
		}
		if ex.Route != "HTTPRoute/default/reviews#0" || len(ex.Backends) != 1 || ex.Backends[0] != "default/reviews-v2:80=1" {
			t.Errorf("explain /v2/x = %+v", ex)
		}
	})
}

// accessLogLine is what the tests read of the waypoint's access log.
type accessLogLine struct {
	Path     string `json:"path"`
	Code     int    `json:"response_code"`
	Route    string `json:"route_name"`
	Source   string `json:"downstream_remote_address"`
	Attempts int    `json:"attempts"`
}

// waitAccessLog reads the waypoint's stdout up to the line of path.
func waitAccessLog(t *testing.T, wp *testbed.Process, path string) accessLogLine {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case line := <-wp.Lines():
			var e accessLogLine
			if json.Unmarshal([]byte(line), &e) == nil && e.Path == path {
				return e
			}
		case <-timeout:
			t.Fatalf("no access log line for %s", path)
		}
	}
}

// waitLine returns the first line of p that starts with prefix.
func waitLine(t *testing.T, p *testbed.Process, prefix string) string {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case line, ok := <-p.Lines():
			if !ok {
				t.Fatalf("process ended without a %q line: %s", prefix, p.Stderr())
			}
			if strings.HasPrefix(line, prefix) {
				return line
			}
		case <-timeout:
			t.Fatalf("no %q line after 20s: %s", prefix, p.Stderr())
		}
	}
}
