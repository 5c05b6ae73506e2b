//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/kube"
	"github.com/kmesh-go/kmesh/internal/testbed"
	"github.com/kmesh-go/kmesh/internal/waypoint"
)

// The workload-waypoint topology of the Istio tier:
//
//	node-a: client (enrolled by node-a's kmeshd, which has istiod's CA and
//	        a tunnel)
//	node-b: app (labelled istio.io/use-waypoint=waypoint), no kmeshd
//	node-c: waypoint (kmesh-waypoint reading the API server and istiod)
//
// The Gateway is labelled istio.io/waypoint-for=workload: istiod gives
// app's Workload a waypoint, not the Service app.
const (
	iwwAppIP      = "10.76.2.12"
	iwwAppVIP     = "10.96.76.10"
	iwwWaypointIP = "10.76.3.20"
)

const iwwGatewayYAML = `
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: kmesh-waypoint}
spec: {controllerName: kmesh.net/waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps, labels: {istio.io/waypoint-for: workload}}
spec:
  gatewayClassName: kmesh-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: apps}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
`

// TestIstioWaypoint_Workload: a Gateway of class kmesh-waypoint labelled
// istio.io/waypoint-for=workload and a Pod labelled istio.io/use-waypoint
// are applied to the API server. Once kmesh-waypoint has written the
// Gateway's status, istiod sends the waypoint in the pod's Workload;
// kmeshd balances the pod's own address over the waypoint's instance
// (/config_dump, kmeshctl explain) and its tunnel carries a connection to
// the pod's address to the waypoint over HBONE with authority podIP:port,
// where the Gateway's L7 policy applies (403 for /admin, 200 for /page).
// The pod's Service has no waypoint: a mesh client's connect() to its VIP,
// which would reach the pod around the waypoint, is refused.
func TestIstioWaypoint_Workload(t *testing.T) {
	findIstioTools(t)
	m, wpBin := newWaypointMesh(t)
	ctl, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshctl")
	if err != nil {
		t.Fatal(err)
	}
	env := newIstioEnv(t, m.bed, withGatewayAPI)
	dyn := env.dynamic()
	m.addNode("node-a", netip.MustParsePrefix("10.76.1.0/24"))
	m.addNode("node-b", netip.MustParsePrefix("10.76.2.0/24"))
	m.addNode("node-c", netip.MustParsePrefix("10.76.3.0/24"))
	env.node(m.nodes["node-a"])
	env.node(m.nodes["node-b"])
	env.node(m.nodes["node-c"])
	env.namespace(istioAppsNs, map[string]string{kube.DataplaneModeLabel: kube.ModeAmbient})
	env.serviceAccount(istioAppsNs, "waypoint")
	m.addPod("node-a", "client", "10.76.1.10")
	env.pod(m.pods["client"], istioAppsNs, map[string]string{"app": "client"})
	m.addPod("node-b", "app", iwwAppIP)
	env.pod(m.pods["app"], istioAppsNs, map[string]string{"app": "app", model.LabelUseWaypoint: "waypoint"})
	m.serve("app")
	m.addPod("node-c", "waypoint", iwwWaypointIP)
	env.podAs(m.pods["waypoint"], istioAppsNs, "waypoint", map[string]string{
		model.LabelGatewayName: "waypoint", kube.DataplaneModeLabel: kube.ModeNone})
	env.service(istioAppsNs, "app", iwwAppVIP, map[string]string{"app": "app"}, 80, 8080)
	env.service(istioAppsNs, "waypoint", "10.96.76.20", map[string]string{model.LabelGatewayName: "waypoint"},
		15008, 15008, func(s *corev1.ServiceSpec) { s.Ports[0].Name = "mesh" })
	env.apply(dyn, iwwGatewayYAML)

	// istiod signs an identity only for a caller with a pod of it on the
	// caller's node: node-a's kmeshd (for client) and node-c's waypoint
	// each use the token of a kmesh pod on their node.
	env.namespace("kmesh-system", nil)
	env.serviceAccount("kmesh-system", "kmesh")
	rootFile, _ := env.rootCert("kmesh-system")
	caFlags := func(node string) []string {
		token := env.podToken(env.barePod("kmesh-system", "kmesh-"+node, "kmesh", node))
		return []string{"--ca-address", env.caAddr(), "--ca-server-name", istiodName, "--ca-root-cert", rootFile,
			"--ca-token-file", token, "--cluster-id", "Kubernetes"}
	}
	hc := &hboneMesh{mesh: m, rootNetns: true, kmeshd: map[string]*kmeshd{}, tunnels: map[string]*testbed.Process{},
		stateDirs: map[string]string{"node-a": configPath(m, "node-a-state")}, caFlags: caFlags("node-a")}
	ka := m.startKmeshdBin(m.kmeshd, "node-a", "", append([]string{"--xds-address", env.XDSAddr, "--kubeconfig", env.kubeconfig,
		"--state-dir", hc.stateDirs["node-a"]}, hc.caFlags...)...)
	waitEnrolled(t, ka, m.pods["client"].NetnsPath)
	ta := hc.startTunnel("node-a")

	t.Run("no_waypoint_before_the_gateway_has_addresses", func(t *testing.T) {
		d := ka.waitDump(t, "app from istiod", 60*time.Second, func(d dumpView) string {
			for _, w := range d.Workloads {
				if w.Namespace == istioAppsNs && w.Name == "app" {
					return ""
				}
			}
			return "no workload apps/app"
		})
		for _, w := range d.Workloads {
			if w.Name == "app" && w.Waypoint != "" {
				t.Fatalf("app has waypoint %q before the Gateway has status.addresses", w.Waypoint)
			}
		}
		// Until then the pod answers directly.
		rs := m.get("client", "--url", "http://"+iwwAppIP+":8080/admin", "--count", "1")
		if rs[0].Status != 200 || rs[0].Pod != "app" {
			t.Fatalf("GET app's /admin before the waypoint: %+v", rs[0])
		}
	})

	wpCA := env.forwardInPod(t, m.pods["waypoint"], env.caAddr())
	wpXDS := env.forwardInPod(t, m.pods["waypoint"], env.XDSAddr)
	wpCAFlags := caFlags("node-c")
	wpCAFlags[1] = wpCA
	wp, err := m.pods["waypoint"].Start(wpBin, append([]string{"--kubeconfig", env.kubeconfigInPod(t, m.pods["waypoint"]),
		"--gateway", "apps/waypoint", "--xds-address", wpXDS, "--admin-address", iwwWaypointIP + ":15000",
		"--metrics-address", iwwWaypointIP + ":15020", "--log-level", "debug"}, wpCAFlags...)...)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "waypoint ready", 60*time.Second, func() string {
		if strings.Contains(wp.Stderr(), "waypoint ready") {
			return ""
		}
		return "not ready: " + tail(wp.Stderr(), 2000)
	})

	wantWaypoint := istioAppsNs + "/waypoint." + istioAppsNs + ".svc.cluster.local"
	t.Run("istiod_sends_the_workload_waypoint", func(t *testing.T) {
		ka.waitDump(t, "app's waypoint from istiod", 60*time.Second, func(d dumpView) string {
			var found bool
			for _, w := range d.Workloads {
				if w.Namespace == istioAppsNs && w.Name == "app" {
					if w.Waypoint != wantWaypoint {
						return fmt.Sprintf("app's waypoint %q, want %q", w.Waypoint, wantWaypoint)
					}
					found = true
				}
			}
			if !found {
				return "no workload apps/app"
			}
			// kmeshd's own service of app's address, balanced over the
			// waypoint's instance.
			for _, s := range d.Services {
				if s.Name == "app"+model.WorkloadServiceSuffix && s.Namespace == istioAppsNs {
					if strings.Join(s.Endpoints, ",") != istioAppsNs+"/waypoint" {
						return fmt.Sprintf("%s's endpoints %v, want the waypoint instance", s.Name, s.Endpoints)
					}
					return ""
				}
			}
			return "no service apps/app" + model.WorkloadServiceSuffix
		})
		// The Service app has no waypoint: its Gateway serves workloads.
		for _, s := range ka.configDump(t).Services {
			if s.Name == "app" && s.Waypoint != nil {
				t.Fatalf("service app has waypoint %+v; the Gateway is waypoint-for workload", s.Waypoint)
			}
		}
		out, err := execOutput(ctl, "explain", istioAppsNs+"/client", iwwAppIP+":8080", "--admin-address", ka.admin, "--admin-socket", ka.socket)
		if err != nil {
			t.Fatalf("kmeshctl explain: %v\n%s", err, out)
		}
		for _, want := range []string{
			`(?m)^WAYPOINT:\s+` + regexp.QuoteMeta(istioAppsNs+"/waypoint"),
			`(?m)^` + regexp.QuoteMeta(istioAppsNs+"/waypoint") + ` +node-c +` + regexp.QuoteMeta(iwwWaypointIP+":8080") + ` .*HBONE to ` + regexp.QuoteMeta(iwwWaypointIP+":15008"),
			`(?m)^RESULT: .*workload ` + regexp.QuoteMeta(istioAppsNs+"/app") + ` through its waypoint .*HBONE authority ` + regexp.QuoteMeta(iwwAppIP+":8080"),
		} {
			if !regexp.MustCompile(want).MatchString(out) {
				t.Errorf("kmeshctl explain client %s:8080: no line matching %s:\n%s", iwwAppIP, want, out)
			}
		}
	})

	t.Run("pod_address_through_the_waypoint", func(t *testing.T) {
		waitFor(t, "GET /admin denied by the Gateway's policy", 60*time.Second, func() string {
			if r := m.get("client", "--url", "http://"+iwwAppIP+":8080/admin", "--count", "1")[0]; r.Status != 403 {
				return fmt.Sprintf("GET app's /admin: status %d from %q (%s)\nwaypoint:\n%s\ntunnel:\n%s", r.Status, r.Pod, r.Error,
					tail(wp.Stderr(), 3000), tail(ta.Stderr(), 3000))
			}
			return ""
		})
		rs := m.get("client", "--url", "http://"+iwwAppIP+":8080/page", "--count", "10")
		for _, r := range rs {
			if r.Error != "" || r.Status != 200 || r.Pod != "app" || !strings.HasPrefix(r.ServerSaw, iwwWaypointIP+":") {
				t.Fatalf("GET app's /page: request %d: status %d from %q, it saw %s (%s); want 200 from app through the waypoint %s",
					r.Seq, r.Status, r.Pod, r.ServerSaw, r.Error, iwwWaypointIP)
			}
		}
		if !hasLine(ta.Stderr(), "msg=tunnelled", "dst="+iwwWaypointIP+":8080", "authority="+iwwAppIP+":8080") {
			t.Errorf("node-a's tunnel logged no connection to the waypoint with authority %s:8080:\n%s", iwwAppIP, tail(ta.Stderr(), 4000))
		}
		if !hasLine(wp.Stderr(), `msg="hbone stream"`, "authority="+iwwAppIP+":8080", "principal=cluster.local/ns/apps/sa/default") {
			t.Errorf("the waypoint saw no HBONE stream from client's certificate for %s:8080:\n%s", iwwAppIP, tail(wp.Stderr(), 4000))
		}
		// The waypoint's own admin and metrics (read inside its pod):
		// /config_dump lists app among the workloads it serves and the
		// Gateway's policy; the request metrics count app's answers and
		// the denials, reported by the waypoint, with the client's
		// certificate.
		var dump waypoint.ConfigDump
		if err := json.Unmarshal([]byte(m.get("waypoint", "--url", "http://"+iwwWaypointIP+":15000/config_dump", "--print-body")[0].Body), &dump); err != nil {
			t.Fatalf("the waypoint's /config_dump: %v", err)
		}
		var served bool
		for _, w := range dump.Workloads {
			served = served || (w.Workload == istioAppsNs+"/app" && slices.Contains(w.Addresses, iwwAppIP))
		}
		if !served || !slices.Contains(dump.Policies, istioAppsNs+"/no-admin") {
			t.Errorf("the waypoint's /config_dump: workloads %+v, policies %v; want apps/app (%s) and apps/no-admin", dump.Workloads, dump.Policies, iwwAppIP)
		}
		body := m.get("waypoint", "--url", "http://"+iwwWaypointIP+":15020/metrics", "--print-body")[0].Body
		for _, want := range [][]string{
			{`istio_requests_total{`, `reporter="waypoint"`, `response_code="200"`, `destination_workload="app"`,
				`source_principal="spiffe://cluster.local/ns/apps/sa/default"`, `connection_security_policy="mutual_tls"`},
			{`istio_requests_total{`, `reporter="waypoint"`, `response_code="403"`, `source_principal="spiffe://cluster.local/ns/apps/sa/default"`},
		} {
			if !hasLine(body, want...) {
				t.Errorf("the waypoint's metrics have no series with %v:\n%s", want, grepLines(body, "istio_requests_total"))
			}
		}
	})

	// The Service app has no waypoint, but its VIP lands on app, which
	// istiod's waypoint protects: under istiod kmeshd gives app a deny
	// policy sparing only the waypoint's instances (docs/waypoint.md,
	// Workload waypoints), so a mesh client's connect() to the VIP is
	// refused, never sent around the waypoint.
	t.Run("service_vip_refused_around_the_waypoint", func(t *testing.T) {
		d := ka.configDump(t)
		var policy bool
		for _, p := range d.Policies {
			policy = policy || (p.Namespace == "kmesh-system" && p.Name == "waypoint-not-served-"+istioAppsNs+".app")
		}
		if !policy {
			t.Fatalf("no deny policy kmesh-system/waypoint-not-served-%s.app in kmeshd's config dump", istioAppsNs)
		}
		rs := m.get("client", "--url", "http://"+iwwAppVIP+"/admin", "--count", "1", "--timeout", "5s")
		if len(rs) != 1 || !strings.Contains(rs[0].Error, "connect: permission denied") {
			t.Fatalf("GET the VIP's /admin: %+v, want connect: permission denied (app's address only through its waypoint)", rs)
		}
	})
}
