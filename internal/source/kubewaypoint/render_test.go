package kubewaypoint

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/yaml"
)

func mustCRD(t *testing.T, section, doc string) object {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatal(err)
	}
	// What the API server adds, which the file's strict schema must not see.
	u.SetUID("0b0e5d3c-1111-2222-3333-444455556666")
	u.SetResourceVersion("42")
	u.SetAnnotations(map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{}"})
	u.Object["status"] = map[string]any{"addresses": []any{}}
	o, err := crdObject(section, u)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func pod(name string, lbls map[string]string, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "apps", Labels: lbls},
		Spec: corev1.PodSpec{NodeName: "node-b", Containers: []corev1.Container{{Name: "app",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

func service(name, ip string, sel, lbls map[string]string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "apps", Labels: lbls},
		Spec: corev1.ServiceSpec{ClusterIPs: []string{ip}, Selector: sel,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}}},
	}
}

const gatewayDoc = `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps}
spec:
  gatewayClassName: kmesh-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: Same}}}]
`

func routeDoc(backend string) string {
	return `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: hello, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: hello, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{group: "", kind: Service, name: ` + backend + `, port: 80, weight: 1}]
`
}

// base is a mesh of Kubernetes objects: hello (using the waypoint) and
// hello-v1 over two pods, and another service whose waypoint is not a
// kmesh-waypoint Gateway.
func base(t *testing.T) []object {
	t.Helper()
	pods := []*corev1.Pod{pod("hello-1", map[string]string{"app": "hello", "version": "v1"}, "10.0.0.11"),
		pod("hello-2", map[string]string{"app": "hello", "version": "v2"}, "10.0.0.12")}
	gws := map[string]bool{"apps/waypoint": true}
	var objs []object
	for _, s := range []*corev1.Service{
		service("hello", "10.96.0.10", map[string]string{"app": "hello"}, map[string]string{"istio.io/use-waypoint": "waypoint"}),
		service("hello-v1", "10.96.0.11", map[string]string{"version": "v1"}, nil),
		service("other", "10.96.0.12", map[string]string{"app": "hello"}, map[string]string{"istio.io/use-waypoint": "envoy-waypoint"}),
	} {
		o, ok, err := serviceObject(s, pods, nil, gws)
		if err != nil || !ok {
			t.Fatalf("service %s: ok %v err %v", s.Name, ok, err)
		}
		objs = append(objs, o)
	}
	for _, p := range pods {
		o, ok, err := podObject(p, nil, nil)
		if err != nil || !ok {
			t.Fatalf("pod %s: ok %v err %v", p.Name, ok, err)
		}
		objs = append(objs, o)
	}
	return append(objs, mustCRD(t, "gateways", gatewayDoc))
}

func TestBuild_ObjectsAsTheFileHasThem(t *testing.T) {
	var b builder
	m, rejected, err := b.build(append(base(t), mustCRD(t, "httpRoutes", routeDoc("hello-v1"))))
	if err != nil || len(rejected) != 0 {
		t.Fatalf("build: %v, rejected %v", err, rejected)
	}
	if len(m.Routes) != 1 || m.Routes[0].Namespace+"/"+m.Routes[0].Name != "apps/hello" {
		t.Fatalf("routes %v, want apps/hello", m.Routes)
	}
	for _, s := range m.Services {
		switch s.Name {
		case "hello":
			if s.UsesWaypoint() != "apps/waypoint" || len(s.Endpoints) != 2 || s.Ports[0].TargetPort != 8080 {
				t.Errorf("hello: waypoint %q, endpoints %v, ports %+v; want apps/waypoint, 2, target 8080 (named port resolved)", s.UsesWaypoint(), s.Endpoints, s.Ports)
			}
		case "other":
			if s.UsesWaypoint() != "" {
				t.Errorf("other uses %q: a waypoint that is not of class kmesh-waypoint must be left to its own proxy", s.UsesWaypoint())
			}
		}
	}
}

func TestBuild_BadObjectKeepsItsLastGoodVersion(t *testing.T) {
	var b builder
	if _, _, err := b.build(append(base(t), mustCRD(t, "httpRoutes", routeDoc("hello-v1")))); err != nil {
		t.Fatal(err)
	}
	m, rejected, err := b.build(append(base(t), mustCRD(t, "httpRoutes", routeDoc("no-such-service"))))
	if err != nil {
		t.Fatal(err)
	}
	if len(rejected) != 1 || rejected[0].Object != "HTTPRoute apps/hello" || !strings.Contains(rejected[0].Err.Error(), "no-such-service") {
		t.Fatalf("rejected %v, want HTTPRoute apps/hello naming no-such-service", rejected)
	}
	if len(m.Routes) != 1 || m.Routes[0].Rules[0].BackendRefs[0].Name != "hello-v1" {
		t.Fatalf("routes %+v, want the last good hello route (to hello-v1)", m.Routes)
	}

	// A bad object that never had a good version is left out; the rest
	// still applies.
	var fresh builder
	m, rejected, err = fresh.build(append(base(t), mustCRD(t, "httpRoutes", routeDoc("no-such-service"))))
	if err != nil || len(rejected) != 1 || len(m.Routes) != 0 || len(m.Services) != 3 {
		t.Fatalf("err %v, rejected %v, routes %d, services %d; want the route left out and the 3 services", err, rejected, len(m.Routes), len(m.Services))
	}
}

func TestServiceObject_SkipsHeadlessAndUnresolvedPorts(t *testing.T) {
	headless := service("h", "None", nil, nil)
	if _, ok, _ := serviceObject(headless, nil, nil, nil); ok {
		t.Error("headless service kept")
	}
	noPods := service("x", "10.96.0.30", map[string]string{"app": "none"}, nil)
	if _, ok, _ := serviceObject(noPods, nil, nil, nil); ok {
		t.Error("service whose only (named) target port resolves to nothing kept")
	}
}

func TestServiceObject_NamespaceWaypointAndOptOut(t *testing.T) {
	gws := map[string]bool{"apps/waypoint": true}
	pods := []*corev1.Pod{pod("hello-1", map[string]string{"app": "hello"}, "10.0.0.11")}
	ns := map[string]string{"istio.io/use-waypoint": "waypoint"}
	for _, tt := range []struct {
		labels map[string]string
		want   string
	}{
		{nil, `"istio.io/use-waypoint":"waypoint"`},
		{map[string]string{"istio.io/use-waypoint": "none"}, `"istio.io/use-waypoint":"none"`},
	} {
		o, ok, err := serviceObject(service("hello", "10.96.0.10", map[string]string{"app": "hello"}, tt.labels), pods, ns, gws)
		if err != nil || !ok || !strings.Contains(string(o.json), tt.want) {
			t.Errorf("service labels %v in a namespace using the waypoint: %s (ok %v, err %v), want %s", tt.labels, o.json, ok, err, tt.want)
		}
	}
}

func TestPodObject_HBONEFromIstioAnnotation(t *testing.T) {
	p := pod("hello-1", nil, "10.0.0.11")
	if o, _, _ := podObject(p, nil, nil); strings.Contains(string(o.json), "tunnelProtocol") {
		t.Errorf("pod without the annotation: %s, want no tunnelProtocol", o.json)
	}
	p.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"}
	if o, _, _ := podObject(p, nil, nil); !strings.Contains(string(o.json), `"tunnelProtocol":"HBONE"`) {
		t.Errorf("pod with ambient.istio.io/redirection=enabled: %s, want tunnelProtocol HBONE", o.json)
	}
}

// TestBuild_EveryKindTheWaypointReads: GRPCRoutes, VirtualServices and
// AuthorizationPolicies with targetRefs from the API server reach the mesh;
// a route of an ingress Gateway, a VirtualService of a Gateway and an L4
// policy (selector) are not the waypoint's.
func TestBuild_EveryKindTheWaypointReads(t *testing.T) {
	docs := []struct {
		section, doc string
		want         bool
	}{
		{"grpcRoutes", `
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: hello-grpc, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: hello, port: 80}]
  rules: [{backendRefs: [{name: hello-v1, port: 80}]}]`, true},
		{"httpRoutes", `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ingress, namespace: apps}
spec:
  parentRefs: [{name: public-gateway}]
  rules: [{backendRefs: [{name: hello, port: 80}]}]`, false},
		{"virtualServices", `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hello-faults, namespace: apps}
spec:
  hosts: [hello]
  http:
  - match: [{uri: {prefix: /flaky}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
    route: [{destination: {host: hello}}]`, true},
		{"virtualServices", `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: apps}
spec:
  hosts: [hello.example.com]
  gateways: [istio-system/public]
  http: [{route: [{destination: {host: hello}}]}]`, false},
		{"authorizationPolicies", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: hello}]
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]`, true},
		{"authorizationPolicies", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l4, namespace: apps}
spec:
  selector: {matchLabels: {app: hello}}
  action: DENY
  rules: [{from: [{source: {namespaces: [other]}}]}]`, false},
	}
	objs := base(t)
	for _, d := range docs {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(d.doc), &u.Object); err != nil {
			t.Fatal(err)
		}
		if got := wanted(d.section, u); got != d.want {
			t.Errorf("%s %s: wanted %v, want %v", u.GetKind(), u.GetName(), got, d.want)
		}
		if d.want {
			objs = append(objs, mustCRD(t, d.section, d.doc))
		}
	}
	var b builder
	m, rejected, err := b.build(objs)
	if err != nil || len(rejected) != 0 {
		t.Fatalf("build: %v, rejected %v", err, rejected)
	}
	if len(m.Routes) != 1 || m.Routes[0].Name != "hello-grpc" || len(m.VirtualServices) != 1 || len(m.WaypointPolicies) != 1 {
		t.Fatalf("routes %d, virtual services %d, waypoint policies %d; want the GRPCRoute, the fault and the DENY policy",
			len(m.Routes), len(m.VirtualServices), len(m.WaypointPolicies))
	}
}
