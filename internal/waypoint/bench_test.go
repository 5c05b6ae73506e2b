package waypoint

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// BenchmarkProxy_HTTP1 is one keep-alive HTTP/1.1 request through the
// engine (plaintext listener, no route) to a loopback backend, 1 KB each
// way, from parallel clients: the engine's own cost per request.
func BenchmarkProxy_HTTP1(b *testing.B) {
	bd := newBed(b)
	payload := strings.Repeat("x", 1024)
	bd.workload("v1", 8080, map[string]string{"app": "v1"}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, payload)
	}))
	bd.service("web", "10.96.0.1", 8080, "v1", true)
	if err := bd.mesh.Validate(); err != nil {
		b.Fatal(err)
	}
	p, err := New(bd.mesh, Options{Gateway: gwKey, Metrics: NewMetrics()})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:80")
	if err != nil {
		b.Skip("port 80:", err)
	}
	defer ln.Close()
	go p.ServeListener(ln)
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Post("http://127.0.0.1:80/", "text/plain", strings.NewReader(payload))
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}
