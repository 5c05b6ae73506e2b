package bpftest

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// BenchmarkConnect measures the balancer's decision (lb_xlate) per connect
// with each mode on, against the plain path (random, no flags): 10,000
// decisions per BPF_PROG_TEST_RUN of bpf/tests/lb_test.c's bench_connect.
// The ns/connect metric is the decision alone, not the connect(2) around it.
func BenchmarkConnect(b *testing.B) {
	requirePrivilege(b)
	spec, err := loadLbTest()
	if err != nil {
		b.Fatal(err)
	}
	const rounds = 10000
	for _, mode := range []struct {
		name string
		id   uint32
	}{{"plain", 0}, {"locality", 1}, {"affinity", 2}, {"outlier", 3}, {"maglev", 4}} {
		b.Run(mode.name, func(b *testing.B) {
			s := spec.Copy()
			for other := range s.Programs {
				if other != "bench_connect" {
					delete(s.Programs, other)
				}
			}
			for name, m := range s.Maps {
				if name[0] != '.' && (m.Type == ebpf.Hash || m.Type == ebpf.Array || m.Type == ebpf.ArrayOfMaps) {
					m.MaxEntries = 64
				}
			}
			if err := s.Variables["bench_mode"].Set(mode.id); err != nil {
				b.Fatal(err)
			}
			if err := s.Variables["bench_rounds"].Set(uint32(rounds)); err != nil {
				b.Fatal(err)
			}
			coll, err := ebpf.NewCollection(s)
			if err != nil {
				b.Fatal(err)
			}
			defer coll.Close()
			if mode.name == "maglev" {
				putMaglevTable(b, s, coll)
			}
			var total time.Duration
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				ret, err := coll.Programs["bench_connect"].Run(&ebpf.RunOptions{})
				total += time.Since(start)
				if err != nil {
					b.Fatal(err)
				}
				if ret != 0 {
					b.Fatalf("%d of %d decisions failed", ret, rounds)
				}
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N*rounds), "ns/connect")
		})
	}
}
