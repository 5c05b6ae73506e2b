package maglev

import (
	"fmt"
	"net/netip"
	"testing"
)

func backends(n int) []Backend {
	out := make([]Backend, n)
	for i := range out {
		out[i] = Backend{Name: fmt.Sprintf("default/server-%d", i)}
	}
	return out
}

// clientKeys are 1,000 IPv4 clients as the kernel keys them.
func clientKeys() [][16]byte {
	keys := make([][16]byte, 1000)
	for i := range keys {
		keys[i] = netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}).As16()
		keys[i][10], keys[i][11] = 0xff, 0xff
	}
	return keys
}

func TestBuild_SharesAreEven(t *testing.T) {
	table, err := Build(backends(7), DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	count := map[int]int{}
	for _, b := range table {
		count[b]++
	}
	want := DefaultSize / 7
	for b, n := range count {
		if n < want-1 || n > want+1 {
			t.Errorf("backend %d owns %d entries, want %d±1", b, n, want)
		}
	}
	if len(count) != 7 {
		t.Errorf("%d backends own entries, want 7", len(count))
	}
}

func TestBuild_WeightsShiftShares(t *testing.T) {
	bs := backends(2)
	bs[0].Weight = 3
	table, err := Build(bs, DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	n0 := 0
	for _, b := range table {
		if b == 0 {
			n0++
		}
	}
	if share := float64(n0) / DefaultSize; share < 0.74 || share > 0.76 {
		t.Errorf("weight 3 of 4 owns %.3f of the table, want 0.75", share)
	}
}

// Removing one of N backends moves only the clients it had, and about as
// many more as a small margin: at most 1/N + 2% of 1,000 client keys.
func TestBuild_RemovingOneMovesItsShare(t *testing.T) {
	for _, n := range []int{3, 5, 10, 20} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			before := backends(n)
			after := append([]Backend{}, before[:n/2]...)
			after = append(after, before[n/2+1:]...)
			tb, err := Build(before, DefaultSize)
			if err != nil {
				t.Fatal(err)
			}
			ta, err := Build(after, DefaultSize)
			if err != nil {
				t.Fatal(err)
			}
			moved, lost := 0, 0
			for _, k := range clientKeys() {
				i := Hash(k) % DefaultSize
				was, now := before[tb[i]].Name, after[ta[i]].Name
				if was == before[n/2].Name {
					lost++
					continue
				}
				if was != now {
					moved++
				}
			}
			limit := 1000/n + 20
			if lost+moved > limit {
				t.Errorf("%d of 1000 clients moved (%d had the removed backend), want <= %d", lost+moved, lost, limit)
			}
			t.Logf("N=%d: %d clients had the removed backend, %d others moved", n, lost, moved)
		})
	}
}

func TestBuild_IndependentOfOrder(t *testing.T) {
	bs := backends(5)
	rev := []Backend{bs[4], bs[3], bs[2], bs[1], bs[0]}
	a, _ := Build(bs, 251)
	b, _ := Build(rev, 251)
	for i := range a {
		if bs[a[i]].Name != rev[b[i]].Name {
			t.Fatalf("entry %d: %s vs %s", i, bs[a[i]].Name, rev[b[i]].Name)
		}
	}
}

func TestBuild_RejectsBadInput(t *testing.T) {
	if _, err := Build(backends(2), 100); err == nil {
		t.Error("size 100 accepted, want an error: not a prime")
	}
	if _, err := Build(backends(5), 5); err == nil {
		t.Error("5 backends in 5 entries accepted")
	}
	if _, err := Build([]Backend{{Name: "a"}, {Name: "a"}}, 251); err == nil {
		t.Error("a backend twice accepted")
	}
	if tb, err := Build(nil, 251); err != nil || tb != nil {
		t.Errorf("no backends: %v, %v; want an empty table", tb, err)
	}
}
