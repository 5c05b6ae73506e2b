package haproxy

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/netip"
	"strings"
)

// The benchmark's reference for two tunnel hops (haproxy-mtls): HAProxy at
// both ends of the cross-node path with mutual TLS 1.3 between them, so
// that each byte crosses the same sockets and processes as in kmesh-mtls,
// HAProxy in place of `kmeshd tunnel`. The client end is Config's hop in
// the client pod with TLS on its server lines; the server end listens in
// the server pod and forwards over the pod's loopback, as the destination
// tunnel dials the application. No HTTP/2 inside: a TLS port per target
// port, where HBONE names the target in a CONNECT.

// MTLS is one end's certificate and trust.
type MTLS struct {
	Cert string // PEM file: the certificate chain, leaf first, then its private key
	CA   string // PEM file: the roots the peer's certificate must chain to
	// Ciphersuite is the one TLS 1.3 suite offered and accepted, so both
	// ends run the cipher the tunnels negotiate (Go with AES-NI:
	// TLS_AES_128_GCM_SHA256).
	Ciphersuite string
}

// Listener is one TLS port of the server end and where it forwards.
type Listener struct {
	Name   string
	Listen netip.AddrPort // the TLS port, on the server pod's address
	Target netip.AddrPort // the application, on the pod's loopback
}

// ConfigMTLSClient is Config with TLS 1.3 to every backend: the client
// end presents m.Cert and requires a server certificate that chains to
// m.CA. It sends no SNI, as HBONE does not. It checks the chain, not the
// server's SPIFFE name (HAProxy's verifyhost matches DNS names only);
// the tunnels check both, once per connection, which costs nothing per
// request.
func ConfigMTLSClient(frontends []Frontend, threads int, m MTLS) string {
	var b strings.Builder
	globalTLS(&b, threads, m)
	for _, f := range frontends {
		fmt.Fprintf(&b, "\nfrontend fe-%s\n    bind 127.0.0.1:%d\n    default_backend be-%s\n", f.Name, f.Listen, f.Name)
		fmt.Fprintf(&b, "\nbackend be-%s\n    balance roundrobin\n", f.Name)
		for i, be := range f.Backends {
			fmt.Fprintf(&b, "    server s%d %s ssl verify required ca-file %s crt %s\n", i, be, m.CA, m.Cert)
		}
	}
	return b.String()
}

// ConfigMTLSServer is the server end: each listener requires TLS 1.3 and
// a client certificate that chains to m.CA, and forwards the bytes to its
// target.
func ConfigMTLSServer(listeners []Listener, threads int, m MTLS) string {
	var b strings.Builder
	globalTLS(&b, threads, m)
	for _, l := range listeners {
		fmt.Fprintf(&b, "\nfrontend fe-%s\n    bind %s ssl crt %s ca-file %s verify required\n    default_backend be-%s\n",
			l.Name, l.Listen, m.Cert, m.CA, l.Name)
		fmt.Fprintf(&b, "\nbackend be-%s\n    server s0 %s\n", l.Name, l.Target)
	}
	return b.String()
}

// globalTLS writes both ends' global and defaults sections: Config's,
// with TLS 1.3 only and the one cipher suite on both sides.
func globalTLS(b *strings.Builder, threads int, m MTLS) {
	fmt.Fprintf(b, `global
    nbthread %d
    maxconn 4000
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-bind-ciphersuites %s
    ssl-default-server-options ssl-min-ver TLSv1.3
    ssl-default-server-ciphersuites %s

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
`, threads, m.Ciphersuite, m.Ciphersuite)
}

// CertPEM is cert as HAProxy's crt file wants it: the chain, leaf first,
// then the private key.
func CertPEM(cert *tls.Certificate) ([]byte, error) {
	var out []byte
	for _, der := range cert.Certificate {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return nil, err
	}
	return append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})...), nil
}
