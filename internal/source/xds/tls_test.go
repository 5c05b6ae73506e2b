package xds

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// selfSigned returns a certificate for 127.0.0.1 and its PEM.
func selfSigned(t *testing.T) (tls.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "istiod"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// The client verifies the control plane with the root certificate file and
// sends the token file's content, re-read at each connect.
func TestWorkloadClient_TLSAndToken(t *testing.T) {
	cert, certPEM := selfSigned(t)
	dir := t.TempDir()
	rootFile, tokenFile := filepath.Join(dir, "root.pem"), filepath.Join(dir, "token")
	if err := os.WriteFile(rootFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte("first\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	auth := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		md, _ := metadata.FromIncomingContext(ss.Context())
		mu.Lock()
		seen = append(seen, md.Get("authorization")...)
		mu.Unlock()
		if len(md.Get("authorization")) != 1 {
			return status.Error(codes.Unauthenticated, "no token")
		}
		return h(srv, ss)
	}
	srv := xdstest.Start(t, "", grpc.Creds(credentials.NewServerTLSFromCert(&cert)), grpc.StreamInterceptor(auth))
	name, w := hello2.Address()
	put(t, srv.Addresses, name, w)

	a := &applier{ch: make(chan *model.Mesh, 16), log: &syncBuffer{}}
	cfg := testConfig(srv.Addr())
	cfg.RootCertFile, cfg.TokenFile = rootFile, tokenFile
	c := NewWorkloadClient(cfg, slog.New(slog.NewTextHandler(a.log, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, a.apply) }()
	defer func() { cancel(); <-done }()

	if m := a.next(t); len(m.Workloads) != 1 {
		t.Fatalf("mesh over TLS:\n%s", meshString(m))
	}
	// A rotated token is used from the next connect on.
	if err := os.WriteFile(tokenFile, []byte("second"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	name, w = hello4.Address()
	put(t, srv.Addresses, name, w)
	srv.Restart(t)
	a.until(t, func(m *model.Mesh) bool { return len(m.Workloads) == 2 })
	mu.Lock()
	defer mu.Unlock()
	if len(seen) < 2 || seen[0] != "Bearer first" || seen[len(seen)-1] != "Bearer second" {
		t.Fatalf("authorization headers %q, want Bearer first, then Bearer second", seen)
	}
}
