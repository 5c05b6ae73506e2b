//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// waypointWorkloadConfig: app is both a service (10.96.0.30:80) and a pod
// (10.1.2.12:8080), each labelled to use the waypoint, whose waypoint-for
// is %[5]s. The waypoint denies /admin* to everyone, so a 403 says a
// request went through it. %[6]s adds policies.
const waypointWorkloadConfig = `
services:
- name: app
  addresses: ["10.96.0.30"]
  ports: [{port: 80, targetPort: 8080, appProtocol: http}]
  selector: {app: app}
  labels: {istio.io/use-waypoint: waypoint}
workloads:
- {name: client, labels: {app: client}, addresses: ["10.1.1.10"], node: node-a, netns: %[1]s, serviceAccount: client}
- {name: near, labels: {app: near}, addresses: ["10.1.2.14"], node: node-b, netns: %[4]s, serviceAccount: near}
- name: app
  labels: {app: app, istio.io/use-waypoint: waypoint}
  addresses: ["10.1.2.12"]
  node: node-b
  netns: %[2]s
  serviceAccount: app
- name: waypoint
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
  addresses: ["10.1.2.20"]
  node: node-b
  netns: %[3]s
  serviceAccount: waypoint
  tunnelProtocol: HBONE
gateways:
- apiVersion: gateway.networking.k8s.io/v1
  kind: Gateway
  metadata: {name: waypoint, labels: {istio.io/waypoint-for: %[5]s}}
  spec:
    gatewayClassName: kmesh-waypoint
    listeners: [{name: mesh, port: 15008, protocol: HBONE}]
authorizationPolicies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: no-admin}
  spec:
    targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
    action: DENY
    rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
%[6]s`

// appFromWaypoint is allow-from-waypoint for the workload: only the
// waypoint's principal reaches app.
const appFromWaypoint = `- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: app-from-waypoint}
  spec:
    selector: {matchLabels: {app: app}}
    action: ALLOW
    rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/waypoint"]}}]}]
`

// TestWaypoint_Workload: istio.io/waypoint-for on the test-bed, with a CA,
// real kmeshd on two nodes and kmesh-waypoint in its own pod. With
// waypoint-for=workload a connection to the pod's own address goes
// through the waypoint (kmeshd's tunnel sends it to the waypoint over
// HBONE with the pod's address as authority; the waypoint's L7 policy
// denies /admin with 403, its metrics name the destination workload)
// while the service VIP does not; with service the reverse; with all
// both, and allow-from-waypoint on the workload admits the waypoint only.
func TestWaypoint_Workload(t *testing.T) {
	m, wpBin := newWaypointMesh(t)
	m.addNode("node-a", cidrA4, cidrA6)
	m.addNode("node-b", cidrB4, cidrB6)
	m.addPod("node-a", "client", "10.1.1.10")
	m.addPod("node-a", "outsider", "10.1.1.20") // not in the mesh: reads the waypoint's metrics
	m.addPod("node-b", "app", "10.1.2.12")
	m.addPod("node-b", "waypoint", "10.1.2.20")
	m.addPod("node-b", "near", "10.1.2.14")
	m.serve("app")
	cfg := func(waypointFor, policies string) string {
		return fmt.Sprintf(waypointWorkloadConfig, m.pods["client"].NetnsPath, m.pods["app"].NetnsPath,
			m.pods["waypoint"].NetnsPath, m.pods["near"].NetnsPath, waypointFor, policies)
	}
	first := cfg("workload", "")
	h := startHBONE(m, map[string]string{"node-a": first, "node-b": first})
	wp, err := m.pods["waypoint"].Start(wpBin, append([]string{"--config", configPath(m, "node-b.yaml"), "--gateway", "default/waypoint",
		"--admin-address", "10.1.2.20:15000", "--metrics-address", "10.1.2.20:15020", "--log-level", "debug"}, h.caFlags...)...)
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

	// status is what client gets for url, once the config is in (kmeshd
	// and the waypoint reload the file on their own).
	status := func(from, url string, want int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			r := m.get(from, "--url", url)[0]
			if r.Status == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s → %s: status %d (%s), want %d\nwaypoint:\n%s", from, url, r.Status, r.Error, want, tail(wp.Stderr(), 3000))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	setConfig := func(c string) {
		for _, node := range []string{"node-a", "node-b"} {
			m.writeConfig(configPath(m, node+".yaml"), c)
		}
	}

	// waypoint-for=workload: the pod's address through the waypoint, from
	// another node and from the waypoint's own node; the VIP not.
	status("client", "http://10.1.2.12:8080/admin", 403)
	status("client", "http://10.1.2.12:8080/page", 200)
	status("near", "http://10.1.2.12:8080/admin", 403)
	status("client", "http://10.96.0.30/admin", 200)
	if !hasLine(h.tunnels["node-a"].Stderr(), "msg=tunnelled", "dst=10.1.2.20:8080", "authority=10.1.2.12:8080") {
		t.Errorf("node-a's tunnel log names no connection to the waypoint 10.1.2.20 with authority 10.1.2.12:8080:\n%s", tail(h.tunnels["node-a"].Stderr(), 3000))
	}
	if !hasLine(wp.Stderr(), `msg="hbone stream"`, "authority=10.1.2.12:8080", "principal=cluster.local/ns/default/sa/client") {
		t.Errorf("the waypoint logged no HBONE stream for 10.1.2.12:8080 from sa/client:\n%s", tail(wp.Stderr(), 3000))
	}
	// The waypoint reaches the workload itself over HBONE, as its own
	// principal.
	if !hasLine(h.tunnels["node-b"].Stderr(), `msg="hbone inbound"`, "src=spiffe://cluster.local/ns/default/sa/waypoint", "dst=10.1.2.12:8080") {
		t.Errorf("node-b's tunnel took no HBONE stream from the waypoint to 10.1.2.12:8080:\n%s", tail(h.tunnels["node-b"].Stderr(), 3000))
	}
	body := m.get("outsider", "--url", "http://10.1.2.20:15020/metrics", "--print-body")[0].Body
	// A request the policy denies reaches no endpoint (its destination
	// labels are unknown, as for services); an answered one names the
	// workload, and no service.
	if !hasLine(body, "istio_requests_total{", `destination_workload="app"`, `destination_service="unknown"`, `response_code="200"`,
		`source_principal="spiffe://cluster.local/ns/default/sa/client"`, `connection_security_policy="mutual_tls"`) ||
		!hasLine(body, "istio_requests_total{", `response_code="403"`, `source_principal="spiffe://cluster.local/ns/default/sa/client"`) {
		t.Errorf("waypoint metrics: no 200 to workload app (service unknown) or no 403, from sa/client:\n%s", body)
	}

	// waypoint-for=service: the VIP through the waypoint, the pod not.
	setConfig(cfg("service", ""))
	status("client", "http://10.96.0.30/admin", 403)
	status("client", "http://10.1.2.12:8080/admin", 200)
	status("near", "http://10.1.2.12:8080/admin", 200)

	// waypoint-for=all: both, and the workload admits only the waypoint,
	// so a 200 on /page came through it.
	setConfig(cfg("all", appFromWaypoint))
	status("client", "http://10.1.2.12:8080/admin", 403)
	status("client", "http://10.96.0.30/admin", 403)
	status("client", "http://10.1.2.12:8080/page", 200)
	status("client", "http://10.96.0.30/page", 200)
	status("near", "http://10.1.2.12:8080/page", 200)
}
