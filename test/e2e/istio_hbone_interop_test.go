//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// interopMesh is the hello mesh with a local CA in which hello-3 stands for
// a pod of a node that runs another HBONE implementation (a ztunnel node):
// node-b's kmeshd does not enroll it and node-b's tunnel does not listen in
// it, while node-a knows it as an HBONE workload of node-b. What listens on
// hello-3's 15008 is Istio's pkg/hbone server (tools/cmd/hbone-peer).
type interopMesh struct {
	*hboneMesh
	bin      string
	ca       identity.Source // the mesh's CA, as kmeshd and its tunnels have it
	caCert   []byte
	caKey    []byte
	hello3ID identity.Identity
}

func newInteropMesh(t *testing.T) *interopMesh {
	t.Helper()
	bin := hbonePeer(t)
	m := newMesh(t)
	cfgA := m.config("random", helloWorkloads)
	// node-b: hello-3 is a workload of the mesh but not one node-b's kmeshd
	// enrolls (no netns) or tunnels for; it takes HBONE from its own peer.
	cfgB := strings.Replace(cfgA, "  netns: "+m.pods["hello-3"].NetnsPath+"\n", "  tunnelProtocol: HBONE\n", 1)
	h := startHBONE(m, map[string]string{"node-a": cfgA, "node-b": cfgB})
	certPEM, err := os.ReadFile(h.caFlags[1])
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(h.caFlags[3])
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewLocalCA(certPEM, keyPEM, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	return &interopMesh{hboneMesh: h, bin: bin, ca: ca, caCert: certPEM, caKey: keyPEM,
		// The workloads of the generated config name no service account.
		hello3ID: identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "default"}}
}

// otherCA returns a Source of a CA the mesh does not trust, and one of the
// mesh's own CA key under another trust domain.
func (im *interopMesh) otherCAs(t *testing.T) (otherCA, otherTD identity.Source) {
	t.Helper()
	cert, key, err := identity.GenerateCA("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if otherCA, err = identity.NewLocalCA(cert, key, "cluster.local"); err != nil {
		t.Fatal(err)
	}
	if otherTD, err = identity.NewLocalCA(im.caCert, im.caKey, "example.org"); err != nil {
		t.Fatal(err)
	}
	return otherCA, otherTD
}

// peerServer runs Istio's HBONE server on hello-3's 15008 with the
// certificate of id from src, and waits until it listens.
func (im *interopMesh) peerServer(t *testing.T, src identity.Source, id identity.Identity) *testbed.Process {
	t.Helper()
	cert, key, _ := peerFiles(t, src, id)
	_, _, roots := peerFiles(t, im.ca, im.hello3ID) // it trusts the mesh's roots
	p, err := im.pods["hello-3"].Start(im.bin, "server", "--listen", "[::]:15008", "--cert", cert, "--key", key, "--roots", roots)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop() })
	select {
	case line := <-p.Lines():
		if !strings.HasPrefix(line, "ready ") {
			t.Fatalf("hbone-peer server: %q\n%s", line, p.Stderr())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("hbone-peer server not ready after 10s:\n%s", p.Stderr())
	}
	return p
}

// peerClient runs Istio's HBONE client in pod, through addr:15008 to
// authority, with the certificate of id from src; it returns what the
// application answered, or an error with the client's output.
func (im *interopMesh) peerClient(t *testing.T, pod string, src identity.Source, id identity.Identity, addr, authority, san string) (string, error) {
	t.Helper()
	cert, key, _ := peerFiles(t, src, id)
	_, _, roots := peerFiles(t, im.ca, im.hello3ID) // it trusts the mesh's roots
	p, err := im.pods[pod].Start(im.bin, "client", "--addr", addr, "--authority", authority, "--cert", cert, "--key", key,
		"--roots", roots, "--san", san, "--send", `GET / HTTP/1.0\r\n\r\n`)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for line := range p.Lines() {
		out.WriteString(line + "\n")
	}
	if err := p.Wait(); err != nil {
		return out.String(), fmt.Errorf("%w: %s", err, p.Stderr())
	}
	return out.String(), nil
}

// TestIstioHBONEInterop_IstioClientToKmeshTunnel: Istio's pkg/hbone client,
// in a pod no kmeshd enrolls (outsider, standing for a ztunnel node's
// pod), opens HBONE to hello-2's 15008, where node-b's `kmeshd tunnel`
// listens; the tunnel verifies the client's certificate, runs the policies
// and dials hello-2's application, whose answer comes back. A client
// certificate from another CA, or from the mesh's CA key under another
// trust domain, is refused before any CONNECT is answered.
func TestIstioHBONEInterop_IstioClientToKmeshTunnel(t *testing.T) {
	im := newInteropMesh(t)
	client := identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "outsider"}
	hello2 := "spiffe://cluster.local/ns/default/sa/default"

	for _, target := range []struct{ addr, authority string }{
		{"10.1.2.12:15008", "10.1.2.12:8080"},
		{"[fd00:1:2::12]:15008", "[fd00:1:2::12]:8080"},
	} {
		got, err := im.peerClient(t, "outsider", im.ca, client, target.addr, target.authority, hello2)
		if err != nil || !strings.Contains(got, "X-Pod: hello-2") {
			t.Fatalf("Istio client -> %s: %q, %v", target.authority, got, err)
		}
	}
	// The stream went through the product's inbound path: the destination
	// tunnel names the Istio client's certificate identity.
	im.waitTunnelLog(t, "node-b", `src=spiffe://cluster.local/ns/default/sa/outsider dst=10.1.2.12:8080`, 1)
	im.waitTunnelLog(t, "node-b", `src=spiffe://cluster.local/ns/default/sa/outsider dst=[fd00:1:2::12]:8080`, 1)

	// The authority must be the address dialed (ztunnel's rule), whatever
	// the certificate.
	if got, err := im.peerClient(t, "outsider", im.ca, client, "10.1.2.12:15008", "10.1.2.13:8080", hello2); err == nil || strings.Contains(got, "X-Pod") {
		t.Fatalf("CONNECT to another pod's address through hello-2 was carried: %q", got)
	}

	otherCA, otherTD := im.otherCAs(t)
	foreign := identity.Identity{TrustDomain: "example.org", Namespace: "default", ServiceAccount: "outsider"}
	for name, c := range map[string]struct {
		src identity.Source
		id  identity.Identity
	}{"another CA": {otherCA, client}, "another trust domain": {otherTD, foreign}} {
		got, err := im.peerClient(t, "outsider", c.src, c.id, "10.1.2.12:15008", "10.1.2.12:8080", hello2)
		if err == nil || strings.Contains(got, "X-Pod") {
			t.Fatalf("%s: a client certificate was accepted by kmeshd's tunnel: %q", name, got)
		}
	}
	// Refused by the handshake (TLS 1.3 tells the client only at its
	// first read), never reaching the CONNECT hook.
	im.waitTunnelLog(t, "node-b", `msg="hbone handshake failed"`, 2)
	if n := strings.Count(im.tunnels["node-b"].Stderr(), `msg="hbone inbound"`); n != 2 {
		t.Fatalf("node-b's tunnel carried %d Istio client streams, want the 2 of the mesh's CA", n)
	}
}

// TestIstioHBONEInterop_KmeshTunnelToIstioServer: the client pod on node-a
// connects to hello-3 as any application does; node-a's eBPF connect hook
// redirects it to node-a's `kmeshd tunnel`, which opens HBONE to hello-3's
// 15008, where Istio's pkg/hbone server (the remote node's HBONE peer)
// terminates it and dials hello-3's application. A server certificate from
// another CA, or of another trust domain, is refused by our client: the
// application's connection is reset, never carried.
func TestIstioHBONEInterop_KmeshTunnelToIstioServer(t *testing.T) {
	im := newInteropMesh(t)
	srv := im.peerServer(t, im.ca, im.hello3ID)
	cpt := startCapture(t, im.bed.UnderlayNetns())

	rs := im.get("client", "--url", "http://10.1.2.13:8080/", "--count", "3")
	requireAll(t, "client -> hello-3 through Istio's HBONE server", rs, "hello-3")
	if rs[0].Peer != "10.1.2.13:8080" {
		t.Errorf("getpeername in the client: %s, want 10.1.2.13:8080", rs[0].Peer)
	}
	requireAll(t, "client -> hello-3 by IPv6", im.get("client", "--url", "http://[fd00:1:2::13]:8080/", "--count", "2"), "hello-3")
	im.waitTunnelLog(t, "node-a", `dst=10.1.2.13:8080 peer_identity=spiffe://cluster.local/ns/default/sa/default`, 3)
	var tunnelSYNs int
	for _, p := range cpt.stop() {
		if p.dst.Addr().String() == "10.1.2.13" || p.dst.Addr().String() == "fd00:1:2::13" {
			if p.dst.Port() != 15008 {
				t.Fatalf("plaintext segment to hello-3 on the underlay: %s -> %s", p.src, p.dst)
			}
			if p.flags&0x12 == 0x02 {
				tunnelSYNs++
			}
		}
	}
	if tunnelSYNs == 0 {
		t.Fatal("no HBONE connection to hello-3:15008 on the underlay")
	}
	srv.Stop()

	otherCA, otherTD := im.otherCAs(t)
	for name, c := range map[string]struct {
		src identity.Source
		id  identity.Identity
	}{
		"another CA":           {otherCA, im.hello3ID},
		"another trust domain": {otherTD, identity.Identity{TrustDomain: "example.org", Namespace: "default", ServiceAccount: "default"}},
	} {
		s := im.peerServer(t, c.src, c.id)
		for _, r := range im.get("client", "--url", "http://10.1.2.13:8080/", "--count", "2", "--timeout", "3s") {
			if r.Error == "" {
				t.Fatalf("%s: node-a's tunnel carried a connection to a server certificate it must refuse: %+v", name, r)
			}
		}
		s.Stop()
	}
	if n := strings.Count(im.tunnels["node-a"].Stderr(), `msg="tunnel refused; connection reset"`); n < 4 {
		t.Fatalf("node-a's tunnel refused %d connections, want 4:\n%s", n, im.tunnels["node-a"].Stderr())
	}
}

// waitTunnelLog waits until node's tunnel has logged s n times.
func (im *interopMesh) waitTunnelLog(t *testing.T, node, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Count(im.tunnels[node].Stderr(), s) >= n {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("tunnel %s: no %d× %q in its log:\n%s", node, n, s, im.tunnels[node].Stderr())
}
