package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/internal/source/file"
	"github.com/kmesh-go/kmesh/internal/waypoint"
)

// waypointAdmin serves a real waypoint's /config_dump and /explain over the
// example config.
func waypointAdmin(t *testing.T) string {
	data, err := os.ReadFile("../../examples/waypoint.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := file.Parse("waypoint.yaml", data, "")
	if err != nil {
		t.Fatal(err)
	}
	p, err := waypoint.New(m, waypoint.Options{Gateway: "default/waypoint"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	mux := http.NewServeMux()
	mux.HandleFunc("/config_dump", func(w http.ResponseWriter, _ *http.Request) { json.NewEncoder(w).Encode(p.Dump()) })
	mux.HandleFunc("/explain", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		h := http.Header{}
		for _, kv := range q["header"] {
			k, v, _ := strings.Cut(kv, ":")
			h.Add(k, v)
		}
		e, err := p.Explain(netip.MustParseAddr(q.Get("src")), q.Get("method"), q.Get("url"), h)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		json.NewEncoder(w).Encode(e)
	})
	s := httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

func TestKmeshctl_WaypointRoutesAndExplain(t *testing.T) {
	addr := waypointAdmin(t)
	out, err := kmeshctl(t, addr, "waypoint", "routes")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"SERVICE             ORDER  RULE",
		"default/reviews:80  0      HTTPRoute/default/reviews#0  prefix=/v2",
		"default/reviews:80  1      HTTPRoute/default/reviews#0  prefix=/ header:x-version=2",
		"default/reviews:80  2      HTTPRoute/default/reviews#1  prefix=/",
		"default/reviews-v1:80=80,default/reviews-v2:80=20",
		"attempts=2 codes=502,503 backoff=50ms",
		"default/reviews  default/reviews-faults  delay 100ms 100%, abort 503 50%",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("waypoint routes lacks %q:\n%s", want, out)
		}
	}
	out, err = kmeshctl(t, addr, "waypoint", "explain", "10.1.1.10", "http://10.96.0.20/page", "-H", "x-version:2")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ROUTE     HTTPRoute/default/reviews#0 prefix=/ header:x-version=2", "BACKENDS  default/reviews-v2:80=1"} {
		if !strings.Contains(out, want) {
			t.Errorf("waypoint explain lacks %q:\n%s", want, out)
		}
	}
	out, err = kmeshctl(t, addr, "waypoint", "explain", "10.1.1.10", "http://reviews/x", "-X", "DELETE")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "POLICY    deny default/no-delete") || !strings.Contains(out, "ANSWER    403 from the waypoint") {
		t.Errorf("DELETE explain:\n%s", out)
	}
}

func TestKmeshctl_WaypointRoutesConsumerRoute(t *testing.T) {
	var b strings.Builder
	d := &waypoint.ConfigDump{Routes: []waypoint.RouteDump{
		{Service: "default/web:80", Rule: "HTTPRoute/default/web#0", Match: "*", Backends: []string{"default/web-v1:80=1"}, Retry: "-"},
		{Service: "default/web:80", Rule: "HTTPRoute/shop/web#0", Match: "*", Backends: []string{"default/web-v2:80=1"}, Retry: "-",
			ConsumerNamespace: "shop"},
	}}
	if err := printWaypointRoutes(&b, d); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "default/web:80 (clients in shop)  0      HTTPRoute/shop/web#0") {
		t.Errorf("consumer route not marked:\n%s", b.String())
	}
}
