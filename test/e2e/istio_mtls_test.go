//go:build e2e

package e2e

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/kube"
	"github.com/kmesh-go/kmesh/internal/testbed"
	"github.com/kmesh-go/kmesh/internal/tunnel"
)

// TestIstioMutualTLS: the istiod tier with mutual TLS. Each node's kmeshd
// takes the mesh from the stock istiod, enrolls its pods from the API
// server and marks them ambient.istio.io/redirection=enabled; istiod then
// sends them with tunnel_protocol HBONE; kmeshd and its tunnel get the
// pods' certificates from istiod's CA by impersonation. The tunnel
// listens in the Kubernetes-enrolled pods (no mesh file names their
// namespace), a cross-node request succeeds, and on the underlay every
// pod-to-pod segment is TLS 1.3 to or from port 15008 and never the
// application's bytes; a same-node request stays one hop.
func TestIstioMutualTLS(t *testing.T) {
	pods := []istioPod{
		{"client-a", "node-a", "10.71.1.10", istioAppsNs, map[string]string{"app": "client"}},
		{"hello-1", "node-a", "10.71.1.11", istioAppsNs, map[string]string{"app": "hello"}},
		{"hello-2", "node-b", "10.71.2.12", istioAppsNs, map[string]string{"app": "hello"}},
	}
	m, env := newIstioMesh(t, pods)
	// outsider: a pod of node-b in a namespace out of the mesh, so never
	// enrolled: its connections are plaintext.
	m.addPod("node-b", "outsider", "10.71.2.20")
	env.pod(m.pods["outsider"], istioPlainNs, map[string]string{"app": "outsider"})

	// kmeshd's pod on each node, its service account trusted by istiod
	// (CA_TRUSTED_NODE_ACCOUNTS), its token bound to that pod.
	env.namespace("kmesh-system", nil)
	env.serviceAccount("kmesh-system", "kmesh")
	rootFile, _ := env.rootCert("kmesh-system")
	h := &hboneMesh{mesh: m, rootNetns: true, kmeshd: map[string]*kmeshd{}, tunnels: map[string]*testbed.Process{}, stateDirs: map[string]string{}}
	caFlags := map[string][]string{}
	for _, node := range []string{"node-a", "node-b"} {
		token := env.podToken(env.barePod("kmesh-system", "kmesh-"+node, "kmesh", node))
		caFlags[node] = []string{"--ca-address", env.caAddr(), "--ca-server-name", istiodName,
			"--ca-root-cert", rootFile, "--ca-token-file", token, "--cluster-id", "Kubernetes"}
		h.stateDirs[node] = configPath(m, node+"-state")
		h.kmeshd[node] = m.startKmeshdBin(m.kmeshd, node, "", append([]string{"--xds-address", env.XDSAddr,
			"--kubeconfig", env.kubeconfig, "--state-dir", h.stateDirs[node]}, caFlags[node]...)...)
	}
	for _, p := range pods {
		waitAnnotation(t, env, istioAppsNs, p.name, kube.RedirectionEnabled)
		deadline := time.Now().Add(30 * time.Second)
		for env.annotation(istioAppsNs, p.name, kube.AmbientRedirectionAnnotation) != kube.RedirectionEnabled {
			if time.Now().After(deadline) {
				t.Fatalf("%s lacks %s=enabled after 30s", p.name, kube.AmbientRedirectionAnnotation)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// istiod marks them HBONE; each node's state names its own pods, which
	// no mesh file does: the kube-enrolled namespaces matched by address.
	for _, node := range []string{"node-a", "node-b"} {
		want := map[string]string{"node-a": "apps/client-a apps/hello-1", "node-b": "apps/hello-2"}[node]
		waitTunnelState(t, h.stateDirs[node], func(s *tunnel.State) string {
			for _, p := range pods {
				w := s.Mesh.Workload(istioAppsNs + "/" + p.name)
				if w == nil || w.TunnelProtocol != model.TunnelHBONE {
					return p.name + " not HBONE from istiod yet"
				}
			}
			var got []string
			for _, p := range s.Pods {
				if p.Netns != m.pods[strings.TrimPrefix(p.Workload, istioAppsNs+"/")].NetnsPath {
					return "pod " + p.Workload + " in the wrong namespace " + p.Netns
				}
				got = append(got, p.Workload)
			}
			if strings.Join(got, " ") != want {
				return "pods " + strings.Join(got, " ") + ", want " + want
			}
			return ""
		})
	}
	for _, node := range []string{"node-a", "node-b"} {
		h.caFlags = caFlags[node]
		h.tunnels[node] = h.startTunnel(node)
	}

	cpt := startCapture(t, m.bed.UnderlayNetns())
	rs := m.get("client-a", "--url", "http://10.71.2.12:8080/", "--count", "5")
	requireAll(t, "client-a -> hello-2 (node-b) by pod IP", rs, "hello-2")
	if rs[0].Peer != "10.71.2.12:8080" {
		t.Errorf("getpeername in the client: %s, want the destination 10.71.2.12:8080", rs[0].Peer)
	}
	rs = m.get("client-a", "--url", istioHelloURL, "--count", "20")
	requireAll(t, "client-a -> hello service", rs, "")
	if c := counts(rs); c["hello-2"] == 0 {
		t.Errorf("20 requests to the service never reached hello-2 on node-b: %v", c)
	}
	pkts := cpt.stop()
	inTier := func(a netip.Addr) bool { return istioCIDRA.Contains(a) || istioCIDRB.Contains(a) }
	tunnelSYNs := requireOnlyTunnel(t, pkts, inTier, "GET /", "hello-2", "X-Pod")
	// The certificates are istiod's: the client's tunnel presented
	// apps/default and verified hello-2's.
	if !regexp.MustCompile(`msg=tunnelled .*src=spiffe://cluster.local/ns/apps/sa/default dst=10.71.2.12:8080 peer_identity=spiffe://cluster.local/ns/apps/sa/default`).MatchString(h.tunnels["node-a"].Stderr()) {
		t.Errorf("node-a's tunnel logged no tunnelled connection to hello-2:\n%s", tail(h.tunnels["node-a"].Stderr(), 4000))
	}
	for _, node := range []string{"node-a", "node-b"} {
		if !regexp.MustCompile(`msg="certificate issued" .*identity=spiffe://cluster.local/ns/apps/sa/default`).MatchString(h.tunnels[node].Stderr()) {
			t.Errorf("%s's tunnel got no certificate from istiod:\n%s", node, tail(h.tunnels[node].Stderr(), 4000))
		}
	}

	// Same node: client-a -> hello-1 never touches 15008.
	local := startCapture(t, m.nodes["node-a"].NetnsPath)
	requireAll(t, "client-a -> hello-1 (same node)", m.get("client-a", "--url", "http://10.71.1.11:8080/", "--count", "5"), "hello-1")
	// Only hello-1's own 15008 counts: the pooled tunnel connection to
	// hello-2 from the requests above passes node-a too, and may still
	// carry an ACK, a ping or its close while this capture runs.
	hello1Tunnel := netip.MustParseAddrPort("10.71.1.11:15008")
	for _, p := range local.stop() {
		if p.src == hello1Tunnel || p.dst == hello1Tunnel {
			t.Fatalf("same-node request used the tunnel: %s -> %s", p.src, p.dst)
		}
	}
	t.Logf("%d segments on the underlay, %d tunnel connections", len(pkts), tunnelSYNs)

	// PeerAuthentication applied to the API server: istiod sends STRICT
	// as an authorization policy (its converted_peer_authentication_*)
	// and kmeshd refuses plaintext from another node, which no
	// certificate proves; tunnelled and same-node clients pass. PERMISSIVE
	// lets the plaintext client in again.
	t.Run("peer_authentication_from_istiod", func(t *testing.T) {
		plain := "http://10.71.1.11:8080/"
		requireAll(t, "outsider (node-b, plaintext) -> hello-1 without PeerAuthentication", m.get("outsider", "--url", plain, "--count", "1"), "hello-1")
		dyn := env.dynamic()
		env.apply(dyn, fmt.Sprintf(ipaYAML, "STRICT"))
		waitFor(t, "STRICT refusing outsider", 60*time.Second, func() string {
			rs := m.get("outsider", "--url", plain, "--count", "1", "--timeout", "2s")
			if len(rs) != 1 || !strings.Contains(strings.ToLower(rs[0].Error), "timeout") {
				return fmt.Sprintf("outsider -> hello-1: %+v, want a timeout (SYN dropped)", rs)
			}
			return ""
		})
		// Through the tunnel: client-a's certificate proves it.
		requireAll(t, "client-a -> hello-2 (node-b, tunnelled) under STRICT", m.get("client-a", "--url", "http://10.71.2.12:8080/", "--count", "3"), "hello-2")
		// Same node: the address stands for the identity.
		requireAll(t, "client-a -> hello-1 (same node) under STRICT", m.get("client-a", "--url", plain, "--count", "3"), "hello-1")
		// What istiod sent for it is in kmeshd's dump (istiod names a
		// workload's STRICT without port exceptions so).
		var names []string
		for _, p := range h.kmeshd["node-a"].configDump(t).Policies {
			names = append(names, p.Namespace+"/"+p.Name)
		}
		if !slices.Contains(names, "istio-system/istio_converted_static_strict") {
			t.Errorf("node-a's policies under STRICT: %v, want istio-system/istio_converted_static_strict from istiod", names)
		}

		env.apply(dyn, fmt.Sprintf(ipaYAML, "PERMISSIVE"))
		waitFor(t, "PERMISSIVE admitting outsider", 60*time.Second, func() string {
			rs := m.get("outsider", "--url", plain, "--count", "1", "--timeout", "2s")
			if len(rs) != 1 || rs[0].Error != "" || rs[0].Pod != "hello-1" {
				return fmt.Sprintf("outsider -> hello-1: %+v, want hello-1's answer", rs)
			}
			return ""
		})
		requireAll(t, "client-a -> hello-2 (node-b, tunnelled) under PERMISSIVE", m.get("client-a", "--url", "http://10.71.2.12:8080/", "--count", "3"), "hello-2")
	})
}

// ipaYAML is a PeerAuthentication of the hello pods with an mTLS mode.
const ipaYAML = `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: hello, namespace: apps}
spec:
  selector: {matchLabels: {app: hello}}
  mtls: {mode: %s}
`

// waitTunnelState waits until the state kmeshd wrote in dir satisfies ok,
// which returns what it still misses.
func waitTunnelState(t *testing.T, dir string, ok func(*tunnel.State) string) *tunnel.State {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	miss := "no state"
	for {
		s, err := tunnel.ReadState(dir)
		if err == nil {
			if miss = ok(s); miss == "" {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("tunnel state in %s: %s (%v) after 60s", dir, miss, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
