package metrics

import "github.com/prometheus/client_golang/prometheus"

// Values Istio uses for the TCP metrics' labels.
const (
	ReporterSource      = "source"      // counted where the connection started
	ReporterDestination = "destination" // counted where it was accepted
	Unknown             = "unknown"     // a label whose value is not known
	ProtocolTCP         = "tcp"         // request_protocol of every TCP connection
	NoResponseFlags     = "-"           // response_flags of a connection with nothing to flag
	SecurityNone        = "none"        // connection_security_policy: plain text
	SecurityMutualTLS   = "mutual_tls"  // connection_security_policy: mTLS
)

// TCPLabels are the labels of Istio's TCP metrics, by the names Istio's
// dashboards query. An empty field is exported as Istio exports a missing
// value: "unknown", except RequestProtocol ("tcp") and ResponseFlags ("-").
type TCPLabels struct {
	Reporter string // ReporterSource or ReporterDestination

	SourceWorkload          string // workload name, e.g. "client"
	SourceWorkloadNamespace string
	SourcePrincipal         string // SPIFFE id, e.g. "spiffe://cluster.local/ns/default/sa/client"

	DestinationService           string // service host, e.g. "hello.default.svc.cluster.local"
	DestinationWorkload          string
	DestinationWorkloadNamespace string
	DestinationPrincipal         string

	RequestProtocol          string // "tcp"
	ResponseFlags            string // Envoy's flags, e.g. "UF" (upstream connection failure); "-" for none
	ConnectionSecurityPolicy string // SecurityNone, SecurityMutualTLS or Unknown
}

// tcpLabelNames are the label names, in the order values returns them.
var tcpLabelNames = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal",
	"destination_service", "destination_workload", "destination_workload_namespace", "destination_principal",
	"request_protocol", "response_flags", "connection_security_policy",
}

func (l *TCPLabels) values() []string {
	return []string{
		or(l.Reporter, Unknown),
		or(l.SourceWorkload, Unknown), or(l.SourceWorkloadNamespace, Unknown), or(l.SourcePrincipal, Unknown),
		or(l.DestinationService, Unknown), or(l.DestinationWorkload, Unknown), or(l.DestinationWorkloadNamespace, Unknown), or(l.DestinationPrincipal, Unknown),
		or(l.RequestProtocol, ProtocolTCP), or(l.ResponseFlags, NoResponseFlags), or(l.ConnectionSecurityPolicy, Unknown),
	}
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// TCPCounters are Istio's four TCP counters of one label set, resolved
// once: telemetry reports two records per connection, and looking the
// counters up by eleven label values each time would cost more than the
// rest of the work.
type TCPCounters struct {
	opened, closed, sent, received prometheus.Counter
}

// TCP returns the counters of a label set.
func (m *Metrics) TCP(l TCPLabels) *TCPCounters {
	m.tcpMu.Lock()
	defer m.tcpMu.Unlock()
	if c := m.tcp[l]; c != nil {
		return c
	}
	v := l.values()
	c := &TCPCounters{
		opened:   m.opened.WithLabelValues(v...),
		closed:   m.closed.WithLabelValues(v...),
		sent:     m.sent.WithLabelValues(v...),
		received: m.received.WithLabelValues(v...),
	}
	m.tcp[l] = c
	return c
}

// Opened counts a new connection: istio_tcp_connections_opened_total.
func (c *TCPCounters) Opened() { c.opened.Inc() }

// Bytes adds the bytes a connection moved since it was last reported. Call
// it for long-lived connections, so their traffic shows before they close;
// Closed reports the rest.
//
// The direction is Istio's: sent is what the destination sent back (the
// response, istio_tcp_sent_bytes_total), received is what the source sent
// (the request, istio_tcp_received_bytes_total), whoever the reporter is.
func (c *TCPCounters) Bytes(sent, received uint64) {
	if sent > 0 {
		c.sent.Add(float64(sent))
	}
	if received > 0 {
		c.received.Add(float64(received))
	}
}

// Closed counts a closed connection (istio_tcp_connections_closed_total)
// and adds the bytes it moved since it was last reported through Bytes
// (all of them if never), in the same sense as Bytes.
func (c *TCPCounters) Closed(sent, received uint64) {
	c.closed.Inc()
	c.Bytes(sent, received)
}

// Add adds counts the kernel kept (connections opened and closed, bytes in
// Istio's sense, as Bytes) since they were last added.
func (c *TCPCounters) Add(opened, closed, sent, received uint64) {
	if opened > 0 {
		c.opened.Add(float64(opened))
	}
	if closed > 0 {
		c.closed.Add(float64(closed))
	}
	c.Bytes(sent, received)
}

// ConnectionOpened is TCP(l).Opened().
func (m *Metrics) ConnectionOpened(l TCPLabels) { m.TCP(l).Opened() }

// ConnectionBytes is TCP(l).Bytes(sent, received).
func (m *Metrics) ConnectionBytes(l TCPLabels, sent, received uint64) { m.TCP(l).Bytes(sent, received) }

// ConnectionClosed is TCP(l).Closed(sent, received).
func (m *Metrics) ConnectionClosed(l TCPLabels, sent, received uint64) {
	m.TCP(l).Closed(sent, received)
}
