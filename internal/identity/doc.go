// Package identity gives workloads their SPIFFE identities and the X.509
// certificates that prove them, as Istio ambient does
// (spiffe://<trust domain>/ns/<namespace>/sa/<service account>).
//
// A [Source] hands out one certificate per identity, cached and renewed by
// half of its lifetime (RenewAt), and the pool of roots a peer's certificate must chain
// to. Two sources exist: [NewLocalCA] signs with a CA given as PEM (file
// config, tests, a fleet that shares a root), and the istiod client (Istio's
// IstioCertificateService with ztunnel's impersonation) asks istiod's CA.
//
// Private keys are ECDSA P-256 and live in memory only: they are generated
// here, never written to disk, never put in a BPF map.
package identity
