package identity

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// DefaultTrustDomain is Istio's default trust domain.
const DefaultTrustDomain = "cluster.local"

// Identity is a workload's SPIFFE identity.
type Identity struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// OfWorkload is the identity of a workload of namespace ns running as
// service account sa in trust domain td; no service account means
// "default", as for a Kubernetes pod.
func OfWorkload(td, ns, sa string) Identity {
	if sa == "" {
		sa = "default"
	}
	return Identity{TrustDomain: td, Namespace: ns, ServiceAccount: sa}
}

// String returns the SPIFFE URI, spiffe://td/ns/<ns>/sa/<sa>.
func (id Identity) String() string {
	return "spiffe://" + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// URL returns the SPIFFE URI as a URL, the form a certificate's URI SAN takes.
func (id Identity) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount}
}

// Validate reports whether every part is present and holds no '/'.
func (id Identity) Validate() error {
	for _, p := range []struct{ name, v string }{
		{"trust domain", id.TrustDomain}, {"namespace", id.Namespace}, {"service account", id.ServiceAccount},
	} {
		if p.v == "" {
			return fmt.Errorf("identity %s: empty %s", id, p.name)
		}
		if strings.ContainsAny(p.v, "/?#") {
			return fmt.Errorf("identity %s: %s %q holds '/', '?' or '#'", id, p.name, p.v)
		}
	}
	return nil
}

// ErrNotSPIFFE is returned by Parse for a URI that is not an Istio SPIFFE
// identity.
var ErrNotSPIFFE = errors.New("not an Istio SPIFFE identity (spiffe://<td>/ns/<ns>/sa/<sa>)")

// Parse reads spiffe://td/ns/<ns>/sa/<sa>.
func Parse(uri string) (Identity, error) {
	rest, ok := strings.CutPrefix(uri, "spiffe://")
	if !ok {
		return Identity{}, fmt.Errorf("identity %q: %w", uri, ErrNotSPIFFE)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" {
		return Identity{}, fmt.Errorf("identity %q: %w", uri, ErrNotSPIFFE)
	}
	id := Identity{TrustDomain: parts[0], Namespace: parts[2], ServiceAccount: parts[4]}
	if err := id.Validate(); err != nil {
		return Identity{}, err
	}
	return id, nil
}
