package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/bench/fortio"
	"github.com/kmesh-go/kmesh/bench/haproxy"
	"github.com/kmesh-go/kmesh/bench/meshfile"
	"github.com/kmesh-go/kmesh/bench/report"
	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/source/file"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// The control-plane test bed: node-s with a target pod behind service
// "startup" and, one by one, the pods whose start-up is timed.
var (
	cidrS      = netip.MustParsePrefix("10.1.3.0/24")
	targetAddr = netip.MustParseAddr("10.1.3.11")
	startupVIP = netip.MustParseAddr("10.97.0.1")
	// A new pod's route for service addresses: connects fail at once until
	// kmesh takes them, so probes spin fast.
	serviceRange = "10.97.0.0/16"
)

// scaleRun is the control-plane test bed.
type scaleRun struct {
	bed     *testbed.Bed
	tools   tools
	cfg     config
	node    *testbed.Node
	target  *testbed.Pod
	path    string            // the mesh's directory config (--config DIR)
	written map[string][]byte // file name in path -> content written
	wrote   time.Time         // when writeMesh began writing files
	tmp     string
	nextPod int
}

func runScale(ctx context.Context, bed *testbed.Bed, tl tools, cfg config) (*report.Scale, error) {
	tmp, err := os.MkdirTemp("", "kmesh-bench-scale-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	s := &scaleRun{bed: bed, tools: tl, cfg: cfg, tmp: tmp, path: filepath.Join(tmp, "mesh.d"), nextPod: 100}
	if err := os.Mkdir(s.path, 0o755); err != nil {
		return nil, err
	}
	if s.node, err = bed.AddNode("node-s", cidrS); err != nil {
		return nil, err
	}
	if s.target, err = s.node.AddPod("startup-target", targetAddr); err != nil {
		return nil, err
	}
	if _, err := s.target.Start(tl.fortio, fortio.ServerArgs()...); err != nil {
		return nil, err
	}
	if _, err := runProbe(ctx, s.target, tl.self, netip.AddrPortFrom(targetAddr, fortio.HTTPPort).String(), true, 20*time.Second); err != nil {
		return nil, fmt.Errorf("fortio server in startup-target: %w", err)
	}
	out := &report.Scale{Services: cfg.services, Endpoints: cfg.endpoints, Namespaces: cfg.namespaces}

	if cfg.xdsOnly {
		if err := s.xdsScale(ctx, out); err != nil {
			return out, fmt.Errorf("control plane over xDS: %w", err)
		}
		return out, nil
	}
	logf("control plane: start-up of new workloads on a 1-service mesh")
	small := s.mesh(false)
	joins, err := s.kmeshJoins(ctx, &small, "small", s.cfg.startups)
	if err != nil {
		return out, err
	}
	out.Startup = append(out.Startup, report.Startup{What: "kmesh, 1-service file: pod added to the file → its first balanced connection", Ms: report.Over(joins)})

	logf("control plane: %d services, %d endpoints", cfg.services, cfg.endpoints)
	big := s.mesh(true)
	size, err := s.writeMesh(big)
	if err != nil {
		return out, err
	}
	out.FileMiB = float64(size) / (1 << 20)
	k, err := startKmeshd(ctx, s.bed, tl, s.node, s.path, s.limitFlags()...)
	if err != nil {
		return out, err
	}
	defer func() { k.Stop() }()
	out.FirstSyncMs, out.FirstSyncCPUMs = ms(k.Ready), ms(k.ReadyCPU)
	logf("control plane: first full sync %s", report.WallAndCPU(out.FirstSyncMs, out.FirstSyncCPUMs))
	if out.ParseMs, err = parseTime(s.path); err != nil {
		return out, err
	}

	cpu0, _ := processCPU(k.proc.PID())
	changes, err := s.changes(ctx, &big)
	if err != nil {
		return out, err
	}
	out.ChangeMs, out.ChangeP99Ms, out.Changes = report.Over(changes), report.Percentile(changes, 99), len(changes)
	out.ChangeSamplesMs = changes
	if cpu1, err := processCPU(k.proc.PID()); err == nil && len(changes) > 0 {
		out.ChangeCPUMs = ms(cpu1-cpu0) / float64(len(changes))
	}
	logf("control plane: %d endpoint changes, p50 %.0f ms, p99 %.0f ms, kmeshd CPU %.1f ms per change", len(changes), out.ChangeMs.Median, out.ChangeP99Ms, out.ChangeCPUMs)
	if out.KmeshdRSSMiB, out.KmeshdPeakMiB, err = k.Memory(); err != nil {
		return out, err
	}
	if out.MapMemory, err = mapMemory(s.node.BPFDir); err != nil {
		return out, err
	}
	for _, m := range out.MapMemory {
		out.MapMemoryMiB += m.MemlockMiB
	}

	if err := k.Stop(); err != nil {
		return out, err
	}
	if err := s.xdsScale(ctx, out); err != nil {
		return out, fmt.Errorf("control plane over xDS: %w", err)
	}
	if k, err = startKmeshd(ctx, s.bed, tl, s.node, s.path, s.limitFlags()...); err != nil {
		return out, err
	}

	logf("control plane: start-up of new workloads on the %d-service mesh", cfg.services)
	joins, err = s.joinsWith(ctx, &big, "big", min(3, s.cfg.startups))
	if err != nil {
		return out, err
	}
	out.Startup = append(out.Startup, report.Startup{
		What: fmt.Sprintf("kmesh, %d-service file: pod added to the file → its first balanced connection", cfg.services),
		Ms:   report.Over(joins)})
	if err := k.Stop(); err != nil {
		return out, err
	}

	logf("control plane: start-up of a proxy in the pod")
	hap, err := s.haproxyStarts(ctx)
	if err != nil {
		return out, err
	}
	out.Startup = append(out.Startup, report.Startup{What: "haproxy in the pod (sidecar-like): proxy exec → first proxied connection (no control plane fetch)", Ms: report.Over(hap)})
	return out, nil
}

// mesh is the file content: the startup service and its target, and with
// big the synthetic services and endpoints.
func (s *scaleRun) mesh(big bool) meshfile.Mesh {
	var m meshfile.Mesh
	if big {
		m = meshfile.Synthetic(s.cfg.services, s.cfg.endpoints, s.cfg.namespaces, "remote")
	}
	m.Services = append(m.Services, meshfile.Service{Name: "startup", Address: startupVIP,
		Ports: [][2]uint16{{80, fortio.HTTPPort}}, App: "startup-target"})
	m.Workloads = append(m.Workloads, meshfile.Workload{Name: "startup-target", App: "startup-target",
		Node: s.node.Name, Netns: s.target.NetnsPath, Address: targetAddr})
	return m
}

// kmeshJoins starts kmeshd on m and times joins.
func (s *scaleRun) kmeshJoins(ctx context.Context, m *meshfile.Mesh, tag string, n int) ([]float64, error) {
	if _, err := s.writeMesh(*m); err != nil {
		return nil, err
	}
	k, err := startKmeshd(ctx, s.bed, s.tools, s.node, s.path)
	if err != nil {
		return nil, err
	}
	joins, err := s.joinsWith(ctx, m, tag, n)
	return joins, errors.Join(err, k.Stop())
}

// joinsWith times new pods joining the mesh while kmeshd runs on the file:
// each gets a pod, a probe spinning on the startup service, and then an
// entry in the file.
func (s *scaleRun) joinsWith(ctx context.Context, m *meshfile.Mesh, tag string, n int) ([]float64, error) {
	var out []float64
	for i := range n {
		pod, err := s.newPod(fmt.Sprintf("join-%s-%d", tag, i), true)
		if err != nil {
			return out, err
		}
		probe, err := startProbe(ctx, pod, s.tools.self, netip.AddrPortFrom(startupVIP, 80).String(), true, time.Minute)
		if err != nil {
			return out, err
		}
		m.Workloads = append(m.Workloads, meshfile.Workload{Name: pod.Name, App: "joiner", Node: s.node.Name,
			Netns: pod.NetnsPath, Address: pod.Addrs[0]})
		if _, err := s.writeMesh(*m); err != nil {
			return out, err
		}
		t0 := s.wrote
		r, err := waitProbe(ctx, probe, time.Minute)
		if err != nil {
			return out, fmt.Errorf("%s: %w", pod.Name, err)
		}
		out = append(out, ms(time.Unix(0, r.UnixNano).Sub(t0)))
	}
	return out, nil
}

// newPod adds a pod on node-s, with unreachable: one whose service
// addresses are unreachable. (Not for the proxy's pods: the route is looked
// up before the nat OUTPUT hook could redirect.)
func (s *scaleRun) newPod(name string, unreachable bool) (*testbed.Pod, error) {
	s.nextPod++
	addr := cidrS.Addr().As4()
	addr[3] = byte(s.nextPod)
	pod, err := s.node.AddPod(name, netip.AddrFrom4(addr))
	if err != nil || !unreachable {
		return pod, err
	}
	out, err := exec.Command("nsenter", "--net="+pod.NetnsPath, "ip", "route", "add", "unreachable", serviceRange).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s: route: %w: %s", name, err, out)
	}
	return pod, nil
}

// changes times endpoint changes: each rewrites the file with one endpoint
// added to (or removed again from) a service, and waits until that
// service's slot count in the pinned maps says so.
func (s *scaleRun) changes(ctx context.Context, m *meshfile.Mesh) ([]float64, error) {
	slots, closeSlots, err := slotReader(s.node.BPFDir)
	if err != nil {
		return nil, err
	}
	defer closeSlots()

	var out []float64
	start := time.Now()
	for i := range s.cfg.changes {
		if i >= 3 && time.Since(start) > s.cfg.changeTime {
			logf("control plane: stopping after %d changes (-change-time %v)", i, s.cfg.changeTime)
			break
		}
		svc := (i/2*997 + 13) % s.cfg.services
		vip := meshfile.SyntheticAddress(svc)
		base := uint32(s.cfg.endpoints / s.cfg.services)
		if svc < s.cfg.endpoints%s.cfg.services {
			base++
		}
		before, want := base, base+1
		if i%2 == 0 {
			m.Workloads = append(m.Workloads, meshfile.Workload{Name: "extra", App: meshfile.SyntheticService(svc),
				Namespace: meshfile.SyntheticNamespace(svc, s.cfg.namespaces), Node: "remote", Address: netip.MustParseAddr("10.127.0.1")})
		} else {
			before, want = want, before
			m.Workloads = slices.DeleteFunc(m.Workloads, func(w meshfile.Workload) bool { return w.Name == "extra" })
		}
		if got, err := slots(vip); err != nil || got != before {
			return out, fmt.Errorf("change %d: service %s has %d slots (%v), want %d before the change", i, vip, got, err, before)
		}
		if _, err := s.writeMesh(*m); err != nil {
			return out, err
		}
		t0 := s.wrote
		for {
			got, err := slots(vip)
			if err != nil {
				return out, err
			}
			if got == want {
				break
			}
			if time.Since(t0) > time.Minute {
				return out, fmt.Errorf("change %d: service %s still has %d slots after a minute, want %d", i, vip, got, want)
			}
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			time.Sleep(100 * time.Microsecond)
		}
		out = append(out, ms(time.Since(t0)))
		logf("control plane: change %d: %.1f ms", i, out[len(out)-1])
		time.Sleep(20 * time.Millisecond)
	}
	return out, nil
}

// haproxyStarts times a proxy's start in a new pod: REDIRECT rule in place,
// probe spinning, then HAProxy is exec'd.
func (s *scaleRun) haproxyStarts(ctx context.Context) ([]float64, error) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return nil, err
	}
	fes := []haproxy.Frontend{{Name: "startup", Service: netip.AddrPortFrom(startupVIP, 80), Listen: 15001,
		Backends: []netip.AddrPort{netip.AddrPortFrom(targetAddr, fortio.HTTPPort)}}}
	cfg := filepath.Join(s.tmp, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(haproxy.Config(fes, 2)), 0o644); err != nil {
		return nil, err
	}
	var out []float64
	for i := range s.cfg.startups {
		pod, err := s.newPod(fmt.Sprintf("proxied-%d", i), false)
		if err != nil {
			return out, err
		}
		if err := iptablesRestore(ctx, pod.NetnsPath, haproxy.RedirectRules(fes)); err != nil {
			return out, err
		}
		probe, err := startProbe(ctx, pod, s.tools.self, fes[0].Service.String(), true, time.Minute)
		if err != nil {
			return out, err
		}
		t0 := time.Now()
		proc, err := pod.Start(bin, "-db", "-f", cfg)
		if err != nil {
			return out, err
		}
		r, err := waitProbe(ctx, probe, time.Minute)
		proc.Stop()
		if err != nil {
			return out, fmt.Errorf("%s: %w", pod.Name, err)
		}
		out = append(out, ms(time.Unix(0, r.UnixNano).Sub(t0)))
	}
	return out, nil
}

// parseTime times kmeshd's own file parser on the file, in this process:
// the part of a sync and of a change that reading the file costs.
func parseTime(dir string) (float64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var total time.Duration
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			return 0, err
		}
		start := time.Now()
		if _, err := file.Parse(path, data, ""); err != nil {
			return 0, err
		}
		total += time.Since(start)
	}
	return ms(total), nil
}

// filesPerGroup services of the synthetic mesh share a file of the
// directory config, with their endpoints (about 10 KB at 10 endpoints
// per service): a change re-reads one such file.
const filesPerGroup = 10

// fileOf is the file of a synthetic service's app, "" for other apps.
func fileOf(app string) string {
	n, ok := strings.CutPrefix(app, "svc-")
	if !ok {
		return ""
	}
	i, err := strconv.Atoi(n)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("svc-%05d.yaml", i/filesPerGroup*filesPerGroup)
}

// writeMesh writes m as the directory config at s.path: only the files
// whose content changed (each atomically), and removes files m no longer
// has. It returns the directory's size; s.wrote is when the first file
// changed (after every file's content is made, so a change is timed from
// its write).
func (s *scaleRun) writeMesh(m meshfile.Mesh) (int64, error) {
	if s.written == nil {
		s.written = map[string][]byte{}
	}
	parts := meshfile.Split(m, fileOf, "base.yaml")
	var size int64
	var changed []string
	for name, part := range parts {
		var b bytes.Buffer
		if err := meshfile.Write(&b, *part); err != nil {
			return 0, err
		}
		size += int64(b.Len())
		if !bytes.Equal(s.written[name], b.Bytes()) {
			changed = append(changed, name)
			s.written[name] = b.Bytes()
		}
	}
	s.wrote = time.Now()
	for _, name := range changed {
		if _, err := meshfile.WriteFile(filepath.Join(s.path, name), *parts[name]); err != nil {
			return 0, err
		}
	}
	for name := range s.written {
		if parts[name] == nil {
			if err := os.Remove(filepath.Join(s.path, name)); err != nil {
				return 0, err
			}
			delete(s.written, name)
		}
	}
	return size, nil
}

// mapMemory reads the memory the kernel charges for each map pinned in dir.
func mapMemory(dir string) ([]report.Map, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []report.Map
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "link_") || e.IsDir() {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, e.Name()), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			continue // not a map
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("map %s: %w", e.Name(), err)
		}
		memlock, _ := info.Memlock()
		out = append(out, report.Map{Name: e.Name(), MaxEntries: info.MaxEntries, MemlockMiB: float64(memlock) / (1 << 20)})
	}
	slices.SortFunc(out, func(a, b report.Map) int { return int(b.MemlockMiB*1e6) - int(a.MemlockMiB*1e6) })
	return out, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// slotReader opens a node's pinned frontend and service maps read-only and
// returns how many IPv4 slots the service at vip:80 has now.
func slotReader(bpfDir string) (func(vip netip.Addr) (uint32, error), func(), error) {
	frontends, err := ebpf.LoadPinnedMap(filepath.Join(bpfDir, bpf.KmeshMapKmFrontend), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, nil, err
	}
	services, err := ebpf.LoadPinnedMap(filepath.Join(bpfDir, bpf.KmeshMapKmService), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		frontends.Close()
		return nil, nil, err
	}
	slots := func(vip netip.Addr) (uint32, error) {
		var fv bpf.KmeshFrontendValue
		if err := frontends.Lookup(bpf.TCPFrontendKey(vip, 80), &fv); err != nil {
			return 0, fmt.Errorf("frontend %s:80: %w", vip, err)
		}
		var sv bpf.KmeshServiceValue
		if err := services.Lookup(fv.ServiceId, &sv); err != nil {
			return 0, fmt.Errorf("service %d: %w", fv.ServiceId, err)
		}
		return sv.Slots[0], nil
	}
	return slots, func() { frontends.Close(); services.Close() }, nil
}
