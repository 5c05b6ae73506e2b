package identity

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"
)

// Config selects where certificates come from: a local CA (CACert and
// CAKey) or istiod (CAAddress), or none. It is shared by every process
// that needs workload certificates, so they take the same flags.
type Config struct {
	// CACert, CAKey: PEM files of a local CA; CACert may continue with the
	// chain up to the root (Istio's cert-chain.pem order).
	CACert, CAKey string
	// CARoots: PEM bundle of every accepted root (Istio's root-cert.pem);
	// during a root rotation, the old and the new root. Optional with a
	// local CA whose file holds its root.
	CARoots string
	// CAAddress is istiod's CA (host:port, its port 15012); with it,
	// CARootCert and CATokenFile are required.
	CAAddress    string
	CAServerName string
	CARootCert   string
	CATokenFile  string
	ClusterID    string

	TrustDomain string
	CertTTL     time.Duration
}

// RegisterFlags adds the --ca-*, --trust-domain and --cert-ttl flags.
func (c *Config) RegisterFlags(f *pflag.FlagSet) {
	f.StringVar(&c.CACert, "ca-cert", "", "PEM certificate of a local CA that signs workload certificates (optionally followed by its chain up to the root, as Istio's cert-chain.pem); needs --ca-key; the nodes of one mesh share it")
	f.StringVar(&c.CAKey, "ca-key", "", "PEM private key of --ca-cert (kept in memory, never written)")
	f.StringVar(&c.CARoots, "ca-roots", "", "PEM bundle of every root a peer certificate may chain to, as Istio's root-cert.pem (during a root rotation: the old and the new root); default: the self-signed certificates in --ca-cert")
	f.StringVar(&c.CAAddress, "ca-address", "", "istiod's CA (HOST:PORT, its port 15012): workload certificates come from IstioCertificateService with impersonation; excludes --ca-cert")
	f.StringVar(&c.CAServerName, "ca-server-name", "", "name istiod's serving certificate is checked against (default: the host of --ca-address; istiod's certificate names istiod.istio-system.svc)")
	f.StringVar(&c.CARootCert, "ca-root-cert", "", "PEM roots of istiod's CA (the istio-ca-root-cert ConfigMap's root-cert.pem), re-read at each request (default: --xds-root-cert)")
	f.StringVar(&c.CATokenFile, "ca-token-file", "", "kmeshd's own service account token, bound to its pod, audience istio-ca; re-read at each request (default: --xds-token-file)")
	f.StringVar(&c.TrustDomain, "trust-domain", DefaultTrustDomain, "trust domain of the mesh's SPIFFE identities (spiffe://<trust domain>/ns/<ns>/sa/<sa>)")
	f.DurationVar(&c.CertTTL, "cert-ttl", DefaultCertTTL, "lifetime of the workload certificates asked for; each is renewed between 40% and 50% of its lifetime (jittered)")
}

// Enabled reports whether the mesh has a CA.
func (c *Config) Enabled() bool { return c.CACert != "" || c.CAKey != "" || c.CAAddress != "" }

// NewSource makes the configured Source, or nil when no CA is configured.
// Errors name the flag at fault.
func (c *Config) NewSource() (*Cache, error) {
	if !c.Enabled() {
		return nil, nil
	}
	if c.TrustDomain == "" {
		return nil, errors.New("--trust-domain is empty")
	}
	if c.CertTTL < 2*time.Second {
		return nil, fmt.Errorf("--cert-ttl %v: must be at least 2s", c.CertTTL)
	}
	if c.CAAddress != "" {
		if c.CACert != "" || c.CAKey != "" || c.CARoots != "" {
			return nil, errors.New("--ca-address excludes --ca-cert, --ca-key and --ca-roots: certificates come from one CA")
		}
		ca, err := NewIstiodCA(IstiodConfig{
			Address: c.CAAddress, ServerName: c.CAServerName, RootCertFile: c.CARootCert, TokenFile: c.CATokenFile,
			ClusterID: c.ClusterID, TrustDomain: c.TrustDomain, CertTTL: c.CertTTL,
		})
		if err != nil {
			return nil, err
		}
		return NewCache(ca), nil
	}
	if c.CACert == "" || c.CAKey == "" {
		return nil, errors.New("--ca-cert and --ca-key go together")
	}
	read := func(flag, path string) ([]byte, error) {
		if path == "" {
			return nil, nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", flag, err)
		}
		return b, nil
	}
	cert, err := read("ca-cert", c.CACert)
	if err != nil {
		return nil, err
	}
	key, err := read("ca-key", c.CAKey)
	if err != nil {
		return nil, err
	}
	roots, err := read("ca-roots", c.CARoots)
	if err != nil {
		return nil, err
	}
	o := options{roots: roots, ttl: c.CertTTL, now: time.Now}
	ca, err := newLocalCA(cert, key, c.TrustDomain, o)
	if err != nil {
		return nil, fmt.Errorf("--ca-cert %s, --ca-key %s: %w", c.CACert, c.CAKey, err)
	}
	return NewCache(ca), nil
}
