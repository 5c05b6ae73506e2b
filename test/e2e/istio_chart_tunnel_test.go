//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// TestIstioChart_TunnelAsRendered runs kmeshd tunnel as the chart's
// kmesh-tunnel DaemonSet runs it, on two nodes of the Istio tier: the
// chart's objects are server-side applied to the real kube-apiserver and
// each node's tunnel gets the args the API server stored for its
// container, the files of its volumes at their paths (istiod's root from
// the istio-ca-root-cert ConfigMap, a token of its projected volume: its
// ServiceAccount, audience and lifetime, bound to a pod of that node), and
// exactly the capabilities its securityContext adds, as uid 0 with no new
// privileges. Then: a cross-node request between enrolled pods is carried
// over mutual TLS (the tunnel's metrics count it), `kmeshctl get certs`
// shows the certificate istiod issued to the tunnel by impersonation,
// istiod refuses that token an identity with no pod on its node, the API
// server refuses it altogether, and without SYS_ADMIN or NET_ADMIN the
// tunnel cannot listen in a pod, which its readiness probe says.
func TestIstioChart_TunnelAsRendered(t *testing.T) {
	chartTool := findChartTool(t)
	m, env := newIstioMesh(t, nil)
	ctl, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshctl")
	if err != nil {
		t.Fatal(err)
	}
	// apps/sleep runs on node-a only, apps/hello on node-b only.
	env.serviceAccount(istioAppsNs, "sleep")
	env.serviceAccount(istioAppsNs, "hello")
	m.addPod("node-a", "client-a", "10.71.1.10")
	env.podAs(m.pods["client-a"], istioAppsNs, "sleep", map[string]string{"app": "client"})
	m.addPod("node-b", "hello-2", "10.71.2.12")
	env.podAs(m.pods["hello-2"], istioAppsNs, "hello", map[string]string{"app": "hello"})
	m.serve("hello-2")

	// The chart in the namespace whose kmesh account istiod trusts
	// (kmeshAccount); its CA is the tier's istiod.
	ns, _, _ := strings.Cut(kmeshAccount, "/")
	env.namespace(ns, nil)
	// A short drain: the upgrade below waits for the old tunnel's end.
	applyChart(t, env, chartTool, "-n", ns, "--set", "istio.caAddress="+env.caAddr(), "--set", "tunnel.drainSeconds=20")
	stored := func(name string) *corev1.PodSpec {
		ds, err := env.kube.AppsV1().DaemonSets(ns).Get(env.ctx(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("DaemonSet %s/%s: %v", ns, name, err)
		}
		return &ds.Spec.Template.Spec
	}
	kspec, tspec := stored("kmesh"), stored("kmesh-tunnel")
	if tspec.AutomountServiceAccountToken == nil || *tspec.AutomountServiceAccountToken || tspec.ServiceAccountName != kspec.ServiceAccountName {
		t.Fatalf("tunnel: service account %q automount %v; want kmeshd's %q and no API token", tspec.ServiceAccountName, tspec.AutomountServiceAccountToken, kspec.ServiceAccountName)
	}
	tc := tspec.Containers[0]
	if p := tc.ReadinessProbe; p == nil || p.HTTPGet == nil || ":"+p.HTTPGet.Port.String() != argValue(tc.Args, "--metrics-address") {
		t.Fatalf("readiness probe %+v: want an HTTP GET on the port of --metrics-address (%s)", p, argValue(tc.Args, "--metrics-address"))
	}
	rootFile, _ := env.rootCert(ns)

	// The node's host paths, where the test keeps them: kmeshd's pins
	// per node, the state under the test's directory.
	runDir := filepath.Join(m.dir, "run-kmesh")
	bpfDir := argValue(kspec.Containers[0].Args, "--bpf-dir")
	if bpfDir == "" || argValue(tc.Args, "--bpf-dir") != bpfDir {
		t.Fatalf("kmeshd --bpf-dir %q, tunnel %q: want the same pins", bpfDir, argValue(tc.Args, "--bpf-dir"))
	}
	tunnels := map[string]*testbed.Process{}
	tunnelArgs := map[string][]string{}
	kmeshds := map[string]*kmeshd{}
	tokens := map[string]string{}
	for _, node := range []string{"node-a", "node-b"} {
		n := m.nodes[node]
		kmeshdToken := env.podToken(env.barePod(ns, "kmesh-"+node, kspec.ServiceAccountName, node))
		stateDir := strings.ReplaceAll(argValue(kspec.Containers[0].Args, "--state-dir"), "$(NODE_NAME)", node)
		if !strings.HasPrefix(stateDir, "/run/kmesh/") {
			t.Fatalf("kmeshd --state-dir %q: want it under the /run/kmesh host path", stateDir)
		}
		kmeshds[node] = m.startKmeshdBin(m.kmeshd, node, "", "--xds-address", env.XDSAddr, "--kubeconfig", env.kubeconfig,
			"--state-dir", filepath.Join(runDir, strings.TrimPrefix(stateDir, "/run/kmesh/")),
			"--ca-address", env.caAddr(), "--ca-server-name", istiodName, "--ca-root-cert", rootFile,
			"--ca-token-file", kmeshdToken, "--cluster-id", "Kubernetes")

		files := podFiles(t, env, ns, tspec, node, rootFile, filepath.Join(m.dir, "tunnel-"+node))
		tokens[node] = filepath.Join(files["/var/run/secrets/tokens"], "istio-token")
		args := renderedArgs(t, tc, node, map[string]string{
			"/run/kmesh": runDir, bpfDir: n.BPFDir,
			"/var/run/secrets/tokens": files["/var/run/secrets/tokens"], "/var/run/secrets/istio": files["/var/run/secrets/istio"],
		})
		caps := capNames(tc)
		if node == "node-a" {
			// Each capability the chart names that this tier exercises
			// is needed: without it the tunnel cannot listen in a pod.
			for _, c := range []string{"sys_admin", "net_admin"} {
				var fewer []string
				for _, k := range caps {
					if k != c {
						fewer = append(fewer, k)
					}
				}
				p := startCapped(t, n, m.kmeshd, fewer, args)
				waitFor(t, "tunnel without "+c+" failing to listen", 30*time.Second, func() string {
					if strings.Contains(p.Stderr(), `msg="cannot listen in pod`) && strings.Contains(p.Stderr(), "operation not permitted") {
						return ""
					}
					return "no refused listen in its log:\n" + tail(p.Stderr(), 2000)
				})
				if strings.Contains(p.Stderr(), `msg="pod joined the tunnel"`) {
					t.Errorf("tunnel without %s joined a pod:\n%s", c, tail(p.Stderr(), 2000))
				}
				// The kubelet would keep it unready: the rollout stops here.
				if code, body := probe(t, p, tc.ReadinessProbe); code != http.StatusServiceUnavailable {
					t.Errorf("tunnel without %s: readiness probe %d %q, want 503", c, code, body)
				}
				p.Stop()
			}
		}
		tunnelArgs[node] = args
		tunnels[node] = startCapped(t, n, m.kmeshd, caps, args)
		waitFor(t, node+"'s tunnel listening in its pod", 60*time.Second, func() string {
			if strings.Contains(tunnels[node].Stderr(), `msg="pod joined the tunnel"`) {
				return ""
			}
			return "not yet:\n" + tail(tunnels[node].Stderr(), 2000)
		})
		if code, body := probe(t, tunnels[node], tc.ReadinessProbe); code != http.StatusOK {
			t.Errorf("%s's tunnel listening in its pod: readiness probe %d %q, want 200", node, code, body)
		}
	}

	t.Run("carries_cross_node_traffic_over_mutual_tls", func(t *testing.T) {
		requireAll(t, "client-a (node-a) -> hello-2 (node-b)", m.get("client-a", "--url", "http://10.71.2.12:8080/", "--count", "3"), "hello-2")
		sm := tunnelMetrics.FindStringSubmatch(tunnels["node-a"].Stderr())
		if sm == nil {
			t.Fatalf("node-a's tunnel: no metrics address in its log:\n%s", tail(tunnels["node-a"].Stderr(), 2000))
		}
		want := []string{`connection_security_policy="mutual_tls"`, `source_principal="spiffe://cluster.local/ns/apps/sa/sleep"`,
			`destination_principal="spiffe://cluster.local/ns/apps/sa/hello"`}
		waitFor(t, "the tunnel counting the requests", 10*time.Second, func() string {
			body := httpBody(t, "http://"+sm[1]+"/metrics")
			if n := seriesValue(body, "istio_tcp_connections_closed_total", want); n < 3 {
				return fmt.Sprintf("closed %v, want 3:\n%s", n, grepLines(body, "istio_tcp_connections"))
			}
			return ""
		})
		// Counted once: node-b's kmeshd leaves hello-2's socket of the
		// tunnel's dial to the tunnel, without the pod's tcp_fwmark_accept
		// (read-only in the chart's container in a cluster; the tunnel no
		// longer writes it).
		for _, metric := range []string{"istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total"} {
			if n := metricSum(t, kmeshds["node-b"].metrics, metric, map[string]string{"reporter": "destination"}); n != 0 {
				t.Errorf("node-b's kmeshd: %s{reporter=destination} = %v, want 0 (the tunnel counts them)", metric, n)
			}
		}
	})

	t.Run("gets_its_pods_certificates_by_impersonation", func(t *testing.T) {
		sleep := "spiffe://cluster.local/ns/apps/sa/sleep"
		// What an operator checks: kmeshctl, through kmeshd, shows the
		// tunnel's certificates.
		out, err := execOutput(ctl, "get", "certs", "--admin-address", kmeshds["node-a"].admin)
		if err != nil || !strings.HasPrefix(out, "SERVED BY: kmeshd tunnel\n") || !strings.Contains(out, sleep) {
			t.Errorf("kmeshctl get certs on node-a (%v):\n%s", err, out)
		}
		c := getCerts(t, ctl, kmeshds["node-a"])
		var found bool
		for _, ct := range c.Certificates {
			found = found || ct.Identity == sleep && ct.State == "valid"
			if strings.Contains(ct.Identity, "/sa/hello") {
				t.Errorf("node-a's tunnel holds %s, whose only pod is on node-b", ct.Identity)
			}
		}
		if !found || !strings.HasPrefix(c.CA, "istiod ") {
			t.Errorf("node-a's tunnel: CA %q certificates %+v; want istiod's certificate for %s", c.CA, c.Certificates, sleep)
		}
		// The chart's token itself: istiod signs an identity of node-a
		// and refuses one with no pod there.
		ask := func(sa string) error {
			ca, err := identity.NewIstiodCA(identity.IstiodConfig{Address: env.caAddr(), ServerName: istiodName, RootCertFile: rootFile,
				TokenFile: tokens["node-a"], ClusterID: "Kubernetes", CertTTL: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			defer ca.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err = identity.NewCache(ca).Certificate(ctx, identity.Identity{TrustDomain: "cluster.local", Namespace: istioAppsNs, ServiceAccount: sa})
			return err
		}
		if err := ask("sleep"); err != nil {
			t.Errorf("the tunnel's token, apps/sleep (a pod on node-a): %v", err)
		}
		if err := ask("hello"); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
			t.Errorf("the tunnel's token, apps/hello (no pod on node-a): err %v, want Unauthenticated", err)
		}
	})

	// A rolling update of kmesh-tunnel on node-a as the chart sets it up:
	// the surge pod's tunnel (the same args and capabilities) starts beside
	// the old one and takes over; once it is ready the DaemonSet deletes
	// the old pod (SIGTERM), which drains. Meanwhile a client opens a new
	// connection every 20 ms and another keeps one connection: none fails.
	t.Run("upgrade_hands_over_to_the_surge_tunnel", func(t *testing.T) {
		get := func(args ...string) *testbed.Process {
			p, err := m.pods["client-a"].Start(m.echo, append([]string{"get", "--url", "http://10.71.2.12:8080/", "--count", "0", "--interval", "20ms", "--timeout", "3s"}, args...)...)
			if err != nil {
				t.Fatal(err)
			}
			return p
		}
		perConn, keepalive := get(), get("--keepalive")
		// Both clients answered through the old tunnel before the new one
		// starts (a client process can take long to start on a loaded
		// machine): the kept-alive connection is the old tunnel's.
		first := map[*testbed.Process][]string{}
		for _, p := range []*testbed.Process{perConn, keepalive} {
			select {
			case line := <-p.Lines():
				first[p] = append(first[p], line)
			case <-time.After(20 * time.Second):
				t.Fatalf("no request answered after 20 s:\n%s", p.Stderr())
			}
		}
		old := tunnels["node-a"]
		surge := startCapped(t, m.nodes["node-a"], m.kmeshd, capNames(tc), tunnelArgs["node-a"])
		waitFor(t, "the surge tunnel ready and the old one not", 30*time.Second, func() string {
			n, _ := probe(t, surge, tc.ReadinessProbe)
			o, _ := probe(t, old, tc.ReadinessProbe)
			if n != http.StatusOK || o != http.StatusServiceUnavailable {
				return fmt.Sprintf("surge %d, old %d; want 200, 503\n%s", n, o, tail(surge.Stderr(), 2000))
			}
			return ""
		})
		if err := old.Signal(unix.SIGTERM); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		select {
		case <-old.Done():
			t.Errorf("the old tunnel exited with a kept-alive connection to carry:\n%s", tail(old.Stderr(), 2000))
		default:
		}
		time.Sleep(time.Second)
		results := func(name string, p *testbed.Process) []result {
			if err := p.Stop(); err != nil {
				t.Fatalf("%s client: %v: %s", name, err, p.Stderr())
			}
			var rs []result
			for _, line := range first[p] {
				rs = append(rs, parseResult(t, line))
			}
			for line := range p.Lines() {
				rs = append(rs, parseResult(t, line))
			}
			return rs
		}
		ka, pc := results("keep-alive", keepalive), results("new-connection", perConn)
		for name, rs := range map[string][]result{"keep-alive": ka, "new-connection": pc} {
			if len(rs) < 10 {
				t.Errorf("%s: %d requests, want a steady stream", name, len(rs))
			}
			for _, r := range rs {
				if r.Error != "" || r.Pod != "hello-2" {
					t.Errorf("%s request %d: %+v", name, r.Seq, r)
				}
			}
		}
		if len(ka) > 0 && ka[0].Local != ka[len(ka)-1].Local {
			t.Errorf("keep-alive client changed connections (%s, then %s): one was reset", ka[0].Local, ka[len(ka)-1].Local)
		}
		// Its last connection ended, the old tunnel had its SIGTERM: it
		// exits (well before the 20 s drain timeout and the 25 s grace).
		select {
		case <-old.Done():
		case <-time.After(15 * time.Second):
			t.Errorf("the old tunnel still runs 15 s after its last connection ended:\n%s", tail(old.Stderr(), 2000))
		}
		// New connections are the new tunnel's.
		requireAll(t, "client-a -> hello-2 after the upgrade", m.get("client-a", "--url", "http://10.71.2.12:8080/", "--count", "3"), "hello-2")
		if code, body := probe(t, surge, tc.ReadinessProbe); code != http.StatusOK {
			t.Errorf("the new tunnel after the old one left: readiness %d %q", code, body)
		}
		tunnels["node-a"] = surge
	})

	t.Run("has_no_kubernetes_api_access", func(t *testing.T) {
		// The account may list pods (kmeshd's RBAC); the tunnel's only
		// token is for istiod, and the API server does not take it.
		tok, err := os.ReadFile(tokens["node-a"])
		if err != nil {
			t.Fatal(err)
		}
		rc, err := clientcmd.BuildConfigFromFlags("", env.kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		rc.BearerToken, rc.CertFile, rc.KeyFile, rc.CertData, rc.KeyData = string(tok), "", "", nil, nil
		kc, err := kubernetes.NewForConfig(rc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kc.CoreV1().Pods(istioAppsNs).List(env.ctx(), metav1.ListOptions{}); !apierrors.IsUnauthorized(err) {
			t.Errorf("listing pods with the tunnel's token: %v, want Unauthorized", err)
		}
	})
}

// podFiles writes what the tunnel DaemonSet's volumes put in its
// container on node, under dir, by mount path: istiod's root certificate
// (its ConfigMap volume) and a token as its projected volume asks for,
// bound to a pod of that node with its ServiceAccount.
func podFiles(t *testing.T, e *istioEnv, ns string, spec *corev1.PodSpec, node, rootFile, dir string) map[string]string {
	t.Helper()
	pod := e.barePod(ns, "kmesh-tunnel-"+node, spec.ServiceAccountName, node)
	files := map[string]string{}
	for _, mnt := range spec.Containers[0].VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name != mnt.Name {
				continue
			}
			local := filepath.Join(dir, v.Name)
			switch {
			case v.ConfigMap != nil && v.ConfigMap.Name == "istio-ca-root-cert":
				b, err := os.ReadFile(rootFile)
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(local, "root-cert.pem"), b)
			case v.Projected != nil:
				for _, src := range v.Projected.Sources {
					sat := src.ServiceAccountToken
					if sat == nil {
						t.Fatalf("projected volume %s: %+v, want only a service account token", v.Name, src)
					}
					tr, err := e.kube.CoreV1().ServiceAccounts(ns).CreateToken(e.ctx(), spec.ServiceAccountName, &authnv1.TokenRequest{
						Spec: authnv1.TokenRequestSpec{Audiences: []string{sat.Audience}, ExpirationSeconds: sat.ExpirationSeconds,
							BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}},
					}, metav1.CreateOptions{})
					if err != nil {
						t.Fatal(err)
					}
					writeFile(t, filepath.Join(local, sat.Path), []byte(tr.Status.Token))
				}
			default:
				continue // host paths: mapped by the caller
			}
			files[mnt.MountPath] = local
		}
	}
	return files
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// renderedArgs is the container's command line as the kubelet would run
// it on node ($(NODE_NAME) expanded), with the paths of its mounts moved
// to where this test keeps them (longest prefix first is not needed: the
// mounts do not nest), its metrics on a free loopback port (the tier's
// tunnels share one network namespace), and istiod's certificate checked
// against istiod's name (the tier has no cluster DNS: the CA address is
// 127.0.0.1).
func renderedArgs(t *testing.T, c corev1.Container, node string, paths map[string]string) []string {
	t.Helper()
	var args []string
	for _, a := range c.Args {
		a = strings.ReplaceAll(a, "$(NODE_NAME)", node)
		if flag, val, ok := strings.Cut(a, "="); ok {
			for from, to := range paths {
				if val == from || strings.HasPrefix(val, from+"/") {
					val = to + strings.TrimPrefix(val, from)
				}
			}
			if flag == "--metrics-address" {
				val = "127.0.0.1:0"
			}
			a = flag + "=" + val
		}
		args = append(args, a)
	}
	if strings.Contains(strings.Join(args, " "), "$(") {
		t.Fatalf("args %q: a variable the test does not expand", args)
	}
	return append(args, "--ca-server-name="+istiodName)
}

// capNames are the container's added capabilities, as setpriv names them.
func capNames(c corev1.Container) []string {
	var caps []string
	for _, k := range c.SecurityContext.Capabilities.Add {
		caps = append(caps, strings.ToLower(string(k)))
	}
	return caps
}

// startCapped runs bin with args in the node's cgroup and the root network
// namespace, as uid 0 with exactly caps (bounding set; nothing inherited;
// no new privileges), as a container runtime runs the chart's container;
// the kernel's view of the process is checked.
func startCapped(t *testing.T, n *testbed.Node, bin string, caps []string, args []string) *testbed.Process {
	t.Helper()
	bounding := "-all"
	for _, c := range caps {
		bounding += ",+" + c
	}
	p, err := n.StartHostNetwork("setpriv", append([]string{"--no-new-privs", "--inh-caps=-all", "--bounding-set=" + bounding, bin}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop() })
	var want uint64
	for _, c := range caps {
		v, ok := capBits[c]
		if !ok {
			t.Fatalf("capability %s: unknown to the test", c)
		}
		want |= 1 << v
	}
	waitFor(t, "the capped tunnel's capabilities", 10*time.Second, func() string {
		got, err := effectiveCaps(p.PID())
		if err != nil {
			return err.Error()
		}
		if got != want {
			return fmt.Sprintf("CapEff %#x, want %#x (%v)", got, want, caps)
		}
		return ""
	})
	return p
}

var capBits = map[string]int{"net_admin": unix.CAP_NET_ADMIN, "sys_admin": unix.CAP_SYS_ADMIN, "sys_ptrace": unix.CAP_SYS_PTRACE,
	"net_raw": unix.CAP_NET_RAW, "bpf": unix.CAP_BPF, "perfmon": unix.CAP_PERFMON}

// effectiveCaps reads CapEff of the process (setpriv execs the tunnel in
// its place, so the pid is the tunnel's once it runs).
func effectiveCaps(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("no CapEff in /proc/%d/status", pid)
}

// probe asks what the kubelet's HTTP probe p would ask of the tunnel
// process: its path on the port of --metrics-address (moved to the
// address the process logged). Status 0: it does not serve yet, a failed
// probe to the kubelet too.
func probe(t *testing.T, proc *testbed.Process, p *corev1.Probe) (int, string) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Fatalf("probe %+v: want an HTTP GET", p)
	}
	sm := tunnelMetrics.FindStringSubmatch(proc.Stderr())
	if sm == nil {
		return 0, "no metrics address in its log yet"
	}
	resp, err := http.Get("http://" + sm[1] + p.HTTPGet.Path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// argValue is the value of a --flag=value argument.
func argValue(args []string, flag string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}

func httpBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
