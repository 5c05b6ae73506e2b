package kube

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func pod(labels, annotations map[string]string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "uid-p", Labels: labels, Annotations: annotations},
		Spec:       corev1.PodSpec{NodeName: "node-a"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.1.10", PodIPs: []corev1.PodIP{{IP: "10.1.1.10"}}},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func namespace(labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns", Labels: labels}}
}

func TestWants(t *testing.T) {
	ambient := map[string]string{DataplaneModeLabel: ModeAmbient}
	none := map[string]string{DataplaneModeLabel: ModeNone}
	tests := []struct {
		name string
		pod  *corev1.Pod
		ns   *corev1.Namespace
		want bool
		why  string
	}{
		{"namespace_labelled", pod(nil, nil), namespace(ambient), true, "namespace labelled"},
		{"pod_labelled", pod(ambient, nil), namespace(nil), true, "pod labelled"},
		{"pod_labelled_kmesh", pod(map[string]string{DataplaneModeLabel: ModeKmesh}, nil), nil, true, "pod labelled"},
		{"namespace_unknown", pod(nil, nil), nil, false, "not labelled"},
		{"neither_labelled", pod(map[string]string{"app": "x"}, nil), namespace(map[string]string{"other": "ambient"}), false, "not labelled"},
		{"other_mode_on_pod", pod(map[string]string{DataplaneModeLabel: "sidecar"}, nil), namespace(nil), false, "not labelled"},
		{"pod_opts_out_of_labelled_namespace", pod(none, nil), namespace(ambient), false, "pod opted out"},
		{"host_network", pod(ambient, nil, func(p *corev1.Pod) { p.Spec.HostNetwork = true }), namespace(ambient), false, "host network"},
		{"sidecar", pod(nil, map[string]string{SidecarStatusAnnotation: "{}"}), namespace(ambient), false, "has a sidecar"},
		{"no_ip_yet", pod(ambient, nil, func(p *corev1.Pod) { p.Status = corev1.PodStatus{Phase: corev1.PodPending} }), nil, false, "no IP yet"},
		{"only_old_pod_ip_field", pod(ambient, nil, func(p *corev1.Pod) { p.Status.PodIPs = nil }), nil, true, "pod labelled"},
		{"succeeded", pod(ambient, nil, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }), nil, false, "finished"},
		{"failed", pod(nil, nil, func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }), namespace(ambient), false, "finished"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, why := Wants(tc.pod, tc.ns)
			if got != tc.want || why != tc.why {
				t.Fatalf("Wants = %v (%s), want %v (%s)", got, why, tc.want, tc.why)
			}
		})
	}
}
