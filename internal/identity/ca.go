package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"
)

// DefaultCertTTL is the lifetime of a workload certificate when none is
// asked for: Istio's DEFAULT_WORKLOAD_CERT_TTL, and what ztunnel requests.
const DefaultCertTTL = 24 * time.Hour

// Option tunes a Source.
type Option func(*options)

type options struct {
	roots []byte
	ttl   time.Duration
	now   func() time.Time
}

// WithRoots adds a PEM bundle of accepted roots, as Istio's root-cert.pem:
// during a root rotation it holds both the old and the new root.
func WithRoots(pem []byte) Option { return func(o *options) { o.roots = pem } }

// WithCertTTL sets the lifetime of the workload certificates issued.
func WithCertTTL(d time.Duration) Option { return func(o *options) { o.ttl = d } }

// WithClock replaces time.Now, for tests of expiry and refresh.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

func buildOptions(opts []Option) options {
	o := options{ttl: DefaultCertTTL, now: time.Now}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// localCA signs workload certificates itself with a CA key given as PEM.
type localCA struct {
	signer      crypto.Signer
	chain       []*x509.Certificate // the signing certificate first, then its issuers
	roots       []*x509.Certificate
	trustDomain string
	ttl         time.Duration
	now         func() time.Time
}

// NewLocalCA returns a Source that signs workload certificates with a local
// CA. certPEM holds the signing certificate, optionally followed by its
// chain up to the root (Istio's cert-chain.pem order); keyPEM its private
// key. The accepted roots are the self-signed certificates of certPEM plus
// any given WithRoots; the signing certificate must chain to one of them.
func NewLocalCA(certPEM, keyPEM []byte, trustDomain string, opts ...Option) (Source, error) {
	o := buildOptions(opts)
	ca, err := newLocalCA(certPEM, keyPEM, trustDomain, o)
	if err != nil {
		return nil, err
	}
	return NewCache(ca, WithClock(o.now)), nil
}

func newLocalCA(certPEM, keyPEM []byte, trustDomain string, o options) (*localCA, error) {
	if trustDomain == "" {
		return nil, errors.New("local ca: empty trust domain")
	}
	chain, err := ParseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("local ca certificate: %w", err)
	}
	signer, err := parsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("local ca key: %w", err)
	}
	ca := chain[0]
	if !ca.IsCA {
		return nil, fmt.Errorf("local ca certificate %q: not a CA (basicConstraints CA:FALSE)", ca.Subject)
	}
	if !publicKeyEqual(signer.Public(), ca.PublicKey) {
		return nil, fmt.Errorf("local ca: key does not match certificate %q", ca.Subject)
	}
	var roots []*x509.Certificate
	for _, c := range chain {
		if isSelfSigned(c) {
			roots = append(roots, c)
		}
	}
	if len(o.roots) > 0 {
		extra, err := ParseCertificates(o.roots)
		if err != nil {
			return nil, fmt.Errorf("local ca roots: %w", err)
		}
		for _, r := range extra {
			if !containsCert(roots, r) {
				roots = append(roots, r)
			}
		}
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("local ca certificate %q: not self-signed and no root given (add the root to the file or give the roots bundle)", ca.Subject)
	}
	l := &localCA{signer: signer, chain: chain, roots: roots, trustDomain: trustDomain, ttl: o.ttl, now: o.now}
	if _, err := ca.Verify(x509.VerifyOptions{
		Roots: l.rootPool(), Intermediates: pool(chain[1:]), CurrentTime: o.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("local ca certificate %q does not chain to an accepted root: %w", ca.Subject, err)
	}
	return l, nil
}

func (l *localCA) TrustDomain() string            { return l.trustDomain }
func (l *localCA) RootCerts() []*x509.Certificate { return l.roots }
func (l *localCA) rootPool() *x509.CertPool       { return pool(l.roots) }
func (l *localCA) String() string                 { return "local CA " + l.chain[0].Subject.String() }

// Issue signs csr for id: the CSR must name exactly id, the lifetime is the
// configured TTL, capped by the CA's own expiry.
func (l *localCA) Issue(_ context.Context, id Identity, csrDER []byte) ([]*x509.Certificate, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("csr for %s: %w", id, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr for %s: %w", id, err)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() {
		return nil, fmt.Errorf("csr for %s: names %v", id, csr.URIs)
	}
	if id.TrustDomain != l.trustDomain {
		return nil, fmt.Errorf("identity %s: trust domain is not %q", id, l.trustDomain)
	}
	now := l.now()
	// Backdate a little for clocks that lag; a tenth of the lifetime at
	// most, so a short-lived certificate is not born half used.
	skew := min(time.Minute, l.ttl/10)
	notAfter := now.Add(l.ttl)
	if ca := l.chain[0]; notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-skew),
		NotAfter:              notAfter,
		URIs:                  []*url.URL{id.URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, l.chain[0], csr.PublicKey, l.signer)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return append([]*x509.Certificate{leaf}, l.chain...), nil
}

// GenerateCA makes a self-signed ECDSA P-256 root, as PEM, for tests, the
// test-bed and small fleets: the organization is the trust domain, as in
// istiod's self-signed root.
func GenerateCA(trustDomain string, lifetime time.Duration) (certPEM, keyPEM []byte, err error) {
	return generateCA(trustDomain, lifetime, nil, nil)
}

// GenerateIntermediateCA makes an intermediate CA signed by the CA in
// parentCertPEM/parentKeyPEM. certPEM holds the intermediate then the
// parent's chain, ready for NewLocalCA.
func GenerateIntermediateCA(trustDomain string, lifetime time.Duration, parentCertPEM, parentKeyPEM []byte) (certPEM, keyPEM []byte, err error) {
	return generateCA(trustDomain, lifetime, parentCertPEM, parentKeyPEM)
}

func generateCA(trustDomain string, lifetime time.Duration, parentCertPEM, parentKeyPEM []byte) ([]byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{trustDomain}, CommonName: "kmesh ca " + serial.Text(16)[:8]},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	parent, signer := tmpl, crypto.Signer(key)
	var chain []byte
	if parentCertPEM != nil {
		pc, err := ParseCertificates(parentCertPEM)
		if err != nil {
			return nil, nil, fmt.Errorf("parent ca: %w", err)
		}
		if signer, err = parsePrivateKey(parentKeyPEM); err != nil {
			return nil, nil, fmt.Errorf("parent ca key: %w", err)
		}
		parent, chain = pc[0], parentCertPEM
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	certPEM := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), chain...)
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

func randomSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func containsCert(list []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range list {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

func pool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
