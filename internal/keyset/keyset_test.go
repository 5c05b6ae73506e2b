package keyset

import (
	"slices"
	"testing"
)

// A Map keeps what the slices it replaces kept: every name once, in
// arrival order, the next one first when the first leaves.
func TestMap_KeepsArrivalOrder(t *testing.T) {
	c := New[string]()
	check := func(key string, want ...string) {
		t.Helper()
		if got := c.Names(key); !slices.Equal(got, want) {
			t.Fatalf("names(%s) = %v, want %v", key, got, want)
		}
		if c.Count(key) != len(want) {
			t.Fatalf("count(%s) = %d, want %d", key, c.Count(key), len(want))
		}
		name, ok := c.Only(key)
		if ok != (len(want) == 1) || (ok && name != want[0]) {
			t.Fatalf("only(%s) = %q, %v with claimants %v", key, name, ok, want)
		}
	}
	check("k")
	c.Mark("k", "a", true)
	c.Mark("k", "a", true) // again: still once
	check("k", "a")
	c.Mark("k", "b", true)
	c.Mark("k", "c", true)
	c.Mark("k", "b", true)
	check("k", "a", "b", "c")
	c.Mark("k", "x", false) // not a claimant: nothing changes
	check("k", "a", "b", "c")
	c.Mark("k", "b", false) // a later one leaves
	check("k", "a", "c")
	c.Mark("k", "a", false) // the first leaves: the next is first
	check("k", "c")
	c.Mark("other", "a", true)
	c.Mark("k", "c", false)
	check("k")
	check("other", "a")
	if c.Len() != 1 || len(c.one) != 1 || len(c.more) != 0 {
		t.Fatalf("left behind: one %v, more %v", c.one, c.more)
	}
}

// A key filled by First is one Mark made: later names follow it.
func TestMap_FirstIsMarkOfANewKey(t *testing.T) {
	c, d := New[string](), New[string]()
	c.First("k", "a")
	d.Mark("k", "a", true)
	for _, m := range []Map[string]{c, d} {
		m.Mark("k", "b", true)
		m.Mark("k", "a", false)
	}
	if got, want := c.Names("k"), d.Names("k"); !slices.Equal(got, want) || len(got) != 1 || got[0] != "b" {
		t.Fatalf("after First: names %v, after Mark: %v; want [b]", got, want)
	}
}
