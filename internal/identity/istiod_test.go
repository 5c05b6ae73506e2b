package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
)

// fakeIstiod answers CreateCertificate as istiod's CA does for a trusted
// node: it signs the impersonated identity if the node may have it. The
// real istiod is tested in test/e2e (TestIstioCerts); this one checks the
// request kmeshd sends, field by field.
type fakeIstiod struct {
	pb.UnimplementedIstioCertificateServiceServer
	ca      *localCA
	token   string
	allowed map[string]bool // identities on the caller's node

	mu   sync.Mutex
	reqs []*pb.IstioCertificateRequest
	md   []metadata.MD
}

func (f *fakeIstiod) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.reqs, f.md = append(f.reqs, req), append(f.md, md)
	f.mu.Unlock()
	if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer "+f.token {
		return nil, status.Error(codes.Unauthenticated, "request authenticate failure")
	}
	id := req.GetMetadata().GetFields()[ImpersonatedIdentityKey].GetStringValue()
	if !f.allowed[id] {
		return nil, status.Error(codes.Unauthenticated, "request impersonation authentication failure")
	}
	block, _ := pem.Decode([]byte(req.Csr))
	parsed, err := Parse(id)
	if err != nil || block == nil {
		return nil, status.Error(codes.InvalidArgument, "bad request")
	}
	chain, err := f.ca.Issue(ctx, parsed, block.Bytes)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	// As istiod: the leaf, then the chain as one PEM string ending with the root.
	return &pb.IstioCertificateResponse{CertChain: []string{string(encodeCerts(chain[:1])), string(encodeCerts(chain[1:]))}}, nil
}

func TestIstiodCA_Impersonation(t *testing.T) {
	dir := t.TempDir()
	caPEM, caKey, err := GenerateCA("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := newLocalCA(caPEM, caKey, "cluster.local", options{ttl: time.Hour, now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	// istiod's serving certificate, for its DNS name, from the same root.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := randomSerial()
	tmpl := &x509.Certificate{SerialNumber: serial, DNSNames: []string{"istiod.istio-system.svc"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.chain[0], key.Public(), ca.signer)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeIstiod{ca: ca, token: "node-token", allowed: map[string]bool{"spiffe://cluster.local/ns/default/sa/sleep": true}}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})))
	pb.RegisterIstioCertificateServiceServer(srv, f)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)

	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := Config{
		CAAddress: l.Addr().String(), CAServerName: "istiod.istio-system.svc",
		CARootCert: write("root.pem", caPEM), CATokenFile: write("token", []byte("node-token\n")),
		ClusterID: "Kubernetes", TrustDomain: "cluster.local", CertTTL: 90 * time.Minute,
	}
	cache, err := cfg.NewSource()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sleep := Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "sleep"}
	cert, err := cache.Certificate(ctx, sleep)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := LeafIdentity(cert.Leaf); got != sleep {
		t.Fatalf("leaf identity %v", got)
	}
	if len(cert.Certificate) != 1 {
		t.Fatalf("chain sent to peers has %d certificates, want the leaf (the root is not sent)", len(cert.Certificate))
	}
	req, md := f.reqs[0], f.md[0]
	if req.ValidityDuration != 5400 {
		t.Errorf("validity_duration %d, want 5400 (--cert-ttl 90m)", req.ValidityDuration)
	}
	if got := md.Get("clusterid"); len(got) != 1 || got[0] != "Kubernetes" {
		t.Errorf("clusterid header %v", got)
	}
	csrBlock, _ := pem.Decode([]byte(req.Csr))
	csr, err := x509.ParseCertificateRequest(csrBlock.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || len(csr.URIs) != 1 || csr.URIs[0].String() != sleep.String() || csr.Subject.String() != "" {
		t.Errorf("csr: key %T, URIs %v, subject %q; want ECDSA, one URI SAN, no subject", csr.PublicKey, csr.URIs, csr.Subject)
	}

	other := Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "other"}
	if _, err := cache.Certificate(ctx, other); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
		t.Errorf("identity not on the node: err %v", err)
	}
	// A token file rewritten (a rotated projected token) is re-read.
	write("token", []byte("stale"))
	bad := Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "sleep2"}
	f.allowed[bad.String()] = true
	if _, err := cache.Certificate(ctx, bad); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
		t.Errorf("with a token istiod refuses: err %v", err)
	}
}
