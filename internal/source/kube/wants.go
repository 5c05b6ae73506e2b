package kube

import (
	corev1 "k8s.io/api/core/v1"
)

// Labels and annotations read or written on pods and namespaces.
const (
	// DataplaneModeLabel puts a pod or a whole namespace in the mesh.
	DataplaneModeLabel = "istio.io/dataplane-mode"
	// RedirectionAnnotation marks a pod kmeshd has enrolled.
	RedirectionAnnotation = "kmesh.net/redirection"
	// AmbientRedirectionAnnotation is Istio's: istiod gives a pod with it
	// set to "enabled" tunnel_protocol HBONE in the workload API, so
	// ztunnels, sidecars and waypoints send it HBONE on port 15008.
	AmbientRedirectionAnnotation = "ambient.istio.io/redirection"
	// SidecarStatusAnnotation is set by Istio's injector on pods with a
	// sidecar.
	SidecarStatusAnnotation = "sidecar.istio.io/status"
)

// Values of DataplaneModeLabel and RedirectionAnnotation.
const (
	ModeAmbient        = "ambient"
	ModeKmesh          = "kmesh"
	ModeNone           = "none"
	RedirectionEnabled = "enabled"
)

// Wants reports whether the pod belongs in the mesh, and why (or why not).
// ns may be nil when the pod's namespace is unknown. See the package doc
// for the rule.
func Wants(pod *corev1.Pod, ns *corev1.Namespace) (bool, string) {
	podMode := pod.Labels[DataplaneModeLabel]
	var nsMode string
	if ns != nil {
		nsMode = ns.Labels[DataplaneModeLabel]
	}
	switch {
	case pod.Spec.HostNetwork:
		return false, "host network"
	case podMode == ModeNone:
		return false, "pod opted out"
	case !inMesh(podMode) && !inMesh(nsMode):
		return false, "not labelled"
	case pod.Annotations[SidecarStatusAnnotation] != "":
		return false, "has a sidecar"
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return false, "finished"
	case len(podIPs(pod)) == 0:
		return false, "no IP yet"
	case inMesh(podMode):
		return true, "pod labelled"
	default:
		return true, "namespace labelled"
	}
}

func inMesh(mode string) bool { return mode == ModeAmbient || mode == ModeKmesh }

// podIPs returns the pod's IPs: status.podIPs, or status.podIP from older
// servers.
func podIPs(pod *corev1.Pod) []string {
	var ips []string
	for _, ip := range pod.Status.PodIPs {
		if ip.IP != "" {
			ips = append(ips, ip.IP)
		}
	}
	if len(ips) == 0 && pod.Status.PodIP != "" {
		ips = append(ips, pod.Status.PodIP)
	}
	return ips
}
