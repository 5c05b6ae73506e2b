//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/source/kube"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// The Istio tier runs the stock istiod (pilot-discovery) against a real
// kube-apiserver and etcd (tools/cmd/kube-control-plane). Both are built
// in the tools module, which keeps Istio's and Kubernetes' dependency
// graphs out of this one: `make tools` puts them, and Istio's CRDs, in
// $KMESH_TOOLS_DIR (default ~/.cache/kmesh-tools/bin). No kubelet,
// scheduler or controller-manager runs: the harness writes what they
// would (pod status, EndpointSlices, ServiceAccounts, Nodes).

// istioTools are the binaries and files `make tools` builds.
type istioTools struct {
	controlPlane, pilot, crds string
	// gatewayCRDs are the Gateway API's CRDs (experimental channel); older
	// tool builds lack them, and only the tests that need them ask
	// (withGatewayAPI).
	gatewayCRDs string
}

// toolsDir is where `make tools` puts the binaries.
func toolsDir() string {
	if d := os.Getenv("KMESH_TOOLS_DIR"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "kmesh-tools", "bin")
}

// findIstioTools returns the tools, or skips the test when they are not
// built (fails it when KMESH_REQUIRE_PRIVILEGED=1, as CI sets).
func findIstioTools(t testing.TB) istioTools {
	t.Helper()
	dir := toolsDir()
	tools := istioTools{
		controlPlane: filepath.Join(dir, "kube-control-plane"),
		pilot:        filepath.Join(dir, "pilot-discovery"),
		crds:         filepath.Join(dir, "istio-crds.yaml"),
		gatewayCRDs:  filepath.Join(dir, "gateway-api-crds.yaml"),
	}
	for _, p := range []string{tools.controlPlane, tools.pilot, tools.crds} {
		if _, err := os.Stat(p); err != nil {
			msg := fmt.Sprintf("istio tier: %v; build the tools with `make tools` (or set KMESH_TOOLS_DIR)", err)
			if os.Getenv("KMESH_REQUIRE_PRIVILEGED") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	return tools
}

// istioEnv is a kube-apiserver with Istio's CRDs and an istiod watching it.
type istioEnv struct {
	t          testing.TB
	bed        *testbed.Bed
	tools      istioTools
	dir        string
	kubeconfig string
	kube       kubernetes.Interface
	istiod     *testbed.Process
	// XDSAddr is istiod's plaintext xDS address (its 15010).
	XDSAddr string
	ports   map[string]int // istiod's listeners by flag
}

// envOptions are what a test adds to the control plane.
type envOptions struct {
	// gatewayAPI installs the Gateway API CRDs too (large: only the tests
	// that apply Gateways and routes pay for them).
	gatewayAPI bool
}

type envOption func(*envOptions)

// withGatewayAPI installs the Gateway API CRDs (gateway-api-crds.yaml).
func withGatewayAPI(o *envOptions) { o.gatewayAPI = true }

var controlPlaneReady = regexp.MustCompile(`^ready kubeconfig=(\S+) server=(\S+)$`)

// newIstioEnv starts etcd, kube-apiserver (with Istio's CRDs) and istiod,
// all on loopback at free ports, as processes of the bed: they stop with
// it.
func newIstioEnv(t testing.TB, bed *testbed.Bed, opts ...envOption) *istioEnv {
	t.Helper()
	e := newKubeEnv(t, bed, opts...)
	e.namespace("istio-system", nil)
	e.ports = map[string]int{}
	for _, flag := range []string{"grpcAddr", "httpAddr", "httpsAddr", "secureGRPCAddr", "monitoringAddr"} {
		e.ports[flag] = freePort(t)
	}
	e.XDSAddr = fmt.Sprintf("127.0.0.1:%d", e.ports["grpcAddr"])
	mesh := filepath.Join(e.dir, "mesh.yaml")
	if err := os.WriteFile(mesh, []byte("trustDomain: cluster.local\nrootNamespace: istio-system\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.StartIstiod()
	return e
}

// newKubeEnv starts etcd and kube-apiserver (with Istio's CRDs) on
// loopback, as processes of the bed; istiod is left to newIstioEnv.
func newKubeEnv(t testing.TB, bed *testbed.Bed, opts ...envOption) *istioEnv {
	t.Helper()
	e := &istioEnv{t: t, bed: bed, tools: findIstioTools(t), dir: t.TempDir()}
	var o envOptions
	for _, opt := range opts {
		opt(&o)
	}
	start := time.Now()
	args := []string{"--dir", e.dir, "--crds", e.tools.crds}
	if o.gatewayAPI {
		if _, err := os.Stat(e.tools.gatewayCRDs); err != nil {
			msg := fmt.Sprintf("istio tier: %v; rebuild the tools with `make tools`", err)
			if os.Getenv("KMESH_REQUIRE_PRIVILEGED") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
		args = append(args, "--crds", e.tools.gatewayCRDs)
	}
	cp, err := bed.StartRoot(e.tools.controlPlane, args...)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case line := <-cp.Lines():
		sm := controlPlaneReady.FindStringSubmatch(line)
		if sm == nil {
			t.Fatalf("kube-control-plane: first line %q, want ready ...\n%s", line, cp.Stderr())
		}
		e.kubeconfig = sm[1]
	case <-time.After(5 * time.Minute):
		t.Fatalf("kube-control-plane not ready after 5 minutes:\n%s", cp.Stderr())
	}
	rc, err := clientcmd.BuildConfigFromFlags("", e.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	rc.QPS, rc.Burst = 1000, 1000
	if e.kube, err = kubernetes.NewForConfig(rc); err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver ready in %v", time.Since(start).Round(time.Millisecond))
	return e
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartIstiod starts istiod (again, on the same ports) and waits until it
// is ready.
func (e *istioEnv) StartIstiod() {
	e.t.Helper()
	start := time.Now()
	args := []string{
		// istiod reads these from its pod's environment.
		"PILOT_ENABLE_AMBIENT=true", "POD_NAMESPACE=istio-system", "POD_NAME=istiod-0",
		// kmeshd's service account may ask for the certificates of its
		// node's pods, as ztunnel's may (docs/istio.md).
		"CA_TRUSTED_NODE_ACCOUNTS=istio-system/ztunnel," + kmeshAccount,
		e.tools.pilot, "discovery",
		"--kubeconfig", e.kubeconfig,
		"--meshConfig", filepath.Join(e.dir, "mesh.yaml"),
		"--clusterID", "Kubernetes",
		"--domain", "cluster.local",
	}
	for flag, port := range e.ports {
		args = append(args, fmt.Sprintf("--%s=127.0.0.1:%d", flag, port))
	}
	p, err := e.bed.StartRoot("env", args...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.istiod = p
	ready := fmt.Sprintf("http://127.0.0.1:%d/ready", e.ports["httpAddr"])
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := http.Get(ready)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-p.Done():
			e.t.Fatalf("istiod exited: %v\n%s", p.Wait(), tail(p.Stderr(), 4000))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("istiod not ready after 2 minutes:\n%s", tail(p.Stderr(), 4000))
		}
	}
	e.t.Logf("istiod ready in %v, xDS on %s", time.Since(start).Round(time.Millisecond), e.XDSAddr)
}

// StopIstiod stops istiod (SIGTERM).
func (e *istioEnv) StopIstiod() {
	e.t.Helper()
	if err := e.istiod.Stop(); err != nil {
		e.t.Logf("istiod: %v", err)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

func (e *istioEnv) ctx() context.Context { return context.Background() }

// namespace creates a namespace with labels.
func (e *istioEnv) namespace(name string, lbls map[string]string) {
	e.t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}
	if _, err := e.kube.CoreV1().Namespaces().Create(e.ctx(), ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		e.t.Fatal(err)
	}
	// The pods run as "default"; no controller-manager creates it.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: name}}
	if _, err := e.kube.CoreV1().ServiceAccounts(name).Create(e.ctx(), sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		e.t.Fatal(err)
	}
}

// node registers a test-bed node as a Node, with its underlay address.
func (e *istioEnv) node(n *testbed.Node) {
	e.t.Helper()
	e.nodeIn(n, "local", "local-"+n.Name)
}

// nodeIn registers a test-bed node as a Node labelled with a region and
// zone (topology.kubernetes.io/*), which istiod gives its pods' workloads
// as their locality.
func (e *istioEnv) nodeIn(n *testbed.Node, region, zone string) {
	e.t.Helper()
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
			"kubernetes.io/hostname":        n.Name,
			"topology.kubernetes.io/region": region,
			"topology.kubernetes.io/zone":   zone,
		}},
		Status: corev1.NodeStatus{
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.UnderlayAddr4.String()}},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
		},
	}
	if _, err := e.kube.CoreV1().Nodes().Create(e.ctx(), node, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// kmeshAccount is the namespace/name of kmeshd's service account.
const kmeshAccount = "kmesh-system/kmesh"

// pod registers a test-bed pod as a running, ready Pod in namespace ns.
func (e *istioEnv) pod(p *testbed.Pod, ns string, lbls map[string]string) {
	e.t.Helper()
	e.podAs(p, ns, "default", lbls)
}

// serviceAccount creates a service account.
func (e *istioEnv) serviceAccount(ns, name string) {
	e.t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if _, err := e.kube.CoreV1().ServiceAccounts(ns).Create(e.ctx(), sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		e.t.Fatal(err)
	}
}

// podAs is pod with service account sa.
func (e *istioEnv) podAs(p *testbed.Pod, ns, sa string, lbls map[string]string) {
	e.t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: ns, Labels: lbls},
		Spec: corev1.PodSpec{
			NodeName:           p.Node.Name,
			ServiceAccountName: sa,
			Containers: []corev1.Container{{
				Name: "app", Image: "kmesh-echo",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
			}},
		},
	}
	created, err := e.kube.CoreV1().Pods(ns).Create(e.ctx(), pod, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	now := metav1.Now()
	created.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    p.Node.UnderlayAddr4.String(),
		HostIPs:   []corev1.HostIP{{IP: p.Node.UnderlayAddr4.String()}},
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Image: "kmesh-echo", Ready: true,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}},
	}
	for _, a := range p.Addrs {
		created.Status.PodIPs = append(created.Status.PodIPs, corev1.PodIP{IP: a.String()})
	}
	created.Status.PodIP = created.Status.PodIPs[0].IP
	if _, err := e.kube.CoreV1().Pods(ns).UpdateStatus(e.ctx(), created, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// setPodReady flips a pod's Ready condition, as a failing or recovering
// readiness probe would.
func (e *istioEnv) setPodReady(ns, name string, ready bool) {
	e.t.Helper()
	pod, err := e.kube.CoreV1().Pods(ns).Get(e.ctx(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	for i, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady || c.Type == corev1.ContainersReady {
			pod.Status.Conditions[i].Status = status
			pod.Status.Conditions[i].LastTransitionTime = metav1.Now()
		}
	}
	if _, err := e.kube.CoreV1().Pods(ns).UpdateStatus(e.ctx(), pod, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// labelPod sets (or, with value "", removes) a pod label.
func (e *istioEnv) labelPod(ns, name, key, value string) {
	e.t.Helper()
	v := "null"
	if value != "" {
		v = strconv.Quote(value)
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, key, v)
	if _, err := e.kube.CoreV1().Pods(ns).Patch(e.ctx(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// waitAnnotation waits until a pod's redirection annotation has the value want
// ("" = absent).
func waitAnnotation(t *testing.T, e *istioEnv, ns, name, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := e.annotation(ns, name, kube.RedirectionAnnotation)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s/%s: annotation %s = %q after 10s, want %q", ns, name, kube.RedirectionAnnotation, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// deletePod deletes a pod at once (no kubelet would confirm a graceful
// deletion) and updates the EndpointSlices of service.
func (e *istioEnv) deletePod(ns, name, service string) {
	e.t.Helper()
	zero := int64(0)
	if err := e.kube.CoreV1().Pods(ns).Delete(e.ctx(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		e.t.Fatal(err)
	}
	e.endpointSlice(ns, service)
}

// service creates a ClusterIP Service port -> targetPort over the pods
// matching selector, and its EndpointSlice; each edit changes the Service
// before it is created.
func (e *istioEnv) service(ns, name, clusterIP string, selector map[string]string, port, targetPort int32, edits ...func(*corev1.ServiceSpec)) {
	e.t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeClusterIP,
			ClusterIP: clusterIP,
			Selector:  selector,
			Ports: []corev1.ServicePort{{Name: "http", Port: port, TargetPort: intstr.FromInt32(targetPort),
				Protocol: corev1.ProtocolTCP}},
		},
	}
	for _, edit := range edits {
		edit(&svc.Spec)
	}
	if _, err := e.kube.CoreV1().Services(ns).Create(e.ctx(), svc, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.endpointSlice(ns, name)
}

// endpointSlice writes the IPv4 EndpointSlice of a service from its pods,
// as the endpoint slice controller would.
func (e *istioEnv) endpointSlice(ns, service string) {
	e.t.Helper()
	svc, err := e.kube.CoreV1().Services(ns).Get(e.ctx(), service, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	pods, err := e.kube.CoreV1().Pods(ns).List(e.ctx(), metav1.ListOptions{LabelSelector: labels.SelectorFromSet(svc.Spec.Selector).String()})
	if err != nil {
		e.t.Fatal(err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: service + "-ipv4", Namespace: ns, Labels: map[string]string{
			discoveryv1.LabelServiceName: service,
			discoveryv1.LabelManagedBy:   "kmesh-e2e",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for _, sp := range svc.Spec.Ports {
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: &sp.Name, Protocol: &sp.Protocol, Port: &sp.TargetPort.IntVal})
	}
	for _, p := range pods.Items {
		var ip string
		for _, a := range p.Status.PodIPs {
			if addr, err := netip.ParseAddr(a.IP); err == nil && addr.Is4() {
				ip = a.IP
			}
		}
		if ip == "" {
			continue
		}
		ready := podReady(&p)
		nodeName := p.Spec.NodeName
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &ready},
			NodeName:   &nodeName,
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: p.Name, UID: p.UID},
		})
	}
	c := e.kube.DiscoveryV1().EndpointSlices(ns)
	old, err := c.Get(e.ctx(), slice.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = c.Create(e.ctx(), slice, metav1.CreateOptions{})
	case err == nil:
		slice.ResourceVersion = old.ResourceVersion
		_, err = c.Update(e.ctx(), slice, metav1.UpdateOptions{})
	}
	if err != nil {
		e.t.Fatal(err)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// annotation returns a pod's annotation.
func (e *istioEnv) annotation(ns, name, key string) string {
	e.t.Helper()
	pod, err := e.kube.CoreV1().Pods(ns).Get(e.ctx(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return pod.Annotations[key]
}

// startIstioKmeshd starts the kmeshd of a node with istiod as its config
// source and the Kubernetes API for enrollment.
func (m *mesh) startIstioKmeshd(e *istioEnv, node string) *kmeshd {
	m.t.Helper()
	return m.startKmeshdBin(m.kmeshd, node, "", "--xds-address", e.XDSAddr, "--kubeconfig", e.kubeconfig,
		"--cluster-id", "Kubernetes")
}

// waitDump waits until the daemon's config dump satisfies ok, which
// returns what it still misses.
func (k *kmeshd) waitDump(t *testing.T, what string, timeout time.Duration, ok func(d dumpView) string) dumpView {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var miss string
	for {
		d := dumpView{k.configDump(t)}
		if miss = ok(d); miss == "" {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("kmeshd %s: %s: still %s after %v\n%s", k.node.Name, what, miss, timeout, tail(k.proc.Stderr(), 6000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dumpView adds lookups to a config dump.
type dumpView struct{ api.ConfigDump }

// endpointsOf returns the endpoints of the service with address addr, or
// nil when there is no such service.
func (d dumpView) endpointsOf(addr string) []string {
	for _, s := range d.Services {
		for _, a := range s.Addresses {
			if a == addr {
				if s.Endpoints == nil {
					return []string{}
				}
				return s.Endpoints
			}
		}
	}
	return nil
}

func (d dumpView) enrolled(netns string) bool {
	for _, p := range d.Enrolled {
		if p == netns {
			return true
		}
	}
	return false
}
