package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/url"
	"slices"
	"sync"
	"time"
)

// Retry bounds for a failed refresh while the old certificate is still
// valid.
const (
	minRetry = time.Second
	maxRetry = 30 * time.Second
	// issueTimeout bounds one request to the issuer.
	issueTimeout = 30 * time.Second
)

// Cache is a Source over an Issuer: one certificate per identity, issued on
// first use or when an identity is tracked, renewed by half-life (RenewAt). Tracked
// identities (Track, one count per workload on the node) are renewed ahead of
// time by Run; others are renewed when Certificate finds them past
// half-life.
type Cache struct {
	iss Issuer
	now func() time.Time
	log *slog.Logger
	// jitter draws u in [0, 1) for each renewal time (RenewAt); tests
	// pin it.
	jitter func() float64

	mu    sync.Mutex
	certs map[Identity]*entry
	refs  map[Identity]int
	roots struct {
		list []*x509.Certificate
		pool *x509.CertPool
	}
	wake chan struct{}
}

type entry struct {
	cert      *tls.Certificate
	refreshAt time.Time     // RenewAt (40-50 % of the lifetime), or the next retry after a failure
	fetching  chan struct{} // closed when the fetch in flight ends
	err       error         // the last fetch's error, nil after a success
	failures  int
}

var _ Source = (*Cache)(nil)

// NewCache returns a Cache that gets certificates from iss. Only WithClock
// applies.
func NewCache(iss Issuer, opts ...Option) *Cache {
	o := buildOptions(opts)
	return &Cache{
		iss: iss, now: o.now, log: slog.Default().With("component", "identity"), jitter: mrand.Float64,
		certs: map[Identity]*entry{}, refs: map[Identity]int{}, wake: make(chan struct{}, 1),
	}
}

// SetLogger replaces the default logger.
func (c *Cache) SetLogger(l *slog.Logger) { c.log = l.With("component", "identity") }

// TrustDomain is the issuer's trust domain.
func (c *Cache) TrustDomain() string { return c.iss.TrustDomain() }

// Roots is every root the issuer accepts.
func (c *Cache) Roots() *x509.CertPool {
	list := c.iss.RootCerts()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.roots.pool == nil || !slices.EqualFunc(list, c.roots.list, (*x509.Certificate).Equal) {
		c.roots.list, c.roots.pool = list, pool(list)
	}
	return c.roots.pool
}

// IssuerName says where certificates come from ("local CA <subject>",
// "istiod <address>").
func (c *Cache) IssuerName() string {
	if s, ok := c.iss.(fmt.Stringer); ok {
		return s.String()
	}
	return fmt.Sprintf("%T", c.iss)
}

// RootCerts is the list behind Roots.
func (c *Cache) RootCerts() []*x509.Certificate { return c.iss.RootCerts() }

// Certificate returns id's certificate. A cached certificate past its
// refresh time is still returned while valid, and a renewal starts in the
// background; with none valid, the call waits for the issuer.
func (c *Cache) Certificate(ctx context.Context, id Identity) (*tls.Certificate, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	if td := c.iss.TrustDomain(); id.TrustDomain != td {
		return nil, fmt.Errorf("identity %s: trust domain is not %q", id, td)
	}
	for {
		c.mu.Lock()
		e := c.certs[id]
		if e == nil {
			e = &entry{}
			c.certs[id] = e
		}
		now := c.now()
		if e.cert != nil && now.Before(e.cert.Leaf.NotAfter) {
			if !now.Before(e.refreshAt) && e.fetching == nil {
				c.startFetch(id, e)
			}
			cert := e.cert
			c.mu.Unlock()
			return cert, nil
		}
		if e.fetching == nil {
			c.startFetch(id, e)
		}
		done := e.fetching
		c.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return nil, fmt.Errorf("certificate for %s: %w", id, ctx.Err())
		}
		c.mu.Lock()
		e2, err := c.certs[id], error(nil)
		if e2 != nil && e2.cert == nil {
			err = e2.err
		}
		c.mu.Unlock()
		if err != nil {
			return nil, err
		}
		// Loop: the fetched certificate (or a newer one) is in the map.
	}
}

// startFetch begins a fetch for id; c.mu is held.
func (c *Cache) startFetch(id Identity, e *entry) {
	done := make(chan struct{})
	e.fetching = done
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), issueTimeout)
		cert, err := c.fetch(ctx, id)
		cancel()
		c.mu.Lock()
		e.fetching = nil
		if err != nil {
			e.err = err
			e.failures++
			retry := min(minRetry<<min(e.failures-1, 5), maxRetry)
			e.refreshAt = c.now().Add(retry)
			c.log.Warn("certificate request failed", "identity", id.String(), "retry_in", retry, "err", err)
		} else {
			e.cert, e.err, e.failures = cert, nil, 0
			e.refreshAt = RenewAt(cert.Leaf, c.jitter())
			c.log.Info("certificate issued", "identity", id.String(), "serial", cert.Leaf.SerialNumber.Text(16),
				"expires", cert.Leaf.NotAfter, "refresh_at", e.refreshAt)
		}
		// An entry dropped by Untrack while fetching stays dropped.
		if c.certs[id] != e {
			e.cert = nil
		}
		c.mu.Unlock()
		close(done)
		c.kick()
	}()
}

// RefreshAt is half of a certificate's lifetime (not_before + validity/2),
// where ztunnel renews: the latest a Cache renews it.
func RefreshAt(leaf *x509.Certificate) time.Time {
	return leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
}

// RenewJitter is the share of a certificate's lifetime by which a renewal
// may come early: a Cache renews between 40 % and 50 % of the lifetime.
const RenewJitter = 0.1

// RenewAt is when a Cache renews a certificate, for u drawn uniformly in
// [0, 1): half-life less up to RenewJitter of the lifetime. Identities
// issued together (every pod of a node at start, every node after a CA
// restart) would otherwise all come back to the CA in the same instant at
// each half-life; the jitter spreads them, as Istio's SDS agent jitters its
// grace period. Only ever earlier than half-life, so a certificate is
// never used past half of its lifetime.
func RenewAt(leaf *x509.Certificate, u float64) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	early := time.Duration(float64(life) * RenewJitter * min(max(u, 0), 1))
	return RefreshAt(leaf).Add(-early)
}

// fetch makes a key and a CSR for id, has them signed and checks the answer:
// the leaf must carry our key and exactly id, and chain to a root.
func (c *Cache) fetch(ctx context.Context, id Identity) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, fmt.Errorf("csr for %s: %w", id, err)
	}
	chain, err := c.iss.Issue(ctx, id, csr)
	if err != nil {
		return nil, err
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("certificate for %s: empty chain", id)
	}
	leaf := chain[0]
	if !publicKeyEqual(key.Public(), leaf.PublicKey) {
		return nil, fmt.Errorf("certificate for %s: leaf does not carry the requested key", id)
	}
	got, err := LeafIdentity(leaf)
	if err != nil {
		return nil, fmt.Errorf("certificate for %s: %w", id, err)
	}
	if got != id {
		return nil, fmt.Errorf("certificate for %s: issued for %s", id, got)
	}
	if _, err := Verify(chain, c.Roots(), c.now()); err != nil {
		return nil, fmt.Errorf("certificate for %s: %w", id, err)
	}
	// The chain sent to peers stops before the root: they have it.
	sent := chain
	if n := len(sent); n > 1 && isSelfSigned(sent[n-1]) {
		sent = sent[:n-1]
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, x := range sent {
		cert.Certificate = append(cert.Certificate, x.Raw)
	}
	return cert, nil
}

// Track counts one more workload on this node with identity id: its
// certificate is fetched now (by Run) and kept renewed.
func (c *Cache) Track(id Identity) {
	c.mu.Lock()
	c.refs[id]++
	if c.certs[id] == nil {
		c.certs[id] = &entry{}
	}
	c.mu.Unlock()
	c.kick()
}

// Untrack drops one count; at zero the certificate and its key are
// forgotten.
func (c *Cache) Untrack(id Identity) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.refs[id] <= 1 {
		delete(c.refs, id)
		delete(c.certs, id)
		return
	}
	c.refs[id]--
}

// SetTracked replaces the tracked identities with counts (workloads on the
// node per identity): new ones are fetched at once by Run, ones no longer
// present are forgotten with their keys.
func (c *Cache) SetTracked(counts map[Identity]int) {
	c.mu.Lock()
	for id := range c.refs {
		if counts[id] <= 0 {
			delete(c.refs, id)
			delete(c.certs, id)
		}
	}
	for id, n := range counts {
		if n <= 0 {
			continue
		}
		c.refs[id] = n
		if c.certs[id] == nil {
			c.certs[id] = &entry{}
		}
	}
	c.mu.Unlock()
	c.kick()
}

func (c *Cache) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Run renews tracked identities' certificates when due, until ctx ends.
func (c *Cache) Run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		next := c.refreshDue()
		wait := time.Hour
		if !next.IsZero() {
			wait = max(next.Sub(c.now()), 10*time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-c.wake:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
	}
}

// refreshDue starts a fetch for every tracked identity without a
// certificate or past its refresh time, and returns the earliest refresh
// time still ahead (zero if none).
func (c *Cache) refreshDue() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	var next time.Time
	for id := range c.refs {
		e := c.certs[id]
		if e.fetching != nil {
			continue
		}
		if !now.Before(e.refreshAt) { // zero for a new entry
			c.startFetch(id, e)
			continue
		}
		if next.IsZero() || e.refreshAt.Before(next) {
			next = e.refreshAt
		}
	}
	return next
}

// CertStatus describes one cached certificate, for the admin API.
type CertStatus struct {
	Identity  Identity
	Refs      int // workloads on the node with this identity
	Leaf      *x509.Certificate
	Chain     []*x509.Certificate // leaf first, as sent to peers
	RefreshAt time.Time
	Fetching  bool
	Err       error // the last failed request, if the last one failed
}

// Status lists the cached certificates, sorted by identity.
func (c *Cache) Status() []CertStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]CertStatus, 0, len(c.certs))
	for id, e := range c.certs {
		s := CertStatus{Identity: id, Refs: c.refs[id], RefreshAt: e.refreshAt, Fetching: e.fetching != nil, Err: e.err}
		if e.cert != nil {
			s.Leaf = e.cert.Leaf
			for _, der := range e.cert.Certificate {
				if x, err := x509.ParseCertificate(der); err == nil {
					s.Chain = append(s.Chain, x)
				}
			}
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b CertStatus) int { return compareString(a.Identity.String(), b.Identity.String()) })
	return out
}

func compareString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// ErrNoIdentity is returned by LeafIdentity for a certificate without an
// Istio SPIFFE URI SAN.
var ErrNoIdentity = errors.New("certificate has no spiffe://<td>/ns/<ns>/sa/<sa> URI SAN")
