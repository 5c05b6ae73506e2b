//go:build e2e

package e2e

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kmesh-go/kmesh/internal/source/kube"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// findChartTool returns the kmesh-chart binary `make tools` builds (helm
// lint and template from Helm's Go packages), or skips as findIstioTools.
func findChartTool(t *testing.T) string {
	t.Helper()
	p := filepath.Join(toolsDir(), "kmesh-chart")
	if _, err := os.Stat(p); err != nil {
		msg := "install tier: " + err.Error() + "; build the tools with `make tools` (or set KMESH_TOOLS_DIR)"
		if os.Getenv("KMESH_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// applyChart renders deploy/helm/kmesh with the given kmesh-chart flags
// and server-side applies every object, as `helm install` would create
// them; it returns the applied objects.
func applyChart(t *testing.T, e *istioEnv, chartTool string, flags ...string) []*unstructured.Unstructured {
	t.Helper()
	args := append([]string{"template", filepath.Join("..", "..", "deploy", "helm", "kmesh")}, flags...)
	out, err := exec.Command(chartTool, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("kmesh-chart %v: %v\n%s", args, err, ee.Stderr)
		}
		t.Fatal(err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", e.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("rendered chart: %v", err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		gvk := obj.GroupVersionKind()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s %s: %v", gvk.Kind, obj.GetName(), err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = dyn.Resource(mapping.Resource).Namespace(obj.GetNamespace())
		}
		applied, err := ri.Apply(e.ctx(), obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "kmesh-e2e", Force: true})
		if err != nil {
			t.Fatalf("server-side apply %s %s/%s: %v", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
		}
		objs = append(objs, applied)
	}
	return objs
}

// serviceAccountKubeconfig writes a kubeconfig for the API server that
// authenticates with a token of the ServiceAccount ns/name, as the
// in-cluster config of the chart's pods would.
func serviceAccountKubeconfig(t *testing.T, e *istioEnv, ns, name string) (string, kubernetes.Interface) {
	t.Helper()
	exp := int64(3600)
	tr, err := e.kube.CoreV1().ServiceAccounts(ns).CreateToken(e.ctx(), name,
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s/%s: %v", ns, name, err)
	}
	cfg, err := clientcmd.LoadFromFile(e.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, ai := range cfg.AuthInfos {
		ai.Token, ai.ClientCertificate, ai.ClientKey = tr.Status.Token, "", ""
		ai.ClientCertificateData, ai.ClientKeyData = nil, nil
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return path, kc
}

// TestIstioChart_RBACEnoughAndNoMore applies the chart's objects to a real
// kube-apiserver and runs kmeshd as the chart's ServiceAccount: it must
// enroll a labelled pod and annotate it, which needs every permission the
// chart grants, and must hold none of the permissions it does not need.
func TestIstioChart_RBACEnoughAndNoMore(t *testing.T) {
	chartTool := findChartTool(t)
	m := &mesh{t: t, bed: testbed.NewT(t), nodes: map[string]*testbed.Node{}, pods: map[string]*testbed.Pod{}, dir: t.TempDir()}
	var err error
	if m.kmeshd, err = testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshd"); err != nil {
		t.Fatal(err)
	}
	e := newKubeEnv(t, m.bed)
	const ns = "istio-system"
	e.namespace(ns, nil)

	objs := applyChart(t, e, chartTool, "-n", ns)
	kinds := map[string]bool{}
	for _, o := range objs {
		kinds[o.GetKind()] = true
	}
	for _, k := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"} {
		if !kinds[k] {
			t.Fatalf("chart applied %v, no %s", kinds, k)
		}
	}
	// The API server kept the privileges the chart asks for (PodSecurity
	// admits them, as on kind and kubeadm clusters).
	ds, err := e.kube.AppsV1().DaemonSets(ns).Get(e.ctx(), "kmesh", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ps := ds.Spec.Template.Spec; !ps.HostNetwork || !ps.HostPID || len(ps.Containers[0].SecurityContext.Capabilities.Add) == 0 {
		t.Fatalf("stored DaemonSet lost its privileges: %+v", ps)
	}

	// A node, a pod in a namespace that opted in, and one that did not.
	m.addNode("node-a", netip.MustParsePrefix("10.72.1.0/24"))
	e.node(m.nodes["node-a"])
	e.namespace("apps", map[string]string{kube.DataplaneModeLabel: kube.ModeAmbient})
	e.namespace("plain", nil)
	m.addPod("node-a", "app-1", "10.72.1.10")
	m.addPod("node-a", "other", "10.72.1.11")
	e.pod(m.pods["app-1"], "apps", map[string]string{"app": "app"})
	e.pod(m.pods["other"], "plain", map[string]string{"app": "app"})

	saKubeconfig, saKube := serviceAccountKubeconfig(t, e, ns, "kmesh")
	config := filepath.Join(m.dir, "mesh.yaml")
	if err := os.WriteFile(config, []byte("services: []\nworkloads: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	k := m.startKmeshdBin(m.kmeshd, "node-a", config, "--kubeconfig", saKubeconfig)

	t.Run("enrolls_and_annotates_with_the_chart_rbac", func(t *testing.T) {
		k.waitDump(t, "app-1 enrolled", 30*time.Second, func(d dumpView) string {
			if !d.enrolled(m.pods["app-1"].NetnsPath) || d.enrolled(m.pods["other"].NetnsPath) {
				return "enrolled " + strings.Join(d.Enrolled, ",")
			}
			return ""
		})
		waitAnnotation(t, e, "apps", "app-1", kube.RedirectionEnabled)
		if got := e.annotation("plain", "other", kube.RedirectionAnnotation); got != "" {
			t.Errorf("unlabelled pod annotated %q", got)
		}
		if log := k.proc.Stderr(); strings.Contains(strings.ToLower(log), "forbidden") {
			t.Errorf("kmeshd was refused something:\n%s", tail(log, 4000))
		}
	})

	t.Run("has_no_permission_it_does_not_need", func(t *testing.T) {
		user := "system:serviceaccount:" + ns + ":kmesh"
		can := func(verb, group, resource, sub, namespace string) bool {
			t.Helper()
			sar, err := e.kube.AuthorizationV1().SubjectAccessReviews().Create(e.ctx(), &authzv1.SubjectAccessReview{
				Spec: authzv1.SubjectAccessReviewSpec{User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns},
					ResourceAttributes: &authzv1.ResourceAttributes{Verb: verb, Group: group, Resource: resource, Subresource: sub, Namespace: namespace}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return sar.Status.Allowed
		}
		// What kmeshd does: allowed (the review itself works).
		for _, a := range [][5]string{{"list", "", "pods", "", ""}, {"watch", "", "pods", "", ""}, {"patch", "", "pods", "", "apps"},
			{"watch", "", "namespaces", "", ""}, {"list", "", "services", "", ""}, {"watch", "", "services", "", ""}} {
			if !can(a[0], a[1], a[2], a[3], a[4]) {
				t.Errorf("kmesh may not %s %s: it needs to", a[0], a[2])
			}
		}
		// What it must not do.
		for _, a := range [][5]string{
			{"get", "", "secrets", "", ns}, {"list", "", "secrets", "", ""},
			{"delete", "", "pods", "", "apps"}, {"create", "", "pods", "", "apps"}, {"update", "", "pods", "", "apps"},
			{"create", "", "pods", "exec", "apps"}, {"patch", "", "pods", "status", "apps"},
			{"create", "", "serviceaccounts", "token", ns}, {"list", "", "configmaps", "", ""},
			{"patch", "", "nodes", "", ""}, {"patch", "", "namespaces", "", ""},
			{"patch", "", "services", "", "apps"}, {"update", "", "services", "", "apps"}, {"create", "", "services", "", "apps"},
			{"patch", "apps", "daemonsets", "", ns}, {"update", "rbac.authorization.k8s.io", "clusterroles", "", ""},
			{"escalate", "rbac.authorization.k8s.io", "clusterroles", "", ""},
		} {
			if can(a[0], a[1], a[2], a[3], a[4]) {
				t.Errorf("kmesh may %s %s/%s in %q: it must not", a[0], a[2], a[3], a[4])
			}
		}
		// And the API server refuses the real request.
		_, err := saKube.CoreV1().Secrets(ns).List(e.ctx(), metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("listing secrets as kmesh: %v, want forbidden", err)
		}
		err = saKube.CoreV1().Pods("apps").Delete(e.ctx(), "app-1", metav1.DeleteOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("deleting a pod as kmesh: %v, want forbidden", err)
		}
	})
}
