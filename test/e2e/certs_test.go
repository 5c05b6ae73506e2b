//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// writeCA writes a fresh CA's certificate and key into the mesh's dir.
func (m *mesh) writeCA(name string) (certPath, keyPath string, certPEM []byte) {
	m.t.Helper()
	cert, key, err := identity.GenerateCA("cluster.local", time.Hour)
	if err != nil {
		m.t.Fatal(err)
	}
	certPath, keyPath = configPath(m, name+"-cert.pem"), configPath(m, name+"-key.pem")
	if err := os.WriteFile(certPath, cert, 0o644); err != nil {
		m.t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, key, 0o600); err != nil {
		m.t.Fatal(err)
	}
	return certPath, keyPath, cert
}

// getCerts runs kmeshctl get certs -o json against k.
func getCerts(t *testing.T, ctl string, k *kmeshd) api.Certs {
	t.Helper()
	out, err := execOutput(ctl, "get", "certs", "-o", "json", "--admin-address", k.admin)
	if err != nil {
		t.Fatalf("kmeshctl get certs: %v\n%s", err, out)
	}
	var c api.Certs
	if err := json.Unmarshal([]byte(out), &c); err != nil {
		t.Fatalf("kmeshctl get certs: %v\n%s", err, out)
	}
	return c
}

// waitCerts polls kmeshctl get certs until ok says nothing is missing.
func waitCerts(t *testing.T, ctl string, k *kmeshd, timeout time.Duration, ok func(api.Certs) string) api.Certs {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := getCerts(t, ctl, k)
		miss := ok(c)
		if miss == "" {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s\n%+v\n%s", timeout, miss, c, k.proc.Stderr())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestCertsLocalCA: two kmeshd share a local CA given as --ca-cert and
// --ca-key. Each holds one certificate per identity of its node's
// workloads, signed by that CA, listed by kmeshctl get certs, and renewed
// by half of --cert-ttl.
func TestCertsLocalCA(t *testing.T) {
	m := newMesh(t)
	ctl, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshctl")
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath, caPEM := m.writeCA("ca")
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, m.config("random", helloWorkloads))
	flags := []string{"--ca-cert", certPath, "--ca-key", keyPath, "--cert-ttl", "6s"}
	a := m.startKmeshdBin(m.kmeshd, "node-a", cfg, flags...)
	b := m.startKmeshdBin(m.kmeshd, "node-b", cfg, flags...)

	roots, err := identity.ParseCertificates(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	const sa = "spiffe://cluster.local/ns/default/sa/default"
	valid := func(c api.Certs) string {
		if len(c.Certificates) != 1 || c.Certificates[0].Identity != sa || c.Certificates[0].State != "valid" {
			return "want one valid certificate for " + sa
		}
		return ""
	}
	for _, k := range []*kmeshd{a, b} {
		c := waitCerts(t, ctl, k, 10*time.Second, valid)
		got := c.Certificates[0]
		if got.Workloads != 2 {
			t.Errorf("%s: %d workloads with %s, want 2", k.node.Name, got.Workloads, sa)
		}
		if d := got.NotAfter.Sub(got.NotBefore); d < 6*time.Second || d > 7*time.Second {
			t.Errorf("%s: lifetime %v, want --cert-ttl 6s (+ backdating)", k.node.Name, d)
		}
		if len(c.Roots) != 1 || c.Roots[0].Serial != roots[0].SerialNumber.Text(16) || c.TrustDomain != "cluster.local" {
			t.Errorf("%s: roots %+v, trust domain %q; want the CA of --ca-cert", k.node.Name, c.Roots, c.TrustDomain)
		}
		if !strings.HasPrefix(c.CA, "local CA ") {
			t.Errorf("%s: ca %q", k.node.Name, c.CA)
		}
	}

	// Renewed by half-life (40-50 %, jittered): within the 6 s lifetime, a new serial, and the
	// certificate listed is never past its expiry.
	first := getCerts(t, ctl, a).Certificates[0]
	waitCerts(t, ctl, a, 8*time.Second, func(c api.Certs) string {
		if miss := valid(c); miss != "" {
			return miss
		}
		cur := c.Certificates[0]
		if time.Now().After(cur.NotAfter) {
			t.Fatalf("listed certificate expired at %v", cur.NotAfter)
		}
		if cur.Serial == first.Serial {
			return "not renewed yet"
		}
		return ""
	})

	// The table lists the identity and the root.
	out, err := execOutput(ctl, "get", "certs", "--admin-address", b.admin)
	if err != nil || !strings.Contains(out, sa) || !strings.Contains(out, roots[0].SerialNumber.Text(16)) {
		t.Fatalf("kmeshctl get certs: %v\n%s", err, out)
	}
}

// TestCertsFlagsRefused: half a CA, or both CAs, stop kmeshd at start with
// the flag named; a kmeshd without a CA answers /certs with 404 and says
// how to configure one.
func TestCertsFlagsRefused(t *testing.T) {
	m := newMesh(t)
	certPath, keyPath, _ := m.writeCA("ca")
	for _, tc := range []struct {
		name  string
		flags []string
		want  string
	}{
		{"cert without key", []string{"--ca-cert", certPath}, "--ca-cert and --ca-key go together"},
		{"key as cert", []string{"--ca-cert", keyPath, "--ca-key", keyPath}, "--ca-cert " + keyPath},
		{"two CAs", []string{"--ca-cert", certPath, "--ca-key", keyPath, "--ca-address", "127.0.0.1:15012"}, "--ca-address excludes"},
		{"missing file", []string{"--ca-cert", certPath + ".nope", "--ca-key", keyPath}, "--ca-cert: open"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := execOutput(m.kmeshd, append([]string{"--node", "node-a", "--bpf-dir", t.TempDir()}, tc.flags...)...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Fatalf("kmeshd %v: err %v, output %q, want %q", tc.flags, err, out, tc.want)
			}
		})
	}

	ctl, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshctl")
	if err != nil {
		t.Fatal(err)
	}
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, m.config("random", helloWorkloads))
	k := m.startKmeshd("node-a", cfg)
	out, err := execOutput(ctl, "get", "certs", "--admin-address", k.admin)
	if err == nil || !strings.Contains(out, "no CA configured") {
		t.Fatalf("kmeshctl get certs without a CA: err %v\n%s", err, out)
	}
}
