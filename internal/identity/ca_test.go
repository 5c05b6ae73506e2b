package identity_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/identity"
)

func newCA(t *testing.T, td string) (cert, key []byte) {
	t.Helper()
	cert, key, err := identity.GenerateCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func newSource(t *testing.T, td string, opts ...identity.Option) identity.Source {
	t.Helper()
	cert, key := newCA(t, td)
	src, err := identity.NewLocalCA(cert, key, td, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

var sleep = identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "sleep"}

func TestLocalCA_IssuesSPIFFECertificate(t *testing.T) {
	src := newSource(t, "cluster.local", identity.WithCertTTL(10*time.Minute))
	cert, err := src.Certificate(context.Background(), sleep)
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != sleep.String() {
		t.Fatalf("URI SANs = %v, want %s", leaf.URIs, sleep)
	}
	if leaf.PublicKeyAlgorithm != x509.ECDSA {
		t.Fatalf("key algorithm %v, want ECDSA", leaf.PublicKeyAlgorithm)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got < 10*time.Minute || got > 11*time.Minute {
		t.Fatalf("lifetime %v, want 10m plus a backdating of at most 1m", got)
	}
	if !leaf.NotAfter.After(time.Now().Add(9 * time.Minute)) {
		t.Fatalf("expires %v, too early", leaf.NotAfter)
	}
	// The chain sent to peers ends before the self-signed root.
	if len(cert.Certificate) != 1 {
		t.Fatalf("chain of %d certificates, want the leaf only", len(cert.Certificate))
	}
	id, err := identity.VerifyRaw(cert.Certificate, src.Roots(), "cluster.local", time.Now())
	if err != nil || id != sleep {
		t.Fatalf("VerifyRaw = %v, %v", id, err)
	}
	again, err := src.Certificate(context.Background(), sleep)
	if err != nil || again != cert {
		t.Fatalf("second call returned a different certificate (%v)", err)
	}
}

func TestLocalCA_RefusesOtherTrustDomain(t *testing.T) {
	src := newSource(t, "cluster.local")
	other := sleep
	other.TrustDomain = "example.org"
	if _, err := src.Certificate(context.Background(), other); err == nil || !strings.Contains(err.Error(), "trust domain") {
		t.Fatalf("err = %v, want a trust domain error", err)
	}
}

// A handshake as HBONE does it: both sides present a workload certificate
// and check the peer's chain and SPIFFE identity, not a DNS name.
func TestLocalCA_MutualTLS(t *testing.T) {
	src := newSource(t, "cluster.local")
	otherCA := newSource(t, "cluster.local")
	otherTD := newSource(t, "example.org")
	server := identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "httpbin"}

	for _, tc := range []struct {
		name    string
		client  identity.Source
		clients identity.Identity
		ok      bool
	}{
		{"same CA", src, sleep, true},
		{"another CA", otherCA, sleep, false},
		{"another trust domain", otherTD, identity.Identity{TrustDomain: "example.org", Namespace: "default", ServiceAccount: "sleep"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peer, err := handshake(t, src, server, tc.client, tc.clients)
			if tc.ok && (err != nil || peer != tc.clients) {
				t.Fatalf("handshake: peer %v, err %v", peer, err)
			}
			if !tc.ok && err == nil {
				t.Fatalf("handshake accepted %v", peer)
			}
		})
	}
}

func handshake(t *testing.T, srv identity.Source, srvID identity.Identity, cli identity.Source, cliID identity.Identity) (identity.Identity, error) {
	t.Helper()
	verify := func(src identity.Source, got *identity.Identity) func([][]byte, [][]*x509.Certificate) error {
		return func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, err := identity.VerifyRaw(raw, src.Roots(), src.TrustDomain(), time.Now())
			*got = id
			return err
		}
	}
	var seenByServer, seenByClient identity.Identity
	sc, cc := tlsPipe()
	srvConf := &tls.Config{
		MinVersion: tls.VersionTLS13, ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return srv.Certificate(context.Background(), srvID)
		},
		VerifyPeerCertificate: verify(srv, &seenByServer),
	}
	cliConf := &tls.Config{
		MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, // VerifyPeerCertificate checks the chain
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cli.Certificate(context.Background(), cliID)
		},
		VerifyPeerCertificate: verify(cli, &seenByClient),
	}
	errs := make(chan error, 1)
	go func() { errs <- tls.Server(sc, srvConf).Handshake(); sc.Close() }()
	cerr := tls.Client(cc, cliConf).Handshake()
	cc.Close()
	serr := <-errs
	if serr != nil {
		return seenByServer, serr
	}
	return seenByServer, cerr
}

func TestNewLocalCA_Errors(t *testing.T) {
	cert, key := newCA(t, "cluster.local")
	_, otherKey := newCA(t, "cluster.local")
	leafish := func() []byte {
		src, err := identity.NewLocalCA(cert, key, "cluster.local")
		if err != nil {
			t.Fatal(err)
		}
		c, err := src.Certificate(context.Background(), sleep)
		if err != nil {
			t.Fatal(err)
		}
		return pemOf(c.Leaf)
	}()
	for _, tc := range []struct {
		name      string
		cert, key []byte
		td        string
		want      string
	}{
		{"key of another CA", cert, otherKey, "cluster.local", "key does not match"},
		{"key in the cert file", key, key, "cluster.local", "want CERTIFICATE"},
		{"no key", cert, cert, "cluster.local", "no PEM private key"},
		{"not a CA", leafish, key, "cluster.local", "not a CA"},
		{"empty", nil, key, "cluster.local", "no PEM CERTIFICATE"},
		{"no trust domain", cert, key, "", "empty trust domain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := identity.NewLocalCA(tc.cert, tc.key, tc.td)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// A root rotation: nodes still on the old root and nodes on the new one
// must talk while both roots are in every node's bundle.
func TestLocalCA_RootRotation(t *testing.T) {
	oldCert, oldKey := newCA(t, "cluster.local")
	newCert, newKey := newCA(t, "cluster.local")
	bundle := append(append([]byte{}, oldCert...), newCert...)
	oldNode, err := identity.NewLocalCA(oldCert, oldKey, "cluster.local", identity.WithRoots(bundle))
	if err != nil {
		t.Fatal(err)
	}
	newNode, err := identity.NewLocalCA(newCert, newKey, "cluster.local", identity.WithRoots(bundle))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(oldNode.(*identity.Cache).RootCerts()); n != 2 {
		t.Fatalf("%d roots, want 2", n)
	}
	server := identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "httpbin"}
	if _, err := handshake(t, oldNode, server, newNode, sleep); err != nil {
		t.Fatalf("old server, new client: %v", err)
	}
	if _, err := handshake(t, newNode, server, oldNode, sleep); err != nil {
		t.Fatalf("new server, old client: %v", err)
	}
	// Without the bundle, the new root is refused.
	lone, err := identity.NewLocalCA(oldCert, oldKey, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := handshake(t, lone, server, newNode, sleep); err == nil {
		t.Fatal("a node without the new root accepted it")
	}
}

func TestLocalCA_Intermediate(t *testing.T) {
	rootCert, rootKey := newCA(t, "cluster.local")
	interCert, interKey, err := identity.GenerateIntermediateCA("cluster.local", time.Hour, rootCert, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	src, err := identity.NewLocalCA(interCert, interKey, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	c, err := src.Certificate(context.Background(), sleep)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Certificate) != 2 {
		t.Fatalf("chain of %d, want leaf and intermediate", len(c.Certificate))
	}
	rootOnly, err := identity.NewLocalCA(rootCert, rootKey, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if id, err := identity.VerifyRaw(c.Certificate, rootOnly.Roots(), "cluster.local", time.Now()); err != nil || id != sleep {
		t.Fatalf("a node with the root only: %v, %v", id, err)
	}
	// The intermediate alone, without its root, is refused at start.
	if _, err := identity.NewLocalCA(interCert[:len(interCert)-len(rootCert)], interKey, "cluster.local"); err == nil ||
		!strings.Contains(err.Error(), "no root given") {
		t.Fatalf("err = %v, want a missing root error", err)
	}
}
