package dataplane

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/model"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// newMaps returns a store of real maps (root only), closed at cleanup.
func newMaps(t testing.TB, limits bpf.Limits) *Store {
	t.Helper()
	maps := rawMaps(t, limits)
	t.Cleanup(func() { maps.Close() })
	return MapStore(maps)
}

// rawMaps creates real maps the caller closes.
func rawMaps(t testing.TB, limits bpf.Limits) *bpf.KmeshMaps {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("KMESH_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("creating BPF maps needs root")
		}
		t.Skip("creating BPF maps needs root")
	}
	maps, err := bpf.NewMaps(limits)
	if err != nil {
		t.Fatal(err)
	}
	return maps
}

func dump(t *testing.T, maps *Store) string {
	t.Helper()
	lines, err := Dump(maps)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

func workload(name string, weight uint32, addrs ...string) model.Workload {
	w := model.Workload{Name: name, Namespace: "default", Node: "node-a", Weight: weight, Labels: map[string]string{"app": "hello"}}
	for _, a := range addrs {
		w.Addresses = append(w.Addresses, netip.MustParseAddr(a))
	}
	return w
}

func hello(mode model.LBMode, workloads ...model.Workload) *model.Mesh {
	s := model.Service{
		Name: "hello", Namespace: "default", LBMode: mode,
		Addresses: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:96::10")},
		Ports:     []model.ServicePort{{Port: 80, TargetPort: 8080, Protocol: model.ProtocolTCP}},
	}
	for _, w := range workloads {
		s.Endpoints = append(s.Endpoints, model.Endpoint{Workload: w.Key()})
	}
	return &model.Mesh{Services: []model.Service{s}, Workloads: workloads}
}

func TestDataplane_ApplyWritesEveryMap(t *testing.T) {
	maps := newMaps(t, bpf.DefaultLimits)
	d, err := New(maps, bpf.DefaultLimits, discard)
	if err != nil {
		t.Fatal(err)
	}
	m := hello(model.LBRandom,
		workload("hello-1", 1, "10.1.1.11", "fd00:1:1::11"),
		workload("hello-2", 1, "10.1.2.12"))
	if err := d.Apply(m); err != nil {
		t.Fatal(err)
	}
	want := `backend 1 v4=10.1.1.11 v6=fd00:1:1::11
backend 2 v4=10.1.2.12
endpoint service=1 family=v4 gen=0 slot=0 backend=1
endpoint service=1 family=v4 gen=0 slot=1 backend=2
endpoint service=1 family=v6 gen=0 slot=0 backend=1
frontend 10.96.0.10:80/TCP service=1 target_port=8080
frontend [fd00:96::10]:80/TCP service=1 target_port=8080
service 1 mode=random gen=0 slots_v4=2 slots_v6=1`
	if got := dump(t, maps); got != want {
		t.Fatalf("maps:\n%s\nwant:\n%s", got, want)
	}
}

func TestDataplane_UpdateFlipsGenerationAndFreesOld(t *testing.T) {
	maps := newMaps(t, bpf.DefaultLimits)
	d, _ := New(maps, bpf.DefaultLimits, discard)
	h1, h2, h3 := workload("hello-1", 1, "10.1.1.11"), workload("hello-2", 1, "10.1.2.12"), workload("hello-3", 1, "10.1.2.13")
	if err := d.Apply(hello(model.LBRoundRobin, h1, h2, h3)); err != nil {
		t.Fatal(err)
	}
	// hello-2 leaves; hello-1 becomes heavier.
	h1.Weight = 2
	if err := d.Apply(hello(model.LBRoundRobin, h1, h3)); err != nil {
		t.Fatal(err)
	}
	want := `backend 1 v4=10.1.1.11
backend 3 v4=10.1.2.13
endpoint service=1 family=v4 gen=1 slot=0 backend=1
endpoint service=1 family=v4 gen=1 slot=1 backend=3
endpoint service=1 family=v4 gen=1 slot=2 backend=1
frontend 10.96.0.10:80/TCP service=1 target_port=8080
frontend [fd00:96::10]:80/TCP service=1 target_port=8080
service 1 mode=round_robin gen=1 slots_v4=3 slots_v6=0`
	if got := dump(t, maps); got != want {
		t.Fatalf("maps:\n%s\nwant:\n%s", got, want)
	}
	// An identical apply writes nothing: the generation stays.
	if err := d.Apply(hello(model.LBRoundRobin, h1, h3)); err != nil {
		t.Fatal(err)
	}
	if got := dump(t, maps); got != want {
		t.Fatalf("maps after a no-op apply:\n%s\nwant:\n%s", got, want)
	}
	// Removing the service removes everything.
	if err := d.Apply(&model.Mesh{Workloads: []model.Workload{h1, h3}}); err != nil {
		t.Fatal(err)
	}
	if got := dump(t, maps); got != "" {
		t.Fatalf("maps after removing the service:\n%s", got)
	}
}

func TestDataplane_ArrivalOrderDoesNotMatter(t *testing.T) {
	h := []model.Workload{workload("hello-1", 3, "10.1.1.11"), workload("hello-2", 1, "10.1.2.12"), workload("hello-3", 2, "10.1.2.13")}
	var dumps []string
	for _, order := range [][]int{{0, 1, 2}, {2, 0, 1}, {1, 2, 0}} {
		maps := newMaps(t, bpf.DefaultLimits)
		d, _ := New(maps, bpf.DefaultLimits, discard)
		var ws []model.Workload
		for _, i := range order {
			ws = append(ws, h[i])
		}
		// Build up one workload at a time, then the whole set.
		for n := 1; n <= len(ws); n++ {
			if err := d.Apply(hello(model.LBRandom, ws[:n]...)); err != nil {
				t.Fatal(err)
			}
		}
		dumps = append(dumps, endpointShares(t, maps))
	}
	if dumps[0] != dumps[1] || dumps[0] != dumps[2] {
		t.Fatalf("slot shares differ by arrival order:\n%s", strings.Join(dumps, "\n--\n"))
	}
	if dumps[0] != "10.1.1.11=3 10.1.2.12=1 10.1.2.13=2" {
		t.Fatalf("slot shares = %s, want weights 3:1:2", dumps[0])
	}
}

// A first sync gives backends ids in name order whether the workloads come
// sorted by key (as the xDS source hands them over) or not (a file's
// order): the same mesh writes the same maps, id for id.
func TestDataplane_BackendIDsFollowNamesInAnyWorkloadOrder(t *testing.T) {
	sorted := hello(model.LBRandom,
		workload("a-1", 1, "10.1.1.1"), workload("a-10", 1, "10.1.1.10"), workload("a-2", 1, "10.1.1.2"))
	// Not endpoints or no address: never backends, whatever their place.
	sorted.Workloads = slices.Insert(sorted.Workloads, 2, workload("a-11", 1, "10.1.1.11"))
	sorted.Workloads = append(sorted.Workloads, workload("b", 1))
	sorted.Services[0].Endpoints = append(sorted.Services[0].Endpoints, model.Endpoint{Workload: "default/b"})
	shuffled := *sorted
	shuffled.Workloads = slices.Clone(sorted.Workloads)
	slices.Reverse(shuffled.Workloads)
	var dumps []string
	for _, m := range []*model.Mesh{sorted, &shuffled} {
		maps := newMaps(t, bpf.DefaultLimits)
		d, _ := New(maps, bpf.DefaultLimits, discard)
		if err := d.Apply(m); err != nil {
			t.Fatal(err)
		}
		dumps = append(dumps, dump(t, maps))
	}
	if dumps[0] != dumps[1] {
		t.Fatalf("maps differ by workload order:\n%s\n--\n%s", dumps[0], dumps[1])
	}
	lines := strings.Split(dumps[0], "\n")
	for i, want := range []string{"backend 1 v4=10.1.1.1", "backend 2 v4=10.1.1.10", "backend 3 v4=10.1.1.2"} {
		if !slices.Contains(lines, want) {
			t.Fatalf("backend %d: want %q in\n%s", i+1, want, dumps[0])
		}
	}
	if strings.Contains(dumps[0], "backend 4") {
		t.Fatalf("a workload that is no endpoint, or has no address, got a backend:\n%s", dumps[0])
	}
}

// endpointShares counts live v4 slots per backend address.
func endpointShares(t *testing.T, maps *Store) string {
	counts := map[string]int{}
	var ek bpf.KmeshEndpointKey
	var ev bpf.KmeshEndpointValue
	it := maps.KmEndpoint.Iterate()
	for it.Next(&ek, &ev) {
		var sv bpf.KmeshServiceValue
		if err := maps.KmService.Lookup(ek.ServiceId, &sv); err != nil {
			t.Fatal(err)
		}
		if ek.Gen != sv.Gen {
			t.Fatalf("slot %+v of a dead generation left behind", ek)
		}
		var bv bpf.KmeshBackendValue
		if err := maps.KmBackend.Lookup(ev.BackendId, &bv); err != nil {
			t.Fatal(err)
		}
		counts[bpf.WordsAddr([4]uint32{0, 0, netWordFFFF, bv.Addr4}).String()]++
	}
	var out []string
	for a, n := range counts {
		out = append(out, fmt.Sprintf("%s=%d", a, n))
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

func TestDataplane_FullMapRefusedWithoutWrites(t *testing.T) {
	limits := bpf.DefaultLimits
	limits.Endpoints = 4
	maps := newMaps(t, limits)
	d, _ := New(maps, limits, discard)
	h1, h2 := workload("hello-1", 1, "10.1.1.11"), workload("hello-2", 1, "10.1.2.12")
	if err := d.Apply(hello(model.LBRandom, h1, h2)); err != nil {
		t.Fatal(err)
	}
	before := dump(t, maps)
	err := d.Apply(hello(model.LBRandom, h1, h2, workload("hello-3", 1, "10.1.2.13")))
	if !errors.Is(err, ErrMapFull) {
		t.Fatalf("apply over capacity: err = %v, want ErrMapFull", err)
	}
	if !strings.Contains(err.Error(), "km_endpoint") || !strings.Contains(err.Error(), "--max-endpoints") {
		t.Fatalf("error %q does not name the map and its flag", err)
	}
	if after := dump(t, maps); after != before {
		t.Fatalf("a refused apply changed the maps:\n%s\nwas:\n%s", after, before)
	}
	// The old state still updates within capacity.
	if err := d.Apply(hello(model.LBRandom, h1)); err != nil {
		t.Fatal(err)
	}
}

func TestDataplane_NewInstanceAdoptsWhatItKeepsAndSweepsTheRest(t *testing.T) {
	maps := newMaps(t, bpf.DefaultLimits)
	old, _ := New(maps, bpf.DefaultLimits, discard)
	h1, h2 := workload("hello-1", 1, "10.1.1.11"), workload("hello-2", 1, "10.1.2.12")
	if err := old.Apply(hello(model.LBRandom, h1, h2)); err != nil {
		t.Fatal(err)
	}
	// A restarted daemon finds the entries and keeps them until its first apply.
	d, err := New(maps, bpf.DefaultLimits, discard)
	if err != nil {
		t.Fatal(err)
	}
	if d.stale == nil || len(d.stale.services) != 1 || len(d.stale.backends) != 2 {
		t.Fatalf("stale entries found: %+v", d.stale)
	}
	// hello-1 left while no daemon ran: the service keeps its id and flips
	// generation; hello-2 keeps its backend; hello-1's goes.
	if err := d.Apply(hello(model.LBRandom, h2)); err != nil {
		t.Fatal(err)
	}
	want := `backend 2 v4=10.1.2.12
endpoint service=1 family=v4 gen=1 slot=0 backend=2
frontend 10.96.0.10:80/TCP service=1 target_port=8080
frontend [fd00:96::10]:80/TCP service=1 target_port=8080
service 1 mode=random gen=1 slots_v4=1 slots_v6=0`
	if got := dump(t, maps); got != want {
		t.Fatalf("maps:\n%s\nwant:\n%s", got, want)
	}
}

func TestDataplane_RestartWithSameConfigWritesNothingAndFitsFullMaps(t *testing.T) {
	// Maps sized for the mesh plus one slot of headroom (an update writes
	// a service's new slots before freeing the old): a restart that wrote a
	// second copy of everything before removing the first would not fit.
	limits := bpf.DefaultLimits
	limits.Services, limits.Frontends, limits.Endpoints, limits.Backends = 1, 2, 4, 2
	maps := newMaps(t, limits)
	m := hello(model.LBRoundRobin, workload("hello-1", 1, "10.1.1.11", "fd00:1:1::11"), workload("hello-2", 1, "10.1.2.12"))
	old, _ := New(maps, limits, discard)
	if err := old.Apply(m); err != nil {
		t.Fatal(err)
	}
	before := dump(t, maps)
	d, err := New(maps, limits, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(m); err != nil {
		t.Fatalf("restart with the same config into full maps: %v", err)
	}
	if after := dump(t, maps); after != before {
		t.Fatalf("maps changed by a restart with the same config:\n%s\nwas:\n%s", after, before)
	}
	if d.stale != nil {
		t.Fatalf("stale entries left after the first apply: %+v", d.stale)
	}
	// And the restarted instance goes on updating in place.
	if err := d.Apply(hello(model.LBRoundRobin, workload("hello-2", 1, "10.1.2.12"))); err != nil {
		t.Fatal(err)
	}
}

func TestExpandSlots_FollowsWeightsInterleaved(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []weighted
		want []uint32
	}{
		{"equal weights", []weighted{{2, 1}, {1, 1}, {3, 1}}, []uint32{1, 2, 3}},
		{"common divisor removed", []weighted{{1, 10}, {2, 20}}, []uint32{2, 1, 2}},
		{"heavy backend spread", []weighted{{1, 5}, {2, 1}, {3, 1}}, []uint32{1, 1, 2, 1, 3, 1, 1}},
		{"empty", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := expandSlots(tc.in); !slices.Equal(got, tc.want) {
				t.Fatalf("expandSlots = %v, want %v", got, tc.want)
			}
		})
	}
}
