package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// flakyCA is a real local CA whose requests can be made to fail, as an
// unreachable istiod's would.
type flakyCA struct {
	*localCA
	mu    sync.Mutex
	fail  bool
	calls int
}

func (f *flakyCA) Issue(ctx context.Context, id Identity, csr []byte) ([]*x509.Certificate, error) {
	f.mu.Lock()
	f.calls++
	fail := f.fail
	f.mu.Unlock()
	if fail {
		return nil, errors.New("ca unavailable")
	}
	return f.localCA.Issue(ctx, id, csr)
}

func (f *flakyCA) setFail(v bool) { f.mu.Lock(); f.fail = v; f.mu.Unlock() }

func newTestCache(t *testing.T, ttl time.Duration) (*Cache, *flakyCA, *clock) {
	t.Helper()
	clk := &clock{t: time.Now()}
	certPEM, keyPEM, err := GenerateCA("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := newLocalCA(certPEM, keyPEM, "cluster.local", options{ttl: ttl, now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	f := &flakyCA{localCA: ca}
	c := NewCache(f, WithClock(clk.Now))
	// Renew at half-life exactly: these tests step the clock around it
	// (TestCache_RenewalJitter covers the jitter).
	c.jitter = func() float64 { return 0 }
	return c, f, clk
}

// TestCache_RenewalJitter: a cache renews each certificate between 40 %
// and 50 % of its lifetime, at a time drawn anew for each one, so
// identities issued in the same instant do not all come back together.
func TestCache_RenewalJitter(t *testing.T) {
	now := time.Now()
	leaf := &x509.Certificate{NotBefore: now, NotAfter: now.Add(100 * time.Second)}
	for _, tt := range []struct {
		u    float64
		want time.Duration // after not_before
	}{{0, 50 * time.Second}, {0.5, 45 * time.Second}, {1, 40 * time.Second}, {-1, 50 * time.Second}, {2, 40 * time.Second}} {
		if got := RenewAt(leaf, tt.u).Sub(now); got != tt.want {
			t.Errorf("RenewAt(u=%v) = not_before+%v, want +%v", tt.u, got, tt.want)
		}
	}

	// The real cache: ten identities issued at once get renewal times
	// spread over the window, none past half-life.
	clk := &clock{t: time.Now()}
	certPEM, keyPEM, err := GenerateCA("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := newLocalCA(certPEM, keyPEM, "cluster.local", options{ttl: time.Hour, now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	c := NewCache(ca, WithClock(clk.Now))
	distinct := map[time.Time]bool{}
	for i := range 10 {
		id := Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: fmt.Sprint("sa-", i)}
		if _, err := c.Certificate(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	settle(c)
	for _, st := range c.Status() {
		life := st.Leaf.NotAfter.Sub(st.Leaf.NotBefore)
		at := st.RefreshAt.Sub(st.Leaf.NotBefore)
		if at < life*4/10 || at > life/2 {
			t.Errorf("%s renews at %v of a %v lifetime, want between 40 %% and 50 %%", st.Identity, at, life)
		}
		distinct[st.RefreshAt] = true
	}
	if len(distinct) < 5 {
		t.Errorf("10 certificates issued together renew at %d distinct times, want them spread", len(distinct))
	}
}

// settle waits for every fetch in flight.
func settle(c *Cache) {
	for {
		c.mu.Lock()
		var ch chan struct{}
		for _, e := range c.certs {
			if e.fetching != nil {
				ch = e.fetching
				break
			}
		}
		c.mu.Unlock()
		if ch == nil {
			return
		}
		<-ch
	}
}

var app = Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "app"}

func serial(t *testing.T, c *Cache) string {
	t.Helper()
	cert, err := c.Certificate(context.Background(), app)
	if err != nil {
		t.Fatal(err)
	}
	return cert.Leaf.SerialNumber.String()
}

// TestCache_RenewsAtHalfLife: a one-minute certificate is served as is
// before half-life, still served (while a renewal runs) after it, and
// replaced by the renewal; no call fails on the way.
func TestCache_RenewsAtHalfLife(t *testing.T) {
	c, ca, clk := newTestCache(t, time.Minute)
	first := serial(t, c)
	// A one-minute certificate is backdated by 6 s, so half-life is 27 s on.
	clk.Add(26 * time.Second)
	if s := serial(t, c); s != first {
		t.Fatal("renewed before half-life")
	}
	settle(c)
	if ca.calls != 1 {
		t.Fatalf("%d requests before half-life, want 1", ca.calls)
	}
	clk.Add(2 * time.Second)
	if s := serial(t, c); s != first {
		t.Fatal("the call that found the certificate past half-life waited for the renewal")
	}
	settle(c)
	second := serial(t, c)
	if second == first || ca.calls != 2 {
		t.Fatalf("after half-life: serial changed %v, %d requests", second != first, ca.calls)
	}
	// Past the first one's expiry, the second is still served.
	clk.Add(40 * time.Second)
	if s := serial(t, c); s != second {
		t.Fatal("the renewed certificate was not kept")
	}
}

func TestCache_ExpiredWaitsForNew(t *testing.T) {
	c, _, clk := newTestCache(t, time.Minute)
	first := serial(t, c)
	clk.Add(2 * time.Minute)
	cert, err := c.Certificate(context.Background(), app)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Leaf.SerialNumber.String() == first || clk.Now().After(cert.Leaf.NotAfter) {
		t.Fatal("an expired certificate was served")
	}
}

// TestCache_TrackedRenewedAhead: Run's step fetches a tracked identity at
// once and renews it at half-life without any caller; Untrack forgets it.
func TestCache_TrackedRenewedAhead(t *testing.T) {
	c, ca, clk := newTestCache(t, time.Minute)
	c.Track(app)
	c.Track(app)
	next := c.refreshDue()
	if !next.IsZero() {
		t.Fatalf("next = %v before the first certificate", next)
	}
	settle(c)
	st := c.Status()
	if len(st) != 1 || st[0].Leaf == nil || st[0].Refs != 2 {
		t.Fatalf("status = %+v", st)
	}
	first := st[0].Leaf.SerialNumber
	next = c.refreshDue()
	if want := RefreshAt(st[0].Leaf); !next.Equal(want) {
		t.Fatalf("next refresh %v, want %v", next, want)
	}
	clk.Add(next.Sub(clk.Now()))
	c.refreshDue()
	settle(c)
	st = c.Status()
	if st[0].Leaf.SerialNumber.Cmp(first) == 0 || ca.calls != 2 {
		t.Fatalf("not renewed at half-life (%d requests)", ca.calls)
	}
	c.Untrack(app)
	if len(c.Status()) != 1 {
		t.Fatal("forgotten while a workload still has the identity")
	}
	c.Untrack(app)
	if len(c.Status()) != 0 {
		t.Fatal("kept after the last workload left")
	}
}

// TestCache_FailedRenewalKeepsCertificate: while the CA is down the valid
// certificate stays in use and the renewal is retried with backoff.
func TestCache_FailedRenewalKeepsCertificate(t *testing.T) {
	c, ca, clk := newTestCache(t, time.Minute)
	c.Track(app)
	c.refreshDue()
	settle(c)
	first := serial(t, c)
	ca.setFail(true)
	clk.Add(30 * time.Second)
	c.refreshDue()
	settle(c)
	st := c.Status()[0]
	if st.Err == nil || st.Leaf.SerialNumber.String() != first {
		t.Fatalf("after a failure: err %v, certificate kept %v", st.Err, st.Leaf.SerialNumber.String() == first)
	}
	if d := st.RefreshAt.Sub(clk.Now()); d != minRetry {
		t.Fatalf("retry in %v, want %v", d, minRetry)
	}
	if s := serial(t, c); s != first {
		t.Fatal("served a different certificate while the CA is down")
	}
	clk.Add(minRetry)
	c.refreshDue()
	settle(c)
	if d := c.Status()[0].RefreshAt.Sub(clk.Now()); d != 2*minRetry {
		t.Fatalf("second retry in %v, want %v", d, 2*minRetry)
	}
	ca.setFail(false)
	clk.Add(2 * minRetry)
	c.refreshDue()
	settle(c)
	st = c.Status()[0]
	if st.Err != nil || st.Leaf.SerialNumber.String() == first {
		t.Fatalf("after recovery: err %v, renewed %v", st.Err, st.Leaf.SerialNumber.String() != first)
	}
}

func TestCache_NoCertificateWhenCADown(t *testing.T) {
	c, ca, _ := newTestCache(t, time.Minute)
	ca.setFail(true)
	if _, err := c.Certificate(context.Background(), app); err == nil {
		t.Fatal("got a certificate from a failing CA")
	}
}

// TestCache_RunRenewsInRealTime drives Run with the real clock: a
// certificate of 2 s is renewed about every second.
func TestCache_RunRenewsInRealTime(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for renewals")
	}
	certPEM, keyPEM, err := GenerateCA("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := newLocalCA(certPEM, keyPEM, "cluster.local", options{ttl: 2 * time.Second, now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	c := NewCache(ca)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	c.Track(app)
	seen := map[string]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for len(seen) < 3 && time.Now().Before(deadline) {
		for _, s := range c.Status() {
			if s.Leaf != nil {
				seen[s.Leaf.SerialNumber.String()] = true
				if time.Now().After(s.Leaf.NotAfter) {
					t.Fatal("Run let a tracked certificate expire")
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(seen) < 3 {
		t.Fatalf("%d certificates in 10 s, want renewals every second", len(seen))
	}
}

func TestCache_SetTracked(t *testing.T) {
	c, _, _ := newTestCache(t, time.Minute)
	other := Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "other"}
	c.SetTracked(map[Identity]int{app: 2, other: 1})
	c.refreshDue()
	settle(c)
	if st := c.Status(); len(st) != 2 || st[0].Leaf == nil || st[1].Leaf == nil || st[0].Refs != 2 {
		t.Fatalf("status = %+v", st)
	}
	c.SetTracked(map[Identity]int{other: 1})
	if st := c.Status(); len(st) != 1 || st[0].Identity != other {
		t.Fatalf("after app left: %+v", st)
	}
}
