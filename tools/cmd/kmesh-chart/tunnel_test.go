package main

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestTemplate_TunnelOnlyWithACA: kmeshd redirects connections to the
// tunnel only when the mesh has a CA, so without istio.caAddress there is
// no kmesh-tunnel; with it there is.
func TestTemplate_TunnelOnlyWithACA(t *testing.T) {
	if _, ok := objects(t)["DaemonSet/kmesh-tunnel"]; ok {
		t.Error("default values (no istio.caAddress) render kmesh-tunnel")
	}
	if _, ok := objects(t, "--set", "istio.caAddress=istiod.istio-system.svc:15012")["DaemonSet/kmesh-tunnel"]; !ok {
		t.Error("istio.caAddress set: no kmesh-tunnel")
	}
}

// TestTemplate_TunnelDaemonSet checks what kmesh-tunnel must share with
// kmeshd's DaemonSet (the state directory, pins, network namespace paths,
// identity and node scheduling) and what it must not (kmeshd's pods, the
// host network, an API token, capabilities beyond its three).
func TestTemplate_TunnelDaemonSet(t *testing.T) {
	objs := objects(t, "-f", filepath.Join(chartDir, "examples", "istio-ca.yaml"))
	kds, tds := decodeDaemonSet(t, objs, "kmesh"), decodeDaemonSet(t, objs, "kmesh-tunnel")
	ks, ts := kds.Spec.Template.Spec, tds.Spec.Template.Spec
	kc, tc := ks.Containers[0], ts.Containers[0]

	// Neither DaemonSet's selector takes the other's pods.
	for _, p := range []struct {
		sel *appsv1.DaemonSet
		pod *appsv1.DaemonSet
	}{{kds, tds}, {tds, kds}} {
		if labels.SelectorFromSet(p.sel.Spec.Selector.MatchLabels).Matches(labels.Set(p.pod.Spec.Template.Labels)) {
			t.Errorf("DaemonSet %s selects the pods of %s", p.sel.Name, p.pod.Name)
		}
	}
	if tds.Spec.Template.Labels["istio.io/dataplane-mode"] != "none" {
		t.Errorf("tunnel pod labels %v: want istio.io/dataplane-mode=none (never enrolled)", tds.Spec.Template.Labels)
	}

	wantArgs := []string{"tunnel", "--node=$(NODE_NAME)", "--state-dir=/run/kmesh/$(NODE_NAME)", "--bpf-dir=/sys/fs/bpf/kmesh/kmeshd",
		"--ca-address=istiod.istio-system.svc:15012", "--ca-root-cert=/var/run/secrets/istio/root-cert.pem",
		"--ca-token-file=/var/run/secrets/tokens/istio-token", "--cluster-id=Kubernetes", "--trust-domain=example.org",
		"--metrics-address=:15020", "--log-level=info", "--drain-timeout=30s"}
	if !slices.Equal(tc.Args, wantArgs) {
		t.Errorf("tunnel args\n%q\nwant\n%q", tc.Args, wantArgs)
	}
	if tc.Image != kc.Image || len(tc.Env) != 1 || tc.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("tunnel image %s env %+v, want kmeshd's image %s and NODE_NAME from spec.nodeName", tc.Image, tc.Env, kc.Image)
	}
	// The same node, state directory and pins as kmeshd, by the same host
	// paths.
	for _, flag := range []string{"--node=", "--state-dir=", "--bpf-dir=", "--cluster-id=", "--trust-domain=", "--ca-address="} {
		if k, tt := argOf(kc.Args, flag), argOf(tc.Args, flag); k == "" || k != tt {
			t.Errorf("%s kmeshd %q, tunnel %q: want the same", flag, k, tt)
		}
	}
	for _, path := range []string{"/run/kmesh", "/sys/fs/bpf", "/var/run/netns"} {
		k, tt := hostPathAt(kds, path), hostPathAt(tds, path)
		if k == "" || k != tt {
			t.Errorf("%s: kmeshd mounts host %q, tunnel %q", path, k, tt)
		}
	}
	if m := mountAt(tc, "/var/run/netns"); m == nil || m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer {
		t.Errorf("netns mount %+v: want HostToContainer (namespaces CNI names after the tunnel started)", m)
	}
	if m := mountAt(tc, "/sys/fs/bpf"); m == nil || m.ReadOnly {
		t.Errorf("bpffs mount %+v: want read-write (the tunnel opens km_tunnel_dst for writing)", m)
	}

	// Identity: kmeshd's account (the one istiod trusts), no API token,
	// the projected istio-ca token and istiod's root where the args say.
	if ts.ServiceAccountName != ks.ServiceAccountName || ts.AutomountServiceAccountToken == nil || *ts.AutomountServiceAccountToken {
		t.Errorf("service account %q automount %v: want kmeshd's %q and no API token", ts.ServiceAccountName, ts.AutomountServiceAccountToken, ks.ServiceAccountName)
	}
	tok := volumeAt(tds, "/var/run/secrets/tokens")
	if tok == nil || tok.Projected == nil || len(tok.Projected.Sources) != 1 {
		t.Fatalf("token volume %+v", tok)
	}
	if sat := tok.Projected.Sources[0].ServiceAccountToken; sat == nil || sat.Audience != "istio-ca" || sat.Path != "istio-token" {
		t.Errorf("projected token %+v: want audience istio-ca at istio-token", sat)
	}
	if root := volumeAt(tds, "/var/run/secrets/istio"); root == nil || root.ConfigMap == nil || root.ConfigMap.Name != "istio-ca-root-cert" {
		t.Errorf("root volume %+v: want ConfigMap istio-ca-root-cert", root)
	}

	// Privileges: its own network namespace, the host's processes, three
	// named capabilities.
	if ts.HostNetwork || !ts.HostPID {
		t.Errorf("hostNetwork %v hostPID %v: want false, true", ts.HostNetwork, ts.HostPID)
	}
	sc := tc.SecurityContext
	if *sc.Privileged || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem || *sc.RunAsUser != 0 {
		t.Errorf("security context %+v", sc)
	}
	wantCaps := []corev1.Capability{"NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}
	if !slices.Equal(sc.Capabilities.Add, wantCaps) || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities %+v, want add %v drop ALL", sc.Capabilities, wantCaps)
	}

	// Scheduled wherever kmeshd is.
	if !slices.EqualFunc(ts.Tolerations, ks.Tolerations, func(a, b corev1.Toleration) bool { return a == b }) ||
		ts.PriorityClassName != ks.PriorityClassName || labels.Set(ts.NodeSelector).String() != labels.Set(ks.NodeSelector).String() {
		t.Errorf("tunnel tolerations %+v priority %q nodeSelector %v: want kmeshd's", ts.Tolerations, ts.PriorityClassName, ts.NodeSelector)
	}

	// Metrics scraped and probed on the tunnel's port.
	ann := tds.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "15020" || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("scrape annotations %v", ann)
	}
	for name, p := range map[string]*corev1.Probe{"/healthz/ready": tc.ReadinessProbe, "/metrics": tc.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Port != intstr.FromInt32(15020) || p.HTTPGet.Path != name {
			t.Errorf("probe %+v: want GET :15020%s", p, name)
		}
	}
	// The new tunnel beside the old one, which goes only once the new one
	// took over, and is not killed before its drain ends.
	if u := tds.Spec.UpdateStrategy; u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate.MaxSurge.IntValue() != 1 ||
		u.RollingUpdate.MaxUnavailable.IntValue() != 0 {
		t.Errorf("update strategy %+v: want RollingUpdate, maxSurge 1, maxUnavailable 0", u)
	}
	if g := ts.TerminationGracePeriodSeconds; g == nil || *g != 35 {
		t.Errorf("grace period %v: want --drain-timeout 30s + 5", g)
	}
	if g := decodeDaemonSet(t, objects(t, "-f", filepath.Join(chartDir, "examples", "istio-ca.yaml"), "--set", "tunnel.drainSeconds=120"), "kmesh-tunnel").Spec.Template.Spec; *g.TerminationGracePeriodSeconds != 125 || argOf(g.Containers[0].Args, "--drain-timeout=") != "120s" {
		t.Errorf("tunnel.drainSeconds=120: grace %d, --drain-timeout %q; want 125 and 120s", *g.TerminationGracePeriodSeconds, argOf(g.Containers[0].Args, "--drain-timeout="))
	}
}

// TestTemplate_CAWithoutTLS: istiod's CA is TLS even where xDS is
// plaintext, so with istio.caAddress both DaemonSets get istiod's root
// and the istio-ca token whatever istio.tls says.
func TestTemplate_CAWithoutTLS(t *testing.T) {
	objs := objects(t, "-f", filepath.Join(chartDir, "examples", "plaintext-xds.yaml"), "--set", "istio.caAddress=istiod.istio-system.svc:15012")
	for _, name := range []string{"kmesh", "kmesh-tunnel"} {
		ds := decodeDaemonSet(t, objs, name)
		c := ds.Spec.Template.Spec.Containers[0]
		if argOf(c.Args, "--ca-root-cert=") != "/var/run/secrets/istio/root-cert.pem" || argOf(c.Args, "--ca-token-file=") != "/var/run/secrets/tokens/istio-token" {
			t.Errorf("%s args %q: want --ca-root-cert and --ca-token-file", name, c.Args)
		}
		if volumeAt(ds, "/var/run/secrets/istio") == nil || volumeAt(ds, "/var/run/secrets/tokens") == nil {
			t.Errorf("%s: root or token not mounted", name)
		}
	}
	if argOf(daemonSet(t, "-f", filepath.Join(chartDir, "examples", "plaintext-xds.yaml")).Spec.Template.Spec.Containers[0].Args, "--ca-root-cert=") != "" {
		t.Error("plaintext xDS without a CA: kmeshd given --ca-root-cert")
	}
}

// argOf is the value of the flag (given with its "=") in args.
func argOf(args []string, flag string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, flag); ok {
			return v
		}
	}
	return ""
}

func mountAt(c corev1.Container, path string) *corev1.VolumeMount {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == path {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

// volumeAt is the volume the DaemonSet's container mounts at path.
func volumeAt(ds *appsv1.DaemonSet, path string) *corev1.Volume {
	m := mountAt(ds.Spec.Template.Spec.Containers[0], path)
	if m == nil {
		return nil
	}
	for i, v := range ds.Spec.Template.Spec.Volumes {
		if v.Name == m.Name {
			return &ds.Spec.Template.Spec.Volumes[i]
		}
	}
	return nil
}

// hostPathAt is the host directory mounted at path, or "".
func hostPathAt(ds *appsv1.DaemonSet, path string) string {
	if v := volumeAt(ds, path); v != nil && v.HostPath != nil {
		return v.HostPath.Path
	}
	return ""
}

// TestTemplate_KmeshdValuesLeaveTheTunnelAlone: a helm upgrade that changes
// kmeshd's values (all but kmeshd.bpfDir, the pins both share) renders the
// same kmesh-tunnel, so it does not roll the tunnel and reset what it
// carries (docs/install.md, "Upgrade").
func TestTemplate_KmeshdValuesLeaveTheTunnelAlone(t *testing.T) {
	ca := filepath.Join(chartDir, "examples", "istio-ca.yaml")
	before := objects(t, "-f", ca)
	for _, set := range []string{"kmeshd.logLevel=debug", "kmeshd.accelerate=true", "kmeshd.maps.endpoints=1048576",
		"kmeshd.extraArgs={--max-policy-values=524288}", "updateStrategy.maxUnavailable=3", "cleanupOnStop=true"} {
		after := objects(t, "-f", ca, "--set", set)
		if string(after["DaemonSet/kmesh"]) == string(before["DaemonSet/kmesh"]) {
			t.Errorf("--set %s: kmeshd's DaemonSet unchanged; the case tests nothing", set)
		}
		if string(after["DaemonSet/kmesh-tunnel"]) != string(before["DaemonSet/kmesh-tunnel"]) {
			t.Errorf("--set %s changes kmesh-tunnel:\n%s", set, after["DaemonSet/kmesh-tunnel"])
		}
	}
}
