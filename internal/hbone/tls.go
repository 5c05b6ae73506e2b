package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/kmesh-go/kmesh/internal/identity"
)

// Port is HBONE's port on a destination pod.
const Port = 15008

const alpnH2 = "h2"

// ErrUnexpectedPeer is returned when the server's certificate names none of
// the expected identities.
var ErrUnexpectedPeer = errors.New("server identity is not an expected one")

// peerIdentity verifies a peer's raw chain against roots and returns its
// SPIFFE identity, which must be of trustDomain. Only the URI SAN counts;
// no DNS name is checked (HBONE sends no SNI).
func peerIdentity(raw [][]byte, roots *x509.CertPool, trustDomain string) (identity.Identity, error) {
	if len(raw) == 0 {
		return identity.Identity{}, errors.New("peer sent no certificate")
	}
	chain := make([]*x509.Certificate, 0, len(raw))
	for i, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return identity.Identity{}, fmt.Errorf("peer certificate %d: %w", i, err)
		}
		chain = append(chain, c)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: time.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return identity.Identity{}, fmt.Errorf("peer certificate chain: %w", err)
	}
	var found []identity.Identity
	for _, u := range chain[0].URIs {
		if id, err := identity.Parse(u.String()); err == nil {
			found = append(found, id)
		}
	}
	if len(found) != 1 {
		return identity.Identity{}, fmt.Errorf("peer certificate names %d SPIFFE identities, want one", len(found))
	}
	if found[0].TrustDomain != trustDomain {
		return identity.Identity{}, fmt.Errorf("peer identity %s: trust domain is not %q", found[0], trustDomain)
	}
	return found[0], nil
}

// clientTLS is the TLS config of a connection from src to one of dst.
func clientTLS(ctx context.Context, certs identity.Source, src identity.Identity, dst []identity.Identity) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{alpnH2},
		// No SNI: an IP cannot go in it, and there is no standard name
		// for a workload. The server is verified by its SPIFFE URI SAN in
		// VerifyPeerCertificate instead of by a host name.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return certs.Certificate(ctx, src)
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, err := peerIdentity(raw, certs.Roots(), certs.TrustDomain())
			if err != nil {
				return err
			}
			if !slices.Contains(dst, id) {
				return fmt.Errorf("%w: got %s, want one of %v", ErrUnexpectedPeer, id, dst)
			}
			return nil
		},
		ClientSessionCache: nil, // ztunnel does not resume sessions either
		// Full 16 KiB records from the first byte: a pooled connection
		// carries many streams, and small starting records would split a
		// DATA frame into a write per record.
		DynamicRecordSizingDisabled: true,
	}
}

// serverTLS is the TLS config of a listener serving id.
func serverTLS(certs identity.Source, id func() identity.Identity) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{alpnH2},
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return certs.Certificate(hello.Context(), id())
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := peerIdentity(raw, certs.Roots(), certs.TrustDomain())
			return err
		},
		DynamicRecordSizingDisabled: true,
	}
}
