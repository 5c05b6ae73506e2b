package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// chartDir is the chart in this repository.
var chartDir = filepath.Join("..", "..", "..", "deploy", "helm", "kmesh")

func kmeshChart(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(args, &out)
	return out.String(), err
}

// objects renders the chart and decodes its objects by kind and name
// ("DaemonSet/kmesh").
func objects(t *testing.T, args ...string) map[string][]byte {
	t.Helper()
	out, err := kmeshChart(t, append([]string{"template", chartDir}, args...)...)
	if err != nil {
		t.Fatalf("template %v: %v", args, err)
	}
	objs := map[string][]byte{}
	for _, doc := range strings.Split(out, "\n---\n") {
		var meta struct {
			Kind     string
			Metadata struct{ Name string }
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("rendered YAML: %v\n%s", err, doc)
		}
		if meta.Kind == "" {
			continue
		}
		key := meta.Kind + "/" + meta.Metadata.Name
		if _, dup := objs[key]; dup {
			t.Fatalf("two objects %s", key)
		}
		objs[key] = []byte(doc)
	}
	return objs
}

// daemonSet is kmeshd's DaemonSet.
func daemonSet(t *testing.T, args ...string) *appsv1.DaemonSet {
	t.Helper()
	return decodeDaemonSet(t, objects(t, args...), "kmesh")
}

func decodeDaemonSet(t *testing.T, objs map[string][]byte, name string) *appsv1.DaemonSet {
	t.Helper()
	doc, ok := objs["DaemonSet/"+name]
	if !ok {
		t.Fatalf("no DaemonSet %s rendered", name)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(doc, &ds); err != nil {
		t.Fatal(err)
	}
	return &ds
}

func TestCheck_DefaultValuesAndEveryExample(t *testing.T) {
	out, err := kmeshChart(t, "check", chartDir)
	if err != nil {
		t.Fatalf("check: %v\n%s", err, out)
	}
	examples, _ := filepath.Glob(filepath.Join(chartDir, "examples", "*.yaml"))
	if len(examples) < 5 {
		t.Fatalf("found %d examples, want the documented ones", len(examples))
	}
	for _, want := range append([]string{"default values"}, examples...) {
		if !strings.Contains(out, "ok "+want+"\n") {
			t.Errorf("check did not pass %s:\n%s", want, out)
		}
	}
}

func TestTemplate_SchemaRefusesBadValues(t *testing.T) {
	tests := []struct {
		set  string
		want []string // in the message
	}{
		{"kmeshd.logLevel=loud", []string{"/kmeshd/logLevel", "debug", "info", "warn", "error"}},
		{"istio.xdsAddress=istiod", []string{"/istio/xdsAddress", "does not match pattern"}},
		{"kmeshd.maps.services=-1", []string{"/kmeshd/maps/services", "minimum"}},
		{"kmeshd.logLvl=debug", []string{"/kmeshd", "logLvl"}},
		{"updateStrategy.maxUnavailable=0", []string{"/updateStrategy/maxUnavailable"}},
		{"securityContext.capabilities.add={sys_admin}", []string{"/securityContext/capabilities/add/0"}},
		{"tunnel.logLevel=loud", []string{"/tunnel/logLevel", "debug"}},
		{"tunnel.ports.metrics=0", []string{"/tunnel/ports/metrics", "minimum"}},
		{"tunnel.drainSeconds=0", []string{"/tunnel/drainSeconds", "minimum"}},
	}
	for _, tt := range tests {
		t.Run(tt.set, func(t *testing.T) {
			_, err := kmeshChart(t, "template", chartDir, "--set", tt.set)
			if err == nil {
				t.Fatalf("--set %s rendered; want the schema to refuse it", tt.set)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("--set %s: message %q lacks %q", tt.set, err, w)
				}
			}
		})
	}
	// lint says the same.
	if _, err := kmeshChart(t, "lint", chartDir, "--set", "kmeshd.logLevel=loud"); err == nil || !strings.Contains(err.Error(), "logLevel") {
		t.Errorf("lint of a bad value: %v", err)
	}
}

func TestTemplate_DaemonSetPrivilegesAndProbes(t *testing.T) {
	ds := daemonSet(t)
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || !spec.HostPID || spec.ServiceAccountName != "kmesh" {
		t.Errorf("hostNetwork %v hostPID %v serviceAccount %q", spec.HostNetwork, spec.HostPID, spec.ServiceAccountName)
	}
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable.IntValue() != 1 {
		t.Errorf("update strategy %+v", ds.Spec.UpdateStrategy)
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if *sc.Privileged || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem || *sc.RunAsUser != 0 {
		t.Errorf("security context %+v", sc)
	}
	wantCaps := []corev1.Capability{"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE", "SYS_RESOURCE"}
	if !slices.Equal(sc.Capabilities.Add, wantCaps) || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities %+v, want add %v drop ALL", sc.Capabilities, wantCaps)
	}
	if p := c.ReadinessProbe.HTTPGet; p.Path != "/healthz/ready" || p.Port.IntValue() != 15021 {
		t.Errorf("readiness probe %+v", p)
	}
	if p := c.LivenessProbe.HTTPGet; p.Host != "127.0.0.1" || p.Path != "/version" || p.Port.IntValue() != 15000 {
		t.Errorf("liveness probe %+v", p)
	}
	ann := ds.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "15020" || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("scrape annotations %v", ann)
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	for mount, host := range map[string]string{"/sys/fs/bpf": "/sys/fs/bpf", "/run/kmesh-cgroup": "/sys/fs/cgroup",
		"/var/run/netns": "/var/run/netns", "/run/kmesh": "/run/kmesh"} {
		if hostPaths[mounts[mount]] != host {
			t.Errorf("%s: mounts host path %q, want %s", mount, hostPaths[mounts[mount]], host)
		}
	}
	args := strings.Join(c.Args, " ")
	for _, want := range []string{"--node=$(NODE_NAME)", "--cgroup=/run/kmesh-cgroup", "--xds-address=istiod.istio-system.svc:15012",
		"--xds-root-cert=/var/run/secrets/istio/root-cert.pem", "--xds-token-file=/var/run/secrets/tokens/istio-token",
		"--admin-address=127.0.0.1:15000", "--readiness-address=:15021", "--metrics-address=:15020"} {
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %s", args, want)
		}
	}
	if strings.Contains(args, "--max-") || strings.Contains(args, "--ca-address") || strings.Contains(args, "--cleanup-on-exit") {
		t.Errorf("default values: args %q; want no --max-*, no --ca-address, no --cleanup-on-exit", args)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists {
		t.Errorf("tolerations %+v, want every taint", spec.Tolerations)
	}
}

func TestTemplate_ExamplesChangeWhatTheySay(t *testing.T) {
	ex := func(name string) string { return filepath.Join(chartDir, "examples", name) }
	args := strings.Join(daemonSet(t, "-f", ex("large-mesh.yaml")).Spec.Template.Spec.Containers[0].Args, " ")
	for _, want := range []string{"--max-services=65536", "--max-endpoints=1048576", "--max-backends=524288"} {
		if !strings.Contains(args, want) {
			t.Errorf("large-mesh: args %q lack %s", args, want)
		}
	}
	c := daemonSet(t, "-f", ex("uninstall.yaml")).Spec.Template.Spec.Containers[0]
	if !slices.Contains(c.Args, "--cleanup-on-exit") {
		t.Errorf("uninstall: args %q, want --cleanup-on-exit", c.Args)
	}
	c = daemonSet(t, "-f", ex("no-bpffs-on-host.yaml")).Spec.Template.Spec.Containers[0]
	if !*c.SecurityContext.Privileged || *c.VolumeMounts[0].MountPropagation != corev1.MountPropagationBidirectional {
		t.Errorf("no-bpffs-on-host: %+v %+v", c.SecurityContext, c.VolumeMounts[0])
	}
	c = daemonSet(t, "-f", ex("istio-ca.yaml")).Spec.Template.Spec.Containers[0]
	if args := strings.Join(c.Args, " "); !strings.Contains(args, "--ca-address=istiod.istio-system.svc:15012") || !strings.Contains(args, "--trust-domain=example.org") {
		t.Errorf("istio-ca: args %q", args)
	}
	c = daemonSet(t, "-f", ex("plaintext-xds.yaml")).Spec.Template.Spec.Containers[0]
	if args := strings.Join(c.Args, " "); strings.Contains(args, "--xds-root-cert") || !strings.Contains(args, ":15010") {
		t.Errorf("plaintext-xds: args %q", args)
	}
}

func TestTemplate_RBACIsWhatKmeshdUses(t *testing.T) {
	var role rbacv1.ClusterRole
	if err := yaml.UnmarshalStrict(objects(t)["ClusterRole/kmesh"], &role); err != nil {
		t.Fatal(err)
	}
	want := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"get", "list", "watch"}},
	}
	if len(role.Rules) != len(want) {
		t.Fatalf("rules %+v, want %+v", role.Rules, want)
	}
	for i := range want {
		if !slices.Equal(role.Rules[i].Resources, want[i].Resources) || !slices.Equal(role.Rules[i].Verbs, want[i].Verbs) || !slices.Equal(role.Rules[i].APIGroups, want[i].APIGroups) {
			t.Errorf("rule %d: %+v, want %+v", i, role.Rules[i], want[i])
		}
	}
}

// TestIstiodValues_TrustKmesh renders Istio's own istiod chart (from the
// istio.io/istio module this module builds pilot-discovery from) with
// deploy/istio/istiod-values.yaml: istiod must run in ambient mode and
// trust the kmesh chart's ServiceAccount as a node proxy.
func TestIstiodValues_TrustKmesh(t *testing.T) {
	dir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/istio").Output()
	if err != nil {
		t.Fatalf("go list istio.io/istio: %v", err)
	}
	istiod := filepath.Join(strings.TrimSpace(string(dir)), "manifests", "charts", "istio-control", "istio-discovery")
	values := filepath.Join("..", "..", "..", "deploy", "istio", "istiod-values.yaml")
	out, err := kmeshChart(t, "template", istiod, "-f", values, "-n", "istio-system", "-name", "istiod")
	if err != nil {
		t.Fatalf("istiod chart: %v", err)
	}
	var env []corev1.EnvVar
	for _, doc := range strings.Split(out, "\n---\n") {
		var d appsv1.Deployment
		if yaml.Unmarshal([]byte(doc), &d) != nil || d.Kind != "Deployment" {
			continue
		}
		env = d.Spec.Template.Spec.Containers[0].Env
	}
	got := map[string]string{}
	for _, e := range env {
		got[e.Name] = e.Value
	}
	for k, v := range map[string]string{"CA_TRUSTED_NODE_ACCOUNTS": "istio-system/kmesh", "PILOT_ENABLE_AMBIENT": "true"} {
		if got[k] != v {
			t.Errorf("istiod %s=%q, want %q", k, got[k], v)
		}
	}
}

// TestTemplate_WaypointRBAC: with waypoint.serviceAccounts the chart binds
// them a ClusterRole with what kmesh-waypoint's Kubernetes source uses
// (internal/source/kubewaypoint: watch the objects it is configured by,
// patch its Gateway's status) and nothing more; by default there is none.
func TestTemplate_WaypointRBAC(t *testing.T) {
	out, err := kmeshChart(t, "template", chartDir, "-f", filepath.Join(chartDir, "examples", "waypoint-rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.ClusterRole
	var binding rbacv1.ClusterRoleBinding
	for _, doc := range strings.Split(out, "\n---\n") {
		var meta struct {
			Kind     string
			Metadata struct{ Name string }
		}
		if yaml.Unmarshal([]byte(doc), &meta) != nil || meta.Metadata.Name != "kmesh-waypoint" {
			continue
		}
		switch meta.Kind {
		case "ClusterRole":
			err = yaml.UnmarshalStrict([]byte(doc), &role)
		case "ClusterRoleBinding":
			err = yaml.UnmarshalStrict([]byte(doc), &binding)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	want := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"services", "pods", "namespaces"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"gateways", "httproutes", "grpcroutes", "gatewayclasses"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"gateways/status", "gatewayclasses/status"}, Verbs: []string{"patch"}},
		{APIGroups: []string{"networking.istio.io"}, Resources: []string{"virtualservices"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"security.istio.io"}, Resources: []string{"authorizationpolicies"}, Verbs: []string{"get", "list", "watch"}},
	}
	if len(role.Rules) != len(want) {
		t.Fatalf("kmesh-waypoint rules %+v, want %+v", role.Rules, want)
	}
	for i := range want {
		if !slices.Equal(role.Rules[i].Resources, want[i].Resources) || !slices.Equal(role.Rules[i].Verbs, want[i].Verbs) || !slices.Equal(role.Rules[i].APIGroups, want[i].APIGroups) {
			t.Errorf("rule %d: %+v, want %+v", i, role.Rules[i], want[i])
		}
	}
	var subjects []string
	for _, s := range binding.Subjects {
		subjects = append(subjects, s.Kind+" "+s.Namespace+"/"+s.Name)
	}
	if got := strings.Join(subjects, ", "); binding.RoleRef.Name != "kmesh-waypoint" || got != "ServiceAccount apps/waypoint, ServiceAccount shop/checkout-waypoint" {
		t.Errorf("binding to %q of %s, want kmesh-waypoint of apps/waypoint and shop/checkout-waypoint", binding.RoleRef.Name, got)
	}
	if _, err := kmeshChart(t, "template", chartDir, "--set", "waypoint.serviceAccounts={no-namespace}"); err == nil || !strings.Contains(err.Error(), "/waypoint/serviceAccounts/0") {
		t.Errorf("a service account without NAMESPACE/: %v, want the schema to refuse it", err)
	}
	if out, _ := kmeshChart(t, "template", chartDir); strings.Contains(out, "kmesh-waypoint") {
		t.Error("default values render a kmesh-waypoint role")
	}
}
