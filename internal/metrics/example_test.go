package metrics_test

import (
	"fmt"
	"net/http/httptest"
	"strings"

	"github.com/kmesh-go/kmesh/internal/metrics"
)

// The connection telemetry reports each connection through the Metrics the
// daemon made: opened when it starts, bytes while it lasts, closed with the
// bytes not reported yet.
func ExampleMetrics_ConnectionClosed() {
	m := metrics.New(metrics.Sources{}, nil)
	l := metrics.TCPLabels{
		Reporter:                     metrics.ReporterSource,
		SourceWorkload:               "client",
		SourceWorkloadNamespace:      "default",
		DestinationService:           "hello.default.svc.cluster.local",
		DestinationWorkload:          "hello-1",
		DestinationWorkloadNamespace: "default",
		ConnectionSecurityPolicy:     metrics.SecurityNone,
	}
	m.ConnectionOpened(l)
	m.ConnectionBytes(l, 1024, 78) // a long-lived connection, half way
	m.ConnectionClosed(l, 512, 0)  // the rest, at close

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if strings.HasPrefix(line, "istio_tcp_") {
			name, value := line[:strings.IndexByte(line, '{')], line[strings.LastIndexByte(line, ' ')+1:]
			fmt.Println(name, value)
		}
	}
	// Output:
	// istio_tcp_connections_closed_total 1
	// istio_tcp_connections_opened_total 1
	// istio_tcp_received_bytes_total 78
	// istio_tcp_sent_bytes_total 1536
}
