//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/source/kube"
	"github.com/kmesh-go/kmesh/internal/testbed"
	"github.com/kmesh-go/kmesh/internal/tunnel"
)

// The waypoint topology of the Istio tier:
//
//	node-a: client (enrolled by kmeshd, which takes its config from istiod)
//	node-b: hello-v1, hello-v2 (app=hello), no kmeshd
//	node-c: near (enrolled by node-c's kmeshd, which has istiod's CA and a
//	        tunnel), waypoint (kmesh-waypoint, reading the API server, with
//	        istiod's CA: HBONE on 15008 besides the plaintext ports)
//
// node-a's kmeshd has no CA: client reaches the waypoint in plaintext.
// node-c's has one: near reaches the waypoint on its own node over HBONE,
// as ztunnel reaches a waypoint, although istiod sends the waypoint pod
// without HBONE and the workload API carries no labels (the xDS source
// marks the instances of the waypoints services name).
//
// Services in apps: hello 10.96.75.10 (app=hello, later labelled
// istio.io/use-waypoint=waypoint), hello-v1 10.96.75.11 and hello-v2
// 10.96.75.12 (by version), all port 80 -> 8080; waypoint 10.96.75.20,
// port 15008 on the waypoint pod (as Istio's deployment controller would
// make for a waypoint Gateway).
const (
	iwHelloIP    = "10.96.75.10"
	iwWaypointIP = "10.75.3.20"
)

var (
	gatewayClassGVR = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gatewayclasses"}
	gatewayGVR      = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"}
	httpRouteGVR    = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}
	authzGVR        = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	wleGVR          = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "workloadentries"}
	peerAuthGVR     = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"}
)

// iwEntryYAML is a WorkloadEntry in apps: name, address, labels (JSON),
// service account, annotations (JSON). A Kubernetes Service whose selector
// its labels match has it as an endpoint in istiod's workload API, but
// the API server has no Pod for it: only a waypoint that takes its
// endpoints from istiod reaches it.
const iwEntryYAML = `
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: %s, namespace: apps, annotations: %s}
spec: {address: %s, labels: %s, serviceAccount: %s}
`

const iwGatewayYAML = `
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: kmesh-waypoint}
spec: {controllerName: kmesh.net/waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: kmesh-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`

// iwRouteYAML is the GAMMA HTTPRoute of hello with weights v1:v2.
const iwRouteYAML = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: hello, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: hello, port: 80}]
  rules:
  - backendRefs:
    - {name: hello-v1, port: 80, weight: %d}
    - {name: %s, port: 80, weight: %d}
`

// iwDenyAdminYAML is an L7 policy of hello's waypoint.
const iwDenyAdminYAML = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: hello}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
`

// TestIstioWaypoint: a Gateway of class kmesh-waypoint and a Service
// labelled istio.io/use-waypoint are applied to the API server; the
// waypoint (kmesh-waypoint reading Kubernetes) writes the Gateway's
// status.addresses, istiod then sends the waypoint for the service in the
// workload API, kmeshd sends the client's connections to the waypoint,
// and an HTTPRoute applied to the API server changes the split. A bad
// HTTPRoute is reported by name and the previous route keeps working; an
// AuthorizationPolicy with targetRefs denies a path with 403.
func TestIstioWaypoint(t *testing.T) {
	findIstioTools(t)
	m, wpBin := newWaypointMesh(t)
	var err error
	env := newIstioEnv(t, m.bed, withGatewayAPI)
	dyn := env.dynamic()
	m.addNode("node-a", netip.MustParsePrefix("10.75.1.0/24"))
	m.addNode("node-b", netip.MustParsePrefix("10.75.2.0/24"))
	m.addNode("node-c", netip.MustParsePrefix("10.75.3.0/24"))
	env.node(m.nodes["node-a"])
	env.node(m.nodes["node-b"])
	env.node(m.nodes["node-c"])
	env.namespace(istioAppsNs, map[string]string{kube.DataplaneModeLabel: kube.ModeAmbient})
	env.serviceAccount(istioAppsNs, "waypoint")
	env.serviceAccount(istioAppsNs, "near")
	for _, p := range []istioPod{
		{"client", "node-a", "10.75.1.10", istioAppsNs, map[string]string{"app": "client"}},
		{"hello-v1", "node-b", "10.75.2.11", istioAppsNs, map[string]string{"app": "hello", "version": "v1"}},
		{"hello-v2", "node-b", "10.75.2.12", istioAppsNs, map[string]string{"app": "hello", "version": "v2"}},
	} {
		m.addPod(p.node, p.name, p.ip)
		env.pod(m.pods[p.name], p.ns, p.labels)
	}
	m.addPod("node-c", "near", "10.75.3.14")
	env.podAs(m.pods["near"], istioAppsNs, "near", map[string]string{"app": "near"})
	m.serve("hello-v1")
	m.serve("hello-v2")
	// hello-v3 and hello-v4 are no Pods of the API server: they join
	// the services as WorkloadEntries (endpoints_from_istiod).
	m.addPod("node-b", "hello-v3", "10.75.2.13")
	m.addPod("node-b", "hello-v4", "10.75.2.14")
	m.serve("hello-v3")
	m.serve("hello-v4")
	// The waypoint pod, as Istio labels its waypoints' pods: the Gateway's
	// name (istiod finds the instances and their accounts by it), and out
	// of the mesh's capture.
	m.addPod("node-c", "waypoint", iwWaypointIP)
	env.podAs(m.pods["waypoint"], istioAppsNs, "waypoint", map[string]string{
		"gateway.networking.k8s.io/gateway-name": "waypoint", kube.DataplaneModeLabel: kube.ModeNone})
	env.service(istioAppsNs, "hello", iwHelloIP, map[string]string{"app": "hello"}, 80, 8080)
	env.service(istioAppsNs, "hello-v1", "10.96.75.11", map[string]string{"version": "v1"}, 80, 8080)
	env.service(istioAppsNs, "hello-v2", "10.96.75.12", map[string]string{"version": "v2"}, 80, 8080)
	env.service(istioAppsNs, "hello-v4", "10.96.75.14", map[string]string{"version": "v4"}, 80, 8080)
	env.service(istioAppsNs, "waypoint", "10.96.75.20", map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint"},
		15008, 15008, func(s *corev1.ServiceSpec) { s.Ports[0].Name = "mesh" })
	env.apply(dyn, iwGatewayYAML)

	// The service opts in before any waypoint runs: the Gateway has no
	// status.addresses yet, so istiod's ambient index does not take it as a
	// waypoint and sends hello without one (its own endpoints).
	env.labelService(istioAppsNs, "hello", "istio.io/use-waypoint", "waypoint")
	ka := m.startIstioKmeshd(env, "node-a")
	// node-c's kmeshd, its tunnel and the waypoint get certificates from
	// istiod's CA with the token of kmeshd's pod on node-c (istiod signs
	// identities with a pod on the caller's node).
	env.namespace("kmesh-system", nil)
	env.serviceAccount("kmesh-system", "kmesh")
	rootFile, _ := env.rootCert("kmesh-system")
	token := env.podToken(env.barePod("kmesh-system", "kmesh-node-c", "kmesh", "node-c"))
	hc := &hboneMesh{mesh: m, rootNetns: true, kmeshd: map[string]*kmeshd{}, tunnels: map[string]*testbed.Process{},
		stateDirs: map[string]string{"node-c": configPath(m, "node-c-state")},
		caFlags: []string{"--ca-address", env.caAddr(), "--ca-server-name", istiodName, "--ca-root-cert", rootFile,
			"--ca-token-file", token, "--cluster-id", "Kubernetes"}}
	kc := m.startKmeshdBin(m.kmeshd, "node-c", "", append([]string{"--xds-address", env.XDSAddr, "--kubeconfig", env.kubeconfig,
		"--state-dir", hc.stateDirs["node-c"]}, hc.caFlags...)...)
	waitEnrolled(t, kc, m.pods["near"].NetnsPath)
	tc := hc.startTunnel("node-c")
	t.Run("no_waypoint_before_the_gateway_has_addresses", func(t *testing.T) {
		d := ka.waitDump(t, "hello from istiod", 60*time.Second, func(d dumpView) string {
			if eps := d.endpointsOf(iwHelloIP); strings.Join(eps, ",") != istioAppsNs+"/hello-v1,"+istioAppsNs+"/hello-v2" {
				return fmt.Sprintf("hello's endpoints %v", eps)
			}
			return ""
		})
		for _, s := range d.Services {
			if s.Name == "hello" && s.Waypoint != nil {
				t.Fatalf("hello has waypoint %+v before the Gateway has status.addresses", s.Waypoint)
			}
		}
	})

	// kmesh-waypoint in its pod reads the API server through a forwarder
	// into the pod's namespace (the API server listens on the machine's
	// loopback).
	// istiod's CA too, through a forwarder (the pod's certificate check
	// is by --ca-server-name, not the address).
	wpKubeconfig := env.kubeconfigInPod(t, m.pods["waypoint"])
	wpCA := env.forwardInPod(t, m.pods["waypoint"], env.caAddr())
	// and istiod's workload API, where its endpoints come from.
	wpXDS := env.forwardInPod(t, m.pods["waypoint"], env.XDSAddr)
	wp, err := m.pods["waypoint"].Start(wpBin, "--kubeconfig", wpKubeconfig, "--gateway", "apps/waypoint", "--xds-address", wpXDS,
		"--admin-address", iwWaypointIP+":15000", "--metrics-address", iwWaypointIP+":15020", "--log-level", "debug",
		"--ca-address", wpCA, "--ca-server-name", istiodName, "--ca-root-cert", rootFile, "--ca-token-file", token)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "waypoint ready", 60*time.Second, func() string {
		if strings.Contains(wp.Stderr(), "waypoint ready") {
			return ""
		}
		return "not ready: " + tail(wp.Stderr(), 2000)
	})

	t.Run("gateway_status_addresses", func(t *testing.T) {
		waitFor(t, "gateway status", 30*time.Second, func() string {
			gw, err := dyn.Resource(gatewayGVR).Namespace(istioAppsNs).Get(context.Background(), "waypoint", metav1.GetOptions{})
			if err != nil {
				return err.Error()
			}
			addrs, _, _ := unstructured.NestedSlice(gw.Object, "status", "addresses")
			conds, _, _ := unstructured.NestedSlice(gw.Object, "status", "conditions")
			want := map[string]bool{"Hostname waypoint.apps.svc.cluster.local": false, "IPAddress 10.96.75.20": false}
			for _, a := range addrs {
				if a, ok := a.(map[string]any); ok {
					want[fmt.Sprint(a["type"], " ", a["value"])] = true
				}
			}
			for _, c := range conds {
				if c, ok := c.(map[string]any); ok && c["type"] != nil {
					want[fmt.Sprint(c["type"], "=", c["status"])] = true
				}
			}
			listeners, _, _ := unstructured.NestedSlice(gw.Object, "status", "listeners")
			for _, l := range listeners {
				l, _ := l.(map[string]any)
				lconds, _ := l["conditions"].([]any)
				for _, c := range lconds {
					if c, ok := c.(map[string]any); ok {
						want[fmt.Sprint("listener ", l["name"], " ", c["type"], "=", c["status"])] = true
					}
				}
				kinds, _ := l["supportedKinds"].([]any)
				for _, k := range kinds {
					if k, ok := k.(map[string]any); ok {
						want[fmt.Sprint("listener ", l["name"], " kind ", k["kind"])] = true
					}
				}
			}
			for _, k := range []string{"Hostname waypoint.apps.svc.cluster.local", "IPAddress 10.96.75.20", "Accepted=True", "Programmed=True",
				"ResolvedRefs=True", "listener mesh Accepted=True", "listener mesh Programmed=True", "listener mesh Conflicted=False",
				"listener mesh ResolvedRefs=True", "listener mesh kind HTTPRoute", "listener mesh kind GRPCRoute"} {
				if !want[k] {
					return fmt.Sprintf("no %s in status addresses %v conditions %v listeners %v", k, addrs, conds, listeners)
				}
			}
			return ""
		})
		// The class is ours (controllerName kmesh.net/waypoint): Accepted,
		// as Istio's controller accepts istio-waypoint.
		waitFor(t, "gatewayclass status", 30*time.Second, func() string {
			gc, err := dyn.Resource(gatewayClassGVR).Get(context.Background(), "kmesh-waypoint", metav1.GetOptions{})
			if err != nil {
				return err.Error()
			}
			conds, _, _ := unstructured.NestedSlice(gc.Object, "status", "conditions")
			for _, c := range conds {
				if c, ok := c.(map[string]any); ok && c["type"] == "Accepted" && c["status"] == "True" && c["reason"] == "Accepted" {
					return ""
				}
			}
			return fmt.Sprintf("no Accepted=True in the GatewayClass's conditions %v", conds)
		})
	})

	t.Run("istiod_sends_the_waypoint", func(t *testing.T) {
		ka.waitDump(t, "hello's waypoint from istiod", 60*time.Second, func(d dumpView) string {
			for _, s := range d.Services {
				if s.Name != "hello" || s.Namespace != istioAppsNs {
					continue
				}
				if s.Waypoint == nil || s.Waypoint.Unresolved != "" {
					return fmt.Sprintf("hello's waypoint %+v", s.Waypoint)
				}
				if strings.Join(s.Endpoints, ",") != istioAppsNs+"/waypoint" {
					return fmt.Sprintf("hello's endpoints %v, want the waypoint instance", s.Endpoints)
				}
				return ""
			}
			return "no service hello"
		})
	})
	waitEnrolled(t, ka, m.pods["client"].NetnsPath)

	hello := "http://" + iwHelloIP + "/"
	split := func(t *testing.T, n int) map[string]int {
		t.Helper()
		rs := m.get("client", "--url", hello, "--count", fmt.Sprint(n), "--keepalive")
		for _, r := range rs {
			if r.Error != "" {
				t.Fatalf("request %d: %s", r.Seq, r.Error)
			}
			if !strings.HasPrefix(r.ServerSaw, iwWaypointIP+":") {
				t.Fatalf("request %d: backend saw %s, want the waypoint %s", r.Seq, r.ServerSaw, iwWaypointIP)
			}
		}
		return counts(rs)
	}

	t.Run("traffic_through_the_waypoint", func(t *testing.T) {
		c := split(t, 40)
		if c["hello-v1"] == 0 || c["hello-v2"] == 0 || c["hello-v1"]+c["hello-v2"] != 40 {
			t.Fatalf("40 requests without a route went to %v, want both versions (the service's endpoints)", c)
		}
	})

	// near, on the waypoint's node: kmeshd knows the waypoint pod as a
	// waypoint instance (from the services that name it), never enrolls
	// it, and near's connections to hello go to its 15008 over HBONE under
	// near's certificate, with hello's VIP:port as the authority.
	t.Run("same_node_client_over_hbone", func(t *testing.T) {
		wantOf := istioAppsNs + "/waypoint." + istioAppsNs + ".svc.cluster.local"
		d := kc.waitDump(t, "the waypoint pod known as an instance", 60*time.Second, func(d dumpView) string {
			for _, w := range d.Workloads {
				if w.Namespace == istioAppsNs && w.Name == "waypoint" {
					if w.WaypointInstanceOf != wantOf {
						return fmt.Sprintf("waypoint workload's waypointInstanceOf %q, want %q", w.WaypointInstanceOf, wantOf)
					}
					return ""
				}
			}
			return "no workload apps/waypoint"
		})
		if d.enrolled(m.pods["waypoint"].NetnsPath) {
			t.Fatalf("node-c's kmeshd enrolled the waypoint's pod: %v", d.Enrolled)
		}
		waitTunnelState(t, hc.stateDirs["node-c"], func(s *tunnel.State) string {
			if w := s.Mesh.Workload(istioAppsNs + "/waypoint"); w == nil || !w.IsWaypoint() {
				return "the tunnel's state does not know the waypoint instance"
			}
			for _, p := range s.Pods {
				if p.Netns == m.pods["waypoint"].NetnsPath {
					return "the tunnel would listen in the waypoint's namespace"
				}
			}
			return ""
		})
		rs := m.get("near", "--url", hello, "--count", "10")
		c := counts(rs)
		for _, r := range rs {
			if r.Error != "" {
				t.Fatalf("near: request %d: %s\nwaypoint:\n%s\ntunnel:\n%s", r.Seq, r.Error, tail(wp.Stderr(), 3000), tail(tc.Stderr(), 3000))
			}
		}
		if c["hello-v1"]+c["hello-v2"] != 10 {
			t.Fatalf("near's 10 requests: %v", c)
		}
		if !hasLine(tc.Stderr(), "msg=tunnelled", "dst="+iwWaypointIP+":80", "authority="+iwHelloIP+":80") {
			t.Errorf("node-c's tunnel logged no tunnelled connection to the waypoint with authority %s:80:\n%s", iwHelloIP, tail(tc.Stderr(), 4000))
		}
		if !hasLine(wp.Stderr(), `msg="hbone stream"`, "authority="+iwHelloIP+":80", "principal=cluster.local/ns/apps/sa/near") {
			t.Errorf("the waypoint saw no HBONE stream from near's certificate for %s:80:\n%s", iwHelloIP, tail(wp.Stderr(), 4000))
		}
		if hasLine(wp.Stderr(), `msg="hbone stream"`, "principal=cluster.local/ns/apps/sa/default") {
			t.Errorf("client's plaintext requests (node-a, no CA) arrived over HBONE")
		}
	})

	t.Run("httproute_changes_the_split", func(t *testing.T) {
		env.apply(dyn, fmt.Sprintf(iwRouteYAML, 80, "hello-v2", 20))
		// The waypoint logs each config it applies with its route count;
		// a traffic check cannot tell an applied 80/20 from the service's
		// own even split in a few requests.
		waitFor(t, "route in the waypoint", 30*time.Second, func() string {
			if strings.Contains(wp.Stderr(), `msg="config applied"`) && strings.Contains(wp.Stderr(), " routes=1 ") {
				return ""
			}
			return "no config with the route applied yet"
		})
		const n = 300
		c := split(t, n)
		v1, v2 := float64(c["hello-v1"]), float64(c["hello-v2"])
		// Chi-square, 1 degree of freedom; 10.83 is p = 0.001.
		chi := math.Pow(v1-0.8*n, 2)/(0.8*n) + math.Pow(v2-0.2*n, 2)/(0.2*n)
		even := math.Pow(v1-0.5*n, 2)/(0.5*n) + math.Pow(v2-0.5*n, 2)/(0.5*n)
		t.Logf("HTTPRoute 80/20: %v, chi-square %.2f (vs 50/50: %.2f)", c, chi, even)
		if chi > 10.83 || even < 10.83 {
			t.Fatalf("split %v after the 80/20 HTTPRoute: chi-square %.2f for 80/20 (want <= 10.83), %.2f for 50/50 (want > 10.83)", c, chi, even)
		}

		env.apply(dyn, fmt.Sprintf(iwRouteYAML, 0, "hello-v2", 1))
		waitFor(t, "route update in the waypoint", 30*time.Second, func() string {
			if c := split(t, 20); c["hello-v2"] != 20 {
				return fmt.Sprintf("split %v", c)
			}
			return ""
		})
	})

	t.Run("bad_httproute_is_reported_and_the_previous_stays", func(t *testing.T) {
		env.apply(dyn, fmt.Sprintf(iwRouteYAML, 0, "no-such-service", 1))
		waitFor(t, "rejection logged", 30*time.Second, func() string {
			if strings.Contains(wp.Stderr(), `object rejected`) && strings.Contains(wp.Stderr(), `object="HTTPRoute apps/hello"`) {
				return ""
			}
			return "no rejection of HTTPRoute apps/hello in the log"
		})
		if c := split(t, 20); c["hello-v2"] != 20 {
			t.Fatalf("after a bad update of the route: %v, want the previous route (all to hello-v2)", c)
		}
	})

	t.Run("l7_policy_from_the_api_server", func(t *testing.T) {
		env.apply(dyn, iwDenyAdminYAML)
		waitFor(t, "policy in the waypoint", 30*time.Second, func() string {
			if r := m.get("client", "--url", hello+"admin/users")[0]; r.Status != 403 {
				return fmt.Sprintf("GET /admin/users: status %d (%s)", r.Status, r.Error)
			}
			return ""
		})
		if c := split(t, 10); c["hello-v2"] != 10 {
			t.Fatalf("GET / with the policy: %v, want 10 answers from hello-v2", c)
		}
	})

	// The waypoint's endpoints are istiod's (--xds-address): a
	// WorkloadEntry that hello's selector matches is an endpoint of hello
	// in the workload API, with no Pod in the API server; hello's split
	// follows it in and out.
	t.Run("endpoints_from_istiod", func(t *testing.T) {
		if err := dyn.Resource(httpRouteGVR).Namespace(istioAppsNs).Delete(context.Background(), "hello", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		env.apply(dyn, fmt.Sprintf(iwEntryYAML, "hello-v3", "{}", "10.75.2.13", `{app: hello, version: v3}`, "hello-v3"))
		waitFor(t, "hello-v3 among hello's backends", 60*time.Second, func() string {
			if c := split(t, 30); c["hello-v1"] == 0 || c["hello-v2"] == 0 || c["hello-v3"] == 0 {
				return fmt.Sprintf("30 requests: %v, want hello-v1, hello-v2 and the WorkloadEntry hello-v3", c)
			}
			return ""
		})
		if err := dyn.Resource(wleGVR).Namespace(istioAppsNs).Delete(context.Background(), "hello-v3", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "hello-v3 gone from hello's backends", 60*time.Second, func() string {
			if c := split(t, 30); c["hello-v3"] != 0 || c["hello-v1"]+c["hello-v2"] != 30 {
				return fmt.Sprintf("30 requests: %v, want hello-v1 and hello-v2 only", c)
			}
			return ""
		})
	})

	// An endpoint istiod says takes HBONE is reached over HBONE and its
	// certificate must name the service account istiod gives it:
	// hello-v4's 15008 is Istio's own HBONE server (hbone-peer) with a
	// certificate of apps/impostor from istiod's CA. While the
	// WorkloadEntry says impostor, requests pass; once it says hello-v4
	// (nothing else changes), the waypoint refuses the endpoint.
	t.Run("hbone_endpoint_identity_from_istiod", func(t *testing.T) {
		bin := hbonePeer(t)
		env.serviceAccount(istioAppsNs, "impostor")
		env.barePod(istioAppsNs, "impostor-on-node-c", "impostor", "node-c")
		ic := identity.Config{CAAddress: env.caAddr(), CAServerName: istiodName, CARootCert: rootFile, CATokenFile: token,
			ClusterID: "Kubernetes", TrustDomain: "cluster.local", CertTTL: time.Hour}
		src, err := ic.NewSource()
		if err != nil {
			t.Fatal(err)
		}
		impostor := identity.Identity{TrustDomain: "cluster.local", Namespace: istioAppsNs, ServiceAccount: "impostor"}
		cert, key, roots := peerFiles(t, src, impostor)
		peer, err := m.pods["hello-v4"].Start(bin, "server", "--listen", "10.75.2.14:15008", "--cert", cert, "--key", key, "--roots", roots)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { peer.Stop() })
		select {
		case line := <-peer.Lines():
			if !strings.HasPrefix(line, "ready ") {
				t.Fatalf("hbone-peer server: %q\n%s", line, peer.Stderr())
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("hbone-peer server not ready after 10s:\n%s", peer.Stderr())
		}
		hbone := `{ambient.istio.io/redirection: enabled}`
		env.apply(dyn, fmt.Sprintf(iwEntryYAML, "hello-v4", hbone, "10.75.2.14", `{version: v4}`, "impostor"))
		env.apply(dyn, fmt.Sprintf(iwRouteYAML, 0, "hello-v4", 1))
		waitFor(t, "hello-v4 over HBONE", 60*time.Second, func() string {
			rs := m.get("client", "--url", hello, "--count", "10")
			if c := counts(rs); c["hello-v4"] != 10 {
				return fmt.Sprintf("10 requests: %v (status %d), want hello-v4 through its HBONE server", c, rs[0].Status)
			}
			// Istio's HBONE server dials the application itself: the
			// application sees hello-v4's own address, not the waypoint's.
			if !strings.HasPrefix(rs[0].ServerSaw, "10.75.2.14:") {
				return fmt.Sprintf("hello-v4 saw %s, want its HBONE server (10.75.2.14)\nwaypoint:\n%s\nhbone-peer:\n%s",
					rs[0].ServerSaw, tail(wp.Stderr(), 3000), tail(peer.Stderr(), 2000))
			}
			return ""
		})
		env.apply(dyn, fmt.Sprintf(iwEntryYAML, "hello-v4", hbone, "10.75.2.14", `{version: v4}`, "hello-v4"))
		waitFor(t, "hello-v4 refused", 60*time.Second, func() string {
			rs := m.get("client", "--url", hello, "--count", "10")
			for _, r := range rs {
				if r.Error == "" && (r.Status != 503 || r.Pod == "hello-v4") {
					return fmt.Sprintf("request %d: status %d from %q (it saw %s), want 503 (hello-v4's certificate names apps/impostor)\nwaypoint:\n%s\nhbone-peer:\n%s",
						r.Seq, r.Status, r.Pod, r.ServerSaw, tail(wp.Stderr(), 3000), tail(peer.Stderr(), 2000))
				}
			}
			return ""
		})
		if !hasLine(wp.Stderr(), `msg="hbone upstream failed"`, "workload=apps/hello-v4", "want=spiffe://cluster.local/ns/apps/sa/hello-v4",
			"server identity is not an expected one") {
			t.Errorf("the waypoint's log does not name the identity mismatch:\n%s", tail(wp.Stderr(), 3000))
		}
	})
}

// waitFor polls ok (which returns what is still missing) until it returns
// "" or the timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, ok func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		miss := ok()
		if miss == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %s after %v", what, miss, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitEnrolled waits until kmeshd has enrolled the pod of netns.
func waitEnrolled(t *testing.T, k *kmeshd, netns string) {
	t.Helper()
	k.waitDump(t, "client enrolled", 30*time.Second, func(d dumpView) string {
		if d.enrolled(netns) {
			return ""
		}
		return "not enrolled"
	})
}

// dynamic is a dynamic client of the API server.
func (e *istioEnv) dynamic() dynamic.Interface {
	e.t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", e.kubeconfig)
	if err != nil {
		e.t.Fatal(err)
	}
	d, err := dynamic.NewForConfig(rc)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// apply creates or replaces each object of a YAML stream, as kubectl
// apply would for these fields.
func (e *istioEnv) apply(dyn dynamic.Interface, stream string) {
	e.t.Helper()
	dec := k8syaml.NewYAMLOrJSONDecoder(strings.NewReader(stream), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return
		} else if err != nil {
			e.t.Fatal(err)
		}
		if len(u.Object) == 0 {
			continue
		}
		gvr := map[string]schema.GroupVersionResource{"GatewayClass": gatewayClassGVR, "Gateway": gatewayGVR, "HTTPRoute": httpRouteGVR, "AuthorizationPolicy": authzGVR, "WorkloadEntry": wleGVR,
			"PeerAuthentication": peerAuthGVR}[u.GetKind()]
		var r dynamic.ResourceInterface = dyn.Resource(gvr)
		if u.GetNamespace() != "" {
			r = dyn.Resource(gvr).Namespace(u.GetNamespace())
		}
		old, err := r.Get(context.Background(), u.GetName(), metav1.GetOptions{})
		if err == nil {
			u.SetResourceVersion(old.GetResourceVersion())
			_, err = r.Update(context.Background(), u, metav1.UpdateOptions{})
		} else {
			_, err = r.Create(context.Background(), u, metav1.CreateOptions{})
		}
		if err != nil {
			e.t.Fatalf("apply %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
}

// labelService sets a Service label.
func (e *istioEnv) labelService(ns, name, key, value string) {
	e.t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, key, value)
	if _, err := e.kube.CoreV1().Services(ns).Patch(e.ctx(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// kubeconfigInPod forwards 127.0.0.1:<port> in the pod's network namespace
// to the API server on the machine's loopback and returns a kubeconfig
// that points there (the API server's certificate names 127.0.0.1).
func (e *istioEnv) kubeconfigInPod(t *testing.T, pod *testbed.Pod) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(e.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	var target string
	for _, c := range cfg.Clusters {
		target = strings.TrimPrefix(c.Server, "https://")
	}
	local := e.forwardInPod(t, pod, target)
	for _, c := range cfg.Clusters {
		c.Server = "https://" + local
	}
	path := filepath.Join(e.dir, "kubeconfig-"+pod.Name)
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// forwardInPod forwards 127.0.0.1:<port> in the pod's network namespace
// to target on the machine's loopback and returns that address.
func (e *istioEnv) forwardInPod(t *testing.T, pod *testbed.Pod, target string) string {
	t.Helper()
	ln, err := pod.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(up, c); done <- struct{}{} }()
				go func() { io.Copy(c, up); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return ln.Addr().String()
}
