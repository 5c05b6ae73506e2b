package identity

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

// IstiodConfig says how to reach istiod's CA (IstioCertificateService on
// its port 15012) and who kmeshd is to it.
type IstiodConfig struct {
	// Address is istiod's CA, host:port (istiod.istio-system.svc:15012).
	Address string
	// ServerName is the name istiod's certificate is checked against;
	// default: the host of Address. Set it when Address is an IP
	// (istiod's certificate names istiod.istio-system.svc).
	ServerName string
	// RootCertFile is a PEM bundle of Istio's roots (the
	// istio-ca-root-cert ConfigMap's root-cert.pem): it verifies istiod's
	// serving certificate and is the mesh's roots, with the root each
	// answer ends with. Re-read at every request, so a rotated file is
	// picked up.
	RootCertFile string
	// TokenFile is kmeshd's own service account token, bound to its pod,
	// with audience istio-ca (a projected volume); re-read at every
	// request.
	TokenFile string
	// ClusterID is sent as the clusterid header, as ztunnel does.
	ClusterID   string
	TrustDomain string
	// CertTTL is the validity asked for; istiod caps it at its
	// MAX_WORKLOAD_CERT_TTL.
	CertTTL time.Duration
}

// ImpersonatedIdentityKey is the request metadata field that asks istiod
// for another identity than the caller's (security.ImpersonatedIdentity in
// istio/istio). istiod grants it only to a caller whose service account is
// in CA_TRUSTED_NODE_ACCOUNTS, for an identity with a pod on the caller's
// node.
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

// IstiodCA is an Issuer that asks istiod's CA, on behalf of this node's
// workloads, with ztunnel's impersonation scheme.
type IstiodCA struct {
	cfg IstiodConfig

	mu       sync.Mutex
	rootPEM  []byte // the file's content the connection was made with
	conn     *grpc.ClientConn
	client   pb.IstioCertificateServiceClient
	fileRoot []*x509.Certificate
	learned  []*x509.Certificate // roots ending istiod's answers
}

var _ Issuer = (*IstiodCA)(nil)

// NewIstiodCA checks cfg and reads the root file once; it does not dial.
func NewIstiodCA(cfg IstiodConfig) (*IstiodCA, error) {
	if cfg.Address == "" {
		return nil, errors.New("istiod ca: no address")
	}
	host, _, err := net.SplitHostPort(cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("istiod ca: address %q: %w", cfg.Address, err)
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	if cfg.RootCertFile == "" {
		return nil, errors.New("istiod ca: no root certificate file (istiod's CA is TLS only)")
	}
	if cfg.TokenFile == "" {
		return nil, errors.New("istiod ca: no token file (kmeshd's pod-bound token, audience istio-ca)")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = DefaultTrustDomain
	}
	if cfg.CertTTL <= 0 {
		cfg.CertTTL = DefaultCertTTL
	}
	c := &IstiodCA{cfg: cfg}
	if _, err := c.client0(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *IstiodCA) TrustDomain() string { return c.cfg.TrustDomain }
func (c *IstiodCA) String() string      { return "istiod " + c.cfg.Address }

// Roots is RootCerts as a pool.
func (c *IstiodCA) Roots() *x509.CertPool { return pool(c.RootCerts()) }

// RootCerts is the root file's roots plus those istiod's answers ended
// with.
func (c *IstiodCA) RootCerts() []*x509.Certificate {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := append([]*x509.Certificate{}, c.fileRoot...)
	for _, r := range c.learned {
		if !containsCert(out, r) {
			out = append(out, r)
		}
	}
	return out
}

// client0 returns the gRPC client, remade when the root file changed.
func (c *IstiodCA) client0() (pb.IstioCertificateServiceClient, error) {
	data, err := os.ReadFile(c.cfg.RootCertFile)
	if err != nil {
		return nil, fmt.Errorf("istiod ca roots: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != nil && bytes.Equal(data, c.rootPEM) {
		return c.client, nil
	}
	roots, err := ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("istiod ca roots %s: %w", c.cfg.RootCertFile, err)
	}
	creds := credentials.NewTLS(&tls.Config{RootCAs: pool(roots), ServerName: c.cfg.ServerName, MinVersion: tls.VersionTLS12})
	conn, err := grpc.NewClient(c.cfg.Address, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("istiod ca: %w", err)
	}
	if c.conn != nil {
		c.conn.Close()
	}
	c.conn, c.client, c.rootPEM, c.fileRoot = conn, pb.NewIstioCertificateServiceClient(conn), data, roots
	return c.client, nil
}

// Close closes the connection to istiod.
func (c *IstiodCA) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.conn, c.client = nil, nil
	return err
}

// Issue asks istiod to sign csr for id: kmeshd's token authenticates the
// call, ImpersonatedIdentity names the workload's identity.
func (c *IstiodCA) Issue(ctx context.Context, id Identity, csr []byte) ([]*x509.Certificate, error) {
	client, err := c.client0()
	if err != nil {
		return nil, err
	}
	tok, err := os.ReadFile(c.cfg.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("istiod ca token: %w", err)
	}
	token := strings.TrimSpace(string(tok))
	if token == "" {
		return nil, fmt.Errorf("istiod ca token: %s is empty", c.cfg.TokenFile)
	}
	md, err := structpb.NewStruct(map[string]any{ImpersonatedIdentityKey: id.String()})
	if err != nil {
		return nil, err
	}
	headers := []string{"authorization", "Bearer " + token}
	if c.cfg.ClusterID != "" {
		headers = append(headers, "clusterid", c.cfg.ClusterID)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, headers...)
	resp, err := client.CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr:              string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})),
		ValidityDuration: int64(c.cfg.CertTTL / time.Second),
		Metadata:         md,
	})
	if err != nil {
		return nil, fmt.Errorf("istiod ca %s: certificate for %s: %w", c.cfg.Address, id, err)
	}
	// Each element may itself hold several PEM certificates.
	var chain []*x509.Certificate
	for i, s := range resp.GetCertChain() {
		certs, err := ParseCertificates([]byte(s))
		if err != nil {
			return nil, fmt.Errorf("istiod ca: certificate for %s: element %d: %w", id, i, err)
		}
		chain = append(chain, certs...)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("istiod ca: certificate for %s: empty answer", id)
	}
	if root := chain[len(chain)-1]; len(chain) > 1 && isSelfSigned(root) {
		c.learnRoot(root)
	}
	return chain, nil
}

// learnRoot keeps a root istiod sent, so a root rotated on istiod's side
// is accepted before the root file is updated. The root is trusted because
// it came over the TLS connection verified with the file's roots.
func (c *IstiodCA) learnRoot(root *x509.Certificate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !containsCert(c.learned, root) && !containsCert(c.fileRoot, root) {
		c.learned = append(c.learned, root)
	}
}
