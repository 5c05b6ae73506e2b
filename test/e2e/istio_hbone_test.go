//go:build e2e

package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/identity"
)

// istioLogLine is one line of Istio's log (timestamp, tab, level, tab).
var istioLogLine = regexp.MustCompile(`\d{4}-\d\d-\d\dT[0-9:.]+Z\t[a-z]+\t[^\n]*\n?`)

// hbonePeer returns tools' hbone-peer (Istio's Go HBONE client and server),
// or skips (fails under KMESH_REQUIRE_PRIVILEGED=1) when `make tools` has
// not built it.
func hbonePeer(t *testing.T) string {
	t.Helper()
	p := filepath.Join(toolsDir(), "hbone-peer")
	if _, err := os.Stat(p); err != nil {
		msg := fmt.Sprintf("istio tier: %v; build the tools with `make tools`", err)
		if os.Getenv("KMESH_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// peerFiles writes the certificate (chain), key and roots of id from src
// for hbone-peer, and returns their paths.
func peerFiles(t *testing.T, src identity.Source, id identity.Identity) (cert, key, roots string) {
	t.Helper()
	c, err := src.Certificate(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var chain []byte
	for _, der := range c.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	var rootPEM []byte
	for _, r := range src.(*identity.Cache).RootCerts() {
		rootPEM = append(rootPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	cert, key, roots = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "roots.pem")
	for p, b := range map[string][]byte{cert: chain, key: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), roots: rootPEM} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return cert, key, roots
}

// TestIstioHBONEPeer checks the independent peer the interop tests use:
// Istio's pkg/hbone client reaches an application through Istio's pkg/hbone
// server with certificates of our local CA, and the server refuses a
// client certificate from another CA or another trust domain. The interop
// tests through kmeshd and its tunnel are in istio_hbone_interop_test.go.
func TestIstioHBONEPeer(t *testing.T) {
	bin := hbonePeer(t)
	caCert, caKey, err := identity.GenerateCA("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	mesh, err := identity.NewLocalCA(caCert, caKey, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	server := identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "hello"}
	client := identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "client"}

	// The application: answers one line and closes.
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				fmt.Fprintf(c, "echo %s", buf[:n])
			}()
		}
	}()

	sCert, sKey, sRoots := peerFiles(t, mesh, server)
	port := freePort(t)
	srv := exec.Command(bin, "server", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--cert", sCert, "--key", sKey, "--roots", sRoots)
	out, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	line := make([]byte, 64)
	if n, err := out.Read(line); err != nil || !strings.HasPrefix(string(line[:n]), "ready ") {
		t.Fatalf("hbone-peer server: %q %v", line[:n], err)
	}
	go io.Copy(io.Discard, out)

	dial := func(src identity.Source, id identity.Identity) (string, error) {
		cert, key, _ := peerFiles(t, src, id)
		// The client trusts the mesh's roots whatever its own CA.
		_, _, meshRoots := peerFiles(t, mesh, client)
		b, err := exec.Command(bin, "client", "--addr", fmt.Sprintf("127.0.0.1:%d", port), "--authority", app.Addr().String(),
			"--cert", cert, "--key", key, "--roots", meshRoots, "--san", server.String(), "--send", "hi").CombinedOutput()
		return string(b), err
	}
	// Istio's log lines share the output, before the echo and after it
	// ("stream closed" may land right behind it, on its line).
	if got, err := dial(mesh, client); err != nil || istioLogLine.ReplaceAllString(got, "") != "echo hi" {
		t.Fatalf("same CA: %q, %v", got, err)
	}
	otherCert, otherKey, err := identity.GenerateCA("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := identity.NewLocalCA(otherCert, otherKey, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := dial(other, client); err == nil || strings.Contains(got, "echo") {
		t.Fatalf("a certificate of another CA was accepted: %q", got)
	}
	foreign, err := identity.NewLocalCA(caCert, caKey, "example.org")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := dial(foreign, identity.Identity{TrustDomain: "example.org", Namespace: "default", ServiceAccount: "client"}); err == nil || strings.Contains(got, "echo") {
		t.Fatalf("a certificate of another trust domain was accepted: %q", got)
	}
}
