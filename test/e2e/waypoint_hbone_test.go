//go:build e2e

package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

const waypointHBONEConfig = `
services:
- name: reviews
  addresses: ["10.96.0.20"]
  ports: [{port: 80, targetPort: 8080, appProtocol: http}]
  selector: {app: reviews}
  labels: {istio.io/use-waypoint: waypoint}
workloads:
- {name: client, labels: {app: client}, addresses: ["10.1.1.10"], node: node-a, netns: %[1]s, serviceAccount: client}
- {name: other, labels: {app: other}, addresses: ["10.1.1.12"], node: node-a, netns: %[2]s, serviceAccount: other}
- {name: reviews, labels: {app: reviews}, addresses: ["10.1.2.12"], node: node-b, netns: %[3]s}
- {name: near, labels: {app: near}, addresses: ["10.1.2.14"], node: node-b, netns: %[5]s, serviceAccount: near}
- {name: nearother, labels: {app: nearother}, addresses: ["10.1.2.16"], node: node-b, netns: %[6]s, serviceAccount: other}
- name: waypoint
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
  addresses: ["10.1.2.20"]
  node: node-b
  netns: %[4]s
  serviceAccount: waypoint
  tunnelProtocol: HBONE
gateways:
- apiVersion: gateway.networking.k8s.io/v1
  kind: Gateway
  metadata: {name: waypoint, labels: {istio.io/waypoint-for: service}}
  spec:
    gatewayClassName: kmesh-waypoint
    listeners: [{name: mesh, port: 15008, protocol: HBONE}]
authorizationPolicies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: only-client}
  spec:
    targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
    action: ALLOW
    rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/client", "cluster.local/ns/default/sa/near"]}}]}]
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: reviews-from-waypoint}
  spec:
    selector: {matchLabels: {app: reviews}}
    action: ALLOW
    rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/waypoint"]}}]}]
`

// TestWaypoint_HBONE: with a CA, a client on node-a reaches a service that
// uses a waypoint on node-b through kmeshd's redirect and its tunnel: the
// connection travels as HBONE (mutual TLS, the client pod's certificate)
// to kmesh-waypoint's own 15008 with the service's VIP:port as authority,
// and the waypoint's L7 policy and request metrics see the client's SPIFFE
// identity from the certificate (connection_security_policy mutual_tls).
// A client the policy does not name gets 403. A client on the waypoint's
// own node goes the same way (TLS to 15008 on node-b's veths, its
// principal in the waypoint's policy). The waypoint reaches the backend
// over HBONE under its own identity, and the backend's policy, which
// allows only the waypoint's principal, refuses clients that go around it.
func TestWaypoint_HBONE(t *testing.T) {
	m, wpBin := newWaypointMesh(t)
	var err error
	m.addNode("node-a", cidrA4, cidrA6)
	m.addNode("node-b", cidrB4, cidrB6)
	m.addPod("node-a", "client", "10.1.1.10")
	m.addPod("node-a", "other", "10.1.1.12")
	m.addPod("node-a", "outsider", "10.1.1.20") // not in the mesh: reads the waypoint's metrics
	m.addPod("node-b", "reviews", "10.1.2.12")
	m.addPod("node-b", "waypoint", "10.1.2.20")
	m.addPod("node-b", "near", "10.1.2.14")
	m.addPod("node-b", "nearother", "10.1.2.16")
	m.serve("reviews")
	cfg := fmt.Sprintf(waypointHBONEConfig, m.pods["client"].NetnsPath, m.pods["other"].NetnsPath,
		m.pods["reviews"].NetnsPath, m.pods["waypoint"].NetnsPath, m.pods["near"].NetnsPath, m.pods["nearother"].NetnsPath)
	h := startHBONE(m, map[string]string{"node-a": cfg, "node-b": cfg})
	wpArgs := append([]string{"--config", configPath(m, "node-b.yaml"), "--gateway", "default/waypoint",
		"--admin-address", "10.1.2.20:15000", "--metrics-address", "10.1.2.20:15020", "--log-level", "debug"}, h.caFlags...)
	wp, err := m.pods["waypoint"].Start(wpBin, wpArgs...)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(wp.Stderr(), "waypoint ready") || !strings.Contains(wp.Stderr(), "hbone listening") {
		if time.Now().After(deadline) {
			t.Fatalf("waypoint not ready: %s", wp.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}

	// node-b's veths, from before the first request: the waypoint's
	// connection to the backend and near's to the waypoint (below).
	cpt := startCapture(t, h.nodes["node-b"].NetnsPath)
	const n = 20
	rs := m.get("client", "--url", "http://10.96.0.20/page", "--count", fmt.Sprint(n))
	requireAll(t, "client through the waypoint over HBONE", rs, "reviews")
	// The waypoint reaches the backend over HBONE under its own
	// certificate: node-b's tunnel takes the stream in the backend's pod
	// (so the application sees its own address, the tunnel's limit).
	if !strings.HasPrefix(rs[0].ServerSaw, "10.1.2.12:") {
		t.Errorf("backend saw %s, want its own address 10.1.2.12 (the tunnel's inbound)", rs[0].ServerSaw)
	}
	if !hasLine(h.tunnels["node-b"].Stderr(), `msg="hbone inbound"`, "src=spiffe://cluster.local/ns/default/sa/waypoint", "dst=10.1.2.12:8080") {
		t.Errorf("node-b's tunnel took no HBONE stream from the waypoint's identity to 10.1.2.12:8080:\n%s", tail(h.tunnels["node-b"].Stderr(), 3000))
	}
	// The tunnel asks the waypoint for the service the client dialed,
	// as ztunnel does, and the waypoint serves it by that authority.
	if !hasLine(h.tunnels["node-a"].Stderr(), "msg=tunnelled", "dst=10.1.2.20:80", "authority=10.96.0.20:80") {
		t.Errorf("node-a's tunnel log names no connection to the waypoint 10.1.2.20 with authority 10.96.0.20:80:\n%s", tail(h.tunnels["node-a"].Stderr(), 3000))
	}
	if !hasLine(wp.Stderr(), `msg="hbone stream"`, "authority=10.96.0.20:80", "principal=cluster.local/ns/default/sa/client") {
		t.Errorf("the waypoint logged no HBONE stream for 10.96.0.20:80 from sa/client:\n%s", tail(wp.Stderr(), 3000))
	}
	for _, r := range m.get("other", "--url", "http://10.96.0.20/page", "--count", "3") {
		if r.Status != 403 {
			t.Fatalf("sa/other through the waypoint: status %d (%s), want 403", r.Status, r.Error)
		}
	}

	// Same node: near's connection to the service goes into node-b's
	// tunnel and over HBONE to the waypoint, as the waypoint's own
	// connection to the backend does; node-b's veths carry only TLS to
	// 15008 between its pods (over both phases).
	const nNear = 10
	rs = m.get("near", "--url", "http://10.96.0.20/page", "--count", fmt.Sprint(nNear))
	pkts := cpt.stop()
	requireAll(t, "same-node client through the waypoint over HBONE", rs, "reviews")
	nodeB := netip.MustParsePrefix("10.1.2.0/24")
	requireOnlyTunnel(t, pkts, nodeB.Contains, "GET /", "X-Pod")
	var nearSYN, upstreamSYN bool
	for _, p := range pkts {
		if p.flags&0x12 == 0x02 && p.dst == netip.MustParseAddrPort("10.1.2.20:15008") && p.src.Addr() == netip.MustParseAddr("10.1.2.14") {
			nearSYN = true
		}
		if p.flags&0x12 == 0x02 && p.dst == netip.MustParseAddrPort("10.1.2.12:15008") && p.src.Addr() == netip.MustParseAddr("10.1.2.20") {
			upstreamSYN = true
		}
	}
	if !nearSYN {
		t.Errorf("no connection from near 10.1.2.14 to the waypoint's 10.1.2.20:15008 on node-b's veths")
	}
	if !hasLine(wp.Stderr(), `msg="hbone stream"`, "authority=10.96.0.20:80", "principal=cluster.local/ns/default/sa/near") {
		t.Errorf("the waypoint logged no HBONE stream for 10.96.0.20:80 from sa/near:\n%s", tail(wp.Stderr(), 3000))
	}
	if !upstreamSYN {
		t.Errorf("no connection from the waypoint 10.1.2.20 to the backend's 10.1.2.12:15008 on node-b's veths")
	}
	for _, r := range m.get("nearother", "--url", "http://10.96.0.20/page", "--count", "3") {
		if r.Status != 403 {
			t.Fatalf("sa/other on the waypoint's node: status %d (%s), want 403 by the waypoint's principals policy", r.Status, r.Error)
		}
	}

	// Allow-from-waypoint: the backend admits only the waypoint's
	// principal, so clients that dial its address directly are refused:
	// from another node by its tunnel (the client's certificate), on its
	// own node at connect() (the client's identity by address).
	for _, r := range m.get("client", "--url", "http://10.1.2.12:8080/page", "--count", "2") {
		if r.Status == 200 || r.Error == "" {
			t.Fatalf("client → backend 10.1.2.12:8080 around the waypoint: %+v, want refused", r)
		}
	}
	for _, r := range m.get("near", "--url", "http://10.1.2.12:8080/page", "--count", "2") {
		if !strings.Contains(r.Error, "connect: permission denied") {
			t.Fatalf("near → backend 10.1.2.12:8080 around the waypoint: %+v, want connect: permission denied", r)
		}
	}

	body := m.get("outsider", "--url", "http://10.1.2.20:15020/metrics", "--print-body")[0].Body
	var mtls, mtlsNear, other int
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, "istio_requests_total{") {
			continue
		}
		switch {
		case strings.Contains(line, `connection_security_policy="mutual_tls"`) &&
			strings.Contains(line, `source_principal="spiffe://cluster.local/ns/default/sa/client"`) &&
			strings.Contains(line, `response_code="200"`):
			fmt.Sscanf(line[strings.LastIndex(line, " ")+1:], "%d", &mtls)
		case strings.Contains(line, `connection_security_policy="mutual_tls"`) &&
			strings.Contains(line, `source_principal="spiffe://cluster.local/ns/default/sa/near"`) &&
			strings.Contains(line, `response_code="200"`):
			fmt.Sscanf(line[strings.LastIndex(line, " ")+1:], "%d", &mtlsNear)
		case strings.Contains(line, `connection_security_policy="none"`):
			other++
		}
	}
	if mtls != n || mtlsNear != nNear || other != 0 {
		t.Fatalf("waypoint metrics: %d requests of sa/client and %d of sa/near over mutual TLS (want %d, %d), %d series without it (want 0):\n%s",
			mtls, mtlsNear, n, nNear, other, body)
	}
}

// hasLine reports whether some line of log holds every one of parts.
func hasLine(log string, parts ...string) bool {
	for _, line := range strings.Split(log, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}
