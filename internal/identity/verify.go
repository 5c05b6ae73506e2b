package identity

import (
	"crypto/x509"
	"fmt"
	"time"
)

// LeafIdentity is the SPIFFE identity in a certificate's URI SANs; exactly
// one must be an Istio SPIFFE identity.
func LeafIdentity(leaf *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range leaf.URIs {
		if id, err := Parse(u.String()); err == nil {
			found = append(found, id)
		}
	}
	switch len(found) {
	case 0:
		return Identity{}, ErrNoIdentity
	case 1:
		return found[0], nil
	}
	return Identity{}, fmt.Errorf("certificate names %d SPIFFE identities, want one", len(found))
}

// Verify checks a peer's chain (leaf first) against roots at time now and
// returns the leaf's identity. It is what a TLS VerifyPeerCertificate does
// for HBONE, where no DNS name is checked, only the SPIFFE URI SAN.
func Verify(chain []*x509.Certificate, roots *x509.CertPool, now time.Time) (Identity, error) {
	if len(chain) == 0 {
		return Identity{}, fmt.Errorf("no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return Identity{}, fmt.Errorf("certificate chain: %w", err)
	}
	return LeafIdentity(chain[0])
}

// VerifyRaw is Verify for the raw certificates a tls.Config's
// VerifyPeerCertificate gets; it also requires the peer's trust domain.
func VerifyRaw(raw [][]byte, roots *x509.CertPool, trustDomain string, now time.Time) (Identity, error) {
	chain := make([]*x509.Certificate, 0, len(raw))
	for i, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return Identity{}, fmt.Errorf("peer certificate %d: %w", i, err)
		}
		chain = append(chain, c)
	}
	id, err := Verify(chain, roots, now)
	if err != nil {
		return Identity{}, err
	}
	if id.TrustDomain != trustDomain {
		return Identity{}, fmt.Errorf("peer identity %s: trust domain is not %q", id, trustDomain)
	}
	return id, nil
}
