package identity_test

import (
	"errors"
	"testing"

	"github.com/kmesh-go/kmesh/internal/identity"
)

func TestIdentity_ParseString(t *testing.T) {
	id := identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "sleep"}
	if got := id.String(); got != "spiffe://cluster.local/ns/default/sa/sleep" {
		t.Fatalf("String() = %q", got)
	}
	back, err := identity.Parse(id.String())
	if err != nil || back != id {
		t.Fatalf("Parse(%q) = %+v, %v", id, back, err)
	}
	if id.URL().String() != id.String() {
		t.Fatalf("URL() = %q, String() = %q", id.URL(), id)
	}
}

func TestIdentity_ParseRejects(t *testing.T) {
	for _, tc := range []struct{ name, uri string }{
		{"no scheme", "cluster.local/ns/a/sa/b"},
		{"http", "http://cluster.local/ns/a/sa/b"},
		{"missing sa", "spiffe://cluster.local/ns/a"},
		{"swapped", "spiffe://cluster.local/sa/a/ns/b"},
		{"extra segment", "spiffe://cluster.local/ns/a/sa/b/c"},
		{"empty namespace", "spiffe://cluster.local/ns//sa/b"},
		{"empty trust domain", "spiffe:///ns/a/sa/b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if id, err := identity.Parse(tc.uri); err == nil {
				t.Fatalf("Parse(%q) = %+v, want an error", tc.uri, id)
			}
		})
	}
	if _, err := identity.Parse("spiffe://td/x"); !errors.Is(err, identity.ErrNotSPIFFE) {
		t.Fatalf("err = %v, want ErrNotSPIFFE", err)
	}
}
