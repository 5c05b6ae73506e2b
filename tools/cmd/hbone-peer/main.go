// Command hbone-peer is an independent HBONE peer for Kmesh's interop
// tests: Istio's own Go HBONE code (istio.io/istio/pkg/hbone), as a client
// (hbone.NewDialer) and as a server (hbone.NewServer, which dials the
// CONNECT authority and splices). It lives in the tools module so that
// Istio's dependency graph stays out of Kmesh's.
//
//	hbone-peer server --listen 10.1.1.11:15008 --cert leaf.pem --key key.pem --roots roots.pem
//	hbone-peer client --addr 10.1.1.11:15008 --authority 10.1.1.11:8080 \
//	    --cert leaf.pem --key key.pem --roots roots.pem --san spiffe://cluster.local/ns/default/sa/hello \
//	    --send 'GET / HTTP/1.0\r\n\r\n'
//
// Both sides speak HBONE as ztunnel does: TLS 1.3, ALPN h2, no SNI, the
// peer's certificate verified against --roots and its SPIFFE URI SAN
// checked (the client: equal to --san; the server: in --trust-domain). The
// server prints "ready <addr>" once listening; the client prints what the
// application answered, or exits 1 with the error.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"istio.io/istio/pkg/hbone"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: hbone-peer server|client [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = server(os.Args[2:])
	case "client":
		err = client(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q (want server or client)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "hbone-peer:", err)
		os.Exit(1)
	}
}

type tlsFlags struct{ cert, key, roots string }

func (t *tlsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&t.cert, "cert", "", "PEM certificate chain presented to the peer (leaf first)")
	fs.StringVar(&t.key, "key", "", "PEM private key of --cert")
	fs.StringVar(&t.roots, "roots", "", "PEM roots the peer's certificate must chain to")
}

func (t *tlsFlags) load() (tls.Certificate, *x509.CertPool, error) {
	cert, err := tls.LoadX509KeyPair(t.cert, t.key)
	if err != nil {
		return cert, nil, fmt.Errorf("--cert/--key: %w", err)
	}
	data, err := os.ReadFile(t.roots)
	if err != nil {
		return cert, nil, fmt.Errorf("--roots: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return cert, nil, fmt.Errorf("--roots %s: no PEM certificate", t.roots)
	}
	return cert, pool, nil
}

// verify checks a raw chain against roots (no DNS name: HBONE checks the
// SPIFFE URI SAN only) and returns the leaf's spiffe:// URIs.
func verify(raw [][]byte, roots *x509.CertPool) ([]string, error) {
	if len(raw) == 0 {
		return nil, errors.New("no peer certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, err
	}
	var ids []string
	for _, u := range certs[0].URIs {
		if u.Scheme == "spiffe" {
			ids = append(ids, u.String())
		}
	}
	return ids, nil
}

func server(args []string) error {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	var t tlsFlags
	t.register(fs)
	listen := fs.String("listen", ":15008", "address to listen on")
	td := fs.String("trust-domain", "cluster.local", "trust domain a client's SPIFFE id must be in")
	fs.Parse(args)
	cert, roots, err := t.load()
	if err != nil {
		return err
	}
	srv := hbone.NewServer()
	// Istio's server is set up for h2c; HBONE is HTTP/2 over TLS.
	srv.Protocols.SetHTTP2(true)
	srv.TLSConfig = &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			ids, err := verify(raw, roots)
			if err != nil {
				return err
			}
			for _, id := range ids {
				if strings.HasPrefix(id, "spiffe://"+*td+"/") {
					return nil
				}
			}
			return fmt.Errorf("client identities %v not in trust domain %s", ids, *td)
		},
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Println("ready", l.Addr())
	return srv.ServeTLS(l, "", "")
}

func client(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	var t tlsFlags
	t.register(fs)
	addr := fs.String("addr", "", "HBONE address, podIP:15008")
	authority := fs.String("authority", "", "CONNECT authority, podIP:targetPort")
	san := fs.String("san", "", "SPIFFE id the server's certificate must carry")
	send := fs.String("send", "", `bytes to send through the tunnel (\r and \n are unescaped)`)
	timeout := fs.Duration("timeout", 5*time.Second, "dial and read timeout")
	fs.Parse(args)
	cert, roots, err := t.load()
	if err != nil {
		return err
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
		Certificates: []tls.Certificate{cert},
		// No SNI, no DNS name: VerifyPeerCertificate checks chain and SAN.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			ids, err := verify(raw, roots)
			if err != nil {
				return err
			}
			for _, id := range ids {
				if id == *san {
					return nil
				}
			}
			return fmt.Errorf("server identities %v, want %s", ids, *san)
		},
	}
	d := hbone.NewDialer(hbone.Config{ProxyAddress: *addr, TLS: cfg, Timeout: timeout})
	conn, err := d.Dial("tcp", *authority)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(*timeout))
	msg := strings.NewReplacer(`\r`, "\r", `\n`, "\n").Replace(*send)
	if _, err := io.WriteString(conn, msg); err != nil {
		return err
	}
	out, err := io.ReadAll(conn)
	if len(out) == 0 && err != nil {
		return err
	}
	os.Stdout.Write(out)
	return nil
}
