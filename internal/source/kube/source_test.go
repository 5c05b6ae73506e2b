package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
)

// reports collects what a Source reports.
type reports struct {
	mu   sync.Mutex
	last []string
	pods []Pod
	n    int
}

func (r *reports) report(pods []Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last, r.pods, r.n = Paths(pods), pods, r.n+1
}

func (r *reports) wait(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		last, n := r.last, r.n
		r.mu.Unlock()
		if n > 0 && slices.Equal(last, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("reported %q after %d reports, want %q", last, n, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeNetns resolves pod IPs to /netns/<ip>, for the IPs present.
type fakeNetns struct {
	mu      sync.Mutex
	present map[string]bool
}

func (f *fakeNetns) resolve(_ string, ips []netip.Addr) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.present[ips[0].String()] {
		return "", fmt.Errorf("%s: %w", ips[0], ErrNotFound)
	}
	return "/netns/" + ips[0].String(), nil
}

func (f *fakeNetns) add(ip string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.present[ip] = true
}

func newPod(name, ns, node, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID("uid-" + name), Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

func waitAnnotation(t *testing.T, c *fake.Clientset, ns, name string, want bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p, err := c.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if (p.Annotations[RedirectionAnnotation] == RedirectionEnabled) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s/%s annotations %v, want %s set: %v", ns, name, p.Annotations, RedirectionAnnotation, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSource_EnrollsLabelledPodsOfItsNode(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mesh", Labels: map[string]string{DataplaneModeLabel: ModeAmbient}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
		newPod("a1", "mesh", "node-a", "10.1.1.10", nil),
		newPod("a2", "mesh", "node-a", "10.1.1.11", map[string]string{DataplaneModeLabel: ModeNone}),
		newPod("a3", "plain", "node-a", "10.1.1.12", nil),
		newPod("a4", "plain", "node-a", "10.1.1.13", map[string]string{DataplaneModeLabel: ModeAmbient}),
		newPod("b1", "mesh", "node-b", "10.1.2.10", nil),
	)
	netns := &fakeNetns{present: map[string]bool{"10.1.1.10": true, "10.1.1.11": true, "10.1.1.12": true, "10.1.2.10": true}}
	s := NewWithClient(client, "node-a", netns.resolve, nil, slog.New(slog.DiscardHandler))
	s.retryMin, s.retryMax = 10*time.Millisecond, 50*time.Millisecond
	var r reports
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx, r.report) }()

	// a4's namespace is not there yet (its CNI plugin is late).
	r.wait(t, "/netns/10.1.1.10")
	// Each namespace comes with its pod, for the daemon to name its
	// workload (source-side policy checks).
	r.mu.Lock()
	pods := r.pods
	r.mu.Unlock()
	if want := (Pod{Netns: "/netns/10.1.1.10", Namespace: "mesh", Name: "a1", IPs: []netip.Addr{netip.MustParseAddr("10.1.1.10")}}); len(pods) != 1 || !podEqual(pods[0], want) {
		t.Fatalf("reported pods %+v, want [%+v]", pods, want)
	}
	waitAnnotation(t, client, "mesh", "a1", true)
	netns.add("10.1.1.13")
	r.wait(t, "/netns/10.1.1.10", "/netns/10.1.1.13")
	waitAnnotation(t, client, "plain", "a4", true)
	for _, p := range [][2]string{{"mesh", "a2"}, {"plain", "a3"}, {"mesh", "b1"}} {
		waitAnnotation(t, client, p[0], p[1], false)
	}

	// Unlabelling the namespace un-enrolls its pods and drops the annotation.
	nsMesh, _ := client.CoreV1().Namespaces().Get(ctx, "mesh", metav1.GetOptions{})
	nsMesh.Labels = nil
	if _, err := client.CoreV1().Namespaces().Update(ctx, nsMesh, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r.wait(t, "/netns/10.1.1.13")
	waitAnnotation(t, client, "mesh", "a1", false)

	// A deleted pod leaves the set.
	if err := client.CoreV1().Pods("plain").Delete(ctx, "a4", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	r.wait(t)

	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestSource_ReportsEmptySetOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	s := NewWithClient(client, "node-a", (&fakeNetns{}).resolve, nil, slog.New(slog.DiscardHandler))
	var r reports
	go s.Run(ctx, r.report)
	// The daemon waits for a first report before it enrolls anything.
	r.wait(t)
}
