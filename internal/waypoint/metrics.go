package waypoint

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metric names: Istio's standard request metrics.
const (
	RequestsTotal   = "istio_requests_total"
	RequestDuration = "istio_request_duration_milliseconds"
	RequestBytes    = "istio_request_bytes"
	ResponseBytes   = "istio_response_bytes"
)

// ReporterWaypoint is the reporter label of every series the waypoint
// exports, as Istio's waypoints report.
const ReporterWaypoint = "waypoint"

// labelNames are Istio's request metric labels, by the names its
// dashboards query.
var labelNames = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version", "source_cluster",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
	"destination_version", "destination_cluster",
	"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
}

// Metrics are a waypoint's Prometheus metrics.
type Metrics struct {
	reg                 *prometheus.Registry
	requests            *prometheus.CounterVec
	duration, req, resp *prometheus.HistogramVec
}

// NewMetrics returns the waypoint's metrics on a registry of their own.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: RequestsTotal,
			Help: "Requests through the waypoint."}, labelNames),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: RequestDuration,
			Help:    "Request duration in milliseconds, from the first byte of the request to the last of the response.",
			Buckets: []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}},
			labelNames),
		req: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: RequestBytes,
			Help: "Request body sizes in bytes.", Buckets: prometheus.ExponentialBuckets(1, 10, 8)}, labelNames),
		resp: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: ResponseBytes,
			Help: "Response body sizes in bytes.", Buckets: prometheus.ExponentialBuckets(1, 10, 8)}, labelNames),
	}
	m.reg.MustRegister(m.requests, m.duration, m.req, m.resp,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler { return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}) }

// Registry is the registry, for tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// seriesKey is everything a request's label values are made of besides
// its connection (whose peer is the same for all its requests): requests
// with equal keys on one connection count in the same series.
type seriesKey struct {
	s          *snapshot // the workloads the source and destination labels come from
	svc        *service
	ep         *endpoint
	grpc       bool
	status     int
	grpcStatus string
	flags      string
}

// series are the metric series of one label set.
type series struct {
	key                 seriesKey
	requests            prometheus.Counter
	duration, req, resp prometheus.Observer
}

// series returns the series of a finished request. The connection keeps
// those of its last request, so the 21 label values are built and hashed
// only when they change, not for every request.
func (p *Proxy) series(m *Metrics, s *snapshot, r *http.Request, rq *request) *series {
	k := seriesKey{s: s, svc: rq.svc, ep: rq.ep, grpc: isGRPC(r), status: rq.status, grpcStatus: rq.grpc}
	if len(rq.flags) > 0 {
		k.flags = strings.Join(rq.flags, ",")
	}
	if se := rq.info.series.Load(); se != nil && se.key == k {
		return se
	}
	lv := p.labels(s, r, rq)
	se := &series{key: k, requests: m.requests.WithLabelValues(lv...), duration: m.duration.WithLabelValues(lv...),
		req: m.req.WithLabelValues(lv...), resp: m.resp.WithLabelValues(lv...)}
	rq.info.series.Store(se)
	return se
}

func isGRPC(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// labels returns the label values of a finished request.
func (p *Proxy) labels(s *snapshot, r *http.Request, rq *request) []string {
	src := s.byAddr[rq.info.peer.Addr.Addr().Unmap()]
	srcPrincipal := rq.info.peer.Principal
	var srcName, srcNS, srcApp, srcVer string
	if src != nil {
		srcName, srcNS, srcApp, srcVer = src.Name, src.Namespace, src.Labels["app"], src.Labels["version"]
		if srcPrincipal == "" {
			srcPrincipal = principal(src)
		}
	}
	if srcPrincipal != "" {
		srcPrincipal = "spiffe://" + srcPrincipal
	}
	var svcHost, svcName, svcNS, dstName, dstNS, dstPrincipal, dstApp, dstVer string
	if rq.svc != nil && rq.svc.workload == nil { // a workload's own address has no service
		svcName, svcNS = rq.svc.m.Name, rq.svc.m.Namespace
		svcHost = svcName + "." + svcNS + ".svc.cluster.local"
	}
	if rq.ep != nil {
		if w := s.byKey[rq.ep.workload]; w != nil {
			dstName, dstNS, dstApp, dstVer = w.Name, w.Namespace, w.Labels["app"], w.Labels["version"]
		}
		dstPrincipal = "spiffe://" + rq.ep.identity
	}
	proto := "http"
	if isGRPC(r) {
		proto = "grpc"
	}
	sec := "none"
	if rq.info.peer.MutualTLS {
		sec = "mutual_tls"
	}
	flags := "-"
	if len(rq.flags) > 0 {
		flags = strings.Join(rq.flags, ",")
	}
	u := "unknown"
	return []string{ReporterWaypoint,
		or(srcName, u), or(srcNS, u), or(srcPrincipal, u), or(srcApp, u), or(srcVer, u), "Kubernetes",
		or(svcHost, u), or(svcName, u), or(svcNS, u),
		or(dstName, u), or(dstNS, u), or(dstPrincipal, u), or(dstApp, u), or(dstVer, u), "Kubernetes",
		proto, strconv.Itoa(rq.status), or(rq.grpc, "-"), flags, sec}
}
