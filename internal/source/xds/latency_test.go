package xds

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/dataplane"
	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// BenchmarkWorkloadClient_PushToMaps measures how long a change takes
// from the control plane's cache to the BPF maps: each iteration moves a
// workload to a new address with LinearCache.UpdateResource and polls the
// maps (dataplane.DumpMaps) until the backend has it. It reports the p50
// and p99 of those delays. Needs root (it creates BPF maps):
//
//	go test -run '^$' -bench PushToMaps -benchtime 100x ./internal/source/xds/
func BenchmarkWorkloadClient_PushToMaps(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("creating BPF maps needs root")
	}
	maps, err := bpf.NewMaps(bpf.DefaultLimits)
	if err != nil {
		b.Fatal(err)
	}
	defer maps.Close()
	dp, err := dataplane.New(dataplane.MapStore(maps), bpf.DefaultLimits, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	srv := xdstest.Start(b, "")
	name, svc := xdstest.Service("default", "hello", []string{"10.96.0.10"}, xdstest.Port{Service: 80, Target: 8080})
	if err := srv.Addresses.UpdateResource(name, svc); err != nil {
		b.Fatal(err)
	}
	for _, w := range []xdstest.Workload{hello1, hello2} {
		name, a := w.Address()
		if err := srv.Addresses.UpdateResource(name, a); err != nil {
			b.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	applied := make(chan struct{}, 1)
	go NewWorkloadClient(testConfig(srv.Addr()), nil).Run(ctx, func(m *model.Mesh) error {
		err := dp.Apply(m)
		select {
		case applied <- struct{}{}:
		default:
		}
		return err
	})
	select {
	case <-applied:
	case <-time.After(eventTimeout):
		b.Fatal("no first mesh")
	}

	var delays []time.Duration
	moving := hello2
	for i := 0; b.Loop(); i++ {
		ip := fmt.Sprintf("10.2.%d.%d", i/250, 1+i%250)
		moving.IPs = []string{ip}
		name, a := moving.Address()
		want := "v4=" + ip + " "
		start := time.Now()
		if err := srv.Addresses.UpdateResource(name, a); err != nil {
			b.Fatal(err)
		}
		for {
			lines, err := dataplane.DumpMaps(maps)
			if err != nil {
				b.Fatal(err)
			}
			if slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l+" ", want) }) {
				break
			}
			if time.Since(start) > eventTimeout {
				b.Fatalf("%s not in the maps after %v", ip, eventTimeout)
			}
			time.Sleep(20 * time.Microsecond)
		}
		delays = append(delays, time.Since(start))
	}
	slices.Sort(delays)
	pct := func(p float64) time.Duration { return delays[min(len(delays)-1, int(p*float64(len(delays))))] }
	b.ReportMetric(float64(pct(0.50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(pct(0.99).Microseconds()), "p99-µs")
	b.Logf("%d updates: p50 %v, p99 %v, max %v", len(delays), pct(0.50), pct(0.99), delays[len(delays)-1])
}
