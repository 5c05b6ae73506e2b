// Package kubemesh registers a synthetic cluster in a Kubernetes API
// server, as kubelet and the controllers would write it, for the Istio
// tier at scale (`make bench`'s istiod phase, e2e TestIstioScale): ambient
// Namespaces, Nodes, Services, running Pods with their addresses and Ready
// condition, and the Services' EndpointSlices. No pod runs: istiod reads
// only what the API server holds, and a kmeshd on another node balances to
// the pods without reaching them. It also reads a service's endpoint count
// from a kmeshd's pinned maps, which is how the bench and the test see a
// change arrive.
package kubemesh

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kmesh-go/kmesh/internal/source/kube"
)

// Spec is the size of the synthetic cluster.
type Spec struct {
	Services, Pods, Namespaces int
	// Nodes are the Nodes the pods are spread over, none of them a node a
	// kmeshd runs on (each is registered; 0: one per 500 pods).
	Nodes int
	// Workers is how many API requests are in flight at once (0: 32).
	Workers int
}

// Port and TargetPort of every service.
const (
	Port       = 80
	TargetPort = 8080
)

// Pod is one registered pod.
type Pod struct {
	Namespace, Name string
	Service         int // index into Cluster.Services
	IP              netip.Addr
	Node            string
	UID             types.UID
	// Ready is the Ready condition last written.
	Ready bool
}

// Service is one registered service; Pods index Cluster.Pods.
type Service struct {
	Namespace, Name string
	ClusterIP       netip.Addr // allocated by the API server
	Pods            []int
}

// Cluster is what Register wrote.
type Cluster struct {
	kube     kubernetes.Interface
	workers  int
	Services []Service
	Pods     []Pod
}

// podAddr is pod i's address: 10.128.0.0/10 from .1, away from the test
// beds' and the API server's service range (10.96.0.0/16).
func podAddr(i int) netip.Addr {
	n := i + 1
	return netip.AddrFrom4([4]byte{10, byte(128 + n>>16), byte(n >> 8), byte(n)})
}

// Register writes the cluster: namespaces labelled for ambient with their
// default service account, the nodes, one Service per index (selector
// app=svc-N, ClusterIP allocated), pod i behind service i%Services on node
// i%Nodes, running and ready, annotated as redirected by its node's
// ambient data plane, and each service's EndpointSlice.
func Register(ctx context.Context, kc kubernetes.Interface, spec Spec) (*Cluster, error) {
	if spec.Services < 1 || spec.Pods < spec.Services || spec.Namespaces < 1 {
		return nil, fmt.Errorf("kubemesh: want services >= 1, pods >= services, namespaces >= 1; got %d, %d, %d",
			spec.Services, spec.Pods, spec.Namespaces)
	}
	if spec.Pods >= 1<<22 {
		return nil, fmt.Errorf("kubemesh: %d pods do not fit 10.128.0.0/10", spec.Pods)
	}
	if spec.Nodes == 0 {
		spec.Nodes = max(1, spec.Pods/500)
	}
	c := &Cluster{kube: kc, workers: spec.Workers}
	if c.workers == 0 {
		c.workers = 32
	}
	for ns := range spec.Namespaces {
		name := "scale-" + strconv.Itoa(ns)
		n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name,
			Labels: map[string]string{kube.DataplaneModeLabel: kube.ModeAmbient}}}
		if _, err := kc.CoreV1().Namespaces().Create(ctx, n, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("namespace %s: %w", name, err)
		}
		// No controller-manager creates it; the pods run as it.
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: name}}
		if _, err := kc.CoreV1().ServiceAccounts(name).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("service account %s/default: %w", name, err)
		}
	}
	err := c.each(ctx, spec.Nodes, func(i int) error {
		name := nodeName(i)
		addr := netip.AddrFrom4([4]byte{172, 30, byte(i >> 8), byte(i)}).String()
		n := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}},
			Status: corev1.NodeStatus{
				Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr}},
				Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
			},
		}
		if _, err := kc.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("node %s: %w", name, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	c.Services = make([]Service, spec.Services)
	c.Pods = make([]Pod, spec.Pods)
	for i := range c.Services {
		c.Services[i] = Service{Namespace: "scale-" + strconv.Itoa(i%spec.Namespaces), Name: "svc-" + strconv.Itoa(i)}
	}
	for i := range c.Pods {
		s := i % spec.Services
		c.Pods[i] = Pod{Namespace: c.Services[s].Namespace, Name: fmt.Sprintf("%s-%d", c.Services[s].Name, i/spec.Services),
			Service: s, IP: podAddr(i), Node: nodeName(i % spec.Nodes)}
		c.Services[s].Pods = append(c.Services[s].Pods, i)
	}
	if err := c.each(ctx, len(c.Services), func(i int) error { return c.createService(ctx, i) }); err != nil {
		return nil, err
	}
	if err := c.each(ctx, len(c.Pods), func(i int) error { return c.createPod(ctx, i) }); err != nil {
		return nil, err
	}
	if err := c.each(ctx, len(c.Services), func(i int) error { return c.WriteSlice(ctx, i) }); err != nil {
		return nil, err
	}
	return c, nil
}

func nodeName(i int) string { return "scale-node-" + strconv.Itoa(i) }

// each runs f(0..n-1) on c.workers goroutines and returns the first error.
func (c *Cluster) each(ctx context.Context, n int, f func(i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(c.workers, n) {
		wg.Go(func() {
			for i := range next {
				if err := f(i); err != nil {
					cancel(err)
				}
			}
		})
	}
	for i := range n {
		select {
		case next <- i:
			continue
		case <-ctx.Done():
		}
		break
	}
	close(next)
	wg.Wait()
	if err := context.Cause(ctx); err != nil && err != context.Canceled {
		return err
	}
	return ctx.Err()
}

func (c *Cluster) createService(ctx context.Context, i int) error {
	s := &c.Services[i]
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: map[string]string{"app": s.Name},
			Ports: []corev1.ServicePort{{Name: "http", Port: Port, TargetPort: intstr.FromInt32(TargetPort),
				Protocol: corev1.ProtocolTCP}},
		},
	}
	created, err := c.kube.CoreV1().Services(s.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("service %s/%s: %w", s.Namespace, s.Name, err)
	}
	if s.ClusterIP, err = netip.ParseAddr(created.Spec.ClusterIP); err != nil {
		return fmt.Errorf("service %s/%s: cluster IP %q: %w", s.Namespace, s.Name, created.Spec.ClusterIP, err)
	}
	return nil
}

// createPod creates pod i and writes its status as kubelet would once its
// container runs and its readiness probe passes.
func (c *Cluster) createPod(ctx context.Context, i int) error {
	p := &c.Pods[i]
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace,
			Labels: map[string]string{"app": c.Services[p.Service].Name},
			// What the node's ambient data plane (kmeshd with HBONE, or
			// istio-cni) writes on a pod it redirected: istiod then sends
			// the workload as reachable over HBONE.
			Annotations: map[string]string{kube.AmbientRedirectionAnnotation: kube.RedirectionEnabled}},
		Spec: corev1.PodSpec{
			NodeName:           p.Node,
			ServiceAccountName: "default",
			Containers: []corev1.Container{{Name: "app", Image: "kmesh-echo",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: TargetPort, Protocol: corev1.ProtocolTCP}}}},
		},
	}
	created, err := c.kube.CoreV1().Pods(p.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	now := metav1.Now()
	ip := p.IP.String()
	created.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    hostIP(p.Node),
		StartTime: &now,
		PodIP:     ip,
		PodIPs:    []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Image: "kmesh-echo", Ready: true,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}},
	}
	if _, err := c.kube.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("pod %s/%s status: %w", p.Namespace, p.Name, err)
	}
	p.UID, p.Ready = created.UID, true
	return nil
}

func hostIP(node string) string {
	var i int
	fmt.Sscanf(node, "scale-node-%d", &i)
	return netip.AddrFrom4([4]byte{172, 30, byte(i >> 8), byte(i)}).String()
}

// SetReady writes pod i's Ready condition (and ContainersReady), as
// kubelet does when its readiness probe starts failing or passes again.
// The EndpointSlice is left to WriteSlice, which the endpoint slice
// controller would run next.
func (c *Cluster) SetReady(ctx context.Context, i int, ready bool) error {
	p := &c.Pods[i]
	pods := c.kube.CoreV1().Pods(p.Namespace)
	pod, err := pods.Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	for j, cond := range pod.Status.Conditions {
		if cond.Type == corev1.PodReady || cond.Type == corev1.ContainersReady {
			pod.Status.Conditions[j].Status = status
			pod.Status.Conditions[j].LastTransitionTime = metav1.Now()
		}
	}
	for j := range pod.Status.ContainerStatuses {
		pod.Status.ContainerStatuses[j].Ready = ready
	}
	if _, err := pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("pod %s/%s status: %w", p.Namespace, p.Name, err)
	}
	p.Ready = ready
	return nil
}

// WriteSlice writes service i's IPv4 EndpointSlice from its pods'
// readiness as last written, as the endpoint slice controller would.
func (c *Cluster) WriteSlice(ctx context.Context, i int) error {
	s := &c.Services[i]
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name + "-ipv4", Namespace: s.Namespace, Labels: map[string]string{
			discoveryv1.LabelServiceName: s.Name,
			discoveryv1.LabelManagedBy:   "kmesh-bench",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	name, proto, port := "http", corev1.ProtocolTCP, int32(TargetPort)
	slice.Ports = []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}}
	for _, pi := range s.Pods {
		p := &c.Pods[pi]
		ready := p.Ready
		node := p.Node
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{p.IP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &ready},
			NodeName:   &node,
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.Name, UID: p.UID},
		})
	}
	slices := c.kube.DiscoveryV1().EndpointSlices(s.Namespace)
	old, err := slices.Get(ctx, slice.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = slices.Create(ctx, slice, metav1.CreateOptions{})
	case err == nil:
		slice.ResourceVersion = old.ResourceVersion
		_, err = slices.Update(ctx, slice, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("endpoint slice %s/%s: %w", s.Namespace, slice.Name, err)
	}
	return nil
}
