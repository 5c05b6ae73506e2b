//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/testbed"
)

// The mesh (GAMMA) cases of the Gateway API conformance suite
// (sigs.k8s.io/gateway-api conformance/tests/mesh, v1.4.1..v1.6.3), on the
// test-bed: the suite's base manifest (conformance/mesh/manifests.yaml:
// services echo, echo-v1, echo-v2 in namespace gateway-conformance-mesh,
// ports 80->8080, 8080 and 7070 for gRPC) with every service using the
// waypoint, real pods in network namespaces, kmeshd redirecting the
// client's connections to kmesh-waypoint in its own pod. As the suite does,
// each conformance test applies its manifest (here: rewrites the file both
// read) and then makes its requests.

const gammaNS = "gateway-conformance-mesh"

// gammaBase is the base manifest; %[n]s are the pods' netns paths and
// ROUTES the test's routes.
const gammaBase = `services:
- name: echo
  namespace: gateway-conformance-mesh
  addresses: ["10.96.5.10"]
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
  - {name: http-alt, port: 8080, appProtocol: http}
  - {name: grpc, port: 7070, appProtocol: kubernetes.io/h2c}
  selector: {app: echo}
  labels: {istio.io/use-waypoint: waypoint}
- name: echo-v1
  namespace: gateway-conformance-mesh
  addresses: ["10.96.5.11"]
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
  - {name: http-alt, port: 8080, appProtocol: http}
  - {name: grpc, port: 7070}
  selector: {app: echo, version: v1}
  labels: {istio.io/use-waypoint: waypoint}
- name: echo-v2
  namespace: gateway-conformance-mesh
  addresses: ["10.96.5.12"]
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
  - {name: http-alt, port: 8080, appProtocol: http}
  - {name: grpc, port: 7070}
  selector: {app: echo, version: v2}
  labels: {istio.io/use-waypoint: waypoint}
- name: echo-v3
  namespace: gateway-conformance-mesh
  addresses: ["10.96.5.13"]
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
  - {name: http-alt, port: 8080, appProtocol: http}
  - {name: grpc, port: 7070}
  selector: {app: echo, version: v3}
  labels: {istio.io/use-waypoint: waypoint}
workloads:
- {name: client, namespace: gateway-conformance-mesh, labels: {app: client}, addresses: ["10.1.1.10"], node: node-a, netns: %[1]s}
- {name: consumer, namespace: gateway-conformance-mesh-consumer, labels: {app: client}, addresses: ["10.1.1.14"], node: node-a, netns: %[2]s}
- {name: echo-v1, namespace: gateway-conformance-mesh, labels: {app: echo, version: v1}, addresses: ["10.1.1.11"], node: node-a, netns: %[3]s}
- {name: echo-v2, namespace: gateway-conformance-mesh, labels: {app: echo, version: v2}, addresses: ["10.1.1.12"], node: node-a, netns: %[4]s}
- {name: echo-v3, namespace: gateway-conformance-mesh, labels: {app: echo, version: v3}, addresses: ["10.1.1.13"], node: node-a, netns: %[5]s}
- name: waypoint
  namespace: gateway-conformance-mesh
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
  addresses: ["10.1.1.20"]
  node: node-a
  netns: %[6]s
gateways:
- apiVersion: gateway.networking.k8s.io/v1
  kind: Gateway
  metadata: {name: waypoint, namespace: gateway-conformance-mesh, labels: {istio.io/waypoint-for: service}}
  spec:
    gatewayClassName: kmesh-waypoint
    listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`

var gammaVIP = map[string]string{"echo": "10.96.5.10", "echo-v1": "10.96.5.11", "echo-v2": "10.96.5.12"}

// gammaRoute renders one HTTPRoute (or GRPCRoute) of the mesh namespace
// whose parent is the service parent (":port" optional) and whose rules are
// the flow-style YAML lines given.
func gammaRoute(kind, name, ns, parent, rules string) string {
	svc, port, _ := strings.Cut(parent, ":")
	ref := fmt.Sprintf(`{group: "", kind: Service, name: %s, namespace: %s`, svc, gammaNS)
	if port != "" {
		ref += ", port: " + port
	}
	return fmt.Sprintf(`- apiVersion: gateway.networking.k8s.io/v1
  kind: %s
  metadata: {name: %s, namespace: %s}
  spec:
    parentRefs: [%s}]
    rules:%s
`, kind, name, ns, ref, rules)
}

// gammaReq is one request of a conformance test and what must come back.
type gammaReq struct {
	name    string
	from    string // client pod (default client)
	svc     string // service connected to (default echo)
	url     string // instead of the service's VIP
	host    string // Host header (default the service's name)
	path    string
	headers []string // name:value
	// What must come back: status (default 200), the answering backend,
	// the path it saw, a Location, headers of the answer (name: value) and
	// headers it must lack; reqHeaders/reqAbsent are what the backend must
	// have seen.
	status     int
	backend    string
	sawPath    string
	loc        string
	respHdr    map[string]string
	respAbsent []string
	reqHdr     map[string]string
	reqAbsent  []string
}

// gammaTest is one conformance test: its routes (YAML list items of
// httpRoutes / grpcRoutes) and requests. gap, if set, is why kmesh does not
// pass the test yet: the test then checks that it still fails (so the
// table in docs/waypoint.md stays true) instead of failing.
type gammaTest struct {
	name       string
	httpRoutes string
	grpcRoutes string
	reqs       []gammaReq
	gap        string
	run        func(t *testing.T, g *gammaBed) // instead of reqs
}

var gammaRedirect = func(rules string) string { return gammaRoute("HTTPRoute", "redirect", gammaNS, "echo:80", rules) }

var gammaTests = []gammaTest{
	{name: "MeshBasic", reqs: []gammaReq{{path: "/"}}},
	{name: "MeshHTTPRouteSimpleSameNamespace",
		httpRoutes: gammaRoute("HTTPRoute", "mesh-simple", gammaNS, "echo:80", `
    - backendRefs: [{name: echo-v1, port: 8080}]`),
		reqs: []gammaReq{{path: "/", backend: "echo-v1"}, {path: "/anything", backend: "echo-v1"}}},
	{name: "MeshHTTPRouteMatching",
		httpRoutes: gammaRoute("HTTPRoute", "mesh-matching", gammaNS, "echo:80", `
    - matches: [{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}]
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]
      backendRefs: [{name: echo-v2, port: 8080}]`),
		reqs: []gammaReq{{path: "/", backend: "echo-v1"}, {path: "/example", backend: "echo-v1"},
			{path: "/", headers: []string{"Version:one"}, backend: "echo-v1"},
			{path: "/v2", backend: "echo-v2"}, {path: "/v2/example", backend: "echo-v2"},
			{path: "/", headers: []string{"Version:two"}, backend: "echo-v2"},
			{path: "/v2/", backend: "echo-v2"}, {path: "/v2example", backend: "echo-v1"},
			{path: "/foo/v2/example", backend: "echo-v1"}}},
	{name: "MeshHTTPRouteQueryParamMatching",
		httpRoutes: gammaRoute("HTTPRoute", "mesh-query-param-matching", gammaNS, "echo:80", `
    - matches: [{queryParams: [{name: animal, value: whale}]}]
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{queryParams: [{name: animal, value: dolphin}]}]
      backendRefs: [{name: echo-v2, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /path1}, queryParams: [{name: animal, value: whale}]}]
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{headers: [{name: version, value: one}], queryParams: [{name: animal, value: whale}]}]
      backendRefs: [{name: echo-v2, port: 8080}]
    - matches:
      - {path: {type: PathPrefix, value: /path3}, queryParams: [{name: animal, value: shark}]}
      - {path: {type: PathPrefix, value: /path4}, headers: [{name: version, value: three}], queryParams: [{name: animal, value: kraken}]}
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /path5}}]
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{queryParams: [{name: animal, value: hydra}]}]
      backendRefs: [{name: echo-v2, port: 8080}]`),
		reqs: []gammaReq{{path: "/?animal=whale", backend: "echo-v1"}, {path: "/?animal=dolphin", backend: "echo-v2"},
			{path: "/?animal=whale&otherparam=irrelevant", backend: "echo-v1"},
			{path: "/?animal=dolphin&color=yellow", backend: "echo-v2"},
			{path: "/?color=blue", status: 404}, {path: "/?animal=dog", status: 404},
			{path: "/?animal=whaledolphin", status: 404}, {path: "/", status: 404},
			{path: "/path1?animal=whale", backend: "echo-v1"},
			{path: "/?animal=whale", headers: []string{"version:one"}, backend: "echo-v2"},
			{path: "/path3?animal=shark", backend: "echo-v1"},
			{path: "/path4?animal=kraken", headers: []string{"version:three"}, backend: "echo-v1"},
			{path: "/?animal=shark", status: 404}, {path: "/path4?animal=kraken", status: 404},
			{path: "/path5?animal=hydra", backend: "echo-v1"}}},
	{name: "MeshHTTPRouteRedirectPath", httpRoutes: gammaRedirect(`
    - matches: [{path: {type: PathPrefix, value: /original-prefix}}]
      filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]
    - matches: [{path: {type: PathPrefix, value: /full}}]
      filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}}]
    - matches: [{path: {type: PathPrefix, value: /path-and-host}}]
      filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]
    - matches: [{path: {type: PathPrefix, value: /path-and-status}}]
      filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]
    - matches: [{path: {type: PathPrefix, value: /full-path-and-host}}]
      filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}}}]
    - matches: [{path: {type: PathPrefix, value: /full-path-and-status}}]
      filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}}}]`),
		reqs: []gammaReq{{path: "/original-prefix/lemon", status: 302, loc: "http://echo/replacement-prefix/lemon"},
			{path: "/full/path/original", status: 302, loc: "http://echo/full-path-replacement"},
			{path: "/path-and-host", status: 302, loc: "http://example.org/replacement-prefix"},
			{path: "/path-and-status", status: 301, loc: "http://echo/replacement-prefix"},
			{path: "/full-path-and-host", status: 302, loc: "http://example.org/replacement-full"},
			{path: "/full-path-and-status", status: 301, loc: "http://echo/replacement-full"}}},
	{name: "MeshHTTPRouteRedirectPort", httpRoutes: gammaRedirect(`
    - matches: [{path: {type: PathPrefix, value: /port}}]
      filters: [{type: RequestRedirect, requestRedirect: {port: 8083}}]
    - matches: [{path: {type: PathPrefix, value: /port-and-host}}]
      filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, port: 8083}}]
    - matches: [{path: {type: PathPrefix, value: /port-and-status}}]
      filters: [{type: RequestRedirect, requestRedirect: {port: 8083, statusCode: 301}}]
    - matches: [{path: {type: PathPrefix, value: /port-and-host-and-status}}]
      filters: [{type: RequestRedirect, requestRedirect: {port: 8083, hostname: example.org, statusCode: 302}}]`),
		reqs: []gammaReq{{path: "/port", status: 302, loc: "http://echo:8083/port"},
			{path: "/port-and-host", status: 302, loc: "http://example.org:8083/port-and-host"},
			{path: "/port-and-status", status: 301, loc: "http://echo:8083/port-and-status"},
			{path: "/port-and-host-and-status", status: 302, loc: "http://example.org:8083/port-and-host-and-status"}}},
	{name: "MeshHTTPRouteSchemeRedirect", httpRoutes: gammaRedirect(`
    - matches: [{path: {type: PathPrefix, value: /scheme}}]
      filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
    - matches: [{path: {type: PathPrefix, value: /scheme-and-host}}]
      filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.org}}]
    - matches: [{path: {type: PathPrefix, value: /scheme-and-status}}]
      filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]
    - matches: [{path: {type: PathPrefix, value: /scheme-and-host-and-status}}]
      filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 302, hostname: example.org}}]`),
		reqs: []gammaReq{{path: "/scheme", status: 302, loc: "https://echo/scheme"},
			{path: "/scheme-and-host", status: 302, loc: "https://example.org/scheme-and-host"},
			{path: "/scheme-and-status", status: 301, loc: "https://echo/scheme-and-status"},
			{path: "/scheme-and-host-and-status", status: 302, loc: "https://example.org/scheme-and-host-and-status"}}},
	{name: "MeshHTTPRouteRedirectHostAndStatus", httpRoutes: gammaRedirect(`
    - matches: [{path: {type: PathPrefix, value: /hostname-redirect}}]
      filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
    - matches: [{path: {type: PathPrefix, value: /host-and-status}}]
      filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301, hostname: example.org}}]`),
		reqs: []gammaReq{{path: "/hostname-redirect", status: 302, loc: "http://example.org/hostname-redirect"},
			{path: "/host-and-status", status: 301, loc: "http://example.org/host-and-status"}}},
	{name: "MeshHTTPRoute303Redirect", httpRoutes: gammaRedirect(`
    - matches: [{path: {type: PathPrefix, value: /redirect}}]
      filters: [{type: RequestRedirect, requestRedirect: {statusCode: 303}}]`),
		reqs: []gammaReq{{path: "/redirect", status: 303, loc: "http://echo/redirect"}}},
	{name: "MeshHTTPRoute307Redirect", httpRoutes: gammaRedirect(`
    - matches: [{path: {type: PathPrefix, value: /temporary}}]
      filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]`),
		reqs: []gammaReq{{path: "/temporary", status: 307, loc: "http://echo/temporary"}}},
	{name: "MeshHTTPRoute308Redirect", httpRoutes: gammaRedirect(`
    - matches: [{path: {type: PathPrefix, value: /permanent}}]
      filters: [{type: RequestRedirect, requestRedirect: {statusCode: 308}}]`),
		reqs: []gammaReq{{path: "/permanent", status: 308, loc: "http://echo/permanent"}}},
	{name: "MeshSplit",
		httpRoutes: gammaRoute("HTTPRoute", "mesh-split", gammaNS, "echo", `
    - matches: [{path: {type: Exact, value: /v1}}]
      backendRefs: [{name: echo-v1, port: 80}]
    - matches: [{path: {type: Exact, value: /v2}}]
      backendRefs: [{name: echo-v2, port: 80}]`),
		reqs: []gammaReq{{path: "/v1", backend: "echo-v1"}, {path: "/v2", backend: "echo-v2"}}},
	{name: "MeshHTTPRouteRewritePath",
		httpRoutes: gammaRoute("HTTPRoute", "mesh-rewrite-path", gammaNS, "echo:80", `
    - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
      filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}]
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
      filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /full/one}}]
      filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}]
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /full/rewrite-path-and-modify-headers}}]
      filters:
      - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /test}}}
      - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], add: [{name: X-Header-Add-Append, value: append-value}], remove: [X-Header-Remove]}}
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /prefix/rewrite-path-and-modify-headers}}]
      filters:
      - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /prefix}}}
      - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], add: [{name: X-Header-Add-Append, value: append-value}], remove: [X-Header-Remove]}}
      backendRefs: [{name: echo-v1, port: 8080}]`),
		reqs: []gammaReq{{path: "/prefix/one/two", backend: "echo-v1", sawPath: "/one/two"},
			{path: "/strip-prefix/three", backend: "echo-v1", sawPath: "/three"},
			{path: "/strip-prefix", backend: "echo-v1", sawPath: "/"},
			{path: "/full/one/two", backend: "echo-v1", sawPath: "/one"},
			{path: "/full/rewrite-path-and-modify-headers/test", backend: "echo-v1", sawPath: "/test",
				headers:   []string{"X-Header-Set:set-val", "X-Header-Add-Append:append-val-1", "X-Header-Remove:remove-val"},
				reqHdr:    map[string]string{"X-Header-Set": "set-overwrites-values", "X-Header-Add-Append": "append-val-1,append-value"},
				reqAbsent: []string{"X-Header-Remove"}},
			{path: "/prefix/rewrite-path-and-modify-headers/one", backend: "echo-v1", sawPath: "/prefix/one",
				headers:   []string{"X-Header-Set:set-val", "X-Header-Add-Append:append-val-1", "X-Header-Remove:remove-val"},
				reqHdr:    map[string]string{"X-Header-Set": "set-overwrites-values", "X-Header-Add-Append": "append-val-1,append-value"},
				reqAbsent: []string{"X-Header-Remove"}}}},
	{name: "MeshHTTPRouteRequestHeaderModifier", httpRoutes: gammaRoute("HTTPRoute", "mesh-request-header-modifier", gammaNS, "echo:80", `
    - matches: [{path: {type: PathPrefix, value: /set}}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}]}}]
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /add}}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: X-Header-Add, value: add-appends-values}]}}]
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /remove}}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [X-Header-Remove]}}]
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /multiple}}]
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}]
          add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, {name: X-Header-Add-3, value: header-add-3}]
          remove: [X-Header-Remove-1, X-Header-Remove-2]
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /case-insensitivity}}]
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          set: [{name: X-Header-Set, value: header-set}]
          add: [{name: X-Header-Add, value: header-add}]
          remove: [X-Header-Remove]
      backendRefs: [{name: echo-v1, port: 8080}]`), reqs: requestHeaderModifierReqs},
	{name: "MeshHTTPRouteRequestHeaderModifierBackend", httpRoutes: gammaRoute("HTTPRoute", "mesh-request-header-modifier", gammaNS, "echo:80", `
    - matches: [{path: {type: PathPrefix, value: /set}}]
      backendRefs: [{name: echo-v1, port: 8080, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}]}}]}]
    - matches: [{path: {type: PathPrefix, value: /add}}]
      backendRefs: [{name: echo-v1, port: 8080, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: X-Header-Add, value: add-appends-values}]}}]}]
    - matches: [{path: {type: PathPrefix, value: /remove}}]
      backendRefs: [{name: echo-v1, port: 8080, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [X-Header-Remove]}}]}]
    - matches: [{path: {type: PathPrefix, value: /multiple}}]
      backendRefs:
      - name: echo-v1
        port: 8080
        filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}]
            add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, {name: X-Header-Add-3, value: header-add-3}]
            remove: [X-Header-Remove-1, X-Header-Remove-2]
    - matches: [{path: {type: PathPrefix, value: /case-insensitivity}}]
      backendRefs:
      - name: echo-v1
        port: 8080
        filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: X-Header-Set, value: header-set}]
            add: [{name: X-Header-Add, value: header-add}]
            remove: [X-Header-Remove]`), reqs: requestHeaderModifierReqs},
	{name: "MeshHTTPRouteNamedRule", httpRoutes: gammaRoute("HTTPRoute", "mesh-http-named-rules", gammaNS, "echo:80", `
    - name: named-rule
      matches: [{path: {type: PathPrefix, value: /named}}]
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /unnamed}}]
      backendRefs: [{name: echo-v2, port: 8080}]`),
		// Upstream expects the second request's path to be /named, which no
		// implementation can see for a request to /unnamed; the path the
		// backend saw is checked as sent.
		reqs: []gammaReq{{path: "/named", backend: "echo-v1", sawPath: "/named"}, {path: "/unnamed", backend: "echo-v2", sawPath: "/unnamed"}}},
	{name: "MeshPorts", httpRoutes: gammaRoute("HTTPRoute", "mesh-split-v1", gammaNS, "echo-v1:80", `
    - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: v1}]}}]
      backendRefs: [{name: echo-v1, port: 80}]`) + gammaRoute("HTTPRoute", "mesh-split-v2", gammaNS, "echo-v2", `
    - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: v2}]}}]
      backendRefs: [{name: echo-v2, port: 80}]`),
		reqs: []gammaReq{
			{name: "explicit port set, send to that port", svc: "echo-v1", backend: "echo-v1", respHdr: map[string]string{"X-Header-Set": "v1"}},
			{name: "explicit port, send to an excluded port", svc: "echo-v1", url: "http://10.96.5.11:8080", host: "echo-v1:8080", backend: "echo-v1", respAbsent: []string{"X-Header-Set"}},
			{name: "no port set", svc: "echo-v2", backend: "echo-v2", respHdr: map[string]string{"X-Header-Set": "v2"}},
			{name: "no port set, port 8080", svc: "echo-v2", url: "http://10.96.5.12:8080", host: "echo-v2:8080", backend: "echo-v2", respHdr: map[string]string{"X-Header-Set": "v2"}}}},
	{name: "MeshFrontend", httpRoutes: gammaRoute("HTTPRoute", "mesh-split-v1", gammaNS, "echo-v2", `
    - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}}]
      backendRefs: [{name: echo-v2, port: 80}]`),
		reqs: []gammaReq{
			{name: "send to service", svc: "echo-v2", backend: "echo-v2", respHdr: map[string]string{"X-Header-Set": "set"}},
			{name: "send to pod IP", url: "http://10.1.1.12:8080", host: "10.1.1.12:8080", backend: "echo-v2", respAbsent: []string{"X-Header-Set"}}}},
	{name: "MeshFrontendHostname", httpRoutes: gammaRoute("HTTPRoute", "mesh-split-v1", gammaNS, "echo-v2", `
    - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}}]
      backendRefs: [{name: echo-v2, port: 80}]`),
		reqs: []gammaReq{
			{name: "send to service with wrong hostname", svc: "echo-v2", host: "echo-v1", backend: "echo-v2", respHdr: map[string]string{"X-Header-Set": "set"}},
			{name: "send to other service with matching hostname", svc: "echo-v1", host: "echo-v2", backend: "echo-v1", respAbsent: []string{"X-Header-Set"}}},
		gap: "on the plaintext redirect kmeshd connects the client to waypointIP:servicePort, and the waypoint picks among the services sharing that port by Host; the original destination (VIP) is not known to it (HBONE would carry it as the CONNECT authority)"},
	{name: "MeshConsumerRoute", httpRoutes: gammaRoute("HTTPRoute", "mesh-echo-add-header", "gateway-conformance-mesh-consumer", "echo-v1", `
    - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}}]
      backendRefs: [{name: echo-v1, namespace: gateway-conformance-mesh, port: 80}]`),
		reqs: []gammaReq{
			{name: "request from consumer route's namespace modified by HTTPRoute", from: "consumer", svc: "echo-v1", host: "echo-v1.gateway-conformance-mesh", backend: "echo-v1", respHdr: map[string]string{"X-Header-Set": "set"}},
			{name: "request not from consumer route's namespace not modified by HTTPRoute", svc: "echo-v1", host: "echo-v1.gateway-conformance-mesh", backend: "echo-v1", respAbsent: []string{"X-Header-Set"}}}},
	{name: "MeshHTTPRouteWeight", httpRoutes: gammaRoute("HTTPRoute", "mesh-weighted-backends", gammaNS, "echo:80", `
    - backendRefs: [{name: echo-v1, port: 8080, weight: 70}, {name: echo-v2, port: 8080, weight: 30}]`),
		run: func(t *testing.T, g *gammaBed) {
			const n = 300
			rs := g.m.get("client", "--url", "http://10.96.5.10/", "--host", "echo", "--count", fmt.Sprint(n), "--keepalive")
			c := counts(rs)
			chiSquare7030(t, c["echo-v1"], c["echo-v2"], n)
		}},
	{name: "MeshGRPCRouteWeight", grpcRoutes: gammaRoute("GRPCRoute", "mesh-grpc-weighted-backends", gammaNS, "echo:7070", `
    - backendRefs: [{name: echo-v1, port: 7070, weight: 70}, {name: echo-v2, port: 7070, weight: 30}, {name: echo-v3, port: 7070, weight: 0}]`),
		run: func(t *testing.T, g *gammaBed) {
			const n = 300
			answers := g.grpc(t, "client", "--count", fmt.Sprint(n))
			c := map[string]int{}
			for _, a := range answers {
				c[a["x-pod"]]++
			}
			if c["echo-v3"] != 0 {
				t.Errorf("echo-v3 (weight 0) answered %d calls", c["echo-v3"])
			}
			chiSquare7030(t, c["echo-v1"], c["echo-v2"], n)
		}},
	{name: "MeshGRPCRouteRequestHeaderModifier", grpcRoutes: gammaRoute("GRPCRoute", "grpc-request-header-modifier", gammaNS, "echo:7070", `
    - matches: [{headers: [{name: x-test-case, value: set}]}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-header-set, value: set-overwrites-values}]}}]
      backendRefs: [{name: echo-v1, port: 7070}]
    - matches: [{headers: [{name: x-test-case, value: add}]}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-header-add, value: add-appends-values}]}}]
      backendRefs: [{name: echo-v1, port: 7070}]
    - matches: [{headers: [{name: x-test-case, value: remove}]}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [x-header-remove]}}]
      backendRefs: [{name: echo-v1, port: 7070}]
    - matches: [{headers: [{name: x-test-case, value: multi}]}]
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          set: [{name: x-header-set-1, value: header-set-1}, {name: x-header-set-2, value: header-set-2}]
          add: [{name: x-header-add-1, value: header-add-1}, {name: x-header-add-2, value: header-add-2}]
          remove: [x-header-remove-1, x-header-remove-2]
      backendRefs: [{name: echo-v2, port: 7070}]`),
		run: func(t *testing.T, g *gammaBed) {
			for _, tc := range []struct {
				name, backend string
				md            []string
				want          map[string]string
				absent        []string
			}{
				{"set", "echo-v1", []string{"x-test-case:set", "some-other-header:this-header-should-be-set", "x-header-set:this-value-should-be-overwritten"},
					map[string]string{"x-test-case": "set", "some-other-header": "this-header-should-be-set", "x-header-set": "set-overwrites-values"}, nil},
				{"add", "echo-v1", []string{"x-test-case:add", "x-header-add:this-value-should-be-appended"},
					map[string]string{"x-test-case": "add", "x-header-add": "this-value-should-be-appended,add-appends-values"}, nil},
				{"remove", "echo-v1", []string{"x-test-case:remove", "x-header-remove:this-should-be-removed"},
					map[string]string{"x-test-case": "remove"}, []string{"x-header-remove"}},
				{"multi", "echo-v2", []string{"x-test-case:multi", "x-header-set-2:set-header-2", "x-header-add-2:add-header-2", "x-header-remove-2:should-be-removed-2"},
					map[string]string{"x-test-case": "multi", "x-header-set-1": "header-set-1", "x-header-set-2": "header-set-2",
						"x-header-add-1": "header-add-1", "x-header-add-2": "add-header-2,header-add-2"}, []string{"x-header-remove-1", "x-header-remove-2"}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					var args []string
					for _, kv := range tc.md {
						args = append(args, "--metadata", kv)
					}
					a := g.grpc(t, "client", args...)[0]
					if a["x-pod"] != tc.backend {
						t.Errorf("answered by %q, want %s", a["x-pod"], tc.backend)
					}
					for k, v := range tc.want {
						if got := a["x-echo-"+k]; got != v {
							t.Errorf("backend saw %s = %q, want %q", k, got, v)
						}
					}
					for _, k := range tc.absent {
						if got, ok := a["x-echo-"+k]; ok {
							t.Errorf("backend saw %s = %q, want it removed", k, got)
						}
					}
				})
			}
		}},
	// From the suite after v1.6 (conformance/tests/mesh/grpcroute-request-mirror):
	// each call is answered by echo-v1 and a copy reaches echo-v2 (the
	// suite looks for it in echo-v2's log), after the header changes of
	// its rule.
	{name: "MeshGRPCRouteRequestMirror", grpcRoutes: gammaRoute("GRPCRoute", "mesh-grpc-request-mirror", gammaNS, "echo:7070", `
    - matches: [{headers: [{name: x-mirror-only, value: "true"}]}]
      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 7070}}}]
      backendRefs: [{name: echo-v1, port: 7070}]
    - matches: [{headers: [{name: x-mirror-and-modify, value: "true"}]}]
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          set: [{name: X-Header-Set, value: set-overwrites-values}]
          add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}]
          remove: [X-Header-Remove]
      - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 7070}}}
      backendRefs: [{name: echo-v1, port: 7070}]`),
		run: func(t *testing.T, g *gammaBed) {
			for _, tc := range []struct {
				name   string
				md     []string
				want   map[string]string
				absent []string
			}{
				{"mirror only", []string{"x-mirror-only:true"}, map[string]string{"x-mirror-only": "true"}, nil},
				{"mirror and modify", []string{"x-mirror-and-modify:true", "x-header-remove:remove-val", "x-header-add-append:append-val-1"},
					map[string]string{"x-header-set": "set-overwrites-values", "x-header-add": "header-val-1",
						"x-header-add-append": "append-val-1,header-val-2"}, []string{"x-header-remove"}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					g.grpcCalls("echo-v2", 300*time.Millisecond) // earlier tests' calls
					var args []string
					for _, kv := range tc.md {
						args = append(args, "--metadata", kv)
					}
					a := g.grpc(t, "client", args...)[0]
					if a["x-pod"] != "echo-v1" {
						t.Fatalf("answered by %q, want echo-v1", a["x-pod"])
					}
					for k, v := range tc.want {
						if got := a["x-echo-"+k]; got != v {
							t.Errorf("echo-v1 saw %s = %q, want %q", k, got, v)
						}
					}
					calls := g.grpcCalls("echo-v2", 10*time.Second)
					if len(calls) != 1 || calls[0].Call != "/grpc.health.v1.Health/Check" {
						t.Fatalf("echo-v2 logged %+v, want the one mirrored Check call", calls)
					}
					for k, v := range tc.want {
						if got := calls[0].Metadata[k]; got != v {
							t.Errorf("the mirrored call had %s = %q, want %q", k, got, v)
						}
					}
					for _, k := range tc.absent {
						if got, ok := calls[0].Metadata[k]; ok {
							t.Errorf("the mirrored call had %s = %q, want it removed", k, got)
						}
					}
				})
			}
		}},
}

var requestHeaderModifierReqs = []gammaReq{
	{path: "/set", headers: []string{"Some-Other-Header:val"}, backend: "echo-v1",
		reqHdr: map[string]string{"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}},
	{path: "/set", headers: []string{"Some-Other-Header:val", "X-Header-Set:some-other-value"}, backend: "echo-v1",
		reqHdr: map[string]string{"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}},
	{path: "/add", headers: []string{"Some-Other-Header:val"}, backend: "echo-v1",
		reqHdr: map[string]string{"Some-Other-Header": "val", "X-Header-Add": "add-appends-values"}},
	{path: "/add", headers: []string{"Some-Other-Header:val", "X-Header-Add:some-other-value"}, backend: "echo-v1",
		reqHdr: map[string]string{"Some-Other-Header": "val", "X-Header-Add": "some-other-value,add-appends-values"}},
	{path: "/remove", headers: []string{"X-Header-Remove:val"}, backend: "echo-v1", reqAbsent: []string{"X-Header-Remove"}},
	{path: "/multiple", headers: []string{"X-Header-Set-2:set-val-2", "X-Header-Add-2:add-val-2", "X-Header-Remove-2:remove-val-2", "Another-Header:another-header-val"},
		backend: "echo-v1", reqHdr: map[string]string{"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2",
			"X-Header-Add-1": "header-add-1", "X-Header-Add-2": "add-val-2,header-add-2", "X-Header-Add-3": "header-add-3",
			"Another-Header": "another-header-val"}, reqAbsent: []string{"X-Header-Remove-1", "X-Header-Remove-2"}},
	{path: "/case-insensitivity", headers: []string{"x-header-set:original-val-set", "x-header-add:original-val-add", "x-header-remove:original-val-remove", "Another-Header:another-header-val"},
		backend: "echo-v1", reqHdr: map[string]string{"X-Header-Set": "header-set", "X-Header-Add": "original-val-add,header-add", "Another-Header": "another-header-val"},
		reqAbsent: []string{"X-Header-Remove"}},
}

func chiSquare7030(t *testing.T, v1, v2, n int) {
	t.Helper()
	// Chi-square, 1 degree of freedom; 10.83 is p = 0.001.
	chi := math.Pow(float64(v1)-0.7*float64(n), 2)/(0.7*float64(n)) + math.Pow(float64(v2)-0.3*float64(n), 2)/(0.3*float64(n))
	if v1+v2 != n || chi > 10.83 {
		t.Fatalf("split v1=%d v2=%d of %d: chi-square %.2f for 70/30 (want <= 10.83, all answered)", v1, v2, n, chi)
	}
}

// gammaBed is the test-bed shared by the conformance tests.
type gammaBed struct {
	m       *mesh
	wp      *testbed.Process
	cfg     string
	applied int    // "config applied" lines of the waypoint so far
	last    string // the file as last written
	// hbone: the mesh has a CA; the waypoint's workload speaks HBONE.
	hbone bool
	// grpcSrv are the echo pods' gRPC servers, whose stdout has a line
	// per call (their request log).
	grpcSrv map[string]*testbed.Process
}

// grpcCalls returns the calls pod's gRPC server logged within wait (it
// stops at the first quiet 200 ms after one arrived), as method ->
// metadata.
func (g *gammaBed) grpcCalls(pod string, wait time.Duration) []grpcCall {
	var calls []grpcCall
	deadline := time.After(wait)
	for {
		quiet := time.After(200 * time.Millisecond)
		if len(calls) == 0 {
			quiet = nil
		}
		select {
		case l := <-g.grpcSrv[pod].Lines():
			var c grpcCall
			if json.Unmarshal([]byte(l), &c) == nil && c.Call != "" {
				calls = append(calls, c)
			}
		case <-quiet:
			return calls
		case <-deadline:
			return calls
		}
	}
}

// grpcCall is one line of kmesh-echo grpc-serve's request log.
type grpcCall struct {
	Call     string            `json:"call"`
	Metadata map[string]string `json:"metadata"`
}

// apply writes the base manifest with the test's routes and waits until
// the waypoint has applied it.
func (g *gammaBed) apply(t *testing.T, gt gammaTest) {
	t.Helper()
	if !g.write(gt) {
		return // the same file: nothing to apply
	}
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(g.wp.Stderr(), "config applied") <= g.applied {
		if time.Now().After(deadline) {
			t.Fatalf("waypoint did not apply the config of %s: %s", gt.name, lastLinesOf(g.wp.Stderr(), 5))
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.applied = strings.Count(g.wp.Stderr(), "config applied")
}

// write writes the base manifest with gt's routes; false if the file
// already says that.
func (g *gammaBed) write(gt gammaTest) bool {
	m := g.m
	cfg := fmt.Sprintf(gammaBase, m.pods["client"].NetnsPath, m.pods["consumer"].NetnsPath, m.pods["echo-v1"].NetnsPath,
		m.pods["echo-v2"].NetnsPath, m.pods["echo-v3"].NetnsPath, m.pods["waypoint"].NetnsPath)
	if g.hbone {
		// The waypoint entry is the last workload.
		cfg = strings.Replace(cfg, "\ngateways:", "\n  tunnelProtocol: HBONE\n  serviceAccount: waypoint\ngateways:", 1)
	}
	if gt.httpRoutes != "" {
		cfg += "httpRoutes:\n" + gt.httpRoutes
	}
	if gt.grpcRoutes != "" {
		cfg += "grpcRoutes:\n" + gt.grpcRoutes
	}
	if cfg == g.last {
		return false
	}
	m.writeConfig(g.cfg, cfg)
	g.last = cfg
	return true
}

// accessLog returns the waypoint's access log lines not read yet.
func (g *gammaBed) accessLog() string {
	var lines []string
	for {
		select {
		case l := <-g.wp.Lines():
			lines = append(lines, l)
		case <-time.After(200 * time.Millisecond):
			return strings.Join(lines, "\n")
		}
	}
}

func lastLinesOf(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// grpc makes unary calls to echo:7070 from pod and returns each answer's
// header metadata.
func (g *gammaBed) grpc(t *testing.T, pod string, args ...string) []map[string]string {
	t.Helper()
	p, err := g.m.pods[pod].Start(g.m.echo, append([]string{"grpc-check", "--addr", "10.96.5.10:7070", "--watch", "0"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	line := waitLine(t, p, "{")
	var out struct {
		Answers []map[string]string `json:"answers"`
		Error   string              `json:"error"`
	}
	if err := json.Unmarshal([]byte(line), &out); err != nil {
		t.Fatal(err)
	}
	if out.Error != "" || len(out.Answers) == 0 {
		t.Fatalf("grpc calls through the waypoint: %s\nwaypoint access log:\n%s", line, g.accessLog())
	}
	return out.Answers
}

// check makes one request and reports what differs from what it wants.
func (g *gammaBed) check(r gammaReq) []string {
	svc := r.svc
	if svc == "" {
		svc = "echo"
	}
	url := r.url
	if url == "" {
		url = "http://" + gammaVIP[svc]
	}
	host := r.host
	if host == "" {
		host = svc
	}
	args := []string{"--url", url + r.path, "--host", host, "--no-redirect", "--print-headers", "--header", "X-Echo-Request-Headers:1"}
	for _, h := range r.headers {
		args = append(args, "--header", h)
	}
	from := r.from
	if from == "" {
		from = "client"
	}
	rs := g.m.get(from, args...)
	if len(rs) != 1 {
		return []string{fmt.Sprintf("%d results", len(rs))}
	}
	res := rs[0]
	var bad []string
	want := r.status
	if want == 0 {
		want = 200
	}
	if res.Status != want {
		return []string{fmt.Sprintf("status %d (%s), want %d", res.Status, res.Error, want)}
	}
	if r.backend != "" && res.Pod != r.backend {
		bad = append(bad, fmt.Sprintf("answered by %q, want %s", res.Pod, r.backend))
	}
	if r.sawPath != "" && res.Path != r.sawPath {
		bad = append(bad, fmt.Sprintf("backend saw path %q, want %q", res.Path, r.sawPath))
	}
	if r.loc != "" && res.Headers["Location"] != r.loc {
		bad = append(bad, fmt.Sprintf("Location %q, want %q", res.Headers["Location"], r.loc))
	}
	for k, v := range r.respHdr {
		if got := res.Headers[k]; got != v {
			bad = append(bad, fmt.Sprintf("answer header %s = %q, want %q", k, got, v))
		}
	}
	for _, k := range r.respAbsent {
		if got, ok := res.Headers[k]; ok {
			bad = append(bad, fmt.Sprintf("answer has %s = %q, want none", k, got))
		}
	}
	for k, v := range r.reqHdr {
		if got := res.Headers["X-Echo-"+k]; got != v {
			bad = append(bad, fmt.Sprintf("backend saw %s = %q, want %q", k, got, v))
		}
	}
	for _, k := range r.reqAbsent {
		if got, ok := res.Headers["X-Echo-"+k]; ok {
			bad = append(bad, fmt.Sprintf("backend saw %s = %q, want it removed", k, got))
		}
	}
	return bad
}

// TestGAMMA runs the mesh conformance tests one after another on one
// test-bed, each rewriting the routes as the suite applies a test's
// manifest.
func TestGAMMA(t *testing.T) { runGAMMA(t, false, gammaTests) }

// gammaOverHBONE are the conformance tests that depend on which service a
// connection was addressed to, run again over HBONE.
var gammaOverHBONE = []string{"MeshFrontend", "MeshFrontendHostname", "MeshPorts"}

// TestGAMMA_HBONE runs the tests of gammaOverHBONE with a mesh CA:
// kmeshd's tunnel carries the client's connection to the waypoint's 15008
// as HBONE with the service's VIP:port as the CONNECT authority, so the
// waypoint knows the service addressed, not only the port: the Host header
// does not pick another service's routes (MeshFrontendHostname passes,
// which the plaintext redirect does not).
func TestGAMMA_HBONE(t *testing.T) {
	var tests []gammaTest
	for _, gt := range gammaTests {
		if slices.Contains(gammaOverHBONE, gt.name) {
			gt.gap = ""
			tests = append(tests, gt)
		}
	}
	runGAMMA(t, true, tests)
}

func runGAMMA(t *testing.T, hbone bool, tests []gammaTest) {
	m, wpBin := newWaypointMesh(t)
	var err error
	m.addNode("node-a", cidrA4, cidrA6)
	m.addPod("node-a", "client", "10.1.1.10")
	m.addPod("node-a", "consumer", "10.1.1.14")
	m.addPod("node-a", "waypoint", "10.1.1.20")
	g := &gammaBed{m: m, cfg: configPath(m, "mesh.yaml"), hbone: hbone, grpcSrv: map[string]*testbed.Process{}}
	for i, name := range []string{"echo-v1", "echo-v2", "echo-v3"} {
		m.addPod("node-a", name, fmt.Sprintf("10.1.1.%d", 11+i))
		m.serve(name)
		gp, err := m.pods[name].Start(m.echo, "grpc-serve", "--listen", "[::]:7070", "--name", name)
		if err != nil {
			t.Fatal(err)
		}
		waitLine(t, gp, "listening ")
		g.grpcSrv[name] = gp
	}
	g.write(gammaTest{})
	level := "info"
	if hbone {
		level = "debug" // the HBONE streams' lines
	}
	wpArgs := []string{"--config", g.cfg, "--gateway", gammaNS + "/waypoint",
		"--admin-address", "10.1.1.20:15000", "--metrics-address", "", "--log-level", level}
	if hbone {
		certPath, keyPath, _ := m.writeCA("ca")
		h := &hboneMesh{mesh: m, caFlags: []string{"--ca-cert", certPath, "--ca-key", keyPath},
			kmeshd: map[string]*kmeshd{}, tunnels: map[string]*testbed.Process{},
			stateDirs: map[string]string{"node-a": configPath(m, "node-a-state")}}
		m.startKmeshdBin(m.kmeshd, "node-a", g.cfg, h.kmeshdFlags("node-a")...)
		h.startTunnel("node-a")
		wpArgs = append(wpArgs, h.caFlags...)
	} else {
		m.startKmeshd("node-a", g.cfg)
	}
	g.wp, err = m.pods["waypoint"].Start(wpBin, wpArgs...)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(g.wp.Stderr(), "waypoint ready") {
		if time.Now().After(deadline) {
			t.Fatalf("waypoint not ready: %s", g.wp.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.applied = strings.Count(g.wp.Stderr(), "config applied")

	if hbone {
		defer func() {
			// The client's connections to echo-v2 came as HBONE streams
			// whose authority is echo-v2's VIP:port.
			if !hasLine(g.wp.Stderr(), `msg="hbone stream"`, "authority="+gammaVIP["echo-v2"]+":80") {
				t.Errorf("the waypoint logged no HBONE stream for %s:80:\n%s", gammaVIP["echo-v2"], lastLinesOf(g.wp.Stderr(), 20))
			}
		}()
	}
	for _, gt := range tests {
		t.Run(gt.name, func(t *testing.T) {
			g.apply(t, gt)
			if gt.run != nil {
				gt.run(t, g)
				return
			}
			var failed []string
			for i, r := range gt.reqs {
				name := r.name
				if name == "" {
					name = fmt.Sprintf("%d %s", i, r.path)
				}
				if bad := g.check(r); len(bad) > 0 {
					failed = append(failed, name+": "+strings.Join(bad, "; "))
				}
			}
			switch {
			case gt.gap == "" && len(failed) > 0:
				t.Errorf("%d of %d requests differ:\n%s", len(failed), len(gt.reqs), strings.Join(failed, "\n"))
			case gt.gap != "" && len(failed) == 0:
				t.Errorf("passes now, though listed as not passing (%s): update the table in docs/waypoint.md and drop the gap", gt.gap)
			case gt.gap != "":
				t.Logf("does not pass, as documented (%s):\n%s", gt.gap, strings.Join(failed, "\n"))
			}
		})
	}
}
