package api

import "time"

// Certs is /certs: the workload certificates kmeshd holds, one per
// identity of this node's workloads, and the roots it accepts.
type Certs struct {
	// CA says where certificates come from: "local CA <subject>" or
	// "istiod <address>".
	CA          string `json:"ca"`
	TrustDomain string `json:"trustDomain"`
	// ServedBy says whose certificates these are: "kmeshd tunnel" (the
	// certificates its HBONE listeners and dials present, asked of it by
	// kmeshd at each request), or "kmeshd" when the tunnel did not answer
	// (TunnelError says why): kmeshd's own cache, of the same identities
	// and CA but not the same serials.
	ServedBy    string `json:"servedBy,omitempty"`
	TunnelError string `json:"tunnelError,omitempty"`
	// Certificates are sorted by identity.
	Certificates []Cert `json:"certificates"`
	Roots        []Root `json:"roots"`
}

// Cert is one identity's certificate.
type Cert struct {
	// Identity is the SPIFFE id, spiffe://<td>/ns/<ns>/sa/<sa>.
	Identity string `json:"identity"`
	// Workloads counts this node's workloads with the identity; 0 for a
	// certificate fetched on demand.
	Workloads int `json:"workloads"`
	// State is "valid" (a certificate is in use), "pending" (the first
	// request is under way) or "failed" (no certificate: the last request
	// failed, Error says why). A valid certificate whose renewal failed
	// keeps "valid", with Error set, until it expires.
	State string `json:"state"`
	// Serial is the leaf's serial number in hex.
	Serial    string    `json:"serial,omitempty"`
	NotBefore time.Time `json:"notBefore,omitzero"`
	NotAfter  time.Time `json:"notAfter,omitzero"`
	// RefreshAt is when it is renewed: 40-50 % of its lifetime (jittered), or the next
	// retry after a failed request.
	RefreshAt time.Time `json:"refreshAt,omitzero"`
	// Chain are the subjects of the intermediates sent with the leaf.
	Chain []string `json:"chain,omitempty"`
	Error string   `json:"error,omitempty"`
}

// Root is an accepted root certificate.
type Root struct {
	Subject  string    `json:"subject"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"notAfter"`
	// SHA256 is the fingerprint of the DER certificate, hex.
	SHA256 string `json:"sha256"`
}
