package file

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/model"
)

func TestParse_WaypointExample(t *testing.T) {
	data, err := os.ReadFile("../../../examples/waypoint.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := Parse("waypoint.yaml", data, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Gateways) != 1 || m.Gateways[0].Key() != "default/waypoint" || m.Gateways[0].ClassName != model.WaypointClass {
		t.Fatalf("gateways = %+v", m.Gateways)
	}
	if got := m.Services[0].UsesWaypoint(); got != "default/waypoint" {
		t.Errorf("reviews uses waypoint %q", got)
	}
	if m.Services[0].Ports[0].AppProtocol != "http" {
		t.Errorf("appProtocol = %q", m.Services[0].Ports[0].AppProtocol)
	}
	if ws := m.WaypointInstances("default/waypoint"); len(ws) != 1 || ws[0].Name != "waypoint" {
		t.Errorf("waypoint instances = %v", ws)
	}
	if len(m.Routes) != 1 || len(m.Routes[0].Rules) != 2 {
		t.Fatalf("routes = %+v", m.Routes)
	}
	r := m.Routes[0].Rules[1]
	if len(r.BackendRefs) != 2 || r.BackendRefs[0].Weight != 80 || r.Timeouts.Request != 5*time.Second ||
		r.Retry == nil || r.Retry.Attempts != 2 || r.Retry.Backoff != 50*time.Millisecond {
		t.Errorf("rule 1 = %+v", r)
	}
	if m.Routes[0].ParentRefs[0] != (model.ParentRef{Kind: "Service", Name: "reviews", Port: 80}) {
		t.Errorf("parentRef = %+v", m.Routes[0].ParentRefs[0])
	}
	f := m.VirtualServices[0].HTTP[0].Fault
	if f == nil || f.Abort.HTTPStatus != 503 || f.Abort.Percent != 50 || f.Delay.Fixed != 100*time.Millisecond || f.Delay.Percent != 100 {
		t.Errorf("fault = %+v", f)
	}
	if len(m.Policies) != 0 || len(m.WaypointPolicies) != 1 || m.WaypointPolicies[0].Action != model.ActionDeny ||
		m.WaypointPolicies[0].Rules[0].To[0].Methods[0] != "DELETE" {
		t.Errorf("policies = %+v, waypoint policies = %+v", m.Policies, m.WaypointPolicies)
	}
}

func TestParse_BadL7(t *testing.T) {
	const head = `services:
- name: web
  addresses: ["10.96.0.1"]
  ports: [{port: 80}]
`
	cases := []struct{ name, yaml, want string }{
		{"unknown waypoint", `  labels: {istio.io/use-waypoint: nope}
`, "mesh.yaml:5: services[0].labels: istio.io/use-waypoint: waypoint default/nope is not in gateways"},
		{"workload's unknown waypoint", `workloads:
- name: app
  node: node-a
  labels: {app: app, istio.io/use-waypoint: nope}
`, "mesh.yaml:8: workloads[0].labels: istio.io/use-waypoint: waypoint default/nope is not in gateways"},
		{"waypoint-for value", `gateways:
- apiVersion: gateway.networking.k8s.io/v1
  kind: Gateway
  metadata: {name: w, labels: {istio.io/waypoint-for: pods}}
  spec:
    gatewayClassName: kmesh-waypoint
    listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`, `mesh.yaml:8: gateways[0].metadata.labels: istio.io/waypoint-for: "pods" is not service, workload, all or none`},
		{"gateway class", `gateways:
- apiVersion: gateway.networking.k8s.io/v1
  kind: Gateway
  metadata: {name: w}
  spec:
    gatewayClassName: istio
    listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`, `mesh.yaml:10: gateways[0].spec.gatewayClassName: "istio": only waypoints of class kmesh-waypoint are supported`},
		{"route to a missing service", `httpRoutes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {name: r}
  spec:
    parentRefs: [{kind: Service, group: "", name: web}]
    rules:
    - backendRefs: [{name: nope, port: 80}]
`, "mesh.yaml:12: httpRoutes[0].spec.rules[0].backendRefs[0]: service default/nope does not exist"},
		{"bad path type", `httpRoutes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {name: r}
  spec:
    parentRefs: [{kind: Service, group: "", name: web}]
    rules:
    - matches: [{path: {type: Glob, value: /x}}]
`, `mesh.yaml:12: httpRoutes[0].spec.rules[0].matches[0].path.type: "Glob" is not one of Exact, PathPrefix, RegularExpression`},
		{"bad regex", `httpRoutes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {name: r}
  spec:
    parentRefs: [{kind: Service, group: "", name: web}]
    rules:
    - matches: [{path: {type: RegularExpression, value: "/(x"}}]
`, `mesh.yaml:12: httpRoutes[0].spec.rules[0].matches[0].path.value: "/(x" is not a regular expression`},
		{"bad duration", `httpRoutes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {name: r}
  spec:
    parentRefs: [{kind: Service, group: "", name: web}]
    rules:
    - timeouts: {request: 1.5s}
`, `mesh.yaml:12: httpRoutes[0].spec.rules[0].timeouts.request: "1.5s" is not a duration`},
		{"filter field of another type", `httpRoutes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {name: r}
  spec:
    parentRefs: [{kind: Service, group: "", name: web}]
    rules:
    - filters:
      - type: RequestHeaderModifier
        urlRewrite: {hostname: x}
`, "mesh.yaml:14: httpRoutes[0].spec.rules[0].filters[0].urlRewrite: does not belong to a filter of type RequestHeaderModifier"},
		{"fault percentage", `virtualServices:
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata: {name: v}
  spec:
    hosts: [web]
    http:
    - fault: {abort: {httpStatus: 503, percentage: {value: 150}}}
`, `mesh.yaml:12: virtualServices[0].spec.http[0].fault.abort.percentage.value: "150" is not a percentage 0..100`},
		{"grpc status", `virtualServices:
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata: {name: v}
  spec:
    hosts: [web]
    http:
    - fault: {abort: {grpcStatus: NOPE}}
`, `mesh.yaml:12: virtualServices[0].spec.http[0].fault.abort.grpcStatus: "NOPE" is not a gRPC status name`},
		{"unknown route field", `grpcRoutes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: GRPCRoute
  metadata: {name: r}
  spec:
    parentRefs: [{kind: Service, group: "", name: web}]
    rules:
    - timeouts: {request: 1s}
`, `mesh.yaml:12: grpcRoutes[0].spec.rules[0]: unknown field "timeouts"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("mesh.yaml", []byte(head+tc.yaml), "")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse = %v\nwant an error containing %q", err, tc.want)
			}
		})
	}
}
