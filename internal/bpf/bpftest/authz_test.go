package bpftest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/authz"
	"github.com/kmesh-go/kmesh/internal/authz/authztest"
	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/dataplane"
	"github.com/kmesh-go/kmesh/internal/model"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// testLimits keep the maps small; the LPM trie and the counters are sized
// like the others.
var testLimits = bpf.Limits{
	Services: 64, Frontends: 64, Endpoints: 256, Backends: 64, Workloads: 64, Sockets: 64,
	Policies: 64, PolicyMatches: 1024, PolicyValues: 1024, PolicyIPBlocks: 1024, PolicyRefs: 1024, WorkloadAddresses: 256,
	AffinityClients: 64,
}

// TestAuthz_SameAsEvaluator runs every case of internal/authz/authztest
// through the kernel: the real dataplane writes the case's mesh into real
// maps, and bpf/tests/authz_test.c decides the case's connection with
// include/authz.h, as the SYN's node does (the source known by its
// address) and, for sources that are workloads, as connect() does on the
// source's node. Both must give the Go evaluator's verdict, name the same
// policy, and count the same AUDIT and dry-run policies.
func TestAuthz_SameAsEvaluator(t *testing.T) {
	requirePrivilege(t)
	spec, err := loadAuthzTest()
	if err != nil {
		t.Fatal(err)
	}
	// Each case on empty maps; after each, the maps must empty again.
	t.Run("each case from empty maps", func(t *testing.T) {
		h := newAuthzHarness(t, spec)
		for _, c := range authztest.Cases {
			t.Run(c.Name, func(t *testing.T) {
				h.apply(t, c.Mesh())
				h.check(t, c, true)
				h.apply(t, &model.Mesh{})
				h.empty(t)
			})
		}
	})
	// One dataplane through every case, in order and back: each case is an
	// update of the previous one's maps, as a policy change is.
	t.Run("one dataplane, case after case", func(t *testing.T) {
		h := newAuthzHarness(t, spec)
		cases := append(slices.Clone(authztest.Cases), reversed(authztest.Cases)...)
		for _, c := range cases {
			h.apply(t, c.Mesh())
			h.check(t, c, false)
		}
		h.apply(t, &model.Mesh{})
		h.empty(t)
	})
	// A restarted kmeshd finds the previous one's entries in the pinned
	// maps: they serve until its first apply, which replaces them whole.
	t.Run("a restarted dataplane takes over the maps", func(t *testing.T) {
		h := newAuthzHarness(t, spec)
		for i, c := range authztest.Cases {
			prev := authztest.Cases[(i+len(authztest.Cases)/2)%len(authztest.Cases)]
			h.apply(t, prev.Mesh())
			h.check(t, prev, false)
			h.restart(t)
			h.check(t, prev, false) // the previous instance's entries still serve
			h.apply(t, c.Mesh())
			h.check(t, c, false)
		}
		h.restart(t)
		h.apply(t, &model.Mesh{})
		h.empty(t)
	})
}

// restart replaces the dataplane with a new one over the same maps, as a
// restarted kmeshd makes.
func (h *authzHarness) restart(t *testing.T) {
	t.Helper()
	dp, err := dataplane.New(dataplane.MapStore(h.maps), testLimits, discard)
	if err != nil {
		t.Fatal(err)
	}
	// The policy names of the maps stay the old instance's until the new
	// one applies: keep reading them from it.
	h.prevDP, h.dp = h.dp, dp
}

// empty fails unless every map the dataplane writes is empty.
func (h *authzHarness) empty(t *testing.T) {
	t.Helper()
	lines, err := dataplane.DumpMaps(h.maps)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 0 {
		t.Fatalf("maps of an empty mesh:\n%s", strings.Join(lines, "\n"))
	}
}

func reversed(cs []authztest.Case) []authztest.Case {
	out := slices.Clone(cs)
	slices.Reverse(out)
	return out
}

type authzHarness struct {
	maps *bpf.KmeshMaps
	dp   *dataplane.Dataplane
	prog *ebpf.Program
	ix   *authz.Index
	// workloads of the mesh applied last; workload i is enrolled under
	// cookie 1000+i.
	workloads []model.Workload
	// prevDP is the dataplane before a restart, whose policy ids the maps
	// hold until the new one applies.
	prevDP *dataplane.Dataplane
}

func newAuthzHarness(t *testing.T, spec *ebpf.CollectionSpec) *authzHarness {
	t.Helper()
	maps, err := bpf.NewMaps(testLimits)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { maps.Close() })
	dp, err := dataplane.New(dataplane.MapStore(maps), testLimits, discard)
	if err != nil {
		t.Fatal(err)
	}
	prog := loadWithMaps(t, spec, "authz_check", maps)
	return &authzHarness{maps: maps, dp: dp, prog: prog}
}

// loadWithMaps loads one program of spec with the maps of the same name
// from maps.
func loadWithMaps(t testing.TB, spec *ebpf.CollectionSpec, name string, maps *bpf.KmeshMaps) *ebpf.Program {
	t.Helper()
	s := spec.Copy()
	for other := range s.Programs {
		if other != name {
			delete(s.Programs, other)
		}
	}
	repl := map[string]*ebpf.Map{}
	v := reflect.ValueOf(maps).Elem()
	for i := 0; i < v.NumField(); i++ {
		tag := v.Type().Field(i).Tag.Get("ebpf")
		m, ok := v.Field(i).Interface().(*ebpf.Map)
		if ms := s.Maps[tag]; ok && ms != nil && m != nil {
			ms.MaxEntries = m.MaxEntries()
			repl[tag] = m
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(s, ebpf.CollectionOptions{MapReplacements: repl})
	if errors.Is(err, ebpf.ErrNotSupported) {
		skipOrFail(t, "kernel lacks a feature the test needs: %v", err)
	}
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	t.Cleanup(func() { coll.Close() })
	return coll.Programs[name]
}

func (h *authzHarness) apply(t *testing.T, m *model.Mesh) {
	t.Helper()
	if err := h.dp.Apply(m); err != nil {
		t.Fatalf("apply: %v", err)
	}
	// Every workload's namespace is "enrolled", under cookie 1000+i.
	cookies := map[uint64]string{}
	for i, w := range m.Workloads {
		cookies[uint64(1000+i)] = w.Key()
	}
	if err := h.dp.ApplyNetns(cookies); err != nil {
		t.Fatalf("apply netns: %v", err)
	}
	h.ix = authz.NewIndex(m)
	h.workloads = m.Workloads
	h.prevDP = nil
}

func (h *authzHarness) check(t *testing.T, c authztest.Case, counts bool) {
	t.Helper()
	src := netip.MustParseAddr(c.Src)
	dst := netip.MustParseAddrPort(c.Dst)
	want, ok := h.ix.AtDestination(src, dst)
	if got := decision(want, ok); got != c.Want {
		t.Fatalf("%s: the evaluator says %s, the table %s", c.Name, got, c.Want)
	}
	before := h.counts(t)
	got, policy := h.run(t, authzTestAuthzTestCtx{Src: bpf.AddrWords(src), Dst: bpf.AddrWords(dst.Addr()), DstPort: bpf.NetPort(dst.Port())})
	h.compare(t, c.Name+" (destination side)", want, ok, got, policy)
	if counts && ok {
		after := h.counts(t)
		var counted []string
		for key, n := range after {
			if n > before[key] {
				counted = append(counted, key)
			}
		}
		slices.Sort(counted)
		wantCounted := slices.Clone(want.Counted)
		slices.Sort(wantCounted)
		if !slices.Equal(counted, wantCounted) {
			t.Errorf("%s: kernel counted %q as matched, evaluator %q", c.Name, counted, wantCounted)
		}
	}

	w := h.ix.WorkloadAt(src)
	if w == nil {
		return
	}
	i := slices.IndexFunc(h.workloads, func(o model.Workload) bool { return o.Key() == w.Key() })
	// connect() has no address yet: the kernel takes the workload's own
	// address of the destination's family, and so does the evaluator.
	var from netip.Addr
	for _, a := range w.Addresses {
		if a.Unmap().Is4() == dst.Addr().Unmap().Is4() {
			from = a
		}
	}
	if !from.IsValid() {
		return // not checked at the source: the destination decides
	}
	want, ok = h.ix.FromWorkload(w, from, dst)
	got, policy = h.run(t, authzTestAuthzTestCtx{NetnsCookie: uint64(1000 + i), FromNetns: 1, Dst: bpf.AddrWords(dst.Addr()), DstPort: bpf.NetPort(dst.Port())})
	h.compare(t, c.Name+" (source side)", want, ok, got, policy)
}

// run passes the connection to the XDP test program as its packet and
// reads the verdict from the packet it returns.
func (h *authzHarness) run(t *testing.T, in authzTestAuthzTestCtx) (uint32, uint32) {
	t.Helper()
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.NativeEndian, &in); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, buf.Len())
	ret, err := h.prog.Run(&ebpf.RunOptions{Data: buf.Bytes(), DataOut: out})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if ret != xdpPass {
		t.Fatalf("run: XDP verdict %d", ret)
	}
	var res authzTestAuthzTestCtx
	if err := binary.Read(bytes.NewReader(out), binary.NativeEndian, &res); err != nil {
		t.Fatal(err)
	}
	return res.Verdict, res.PolicyId
}

const xdpPass = 2

func (h *authzHarness) compare(t *testing.T, what string, want authz.Decision, ok bool, verdict, policy uint32) {
	t.Helper()
	got := "pass"
	switch authzVerdict(verdict) {
	case bpf.KmeshKmAuthzVerdictKM_AUTHZ_ALLOWED:
		got = authztest.Allow
	case bpf.KmeshKmAuthzVerdictKM_AUTHZ_DENIED:
		got = authztest.Deny
	}
	names := h.dp.Policies()
	if h.prevDP != nil {
		names = h.prevDP.Policies()
	}
	key := names[policy].Key
	expect := decision(want, ok)
	if !h.ix.Policies() && expect == authztest.Allow {
		// A mesh without policies leaves the maps empty: the kernel
		// does not judge, which lets the connection through too.
		expect = authztest.Pass
	}
	if got != expect || key != want.Policy {
		t.Errorf("%s: kernel %s (policy %q), evaluator %s (policy %q: %s)", what, got, key, decision(want, ok), want.Policy, want.Reason)
	}
}

func authzVerdict(v uint32) bpf.KmeshKmAuthzVerdict { return bpf.KmeshKmAuthzVerdict(v) }

// counts is the matched counters of the destination side, by policy.
func (h *authzHarness) counts(t *testing.T) map[string]uint64 {
	t.Helper()
	stats, err := h.dp.AuthzStats()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, s := range stats {
		if s.Side == dataplane.SideDestination && s.Policy.Key != "" {
			out[s.Policy.Key] = s.Matched
		}
	}
	return out
}

func decision(d authz.Decision, ok bool) string {
	switch {
	case !ok:
		return authztest.Pass
	case d.Allowed:
		return authztest.Allow
	}
	return authztest.Deny
}

// BenchmarkAuthz_Decide measures one decision of include/authz.h, as the
// SYN's node makes it, under BPF_PROG_TEST_RUN: client -> hello-1 with 0,
// 10 and 1,000 policies that apply to hello-1 (DENY ones that do not match,
// then the ALLOW that does: every one is walked), and with 1,000 policies in
// the mesh of which one applies.
//
//	go test -run '^$' -bench Authz_Decide ./internal/bpf/bpftest/
func BenchmarkAuthz_Decide(b *testing.B) {
	requirePrivilege(b)
	spec, err := loadAuthzTest()
	if err != nil {
		b.Fatal(err)
	}
	limits := testLimits
	limits.Policies, limits.PolicyMatches, limits.PolicyValues, limits.PolicyRefs = 4096, 8192, 8192, 8192
	for _, sc := range []struct {
		name                  string
		applicable, elsewhere int
	}{{"0-policies", 0, 0}, {"10-apply", 10, 0}, {"1000-apply", 1000, 0}, {"1000-in-mesh-1-applies", 1, 999}} {
		b.Run(sc.name, func(b *testing.B) {
			maps, err := bpf.NewMaps(limits)
			if err != nil {
				b.Fatal(err)
			}
			defer maps.Close()
			dp, err := dataplane.New(dataplane.MapStore(maps), limits, discard)
			if err != nil {
				b.Fatal(err)
			}
			c := authztest.Case{}
			m := c.Mesh()
			principal := func(p string) model.PolicyRule {
				return model.PolicyRule{Clauses: []model.PolicyClause{{Matches: []model.PolicyMatch{{
					Principals: []model.StringMatch{{Kind: model.MatchExact, Value: p}}}}}}}
			}
			for i := range sc.applicable - 1 {
				m.Policies = append(m.Policies, model.Policy{Name: fmt.Sprintf("deny-%d", i), Namespace: "default",
					Scope: model.ScopeNamespace, Action: model.ActionDeny, Rules: []model.PolicyRule{principal(fmt.Sprintf("cluster.local/ns/other-%d/sa/x", i))}})
			}
			for i := range sc.elsewhere {
				m.Policies = append(m.Policies, model.Policy{Name: fmt.Sprintf("elsewhere-%d", i), Namespace: "other",
					Scope: model.ScopeNamespace, Action: model.ActionDeny, Rules: []model.PolicyRule{principal("cluster.local/ns/default/sa/client")}})
			}
			if sc.applicable > 0 {
				m.Policies = append(m.Policies, model.Policy{Name: "zz-allow-client", Namespace: "default",
					Scope: model.ScopeNamespace, Action: model.ActionAllow, Rules: []model.PolicyRule{principal("cluster.local/ns/default/sa/client")}})
			}
			if err := dp.Apply(m); err != nil {
				b.Fatal(err)
			}
			prog := loadWithMaps(b, spec, "authz_check", maps)
			in := authzTestAuthzTestCtx{
				Src: bpf.AddrWords(netip.MustParseAddr(authztest.Client4)), Dst: bpf.AddrWords(netip.MustParseAddr(authztest.Hello1_4)), DstPort: bpf.NetPort(8080),
			}
			var buf bytes.Buffer
			binary.Write(&buf, binary.NativeEndian, &in)
			out := make([]byte, buf.Len())
			// Check the verdict once, then time the decision alone.
			if _, err := prog.Run(&ebpf.RunOptions{Data: buf.Bytes(), DataOut: out}); err != nil {
				b.Fatal(err)
			}
			var res authzTestAuthzTestCtx
			binary.Read(bytes.NewReader(out), binary.NativeEndian, &res)
			want := bpf.KmeshKmAuthzVerdictKM_AUTHZ_ALLOWED
			if sc.applicable == 0 {
				want = bpf.KmeshKmAuthzVerdictKM_AUTHZ_PASS
			}
			if authzVerdict(res.Verdict) != want {
				b.Fatalf("verdict %d, want %d", res.Verdict, want)
			}
			b.ResetTimer()
			_, per, err := prog.Benchmark(buf.Bytes(), b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(per.Nanoseconds()), "ns/decision")
		})
	}
}
