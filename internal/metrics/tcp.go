package metrics

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

// ConnectionOpened counts a new connection: istio_tcp_connections_opened_total.
func (m *Metrics) ConnectionOpened(l TCPLabels) {
	m.opened.WithLabelValues(l.values()...).Inc()
}

// ConnectionBytes adds the bytes a connection moved since it was last
// reported. Call it for long-lived connections, so their traffic shows before
// they close; ConnectionClosed reports the rest.
//
// The direction is Istio's: sent is what the destination sent back (the
// response, istio_tcp_sent_bytes_total), received is what the source sent
// (the request, istio_tcp_received_bytes_total), whoever the reporter is.
func (m *Metrics) ConnectionBytes(l TCPLabels, sent, received uint64) {
	v := l.values()
	if sent > 0 {
		m.sent.WithLabelValues(v...).Add(float64(sent))
	}
	if received > 0 {
		m.received.WithLabelValues(v...).Add(float64(received))
	}
}

// ConnectionClosed counts a closed connection
// (istio_tcp_connections_closed_total) and adds the bytes it moved since it
// was last reported through ConnectionBytes (all of them if never), in the
// same sense as ConnectionBytes.
func (m *Metrics) ConnectionClosed(l TCPLabels, sent, received uint64) {
	v := l.values()
	m.closed.WithLabelValues(v...).Inc()
	if sent > 0 {
		m.sent.WithLabelValues(v...).Add(float64(sent))
	}
	if received > 0 {
		m.received.WithLabelValues(v...).Add(float64(received))
	}
}
