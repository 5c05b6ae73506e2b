package waypoint

import (
	"context"
	"net"
	"sync/atomic"
	"testing"

	"github.com/kmesh-go/kmesh/internal/model"
)

// TestProxy_IdentityChangeClosesPooledUpstreams: a pooled upstream
// connection is reused across requests and across a config that changes
// nothing about its endpoint; once a config gives the endpoint's workload
// another service account, the next request dials again (over HBONE, the
// new dial checks the certificate against the new identity).
func TestProxy_IdentityChangeClosesPooledUpstreams(t *testing.T) {
	b := newBed(t)
	var dials atomic.Int32
	d := &net.Dialer{}
	b.opts.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return d.DialContext(ctx, network, addr)
	}
	b.workload("v1", 8080, map[string]string{"app": "hello"}, named("v1"))
	b.service("hello", "10.96.0.10", 8080, "hello", true)
	b.start()
	c := b.client("10.96.0.10", false)
	send := func(n int) {
		for range n {
			if resp, body := get(t, c, "http://hello/"); resp.StatusCode != 200 || body != "v1" {
				t.Fatalf("status %d body %q", resp.StatusCode, body)
			}
		}
	}
	send(3)
	if n := dials.Load(); n != 1 {
		t.Fatalf("3 requests: %d upstream dials, want 1 (the connection pooled)", n)
	}
	same := *b.mesh
	if err := b.proxy.Update(&same); err != nil {
		t.Fatal(err)
	}
	send(1)
	if n := dials.Load(); n != 1 {
		t.Fatalf("after a config that changes nothing of the endpoint: %d dials, want 1", n)
	}
	changed := *b.mesh
	changed.Workloads = append([]model.Workload(nil), b.mesh.Workloads...)
	for i := range changed.Workloads {
		if changed.Workloads[i].Name == "v1" {
			changed.Workloads[i].ServiceAccount = "other"
		}
	}
	if err := b.proxy.Update(&changed); err != nil {
		t.Fatal(err)
	}
	send(1)
	if n := dials.Load(); n != 2 {
		t.Fatalf("after the endpoint's service account changed: %d dials, want 2 (the pooled connection closed)", n)
	}
}
