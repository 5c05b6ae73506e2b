package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/kmesh-go/kmesh/bench/meshfile"
	"github.com/kmesh-go/kmesh/bench/report"
	"github.com/kmesh-go/kmesh/internal/benchcpu"
	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// xdsServer is a go-control-plane delta server of Istio's workload API
// (xdstest.PushCache per type: it pushes only what changed, as istiod
// does; go-control-plane's LinearCache compares every resource per push),
// in the bench process, as an independent control plane for kmeshd.
type xdsServer struct {
	addresses *xdstest.PushCache
	grpc      *grpc.Server
	addr      string
}

func startXDSServer() (*xdsServer, error) {
	push := &xdstest.PushServer{Addresses: xdstest.NewPushCache(xdstest.AddressType), Authorizations: xdstest.NewPushCache(xdstest.AuthorizationType)}
	s := &xdsServer{addresses: push.Addresses}
	mux := push.Mux()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.addr = lis.Addr().String()
	s.grpc = grpc.NewServer(grpc.MaxSendMsgSize(1 << 30))
	discovery.RegisterAggregatedDiscoveryServiceServer(s.grpc, server.NewServer(context.Background(), mux, nil))
	go s.grpc.Serve(lis)
	return s, nil
}

// xdsWorkload is endpoint n of service svc (addresses 10.128.0.0/9, away
// from the test bed's). Its services are named namespace/name: xdstest
// makes the hostname (a hostname here would name a service that does not
// exist, and every service would have no endpoint).
func xdsWorkload(svc, n int) xdstest.Workload {
	return xdstest.Workload{Namespace: "default", Name: "ep-" + strconv.Itoa(n), Node: "remote",
		IPs:      []string{netip.AddrFrom4([4]byte{10, byte(128 + n>>16), byte(n >> 8), byte(n)}).String()},
		Services: map[string][]xdstest.Port{"default/" + meshfile.SyntheticService(svc): {{Service: 80, Target: 8080}}}}
}

// limitFlags size the maps for the mesh (the defaults hold 10,000
// services / 100,000 endpoints; past them only the --max-* flags change).
func (s *scaleRun) limitFlags() []string {
	return []string{
		"--max-services", strconv.Itoa(max(s.cfg.services+64, int(bpf.DefaultLimits.Services))),
		"--max-frontends", strconv.Itoa(max(s.cfg.services+64, int(bpf.DefaultLimits.Frontends))),
		"--max-backends", strconv.Itoa(max(s.cfg.endpoints+64, int(bpf.DefaultLimits.Backends))),
		"--max-endpoints", strconv.Itoa(max(s.cfg.endpoints+s.cfg.endpoints/4+4096, int(bpf.DefaultLimits.Endpoints))),
	}
}

// xdsScale runs kmeshd against the delta server holding cfg.services
// services and cfg.endpoints endpoints: first full sync (exec to ready),
// then endpoint changes (one pod joins or leaves a service) timed from the
// server's cache update to the service's slot count in the pinned maps,
// then kmeshd's memory.
func (s *scaleRun) xdsScale(ctx context.Context, out *report.Scale) error {
	srv, err := startXDSServer()
	if err != nil {
		return err
	}
	defer srv.grpc.Stop()
	res := make(map[string]types.Resource, s.cfg.services+s.cfg.endpoints)
	for i := range s.cfg.services {
		name, a := xdstest.Service("default", meshfile.SyntheticService(i), []string{meshfile.SyntheticAddress(i).String()}, xdstest.Port{Service: 80, Target: 8080})
		res[name] = a
	}
	for n := range s.cfg.endpoints {
		name, a := xdsWorkload(n%s.cfg.services, n).Address()
		res[name] = a
	}
	if err := srv.addresses.SetResources(res); err != nil {
		return err
	}
	res = nil
	// The server runs in this process, on the cores kmeshd has (istiod
	// would run on another node): its CPU during the first sync is
	// reported beside kmeshd's.
	srvCPU := benchcpu.Used()
	k, err := startKmeshd(ctx, s.bed, s.tools, s.node, "", append([]string{"--xds-address", srv.addr}, s.limitFlags()...)...)
	if err != nil {
		return err
	}
	defer k.Stop()
	out.XDSFirstSyncMs, out.XDSFirstSyncCPUMs = ms(k.Ready), ms(k.ReadyCPU)
	out.XDSFirstSyncServerCPUMs = ms(benchcpu.Used() - srvCPU)
	logf("control plane over xDS: first full sync %s (%d services, %d endpoints); the server's CPU meanwhile %.0f ms", report.WallAndCPU(out.XDSFirstSyncMs, out.XDSFirstSyncCPUMs), s.cfg.services, s.cfg.endpoints, out.XDSFirstSyncServerCPUMs)

	slots, closeSlots, err := slotReader(s.node.BPFDir)
	if err != nil {
		return err
	}
	defer closeSlots()
	var changes []float64
	cpu0, _ := processCPU(k.proc.PID())
	start := time.Now()
	for i := range s.cfg.changes {
		if i >= 3 && time.Since(start) > s.cfg.changeTime {
			break
		}
		svc := (i/2*997 + 13) % s.cfg.services
		vip := meshfile.SyntheticAddress(svc)
		base := uint32(s.cfg.endpoints / s.cfg.services)
		if svc < s.cfg.endpoints%s.cfg.services {
			base++
		}
		before, want := base, base+1
		extra := xdsWorkload(svc, s.cfg.endpoints+1)
		name, a := extra.Address()
		if i%2 == 1 {
			before, want = want, before
		}
		if got, err := slots(vip); err != nil || got != before {
			return fmt.Errorf("xds change %d: service %s has %d slots (%v), want %d before the change", i, vip, got, err, before)
		}
		t0 := time.Now()
		if i%2 == 0 {
			err = srv.addresses.UpdateResource(name, a)
		} else {
			srv.addresses.DeleteResource(name)
		}
		if err != nil {
			return err
		}
		for {
			got, err := slots(vip)
			if err != nil {
				return err
			}
			if got == want {
				break
			}
			if time.Since(t0) > time.Minute {
				return fmt.Errorf("xds change %d: service %s still has %d slots after a minute, want %d", i, vip, got, want)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			time.Sleep(50 * time.Microsecond)
		}
		changes = append(changes, ms(time.Since(t0)))
		logf("control plane over xDS: change %d at %.0f ms after ready: %.2f ms", i, ms(t0.Sub(k.readyAt)), changes[len(changes)-1])
		time.Sleep(20 * time.Millisecond)
	}
	out.XDSChangeMs, out.XDSChangeP99Ms, out.XDSChanges = report.Over(changes), report.Percentile(changes, 99), len(changes)
	out.XDSChangeSamplesMs = changes
	// kmeshd's CPU per change (receive, apply, ACK; clock ticks of 10 ms
	// over every change): on a loaded machine a slow change is mostly a
	// wait for a core, which this tells apart.
	if cpu1, err := processCPU(k.proc.PID()); err == nil && len(changes) > 0 {
		out.XDSChangeCPUMs = ms(cpu1-cpu0) / float64(len(changes))
	}
	logf("control plane over xDS: %d endpoint changes, p50 %.2f ms, p99 %.2f ms, kmeshd CPU %.2f ms per change", len(changes), out.XDSChangeMs.Median, out.XDSChangeP99Ms, out.XDSChangeCPUMs)
	if out.XDSRSSMiB, out.XDSPeakMiB, err = k.Memory(); err != nil {
		return err
	}
	logf("control plane over xDS: kmeshd RSS %.0f MiB, peak %.0f MiB", out.XDSRSSMiB, out.XDSPeakMiB)
	return nil
}
