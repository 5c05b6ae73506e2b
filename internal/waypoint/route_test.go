package waypoint

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/internal/model"
)

// TestCompileMatch_GRPCMethod: a GRPCRoute's method match is a match on
// the call's POST /service/method, as Gateway API defines it: exact
// service and method, service only, method only, and regular expressions
// for either (a missing one matches any); never a call of another method
// or a request that is not a POST.
func TestCompileMatch_GRPCMethod(t *testing.T) {
	const (
		check = "/grpc.health.v1.Health/Check"
		watch = "/grpc.health.v1.Health/Watch"
		echo  = "/echo.Echo/Check"
	)
	cases := []struct {
		name  string
		match model.GRPCMethodMatch
		want  map[string]bool // path -> matched (POST)
	}{
		{"exact service and method", model.GRPCMethodMatch{Type: model.MatchTypeExact, Service: "grpc.health.v1.Health", Method: "Check"},
			map[string]bool{check: true, watch: false, echo: false, "/grpc.health.v1.Health/Check/x": false}},
		{"exact service", model.GRPCMethodMatch{Type: model.MatchTypeExact, Service: "grpc.health.v1.Health"},
			map[string]bool{check: true, watch: true, echo: false, "/grpc.health.v1.HealthX/Check": false}},
		{"exact method", model.GRPCMethodMatch{Type: model.MatchTypeExact, Method: "Check"},
			map[string]bool{check: true, echo: true, watch: false, "/a/b/Check": false}},
		{"regex service", model.GRPCMethodMatch{Type: model.MatchTypeRegex, Service: `grpc\.health\..*`},
			map[string]bool{check: true, watch: true, echo: false}},
		{"regex method", model.GRPCMethodMatch{Type: model.MatchTypeRegex, Method: "Ch.*"},
			map[string]bool{check: true, echo: true, watch: false}},
		{"regex both", model.GRPCMethodMatch{Type: model.MatchTypeRegex, Service: `echo\..*`, Method: "(Check|Watch)"},
			map[string]bool{echo: true, check: false, "/echo.Echo/Other": false}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := tc.match
			m, err := compileMatch(model.KindGRPCRoute, model.RouteMatch{GRPC: &g})
			if err != nil {
				t.Fatal(err)
			}
			for path, want := range tc.want {
				if got := m.matches(httptest.NewRequest("POST", path, nil)); got != want {
					t.Errorf("POST %s: matched %v, want %v", path, got, want)
				}
			}
			for path, want := range tc.want {
				if want && m.matches(httptest.NewRequest("GET", path, nil)) {
					t.Errorf("GET %s matched: a gRPC call is a POST", path)
				}
			}
		})
	}
	if _, err := compileMatch(model.KindGRPCRoute, model.RouteMatch{GRPC: &model.GRPCMethodMatch{Type: model.MatchTypeRegex, Service: "("}}); err == nil {
		t.Error("a bad service regular expression compiled")
	}
}

// TestCompileMatch_HTTP: an HTTPRoute match on a regular expression path
// (the whole path), a method, a header and a query parameter (exact or
// regular expression); every given part must match.
func TestCompileMatch_HTTP(t *testing.T) {
	cases := []struct {
		name  string
		match model.RouteMatch
		want  map[string]bool // "METHOD target" -> matched
	}{
		{"regex path", model.RouteMatch{Path: &model.PathMatch{Type: model.MatchTypeRegex, Value: `/api/v[0-9]+/items`}},
			map[string]bool{"GET /api/v2/items": true, "GET /api/v10/items": true, "GET /api/vx/items": false, "GET /x/api/v2/items": false,
				"GET /api/v2/items/1": false}},
		{"exact path", model.RouteMatch{Path: &model.PathMatch{Type: model.MatchTypeExact, Value: "/a"}},
			map[string]bool{"GET /a": true, "GET /a/": false, "GET /ab": false}},
		{"method", model.RouteMatch{Method: "DELETE"},
			map[string]bool{"DELETE /admin": true, "GET /admin": false, "POST /": false}},
		{"method and path prefix", model.RouteMatch{Method: "GET", Path: &model.PathMatch{Type: model.MatchTypePathPrefix, Value: "/v2"}},
			map[string]bool{"GET /v2/x": true, "GET /v2": true, "GET /v2x": false, "PUT /v2/x": false}},
		{"query exact", model.RouteMatch{QueryParams: []model.ValueMatch{{Type: model.MatchTypeExact, Name: "debug", Value: "1"}}},
			map[string]bool{"GET /?debug=1": true, "GET /?debug=2": false, "GET /": false}},
		{"query regex", model.RouteMatch{QueryParams: []model.ValueMatch{{Type: model.MatchTypeRegex, Name: "v", Value: "[0-9]+"}}},
			map[string]bool{"GET /?v=42": true, "GET /?v=4x": false}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := compileMatch(model.KindHTTPRoute, tc.match)
			if err != nil {
				t.Fatal(err)
			}
			for target, want := range tc.want {
				method, uri, _ := strings.Cut(target, " ")
				if got := m.matches(httptest.NewRequest(method, uri, nil)); got != want {
					t.Errorf("%s: matched %v, want %v", target, got, want)
				}
			}
		})
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("X-Version", "v2-beta")
	for _, tc := range []struct {
		vm   model.ValueMatch
		want bool
	}{
		{model.ValueMatch{Type: model.MatchTypeExact, Name: "x-version", Value: "v2-beta"}, true},
		{model.ValueMatch{Type: model.MatchTypeExact, Name: "x-version", Value: "v2"}, false},
		{model.ValueMatch{Type: model.MatchTypeRegex, Name: "X-Version", Value: "v2-.*"}, true},
		{model.ValueMatch{Type: model.MatchTypeRegex, Name: "X-Version", Value: "v3.*"}, false},
	} {
		m, err := compileMatch(model.KindHTTPRoute, model.RouteMatch{Headers: []model.ValueMatch{tc.vm}})
		if err != nil {
			t.Fatal(err)
		}
		if got := m.matches(r); got != tc.want {
			t.Errorf("header %+v against X-Version: v2-beta: matched %v, want %v", tc.vm, got, tc.want)
		}
	}
}
