//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/kmesh-go/kmesh/internal/identity"
)

// TestHBONE_CertificatesRotateUnderTraffic: with one-minute certificates
// (--cert-ttl 1m), node-a's client sends requests to hello-2 on node-b
// for 80 s, a new connection per request and one kept-alive connection,
// all tunnelled. hello-2's serving certificate (read by a TLS handshake
// to its 15008 every second) changes serial during the run, each one is
// replaced well before it expires, and not one request fails; the
// kept-alive connection is never replaced.
func TestHBONE_CertificatesRotateUnderTraffic(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 80 s of traffic")
	}
	m := newMesh(t)
	cfg := m.config("random", helloWorkloads)
	h := startHBONE(m, map[string]string{"node-a": cfg, "node-b": cfg}, "--cert-ttl", "1m")
	probe := newCertProbe(t, h, h.nodes["node-a"].NetnsPath, "10.1.2.12:15008")

	url := []string{"--url", "http://10.1.2.12:8080/", "--interval", "10ms"}
	perConn := h.startTraffic("new-connection", url...)
	keepalive := h.startTraffic("keep-alive", append(url, "--keepalive")...)
	type seen struct {
		at   time.Time
		leaf *x509.Certificate
	}
	var serving []seen // one per serial, in order
	start := time.Now()
	for time.Since(start) < 80*time.Second {
		leaf, err := probe.serving()
		if err != nil {
			t.Fatalf("handshake with hello-2's 15008 after %v: %v", time.Since(start).Round(time.Second), err)
		}
		now := time.Now()
		if left := leaf.NotAfter.Sub(now); left < leaf.NotAfter.Sub(leaf.NotBefore)/4 {
			t.Errorf("after %v hello-2 served serial %s with %v left of %v: not renewed well before expiry",
				now.Sub(start).Round(time.Second), leaf.SerialNumber.Text(16), left.Round(time.Second), leaf.NotAfter.Sub(leaf.NotBefore))
		}
		if len(serving) == 0 || serving[len(serving)-1].leaf.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
			serving = append(serving, seen{now, leaf})
			t.Logf("after %v: hello-2 serves serial %s, not before %s, not after %s", now.Sub(start).Round(time.Second),
				leaf.SerialNumber.Text(16), leaf.NotBefore.Format(time.TimeOnly), leaf.NotAfter.Format(time.TimeOnly))
		}
		time.Sleep(time.Second)
	}
	if len(serving) < 2 {
		t.Fatalf("hello-2's serving certificate never changed in 80 s of one-minute certificates (serial %s)", serving[0].leaf.SerialNumber.Text(16))
	}
	for _, tr := range []*traffic{perConn, keepalive} {
		rs, rate := tr.stop(t)
		if len(rs) < 100 {
			t.Fatalf("%s: only %d requests", tr.name, len(rs))
		}
		conns := map[int]bool{}
		var failed int
		for _, r := range rs {
			if r.Error != "" || r.Pod != "hello-2" {
				failed++
				t.Errorf("%s: request %d: %+v", tr.name, r.Seq, r)
			}
			conns[r.Conn] = true
		}
		if failed > 0 {
			t.Fatalf("%s: %d of %d requests failed (%v)", tr.name, failed, len(rs), counts(rs))
		}
		if tr.name == "keep-alive" && len(conns) != 1 {
			t.Fatalf("kept-alive client used %d connections, want 1 (it was reset)", len(conns))
		}
		t.Logf("%s: %d requests, %.0f/s, %d connections, 0 failed", tr.name, len(rs), rate, len(conns))
	}
	// The client side renewed too, and new tunnel connections were made
	// with the renewed certificates while traffic ran.
	logA := h.tunnels["node-a"].Stderr()
	if n := strings.Count(logA, `msg="certificate issued" node=node-a component=tunnel component=identity identity=spiffe://cluster.local/ns/default/sa/default serial=`); n < 2 {
		t.Errorf("node-a's tunnel issued the client's certificate %d times in 80 s, want at least 2", n)
	}
	if n := strings.Count(logA, `msg="hbone connection opened"`); n < 2 {
		t.Errorf("node-a's tunnel opened %d HTTP/2 connections to hello-2, want a new one after the first certificate expired", n)
	} else {
		t.Logf("node-a's tunnel opened %d HTTP/2 connections; hello-2 served %d certificates", n, len(serving))
	}
}

// certProbe makes TLS handshakes with an HBONE listener, as a peer with a
// certificate of the mesh's CA, from a network namespace outside the mesh
// (no kmesh program acts on the test process).
type certProbe struct {
	t     *testing.T
	netns string
	addr  string
	cfg   *tls.Config
}

func newCertProbe(t *testing.T, h *hboneMesh, nsPath, addr string) *certProbe {
	t.Helper()
	certPEM, err := os.ReadFile(h.caCert)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(h.caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewLocalCA(certPEM, keyPEM, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	probeID := identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "probe"}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return ca.Certificate(context.Background(), probeID)
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := identity.VerifyRaw(raw, ca.Roots(), "cluster.local", time.Now())
			return err
		},
	}
	return &certProbe{t: t, netns: nsPath, addr: addr, cfg: cfg}
}

// serving returns the leaf certificate the listener presents now.
func (p *certProbe) serving() (*x509.Certificate, error) {
	raw, err := dialFrom(p.netns, p.addr)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, p.cfg)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		return nil, err
	}
	return c.ConnectionState().PeerCertificates[0], nil
}

// dialFrom opens a TCP connection from the network namespace at nsPath.
func dialFrom(nsPath, addr string) (net.Conn, error) {
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	c, derr := net.DialTimeout("tcp", addr, 5*time.Second)
	if err := netns.Set(orig); err != nil {
		// The thread stays locked and dies with the goroutine.
		if c != nil {
			c.Close()
		}
		return nil, err
	}
	runtime.UnlockOSThread()
	return c, derr
}
