package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
)

// Source hands out workload certificates and the roots peers must chain to.
type Source interface {
	// Certificate returns id's certificate: leaf, chain and private key,
	// with Leaf set. It is cached and renewed before half of its lifetime; a
	// call blocks only when no valid certificate is cached.
	Certificate(ctx context.Context, id Identity) (*tls.Certificate, error)
	// Roots is every accepted root, several during a root rotation.
	Roots() *x509.CertPool
	// TrustDomain is the trust domain of the identities this source issues.
	TrustDomain() string
}

// Issuer signs certificate requests: a local CA or istiod's CA.
type Issuer interface {
	// Issue returns the chain for a CSR (DER) naming id: leaf first, then
	// intermediates, the root last if the issuer sends it.
	Issue(ctx context.Context, id Identity, csr []byte) ([]*x509.Certificate, error)
	// RootCerts is every accepted root.
	RootCerts() []*x509.Certificate
	TrustDomain() string
}
