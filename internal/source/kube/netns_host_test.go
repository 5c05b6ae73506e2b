package kube

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/kmesh-go/kmesh/internal/testbed"
)

// TestResolver_OnThisHost finds test-bed pods by their addresses among
// every namespace of this host (root; skipped without it).
func TestResolver_OnThisHost(t *testing.T) {
	bed := testbed.NewT(t)
	n, err := bed.AddNode("node", netip.MustParsePrefix("10.72.1.0/24"), netip.MustParsePrefix("fd00:72:1::/64"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := n.AddPod("a", netip.MustParseAddr("10.72.1.10"), netip.MustParseAddr("fd00:72:1::10"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.AddPod("b", netip.MustParseAddr("10.72.1.11"))
	if err != nil {
		t.Fatal(err)
	}
	r := NewResolver()
	for _, tc := range []struct {
		pod *testbed.Pod
		ips []netip.Addr
	}{
		{a, ips("10.72.1.10", "fd00:72:1::10")},
		{b, ips("10.72.1.11")},
	} {
		got, err := r.Resolve(tc.pod.Name, tc.ips)
		if err != nil || got != tc.pod.NetnsPath {
			t.Fatalf("Resolve(%v) = %q, %v; want %s", tc.ips, got, err, tc.pod.NetnsPath)
		}
	}
	if r.scans != 1 {
		t.Fatalf("%d scans, want 1: the first scan indexes every namespace", r.scans)
	}
	// The node holds its pods' gateway, not a pod address; the host holds
	// neither.
	if _, err := r.Resolve("x", ips("10.72.1.99")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Resolve of an unused address: %v, want ErrNotFound", err)
	}
}
