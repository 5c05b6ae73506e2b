package model

import (
	"encoding/json"
	"strings"
	"testing"
)

// A Locality is one interned place: equal places compare equal, the parts
// read back, all-empty is the zero Locality, and the mesh's JSON (the
// tunnel's state file) reads and writes it as the three strings it was.
func TestLocality_PlaceAndJSON(t *testing.T) {
	a := NewLocality("eu-west", "eu-west-1a", "rack-7")
	if b := NewLocality("eu-west", "eu-west-1a", "rack-7"); a != b {
		t.Fatal("one place made twice compares unequal")
	}
	if a == NewLocality("eu-west", "eu-west-1b", "rack-7") || a == (Locality{}) {
		t.Fatal("different places compare equal")
	}
	if a.Region() != "eu-west" || a.Zone() != "eu-west-1a" || a.Subzone() != "rack-7" || a.String() != "eu-west/eu-west-1a/rack-7" {
		t.Fatalf("parts %q %q %q, string %q", a.Region(), a.Zone(), a.Subzone(), a)
	}
	var zero Locality
	if NewLocality("", "", "") != zero || zero.Region() != "" || zero.String() != "" {
		t.Fatal("no place is not the zero Locality")
	}
	if r := NewLocality("eu-west", "", ""); r.Region() != "eu-west" || r.Zone() != "" || r.String() != "eu-west//" {
		t.Fatalf("region alone: %q", r)
	}
	m := Mesh{Workloads: []Workload{{Name: "a", Locality: a}, {Name: "b"}}}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"Locality":{"Region":"eu-west","Zone":"eu-west-1a","Subzone":"rack-7"}`, `"Locality":{"Region":"","Zone":"","Subzone":""}`} {
		if !strings.Contains(string(b), want) {
			t.Fatalf("JSON %s lacks %s", b, want)
		}
	}
	var back Mesh
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Workloads[0].Locality != a || back.Workloads[1].Locality != zero {
		t.Fatalf("read back %q and %q", back.Workloads[0].Locality, back.Workloads[1].Locality)
	}
}
