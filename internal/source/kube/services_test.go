package kube

import (
	"context"
	"log/slog"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// The fake clientset stands in for the API server here; the Istio-tier
// e2e TestIstioLB_PreferCloseFailoverStrict (client_ip_affinity_from_the_service_*)
// runs the same watch against a real kube-apiserver.
func TestWatchServiceAffinity_ReportsEachChange(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	timeout := int32(5)
	client := fake.NewClientset(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "plain"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "sticky"},
			Spec: corev1.ServiceSpec{SessionAffinity: corev1.ServiceAffinityClientIP}},
	)
	s := NewWithClient(client, "node-a", nil, nil, slog.New(slog.DiscardHandler))
	got := make(chan ServiceAffinity, 16)
	go s.WatchServiceAffinity(ctx, func(a ServiceAffinity) { got <- a })
	next := func() ServiceAffinity {
		t.Helper()
		select {
		case a := <-got:
			return a
		case <-time.After(10 * time.Second):
			t.Fatal("no report in 10s")
		}
		return ServiceAffinity{}
	}
	initial := map[string]time.Duration{}
	for range 2 {
		a := next()
		initial[a.Key] = a.Timeout
	}
	if initial["apps/plain"] != 0 || initial["apps/sticky"] != DefaultAffinityTimeout || len(initial) != 2 {
		t.Fatalf("initial reports %v, want apps/plain 0 and apps/sticky %v (Kubernetes' default)", initial, DefaultAffinityTimeout)
	}

	svc, _ := client.CoreV1().Services("apps").Get(ctx, "plain", metav1.GetOptions{})
	svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}
	if _, err := client.CoreV1().Services("apps").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if a := next(); a != (ServiceAffinity{Key: "apps/plain", Timeout: 5 * time.Second}) {
		t.Fatalf("after the update: %+v, want apps/plain 5s", a)
	}
	if err := client.CoreV1().Services("apps").Delete(ctx, "sticky", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if a := next(); a != (ServiceAffinity{Key: "apps/sticky"}) {
		t.Fatalf("after the delete: %+v, want apps/sticky without affinity", a)
	}
}

// The cache keeps only what the watch reads.
func TestTrimService_KeepsOnlyAffinity(t *testing.T) {
	timeout := int32(7)
	in := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "s", Labels: map[string]string{"a": "b"}, Annotations: map[string]string{"big": "x"}},
		Spec: corev1.ServiceSpec{ClusterIP: "10.0.0.1", Selector: map[string]string{"app": "s"}, SessionAffinity: corev1.ServiceAffinityClientIP,
			SessionAffinityConfig: &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}},
	}
	out, err := trimService(in)
	if err != nil {
		t.Fatal(err)
	}
	svc := out.(*corev1.Service)
	if svc.Labels != nil || svc.Annotations != nil || svc.Spec.ClusterIP != "" || svc.Spec.Selector != nil {
		t.Fatalf("trimmed service kept more than it needs: %+v", svc)
	}
	if affinityOf(svc) != 7*time.Second || svc.Namespace+"/"+svc.Name != "apps/s" {
		t.Fatalf("trimmed service lost its affinity or name: %+v", svc)
	}
}
