package waypoint

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/model"
)

// mirrored is what the mirror backend saw of one request.
type mirrored struct {
	method, path, host, set, body string
}

// TestProxy_RequestMirror: a rule's RequestMirror sends a copy of each
// request to another service and the client gets the route backend's
// answer. The copy carries the body (HTTP/1.1 and h2c), the headers as
// the request goes upstream (a RequestHeaderModifier listed after the
// mirror applies to the copy too, as Envoy mirrors the final request) and
// the authority with -shadow; percent 0 mirrors nothing.
func TestProxy_RequestMirror(t *testing.T) {
	b := newBed(t)
	saw := make(chan mirrored, 16)
	b.workload("v1", 8080, map[string]string{"app": "v1"}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Backend", "v1")
		w.Write(body)
	}))
	b.workload("shadow", 8080, map[string]string{"app": "shadow"}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		saw <- mirrored{r.Method, r.URL.Path, r.Host, r.Header.Get("X-Set"), string(body)}
		w.WriteHeader(http.StatusTeapot) // never seen by the client
	}))
	b.service("web", "10.96.0.1", 8080, "v1", true)
	b.service("web-v1", "10.96.0.2", 8080, "v1", false)
	b.service("web-shadow", "10.96.0.3", 8080, "shadow", false)
	mirror := func(pct int) model.RouteFilter {
		return model.RouteFilter{Type: model.FilterRequestMirror, RequestMirror: &model.RequestMirror{
			Backend: model.BackendRef{Name: "web-shadow", Port: 80}, Percent: pct}}
	}
	b.mesh.Routes = []model.Route{{Kind: model.KindHTTPRoute, Name: "web", Namespace: "default", ParentRefs: svcParent("web"),
		Rules: []model.RouteRule{
			{Matches: []model.RouteMatch{{Path: &model.PathMatch{Type: model.MatchTypePathPrefix, Value: "/never"}}},
				Filters: []model.RouteFilter{mirror(0)}, BackendRefs: []model.BackendRef{ref("web-v1", 1)}},
			{Filters: []model.RouteFilter{mirror(100),
				{Type: model.FilterRequestHeaderModifier, RequestHeaderModifier: &model.HeaderModifier{Set: []model.Header{{Name: "X-Set", Value: "yes"}}}}},
				BackendRefs: []model.BackendRef{ref("web-v1", 1)}},
		}}}
	b.start()
	next := func(t *testing.T) mirrored {
		t.Helper()
		select {
		case m := <-saw:
			return m
		case <-time.After(10 * time.Second):
			t.Fatal("the mirror backend saw no request in 10s")
		}
		return mirrored{}
	}
	for _, h2 := range []bool{false, true} {
		name := map[bool]string{false: "http1", true: "h2c"}[h2]
		t.Run(name, func(t *testing.T) {
			c := b.client("10.96.0.1", h2)
			for _, body := range []string{"", strings.Repeat("payload ", 1000)} {
				method := map[bool]string{false: "GET", true: "POST"}[body != ""]
				req, _ := http.NewRequest(method, "http://web/page", strings.NewReader(body))
				if body == "" {
					req.Body = nil
				}
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "v1" || string(got) != body {
					t.Fatalf("%s /page: %d from %q, body of %d bytes; want 200 from v1 echoing %d bytes", method, resp.StatusCode,
						resp.Header.Get("X-Backend"), len(got), len(body))
				}
				want := mirrored{method, "/page", "web-shadow", "yes", body}
				if m := next(t); m != want {
					t.Fatalf("%s /page: the mirror saw %s %s host %q X-Set %q and %d bytes, want host web-shadow, X-Set yes and %d bytes",
						method, m.method, m.path, m.host, m.set, len(m.body), len(body))
				}
			}
			resp, _ := get(t, c, "http://web/never")
			if resp.StatusCode != 200 {
				t.Fatalf("GET /never: %d", resp.StatusCode)
			}
		})
	}
	select {
	case m := <-saw:
		t.Fatalf("percent 0 mirrored %s %s", m.method, m.path)
	case <-time.After(300 * time.Millisecond):
	}
}
