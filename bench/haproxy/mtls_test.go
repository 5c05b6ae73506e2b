package haproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/identity"
)

const suite = "TLS_AES_128_GCM_SHA256"

func TestConfigMTLS(t *testing.T) {
	m := MTLS{Cert: "/tmp/x/client.pem", CA: "/tmp/x/ca.pem", Ciphersuite: suite}
	client := ConfigMTLSClient(frontends[1:], 2, m)
	server := ConfigMTLSServer([]Listener{{Name: "http", Listen: netip.MustParseAddrPort("10.1.2.11:15009"),
		Target: netip.MustParseAddrPort("127.0.0.1:8080")}}, 1, m)
	for _, tc := range []struct {
		name, cfg string
		want      []string
	}{
		{"client", client, []string{
			"nbthread 2\n", "mode tcp\n",
			"ssl-default-server-options ssl-min-ver TLSv1.3\n", "ssl-default-server-ciphersuites TLS_AES_128_GCM_SHA256\n",
			"frontend fe-remote-80\n    bind 127.0.0.1:15002\n",
			"    server s0 10.1.2.11:8080 ssl verify required ca-file /tmp/x/ca.pem crt /tmp/x/client.pem\n",
			"    server s1 10.1.2.12:8080 ssl verify required ca-file /tmp/x/ca.pem crt /tmp/x/client.pem\n",
		}},
		{"server", server, []string{
			"nbthread 1\n", "mode tcp\n",
			"ssl-default-bind-options ssl-min-ver TLSv1.3\n", "ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256\n",
			"frontend fe-http\n    bind 10.1.2.11:15009 ssl crt /tmp/x/client.pem ca-file /tmp/x/ca.pem verify required\n",
			"backend be-http\n    server s0 127.0.0.1:8080\n",
		}},
	} {
		for _, w := range tc.want {
			if !strings.Contains(tc.cfg, w) {
				t.Errorf("%s: missing %q in\n%s", tc.name, w, tc.cfg)
			}
		}
		// No SNI: HBONE sends none, and the server end has one certificate.
		for _, absent := range []string{"sni", "daemon", "chroot", "user "} {
			if strings.Contains(tc.cfg, absent) {
				t.Errorf("%s: config has %q:\n%s", tc.name, absent, tc.cfg)
			}
		}
	}
}

// pki is a local CA of the kind kmesh-mtls runs with, and files of it.
type pki struct {
	dir    string
	caFile string
	src    identity.Source
	roots  *x509.CertPool
}

func newPKI(t *testing.T, dir string) *pki {
	t.Helper()
	cert, key, err := identity.GenerateCA("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	src, err := identity.NewLocalCA(cert, key, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{dir: dir, caFile: filepath.Join(dir, "ca.pem"), src: src, roots: x509.NewCertPool()}
	p.roots.AppendCertsFromPEM(cert)
	if err := os.WriteFile(p.caFile, cert, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// leaf issues a workload certificate for sa, and writes it as a crt file.
func (p *pki) leaf(t *testing.T, sa string) (*tls.Certificate, string) {
	t.Helper()
	cert, err := p.src.Certificate(context.Background(), identity.OfWorkload("cluster.local", "default", sa))
	if err != nil {
		t.Fatal(err)
	}
	data, err := CertPEM(cert)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(p.dir, sa+".pem")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, file
}

// startHAProxy runs haproxy -f cfg until the test ends, and waits for
// addr to accept.
func startHAProxy(t *testing.T, cfg string, addr netip.AddrPort) {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		// make test and make bench install it; CI must not pass untested.
		if os.Getenv("KMESH_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("haproxy not installed (make test installs it), and KMESH_REQUIRE_PRIVILEGED=1")
		}
		t.Skip("haproxy not installed (make test and make bench install it)")
	}
	file := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "-db", "-f", file)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.Dial("tcp", addr.String())
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy not listening on %s: %v: %s", addr, err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freePort is a loopback port nobody listens on right now.
func freePort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// serve echoes every connection ln accepts until the test ends, leaving
// the last TLS connection's state in states (capacity 1) after its
// handshake.
func serve(t *testing.T, ln net.Listener, states chan tls.ConnectionState) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if tc, ok := c.(*tls.Conn); ok {
					if tc.Handshake() != nil {
						return
					}
					// The last connection's state: the readiness probe's
					// handshake comes first.
					select {
					case <-states:
					default:
					}
					states <- tc.ConnectionState()
				}
				io.Copy(c, c)
			}()
		}
	}()
}

// echoes says whether a request written to c comes back.
func echoes(c net.Conn) bool {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := []byte("ping through the hop")
	if _, err := c.Write(msg); err != nil {
		return false
	}
	got := make([]byte, len(msg))
	_, err := io.ReadFull(c, got)
	return err == nil && bytes.Equal(got, msg)
}

// TestMTLSHop runs both ends on the loopback: the bytes pass; the server
// end speaks TLS 1.3 with the pinned suite and refuses a client without a
// certificate of its CA; the client end presents its certificate and
// refuses a server of another CA.
func TestMTLSHop(t *testing.T) {
	dir := t.TempDir()
	ca := newPKI(t, dir)
	_, serverCrt := ca.leaf(t, "server")
	clientCert, clientCrt := ca.leaf(t, "client")
	other := newPKI(t, t.TempDir())
	otherCert, _ := other.leaf(t, "client")

	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serve(t, app, nil)
	tlsPort, plain := freePort(t), freePort(t)
	startHAProxy(t, ConfigMTLSServer([]Listener{{Name: "app", Listen: tlsPort, Target: netip.MustParseAddrPort(app.Addr().String())}},
		1, MTLS{Cert: serverCrt, CA: ca.caFile, Ciphersuite: suite}), tlsPort)
	startHAProxy(t, ConfigMTLSClient([]Frontend{{Name: "app", Listen: plain.Port(), Backends: []netip.AddrPort{tlsPort}}},
		1, MTLS{Cert: clientCrt, CA: ca.caFile, Ciphersuite: suite}), plain)

	t.Run("through both ends", func(t *testing.T) {
		c, err := net.Dial("tcp", plain.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if !echoes(c) {
			t.Error("no echo through both HAProxys")
		}
	})

	dialServerEnd := func(cert *tls.Certificate, maxVersion uint16) (*tls.Conn, error) {
		cfg := &tls.Config{RootCAs: ca.roots, ServerName: "unused", MaxVersion: maxVersion,
			// The server's certificate names a SPIFFE ID, no host.
			InsecureSkipVerify: true, VerifyConnection: func(cs tls.ConnectionState) error {
				_, err := identity.Verify(cs.PeerCertificates, ca.roots, time.Now())
				return err
			}}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		return tls.Dial("tcp", tlsPort.String(), cfg)
	}
	t.Run("server end: TLS 1.3, pinned suite, client certificate of the CA", func(t *testing.T) {
		c, err := dialServerEnd(clientCert, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if !echoes(c) {
			t.Fatal("no echo with the CA's client certificate")
		}
		cs := c.ConnectionState()
		if cs.Version != tls.VersionTLS13 || tls.CipherSuiteName(cs.CipherSuite) != suite {
			t.Errorf("negotiated %s %s, want TLS 1.3 %s", tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite), suite)
		}
	})
	for _, tc := range []struct {
		name       string
		cert       *tls.Certificate
		maxVersion uint16
	}{
		{"no client certificate", nil, 0},
		{"client certificate of another CA", otherCert, 0},
		{"TLS 1.2", clientCert, tls.VersionTLS12},
	} {
		t.Run("server end refuses "+tc.name, func(t *testing.T) {
			c, err := dialServerEnd(tc.cert, tc.maxVersion)
			if err != nil {
				return // refused in the handshake
			}
			defer c.Close()
			// TLS 1.3 checks the client's certificate after the client's
			// handshake is done: the refusal comes on the first read.
			if echoes(c) {
				t.Error("the server end passed bytes")
			}
		})
	}

	// The client end towards Go TLS servers: one of the CA, which sees the
	// client's certificate, and one of another CA, which it must refuse.
	for _, tc := range []struct {
		name   string
		cert   *tls.Certificate
		passes bool
	}{
		{"presents its certificate to a server of the CA", clientCert, true},
		{"refuses a server of another CA", otherCert, false},
	} {
		t.Run("client end "+tc.name, func(t *testing.T) {
			states := make(chan tls.ConnectionState, 1)
			ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*tc.cert},
				ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.roots})
			if err != nil {
				t.Fatal(err)
			}
			serve(t, ln, states)
			front := freePort(t)
			startHAProxy(t, ConfigMTLSClient([]Frontend{{Name: "go", Listen: front.Port(),
				Backends: []netip.AddrPort{netip.MustParseAddrPort(ln.Addr().String())}}},
				1, MTLS{Cert: clientCrt, CA: ca.caFile, Ciphersuite: suite}), front)
			c, err := net.Dial("tcp", front.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := echoes(c); got != tc.passes {
				t.Fatalf("echo %v, want %v", got, tc.passes)
			}
			if !tc.passes {
				return
			}
			cs := <-states
			id, err := identity.LeafIdentity(cs.PeerCertificates[0])
			if err != nil || id.ServiceAccount != "client" {
				t.Errorf("server saw client %v (%v)", id, err)
			}
			if cs.Version != tls.VersionTLS13 || tls.CipherSuiteName(cs.CipherSuite) != suite || cs.ServerName != "" {
				t.Errorf("negotiated %s %s SNI %q, want TLS 1.3 %s and no SNI", tls.VersionName(cs.Version),
					tls.CipherSuiteName(cs.CipherSuite), cs.ServerName, suite)
			}
		})
	}
}
