package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/bench/fortio"
	"github.com/kmesh-go/kmesh/bench/haproxy"
	"github.com/kmesh-go/kmesh/bench/kubeproxy"
	"github.com/kmesh-go/kmesh/bench/meshfile"
	"github.com/kmesh-go/kmesh/bench/report"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// Modes, in the order each round runs them.
const (
	modeDirect   = "direct"
	modeKmesh    = "kmesh"
	modeAccel    = "kmesh-accel"
	modeIPTables = "iptables"
	modeHAProxy  = "haproxy"
	// The L7 hops: HAProxy in HTTP mode in the client pod, and
	// kmesh-waypoint in a pod of its own that kmeshd redirects to.
	modeHAProxyHTTP = "haproxy-http"
	modeWaypoint    = "kmesh-waypoint"
	// modeHAProxyMTLS (haproxymtls.go): HAProxy at both ends with mutual
	// TLS between them, the reference for modeMTLS (mtls.go): kmesh with
	// HBONE between the nodes.
)

// Topologies.
const (
	topoSame  = "same-node"
	topoCross = "cross-node"
)

// The data-plane test bed: node-a holds the client and server-local,
// node-b server-remote. Each server has a service of its own.
var (
	cidrA        = netip.MustParsePrefix("10.1.1.0/24")
	cidrB        = netip.MustParsePrefix("10.1.2.0/24")
	clusterCIDR  = netip.MustParsePrefix("10.1.0.0/16")
	clientAddr   = netip.MustParseAddr("10.1.1.10")
	localAddr    = netip.MustParseAddr("10.1.1.11")
	remoteAddr   = netip.MustParseAddr("10.1.2.11")
	localVIP     = netip.MustParseAddr("10.96.0.10")
	remoteVIP    = netip.MustParseAddr("10.96.0.11")
	waypointAddr = netip.MustParseAddr("10.1.1.20")
	// The same servers as services that use the waypoint.
	localWaypointVIP  = netip.MustParseAddr("10.96.0.20")
	remoteWaypointVIP = netip.MustParseAddr("10.96.0.21")
	servicePorts      = [][2]uint16{{80, fortio.HTTPPort}, {fortio.TCPPort, fortio.TCPPort}} // service port, target port
)

// topology is one client-to-server path.
type topology struct {
	name, desc string
	server     *testbed.Pod
	service    string
	vip        netip.Addr
	wpVIP      netip.Addr // the service through the waypoint
	crossNode  bool       // the server is on node-b
	pinned     bool       // each node's processes on a CPU of its own (pinned.go)
}

// mode is one way of reaching the server, set up and torn down around its
// turn in each round.
type mode struct {
	report.Mode
	sameNodeOnly  bool
	crossNodeOnly bool
	httpOnly      bool // the hop speaks HTTP: TCP tests are left out
	setup         func(context.Context) error
	teardown      func() error
}

// dataplane is the data-plane test bed and what runs on it.
type dataplane struct {
	bed      *testbed.Bed
	tools    tools
	cfg      config
	nodeA    *testbed.Node
	nodeB    *testbed.Node
	client   *testbed.Pod
	topos    []topology
	meshFile string
	tmp      string
	cgroups  []string // every process of the bed runs in one of these
	daemons  string   // the cgroup kmeshd runs in (the bed's own)
	haproxy  *testbed.Process
	haproxyH *testbed.Process // HTTP mode
	waypoint *testbed.Process
	mtls     mtls
	// haproxyMTLS runs only in its mode's turn, unlike the other proxies:
	// its server end listens in the server pod.
	haproxyMTLS haproxyMTLS
	cpus        cpuPlan
	running     []*kmeshd
	rss         []float64 // kmeshd (node-a) resident memory, MiB, per kmesh round
}

// benchTests are the load tests of every mode and topology.
func benchTests(cfg config) ([]fortio.Test, []report.Named) {
	var ts []fortio.Test
	var named []report.Named
	add := func(t fortio.Test, label, group string) {
		ts = append(ts, t)
		named = append(named, report.Named{Name: t.Name, Label: label, Description: t.Describe(), Group: group})
	}
	for _, c := range []int{1, 16, 64} {
		label := fmt.Sprintf("%d conns", c)
		if c == 1 {
			label = "1 conn"
		}
		add(fortio.Test{Name: fmt.Sprintf("lat-c%d", c), Kind: fortio.HTTP, QPS: 1000, Connections: c,
			KeepAlive: true, Payload: 1024, Duration: cfg.latencyDur}, label, report.GroupLatency)
	}
	add(fortio.Test{Name: "max-c16", Kind: fortio.HTTP, Connections: 16, KeepAlive: true, Payload: 1024,
		Duration: cfg.tputDur}, "max rate, 16 conns", report.GroupThroughput)
	add(fortio.Test{Name: "close-c1", Kind: fortio.HTTP, Connections: 1, Payload: 1024,
		Duration: cfg.tputDur}, "connection per request", report.GroupThroughput)
	add(fortio.Test{Name: "tcp-c1", Kind: fortio.TCP, Connections: 1,
		Duration: cfg.tputDur}, "TCP round trip", report.GroupThroughput)
	for i := range named {
		if named[i].Group == report.GroupLatency {
			named[i].Description += ", 1 KB each way"
		}
	}
	named[3].Description += ", 1 KB each way: maximum throughput"
	named[4].Description += ", 1 KB each way: the cost of connect-time balancing"
	named[5].Description += ", fortio's small echo message: request rate and round-trip time"
	if cfg.tests != "" {
		wanted := strings.Split(cfg.tests, ",")
		keep := func(i int) bool { return slices.Contains(wanted, ts[i].Name) }
		var kt []fortio.Test
		var kn []report.Named
		for i := range ts {
			if keep(i) {
				kt, kn = append(kt, ts[i]), append(kn, named[i])
			}
		}
		ts, named = kt, kn
	}
	return ts, named
}

func runDataplane(ctx context.Context, bed *testbed.Bed, tl tools, cfg config, res *report.Results) error {
	d := &dataplane{bed: bed, tools: tl, cfg: cfg}
	tmp, err := os.MkdirTemp("", "kmesh-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	d.tmp = tmp
	logf("data plane: building node-a (client, server-local) and node-b (server-remote)")
	if err := d.build(ctx); err != nil {
		return err
	}
	defer d.stopKmeshds()

	modes := d.modes(cfg.modes)
	tests, named := benchTests(cfg)
	if cfg.tests != "" {
		for _, name := range strings.Split(cfg.tests, ",") {
			if !slices.ContainsFunc(tests, func(t fortio.Test) bool { return t.Name == name }) {
				return fmt.Errorf("-tests: no data-plane test %q (lat-c1, lat-c16, lat-c64, max-c16, close-c1, tcp-c1)", name)
			}
		}
	}
	res.Tests = named
	for _, t := range d.topos {
		res.Topologies = append(res.Topologies, report.Named{Name: t.name, Description: t.desc})
	}
	for _, m := range modes {
		res.Modes = append(res.Modes, m.Mode)
	}

	// One short unmeasured run per path: neighbour caches, page cache, JIT.
	for _, t := range d.topos {
		warm := tests[0]
		warm.Duration = time.Second
		if _, err := d.measure(ctx, warm, t, d.target(modeDirect, t, warm)); err != nil {
			return fmt.Errorf("warm-up %s: %w", t.name, err)
		}
	}

	for round := 1; round <= cfg.rounds; round++ {
		for _, m := range modes {
			if !m.Available {
				continue
			}
			if err := m.setup(ctx); err != nil {
				m.teardown()
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("round %d: set up %s: %w", round, m.Name, err)
			}
			for _, t := range d.topos {
				if m.sameNodeOnly && t.crossNode || m.crossNodeOnly && !t.crossNode {
					continue
				}
				for _, test := range tests {
					if m.httpOnly && test.Kind == fortio.TCP {
						continue
					}
					s, err := d.measure(ctx, test, t, d.target(m.Name, t, test))
					if err != nil {
						m.teardown()
						return fmt.Errorf("round %d: %s %s %s: %w", round, m.Name, t.name, test.Name, err)
					}
					s.Round, s.Mode, s.Topology = round, m.Name, t.name
					res.Samples = append(res.Samples, s)
					logf("round %d/%d  %-11s %-10s %-8s p50 %5.0fµs p90 %5.0fµs p99 %6.0fµs  %7.0f/s  cpu %4.0f (mesh %3.0f) mc/krps  errors %d",
						round, cfg.rounds, m.Name, t.name, test.Name, s.P50, s.P90, s.P99, s.QPS, s.CPU, s.MeshCPU, s.Errors)
				}
			}
			if err := m.teardown(); err != nil {
				return fmt.Errorf("round %d: tear down %s: %w", round, m.Name, err)
			}
		}
	}
	res.KmeshdRSS = report.Over(d.rss)
	return nil
}

// build makes the nodes and pods, starts the fortio servers and HAProxy,
// and writes the mesh file.
func (d *dataplane) build(ctx context.Context) error {
	var err error
	if d.nodeA, err = d.bed.AddNode("node-a", cidrA); err != nil {
		return err
	}
	if d.nodeB, err = d.bed.AddNode("node-b", cidrB); err != nil {
		return err
	}
	if d.client, err = d.nodeA.AddPod("client", clientAddr); err != nil {
		return err
	}
	local, err := d.nodeA.AddPod("server-local", localAddr)
	if err != nil {
		return err
	}
	remote, err := d.nodeB.AddPod("server-remote", remoteAddr)
	if err != nil {
		return err
	}
	d.topos = []topology{
		{name: topoSame, desc: "client and server pods on one node (veth, bridge, veth)",
			server: local, service: "svc-local", vip: localVIP, wpVIP: localWaypointVIP},
		{name: topoCross, desc: "client and server pods on two nodes (veth, bridge, veth to the underlay bridge and back); both nodes share the machine's CPUs",
			server: remote, service: "svc-remote", vip: remoteVIP, wpVIP: remoteWaypointVIP, crossNode: true},
	}
	if d.cfg.cpuPerNode {
		plan, ok, err := newCPUPlan()
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("-cpu-per-node: this process may run on fewer than 2 CPUs")
		}
		d.cpus = plan
		pinned := d.topos[1]
		pinned.name, pinned.pinned = topoPinned, true
		pinned.desc = "the cross-node path with each node on a CPU of its own: " + plan.describe() +
			" (every process of the node, its pods', kmeshd's and its tunnel's, pinned with sched_setaffinity; " +
			"packets entering a node from the underlay received on its CPU, RPS)"
		d.topos = append(d.topos, pinned)
	}
	d.daemons = filepath.Join(filepath.Dir(d.nodeA.Cgroup), d.bed.RunID())
	d.cgroups = []string{d.nodeA.Cgroup, d.nodeB.Cgroup, d.daemons}

	for _, t := range d.servers() {
		if _, err := t.server.Start(d.tools.fortio, fortio.ServerArgs()...); err != nil {
			return err
		}
		addr := netip.AddrPortFrom(t.server.Addrs[0], fortio.HTTPPort).String()
		if _, err := runProbe(ctx, d.client, d.tools.self, addr, true, 20*time.Second); err != nil {
			return fmt.Errorf("fortio server in %s: %w", t.server.Name, err)
		}
	}
	if err := d.startHAProxy(ctx); err != nil {
		return err
	}
	wp, err := d.nodeA.AddPod("waypoint", waypointAddr)
	if err != nil {
		return err
	}

	m := meshfile.Mesh{Workloads: []meshfile.Workload{
		{Name: "client", App: "client", Node: d.nodeA.Name, Netns: d.client.NetnsPath, Address: clientAddr},
		// kmeshd never enrolls a waypoint, netns or not.
		{Name: "waypoint", App: "waypoint", Node: d.nodeA.Name, Netns: wp.NetnsPath, Address: waypointAddr, Gateway: "waypoint"},
	}, Waypoints: []string{"waypoint"}}
	for _, t := range d.servers() {
		m.Services = append(m.Services, meshfile.Service{Name: t.service, Address: t.vip, Ports: servicePorts, App: t.service})
		m.Services = append(m.Services, meshfile.Service{Name: t.service + "-wp", Address: t.wpVIP, Ports: servicePorts,
			App: t.service, Waypoint: "waypoint"})
		m.Workloads = append(m.Workloads, meshfile.Workload{Name: t.server.Name, App: t.service,
			Node: t.server.Node.Name, Netns: t.server.NetnsPath, Address: t.server.Addrs[0]})
	}
	d.meshFile = filepath.Join(d.tmp, "mesh.yaml")
	if _, err = meshfile.WriteFile(d.meshFile, m); err != nil {
		return err
	}
	return d.startWaypoint(wp)
}

// startWaypoint runs kmesh-waypoint in its pod for the whole run; it idles
// while other modes run (no kmeshd redirects to it).
func (d *dataplane) startWaypoint(pod *testbed.Pod) error {
	bin, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmesh-waypoint")
	if err != nil {
		return fmt.Errorf("build kmesh-waypoint: %w", err)
	}
	// No metrics server and no access log: Istio's waypoints keep access
	// logs off by default, and nobody scrapes here.
	proc, err := pod.Start(bin, "--config", d.meshFile, "--gateway", "default/waypoint", "--metrics-address", "",
		"--access-log=false", "--log-level", "warn")
	if err != nil {
		return err
	}
	d.waypoint = proc
	// A connection is enough: GET / without a service's name as Host is 404.
	addr := netip.AddrPortFrom(waypointAddr, 80).String()
	if _, err := runProbe(context.Background(), pod, d.tools.self, addr, false, 20*time.Second); err != nil {
		return fmt.Errorf("kmesh-waypoint not serving: %w: %s", err, lastLines(proc.Stderr(), 3))
	}
	return nil
}

// modes lists every mode, marking those this run cannot or was asked not
// to measure.
func (d *dataplane) modes(only string) []mode {
	accel := d.tools.kmeshdFlags["--accelerate"]
	var kmeshFlags []string
	if accel {
		// Whatever the default, plain kmesh runs without it.
		kmeshFlags = []string{"--accelerate=false"}
	}
	none := func(context.Context) error { return nil }
	modes := []mode{
		{Mode: report.Mode{Name: modeDirect, Description: "the client connects to the server pod's address; no mesh (the floor)"},
			setup: none, teardown: func() error { return nil }},
		{Mode: report.Mode{Name: modeKmesh, Description: "the client connects to the service address; kmeshd on both nodes, its connect hook picks the endpoint"},
			setup:    func(ctx context.Context) error { return d.startKmeshds(ctx, kmeshFlags...) },
			teardown: d.stopKmeshds},
		{Mode: report.Mode{Name: modeAccel, Description: "kmesh with same-node acceleration (kmeshd --accelerate: sockops + sk_msg redirect); same-node only"},
			sameNodeOnly: true,
			setup:        func(ctx context.Context) error { return d.startKmeshds(ctx, "--accelerate") },
			teardown:     d.stopKmeshds},
		{Mode: report.Mode{Name: modeIPTables, Description: "the service address DNATed by kube-proxy style iptables rules (nat PREROUTING/OUTPUT, KUBE-SERVICES, statistic random) in node-a's namespace; conntrack on"},
			setup:    func(ctx context.Context) error { return d.loadIPTables(ctx) },
			teardown: func() error { return iptablesFlush(d.nodeA.NetnsPath) }},
		{Mode: report.Mode{Name: modeHAProxy, Description: "a userspace hop: HAProxy (TCP mode, 2 threads) in the client pod, iptables REDIRECT of the service address to it, as a sidecar's capture does"},
			setup: func(ctx context.Context) error {
				return iptablesRestore(ctx, d.client.NetnsPath, haproxy.RedirectRules(d.frontends()))
			},
			teardown: func() error { return iptablesFlush(d.client.NetnsPath) }},
		{Mode: report.Mode{Name: modeHAProxyHTTP, Description: "an L7 userspace hop: HAProxy in HTTP mode (2 threads, server connections reused) in the client pod, iptables REDIRECT of the service's HTTP port to it; HTTP tests only"},
			httpOnly: true,
			setup: func(ctx context.Context) error {
				return iptablesRestore(ctx, d.client.NetnsPath, haproxy.RedirectRules(d.httpFrontends()))
			},
			teardown: func() error { return iptablesFlush(d.client.NetnsPath) }},
		{Mode: report.Mode{Name: modeWaypoint, Description: "the L7 waypoint: the client connects to a service labelled istio.io/use-waypoint; kmeshd redirects it to kmesh-waypoint in a pod of its own on node-a (plaintext), which routes each request to the server; HTTP tests only"},
			httpOnly: true,
			setup:    func(ctx context.Context) error { return d.startKmeshds(ctx, kmeshFlags...) },
			teardown: d.stopKmeshds},
		{Mode: report.Mode{Name: modeHAProxyMTLS, Description: "the reference for kmesh-mtls's two hops: HAProxy (TCP mode, 2 threads) in the client pod, iptables REDIRECT of the service address to it, carries the connection over mutual TLS 1.3 (SPIFFE certificates of kmesh-mtls's CA, its cipher suite) to a second HAProxy in the server pod, which forwards it to the server over the pod's loopback; one TLS connection per connection, handshaken when it opens; cross-node only"},
			crossNodeOnly: true,
			setup:         d.startHAProxyMTLS,
			teardown:      d.stopHAProxyMTLS},
		{Mode: report.Mode{Name: modeMTLS, Description: "kmesh with a local CA (zero trust): the client connects to the service address; node-a's connect hook redirects the connection to node-a's `kmeshd tunnel`, which carries it as HBONE (HTTP/2 CONNECT over mutual TLS 1.3) to the server pod's port 15008, where node-b's tunnel dials the server: two userspace hops, as Istio ambient's two ztunnels; cross-node only"},
			crossNodeOnly: true,
			setup:         func(ctx context.Context) error { return d.startMTLS(ctx, kmeshFlags...) },
			teardown:      d.stopMTLS},
	}
	wanted := strings.Split(only, ",")
	for i := range modes {
		m := &modes[i]
		m.Available = true
		switch {
		case m.Name == modeAccel && !accel:
			m.Available, m.Reason = false, "not available yet: kmeshd --help lists no --accelerate flag"
		case only != "" && !slices.Contains(wanted, m.Name) && m.Name != modeDirect:
			m.Available, m.Reason = false, "left out with -modes"
		}
	}
	return modes
}

// servers are the topologies with a server of their own: topoPinned's
// is cross-node's.
func (d *dataplane) servers() []topology {
	var out []topology
	for _, t := range d.topos {
		if !t.pinned {
			out = append(out, t)
		}
	}
	return out
}

// target is where the client connects in a mode: the pod itself for
// direct, the service address otherwise.
func (d *dataplane) target(mode string, t topology, test fortio.Test) string {
	port := uint16(fortio.HTTPPort)
	if test.Kind == fortio.TCP {
		port = fortio.TCPPort
	}
	if mode == modeDirect {
		return netip.AddrPortFrom(t.server.Addrs[0], port).String()
	}
	vip := t.vip
	if mode == modeWaypoint {
		vip = t.wpVIP
	}
	svcPort := uint16(80)
	if test.Kind == fortio.TCP {
		svcPort = fortio.TCPPort
	}
	return netip.AddrPortFrom(vip, svcPort).String()
}

// cpu returns the CPU time of everything in the bed, and of the mesh's
// own processes: kmeshd (in the bed's cgroup; idle or absent in modes that
// do not use it) and the HAProxys (idle in modes that do not redirect to
// them; haproxy-mtls's two only run in their mode).
func (d *dataplane) cpu() (all, mesh time.Duration, err error) {
	if all, err = cpuUsage(d.cgroups); err != nil {
		return 0, 0, err
	}
	if mesh, err = cpuUsage([]string{d.daemons}); err != nil {
		return 0, 0, err
	}
	var proxies time.Duration
	for _, p := range append([]*testbed.Process{d.haproxy, d.haproxyH, d.waypoint}, d.haproxyMTLS.processes()...) {
		if p == nil {
			continue
		}
		c, err := threadsCPU(p.PID())
		if err != nil {
			return 0, 0, err
		}
		proxies += c
	}
	return all, mesh + proxies, nil
}

// kmeshdCPU is the CPU time each running kmeshd has used so far (nil
// entries' time is 0: a process that could not be read counts nothing).
func (d *dataplane) kmeshdCPU() []time.Duration {
	out := make([]time.Duration, len(d.running))
	for i, k := range d.running {
		out[i], _ = threadsCPU(k.proc.PID())
	}
	return out
}

// measure runs one fortio test in the client pod, the processes placed on
// the CPUs as topology t says.
func (d *dataplane) measure(ctx context.Context, test fortio.Test, t topology, target string) (report.Sample, error) {
	out := filepath.Join(d.tmp, "result.json")
	os.Remove(out)
	cpu0, mesh0, err := d.cpu()
	if err != nil {
		return report.Sample{}, err
	}
	k0 := d.kmeshdCPU()
	if err := d.placeCPUs(t.pinned); err != nil {
		return report.Sample{}, err
	}
	proc, err := d.client.Start(d.tools.fortio, test.Args(target, out)...)
	if err != nil {
		return report.Sample{}, err
	}
	if t.pinned {
		if err := pinThreads(func() ([]int, error) { return processThreads(proc.PID()) }, &d.cpus.a); err != nil {
			proc.Stop()
			return report.Sample{}, err
		}
	}
	select {
	case <-proc.Done():
	case <-ctx.Done():
		proc.Stop()
		return report.Sample{}, ctx.Err()
	case <-time.After(test.Duration + time.Minute):
		proc.Stop()
		return report.Sample{}, fmt.Errorf("fortio still running a minute after its %v", test.Duration)
	}
	cpu1, mesh1, err := d.cpu()
	if err != nil {
		return report.Sample{}, err
	}
	k1 := d.kmeshdCPU()
	var busiest time.Duration
	for i := range min(len(k0), len(k1)) {
		busiest = max(busiest, k1[i]-k0[i])
	}
	if err := proc.Wait(); err != nil {
		return report.Sample{}, fmt.Errorf("%w: %s", err, lastLines(proc.Stderr(), 5))
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return report.Sample{}, err
	}
	r, err := fortio.Parse(data)
	if err != nil {
		return report.Sample{}, err
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	return report.Sample{
		Test: test.Name,
		P50:  us(r.P50), P90: us(r.P90), P99: us(r.P99), Avg: us(r.Avg),
		QPS: r.ActualQPS, Count: r.Count, Errors: r.Errors,
		// CPU seconds per request × 1000 requests/s × 1000 millicores.
		CPU:       (cpu1 - cpu0).Seconds() / float64(r.Count) * 1e6,
		MeshCPU:   (mesh1 - mesh0).Seconds() / float64(r.Count) * 1e6,
		KmeshdCPU: busiest.Seconds() / float64(r.Count) * 1e6,
	}, nil
}

func (d *dataplane) startKmeshds(ctx context.Context, extra ...string) error {
	for _, n := range []*testbed.Node{d.nodeA, d.nodeB} {
		k, err := startKmeshd(ctx, d.bed, d.tools, n, d.meshFile, extra...)
		if err != nil {
			return err
		}
		d.running = append(d.running, k)
	}
	return nil
}

// stopKmeshds stops the daemons and removes their data planes, noting
// node-a's memory first.
func (d *dataplane) stopKmeshds() error {
	var errs []string
	for _, k := range d.running {
		if k.node == d.nodeA {
			if rss, _, err := k.Memory(); err == nil {
				d.rss = append(d.rss, rss)
			}
		}
		if err := k.Stop(); err != nil {
			errs = append(errs, err.Error())
		}
	}
	d.running = nil
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// kubeServices are the services as kube-proxy would see them.
func (d *dataplane) kubeServices() []kubeproxy.Service {
	var out []kubeproxy.Service
	for _, t := range d.servers() {
		for _, p := range servicePorts {
			out = append(out, kubeproxy.Service{Namespace: "default", Name: t.service, PortName: fmt.Sprintf("p%d", p[0]),
				Address: t.vip, Port: p[0], Endpoints: []netip.AddrPort{netip.AddrPortFrom(t.server.Addrs[0], p[1])}})
		}
	}
	return out
}

func (d *dataplane) loadIPTables(ctx context.Context) error {
	return iptablesRestore(ctx, d.nodeA.NetnsPath, kubeproxy.Rules(d.kubeServices(), clusterCIDR))
}

// frontends are HAProxy's listeners: one per service address and port.
func (d *dataplane) frontends() []haproxy.Frontend {
	var out []haproxy.Frontend
	// Not 15001: that is where kmeshd's tunnel listens in the client pod
	// (kmesh-mtls), and HAProxy runs there for the whole run.
	listen := uint16(16001)
	for _, s := range d.kubeServices() {
		out = append(out, haproxy.Frontend{Name: fmt.Sprintf("%s-%d", s.Name, s.Port),
			Service: netip.AddrPortFrom(s.Address, s.Port), Listen: listen, Backends: s.Endpoints})
		listen++
	}
	return out
}

// httpFrontends are the HTTP-mode HAProxy's listeners: the HTTP port of
// each service.
func (d *dataplane) httpFrontends() []haproxy.Frontend {
	var out []haproxy.Frontend
	for _, f := range d.frontends() {
		if f.Service.Port() == 80 {
			f.Name += "-http"
			f.Listen += 100
			out = append(out, f)
		}
	}
	return out
}

// startHAProxy runs HAProxy (TCP mode, and a second one in HTTP mode) in the
// client pod for the whole run; they idle while other modes run, and only
// the haproxy modes redirect traffic to them.
func (d *dataplane) startHAProxy(ctx context.Context) error {
	if err := d.startHAProxyHTTP(ctx); err != nil {
		return err
	}
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return fmt.Errorf("haproxy: %w (make bench installs it)", err)
	}
	fes := d.frontends()
	cfg := filepath.Join(d.tmp, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(haproxy.Config(fes, 2)), 0o644); err != nil {
		return err
	}
	proc, err := d.client.Start(bin, "-db", "-f", cfg)
	if err != nil {
		return err
	}
	d.haproxy = proc
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), fes[0].Listen).String()
	if _, err := runProbe(ctx, d.client, d.tools.self, addr, true, 20*time.Second); err != nil {
		return fmt.Errorf("haproxy not serving: %w: %s", err, lastLines(proc.Stderr(), 3))
	}
	return nil
}

func (d *dataplane) startHAProxyHTTP(ctx context.Context) error {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return fmt.Errorf("haproxy: %w (make bench installs it)", err)
	}
	fes := d.httpFrontends()
	cfg := filepath.Join(d.tmp, "haproxy-http.cfg")
	if err := os.WriteFile(cfg, []byte(haproxy.ConfigHTTP(fes, 2)), 0o644); err != nil {
		return err
	}
	proc, err := d.client.Start(bin, "-db", "-f", cfg)
	if err != nil {
		return err
	}
	d.haproxyH = proc
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), fes[0].Listen).String()
	if _, err := runProbe(ctx, d.client, d.tools.self, addr, true, 20*time.Second); err != nil {
		return fmt.Errorf("haproxy (HTTP mode) not serving: %w: %s", err, lastLines(proc.Stderr(), 3))
	}
	return nil
}
