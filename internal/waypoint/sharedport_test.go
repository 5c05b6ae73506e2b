package waypoint

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"testing"
)

// TestProxy_SharedPortPicksServiceByHost: on a plaintext port two services
// share, each request goes to the service its Host names (by address, with
// or without the port, or by name), request after request on one
// connection, and a config change that removes a service is seen by the
// next request on that connection.
func TestProxy_SharedPortPicksServiceByHost(t *testing.T) {
	b := newBed(t)
	b.workload("one", 8080, map[string]string{"app": "one"}, named("one"))
	b.workload("two", 8080, map[string]string{"app": "two"}, named("two"))
	b.service("web1", "10.96.0.1", 8080, "one", true)
	b.service("web2", "10.96.0.2", 8080, "two", true)
	b.start()

	c, s := net.Pipe()
	defer c.Close()
	if !b.proxy.servePort(s, 80, Peer{Addr: netip.MustParseAddrPort("127.0.0.1:40000")}) {
		t.Fatal("no service on port 80")
	}
	br := bufio.NewReader(c)
	do := func(host string) (int, string) {
		t.Helper()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Backend")
	}
	for _, tc := range []struct{ host, backend string }{
		{"10.96.0.1", "one"}, {"10.96.0.1", "one"}, {"10.96.0.2:80", "two"}, {"10.96.0.2:80", "two"},
		{"web1", "one"}, {"WEB2.default.svc.cluster.local:80", "two"}, {"10.96.0.1:80", "one"},
	} {
		if code, be := do(tc.host); code != http.StatusOK || be != tc.backend {
			t.Fatalf("Host %s: %d from %q, want 200 from %q", tc.host, code, be, tc.backend)
		}
	}
	for _, host := range []string{"10.96.0.3", "[::1]:80", "web3"} {
		if code, _ := do(host); code != http.StatusNotFound {
			t.Fatalf("Host %s: %d, want 404", host, code)
		}
	}

	// Without web2, the Host that named it names nothing.
	if code, be := do("10.96.0.2"); code != http.StatusOK || be != "two" {
		t.Fatalf("before the change: %d from %q", code, be)
	}
	m := *b.mesh
	m.Services = m.Services[:1]
	if err := b.proxy.Update(&m); err != nil {
		t.Fatal(err)
	}
	if code, _ := do("10.96.0.2"); code != http.StatusNotFound {
		t.Fatalf("after web2 left: %d, want 404", code)
	}
	if code, be := do("10.96.0.1"); code != http.StatusOK || be != "one" {
		t.Fatalf("web1 after the change: %d from %q", code, be)
	}
}

// TestNewRequestID: x-request-id is a version 4 UUID, new for each request.
func TestNewRequestID(t *testing.T) {
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for range 100 {
		id := newRequestID()
		if !uuid.MatchString(id) || seen[id] {
			t.Fatalf("request id %q: not a fresh version 4 UUID", id)
		}
		seen[id] = true
	}
}
