package authz_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/kmesh-go/kmesh/internal/authz"
	"github.com/kmesh-go/kmesh/internal/authz/authztest"
	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/model"
)

// TestEvaluate_Cases runs the shared table: the destination's view, where
// the source is known by its address; and, for sources that are workloads,
// the source's view at connect time, which must decide the same.
func TestEvaluate_Cases(t *testing.T) {
	for _, c := range authztest.Cases {
		t.Run(c.Name, func(t *testing.T) {
			m := c.Mesh()
			if err := m.Validate(); err != nil {
				t.Fatalf("case mesh: %v", err)
			}
			ix := authz.NewIndex(m)
			src := netip.MustParseAddr(c.Src)
			dst := netip.MustParseAddrPort(c.Dst)
			d, ok := ix.AtDestination(src, dst)
			check(t, "destination", c, d, ok)
			if w := ix.WorkloadAt(src); w != nil {
				d, ok := ix.FromWorkload(w, src, dst)
				check(t, "source", c, d, ok)
			}
		})
	}
}

func check(t *testing.T, side string, c authztest.Case, d authz.Decision, ok bool) {
	t.Helper()
	got := authztest.Pass
	switch {
	case !ok:
	case d.Allowed:
		got = authztest.Allow
	default:
		got = authztest.Deny
	}
	if got != c.Want || d.Policy != c.Policy || !slices.Equal(d.Counted, c.Counted) {
		t.Errorf("%s side: %s (policy %q, counted %q; %s), want %s (policy %q, counted %q)",
			side, got, d.Policy, d.Counted, d.Reason, c.Want, c.Policy, c.Counted)
	}
}

func TestIdentity(t *testing.T) {
	w := &model.Workload{Name: "a", Namespace: "prod"}
	id := authz.IdentityOf(w)
	if id.String() != "spiffe://cluster.local/ns/prod/sa/default" {
		t.Fatalf("identity of a workload without service account: %s", id)
	}
	w.ServiceAccount = "api"
	if got := authz.IdentityOf(w).Principal(); got != "cluster.local/ns/prod/sa/api" {
		t.Fatalf("principal %s", got)
	}
	if authz.IdentityOf(w).Hash() == id.Hash() || id.Hash() == 0 {
		t.Fatal("hashes of two identities collide or are 0")
	}
}

func TestIndex_SharedAddressGoesToFirstWorkload(t *testing.T) {
	a := netip.MustParseAddr("10.0.0.1")
	m := &model.Mesh{Workloads: []model.Workload{
		{Name: "b", Namespace: "x", Addresses: []netip.Addr{a}},
		{Name: "a", Namespace: "x", Addresses: []netip.Addr{a}},
	}}
	if w := authz.NewIndex(m).WorkloadAt(netip.MustParseAddr("::ffff:10.0.0.1")); w == nil || w.Name != "a" {
		t.Fatalf("workload at a shared, v4-mapped address: %v", w)
	}
}

func TestFromSPIFFE(t *testing.T) {
	id := identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "client"}
	if got := authz.FromSPIFFE(id); got == nil || got.Principal() != "cluster.local/ns/default/sa/client" {
		t.Fatalf("FromSPIFFE(%s) = %v", id, got)
	}
	id.TrustDomain = "example.org"
	if got := authz.FromSPIFFE(id); got != nil {
		t.Fatalf("another trust domain gave principal %s", got.Principal())
	}
}
