package waypoint

import (
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/file"
)

// gammaCase is one request of a GAMMA conformance test and what must come
// back: the backend that answers (with the path and host it saw), or a
// status (and Location) from the waypoint itself.
type gammaCase struct {
	path    string
	headers []string
	backend string
	sawPath string
	status  int
	loc     string
}

// gammaTests are the mesh HTTPRoute conformance tests ported here, each a
// route's rules (in the YAML of the upstream manifest) and its cases.
var gammaTests = []struct {
	name  string
	rules string
	cases []gammaCase
}{
	{"MeshHTTPRouteMatching", `
    - matches: [{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}]
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]
      backendRefs: [{name: echo-v2, port: 8080}]`, []gammaCase{
		{path: "/", backend: "echo-v1"}, {path: "/example", backend: "echo-v1"},
		{path: "/", headers: []string{"Version", "one"}, backend: "echo-v1"},
		{path: "/v2", backend: "echo-v2"}, {path: "/v2/example", backend: "echo-v2"},
		{path: "/", headers: []string{"Version", "two"}, backend: "echo-v2"},
		{path: "/v2/", backend: "echo-v2"}, {path: "/v2example", backend: "echo-v1"},
		{path: "/foo/v2/example", backend: "echo-v1"},
	}},
	{"MeshHTTPRouteQueryParamMatching", `
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
      backendRefs: [{name: echo-v2, port: 8080}]`, []gammaCase{
		{path: "/?animal=whale", backend: "echo-v1"}, {path: "/?animal=dolphin", backend: "echo-v2"},
		{path: "/?animal=whale&otherparam=irrelevant", backend: "echo-v1"},
		{path: "/?animal=dolphin&color=yellow", backend: "echo-v2"},
		{path: "/?color=blue", status: 404}, {path: "/?animal=dog", status: 404},
		{path: "/?animal=whaledolphin", status: 404}, {path: "/", status: 404},
		{path: "/path1?animal=whale", backend: "echo-v1"},
		{path: "/?animal=whale", headers: []string{"version", "one"}, backend: "echo-v2"},
		{path: "/path3?animal=shark", backend: "echo-v1"},
		{path: "/path4?animal=kraken", headers: []string{"version", "three"}, backend: "echo-v1"},
		{path: "/?animal=shark", status: 404}, {path: "/path4?animal=kraken", status: 404},
		{path: "/path5?animal=hydra", backend: "echo-v1"},
	}},
	{"MeshHTTPRouteRedirectPath", `
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
      filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}}}]`, []gammaCase{
		{path: "/original-prefix/lemon", status: 302, loc: "http://echo/replacement-prefix/lemon"},
		{path: "/full/path/original", status: 302, loc: "http://echo/full-path-replacement"},
		{path: "/path-and-host", status: 302, loc: "http://example.org/replacement-prefix"},
		{path: "/path-and-status", status: 301, loc: "http://echo/replacement-prefix"},
		{path: "/full-path-and-host", status: 302, loc: "http://example.org/replacement-full"},
		{path: "/full-path-and-status", status: 301, loc: "http://echo/replacement-full"},
	}},
	{"MeshHTTPRouteRedirectPort", `
    - matches: [{path: {type: PathPrefix, value: /port}}]
      filters: [{type: RequestRedirect, requestRedirect: {port: 8083}}]
    - matches: [{path: {type: PathPrefix, value: /port-and-host}}]
      filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, port: 8083}}]
    - matches: [{path: {type: PathPrefix, value: /port-and-status}}]
      filters: [{type: RequestRedirect, requestRedirect: {port: 8083, statusCode: 301}}]
    - matches: [{path: {type: PathPrefix, value: /port-and-host-and-status}}]
      filters: [{type: RequestRedirect, requestRedirect: {port: 8083, hostname: example.org, statusCode: 302}}]`, []gammaCase{
		{path: "/port", status: 302, loc: "http://echo:8083/port"},
		{path: "/port-and-host", status: 302, loc: "http://example.org:8083/port-and-host"},
		{path: "/port-and-status", status: 301, loc: "http://echo:8083/port-and-status"},
		{path: "/port-and-host-and-status", status: 302, loc: "http://example.org:8083/port-and-host-and-status"},
	}},
	{"MeshHTTPRouteSchemeRedirect", `
    - matches: [{path: {type: PathPrefix, value: /scheme}}]
      filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
    - matches: [{path: {type: PathPrefix, value: /scheme-and-host}}]
      filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.org}}]
    - matches: [{path: {type: PathPrefix, value: /scheme-and-status}}]
      filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]
    - matches: [{path: {type: PathPrefix, value: /scheme-and-host-and-status}}]
      filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 302, hostname: example.org}}]`, []gammaCase{
		{path: "/scheme", status: 302, loc: "https://echo/scheme"},
		{path: "/scheme-and-host", status: 302, loc: "https://example.org/scheme-and-host"},
		{path: "/scheme-and-status", status: 301, loc: "https://echo/scheme-and-status"},
		{path: "/scheme-and-host-and-status", status: 302, loc: "https://example.org/scheme-and-host-and-status"},
	}},
	{"MeshHTTPRouteRedirectHostAndStatus", `
    - matches: [{path: {type: PathPrefix, value: /hostname-redirect}}]
      filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
    - matches: [{path: {type: PathPrefix, value: /host-and-status}}]
      filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301, hostname: example.org}}]`, []gammaCase{
		{path: "/hostname-redirect", status: 302, loc: "http://example.org/hostname-redirect"},
		{path: "/host-and-status", status: 301, loc: "http://example.org/host-and-status"},
	}},
	{"MeshHTTPRoute303Redirect", `
    - matches: [{path: {type: PathPrefix, value: /redirect}}]
      filters: [{type: RequestRedirect, requestRedirect: {statusCode: 303}}]`, []gammaCase{
		{path: "/redirect", status: 303, loc: "http://echo/redirect"},
	}},
	{"MeshHTTPRoute307Redirect", `
    - matches: [{path: {type: PathPrefix, value: /temporary}}]
      filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]`, []gammaCase{
		{path: "/temporary", status: 307, loc: "http://echo/temporary"},
	}},
	{"MeshHTTPRoute308Redirect", `
    - matches: [{path: {type: PathPrefix, value: /permanent}}]
      filters: [{type: RequestRedirect, requestRedirect: {statusCode: 308}}]`, []gammaCase{
		{path: "/permanent", status: 308, loc: "http://echo/permanent"},
	}},
	{"MeshSplit", `
    - matches: [{path: {type: Exact, value: /v1}}]
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{path: {type: Exact, value: /v2}}]
      backendRefs: [{name: echo-v2, port: 8080}]`, []gammaCase{
		{path: "/v1", backend: "echo-v1"}, {path: "/v2", backend: "echo-v2"},
	}},
	{"MeshHTTPRouteRewritePath", `
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
      - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}]}}
      backendRefs: [{name: echo-v1, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /prefix/rewrite-path-and-modify-headers}}]
      filters:
      - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /prefix}}}
      - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}]}}
      backendRefs: [{name: echo-v1, port: 8080}]`, []gammaCase{
		{path: "/prefix/one/two", backend: "echo-v1", sawPath: "/one/two"},
		{path: "/strip-prefix/three", backend: "echo-v1", sawPath: "/three"},
		{path: "/strip-prefix", backend: "echo-v1", sawPath: "/"},
		{path: "/full/one/two", backend: "echo-v1", sawPath: "/one"},
		{path: "/full/rewrite-path-and-modify-headers/test", backend: "echo-v1", sawPath: "/test"},
		{path: "/prefix/rewrite-path-and-modify-headers/one", backend: "echo-v1", sawPath: "/prefix/one"},
	}},
	{"MeshHTTPRouteSimpleSameNamespace", `
    - backendRefs: [{name: echo-v1, port: 8080}]`, []gammaCase{
		{path: "/", backend: "echo-v1"}, {path: "/anything", backend: "echo-v1"},
	}},
}

// TestGAMMAConformance_Weight is MeshHTTPRouteWeight: 70/30 backends; the
// upstream test allows a tolerance, this one a chi-square at p = 0.001.
func TestGAMMAConformance_Weight(t *testing.T) {
	b := newBed(t)
	b.workload("echo-v1", 8080, map[string]string{"app": "v1"}, named("echo-v1"))
	b.workload("echo-v2", 8080, map[string]string{"app": "v2"}, named("echo-v2"))
	b.service("echo", "10.96.1.1", 8080, "v1", true)
	b.service("echo-v1", "10.96.1.2", 8080, "v1", false)
	b.service("echo-v2", "10.96.1.3", 8080, "v2", false)
	b.mesh.Routes = append(b.mesh.Routes, routeWith("echo", ref("echo-v1", 70), ref("echo-v2", 30)))
	b.start()
	c := b.client("10.96.1.1", false)
	counts := map[string]int{}
	const n = 500
	for range n {
		resp, _ := get(t, c, "http://echo/")
		counts[resp.Header.Get("X-Backend")]++
	}
	chi := sq(float64(counts["echo-v1"])-0.7*n)/(0.7*n) + sq(float64(counts["echo-v2"])-0.3*n)/(0.3*n)
	if chi > 10.83 {
		t.Fatalf("distribution %v: chi-square %.2f > 10.83", counts, chi)
	}
}

// TestGAMMAConformance runs the ported cases: the route goes through the
// file source, the requests through the engine to real backends.
func TestGAMMAConformance(t *testing.T) {
	tmpl, err := os.ReadFile("testdata/gamma.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"echo-v1", "echo-v2"} {
		ln, err := net.Listen("tcp", []string{"127.0.2.1:8080", "127.0.2.2:8080"}[i])
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: named(name)}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	for _, gt := range gammaTests {
		t.Run(gt.name, func(t *testing.T) {
			yaml := strings.Replace(strings.Replace(string(tmpl), "ROUTE", strings.ToLower(gt.name), 1), "RULES", gt.rules, 1)
			m, err := file.Parse("gamma.yaml", []byte(yaml), "")
			if err != nil {
				t.Fatal(err)
			}
			b := &bed{t: t, mesh: m}
			b.start()
			c := b.client("10.96.1.1", false)
			c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
			for _, tc := range gt.cases {
				req, _ := http.NewRequest("GET", "http://echo"+tc.path, nil)
				for i := 0; i+1 < len(tc.headers); i += 2 {
					req.Header.Set(tc.headers[i], tc.headers[i+1])
				}
				resp, err := c.Do(req)
				if err != nil {
					t.Fatalf("%s %v: %v", tc.path, tc.headers, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				want := tc.status
				if want == 0 {
					want = 200
				}
				if resp.StatusCode != want {
					t.Errorf("%s %v: status %d, want %d", tc.path, tc.headers, resp.StatusCode, want)
					continue
				}
				if tc.backend != "" && resp.Header.Get("X-Backend") != tc.backend {
					t.Errorf("%s %v: answered by %q, want %s", tc.path, tc.headers, resp.Header.Get("X-Backend"), tc.backend)
				}
				if tc.sawPath != "" && resp.Header.Get("X-Saw-Path") != tc.sawPath {
					t.Errorf("%s: backend saw path %q, want %q", tc.path, resp.Header.Get("X-Saw-Path"), tc.sawPath)
				}
				if tc.loc != "" && resp.Header.Get("Location") != tc.loc {
					t.Errorf("%s: Location %q, want %q", tc.path, resp.Header.Get("Location"), tc.loc)
				}
			}
		})
	}
}

func routeWith(parent string, backends ...model.BackendRef) model.Route {
	return model.Route{Kind: model.KindHTTPRoute, Name: "weight", Namespace: "default", ParentRefs: svcParent(parent),
		Rules: []model.RouteRule{{BackendRefs: backends}}}
}
