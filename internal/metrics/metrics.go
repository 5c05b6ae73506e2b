// Package metrics holds kmeshd's Prometheus metrics: Istio's standard TCP
// metrics, which the connection telemetry feeds, and the kmesh_* metrics of
// the daemon itself. Istio's Grafana dashboards read the istio_tcp_* series
// unchanged, so their names and label sets are Istio's, exactly.
//
// One *Metrics per daemon, made by New and handed to each component that
// reports (as the *slog.Logger is); nothing registers globally, so tests can
// make as many as they like. The metrics server serves Handler at /metrics.
//
// Counters that the code reports (connections, bytes, config updates, lost
// ring buffer records) are methods on Metrics. Gauges of state the kernel
// holds (map fill, program run time) are read when Prometheus scrapes, from
// the functions in Sources.
package metrics

import (
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metric names, for tests and documentation.
const (
	TCPConnectionsOpened = "istio_tcp_connections_opened_total"
	TCPConnectionsClosed = "istio_tcp_connections_closed_total"
	TCPSentBytes         = "istio_tcp_sent_bytes_total"
	TCPReceivedBytes     = "istio_tcp_received_bytes_total"

	MapEntries         = "kmesh_map_entries"
	MapCapacity        = "kmesh_map_capacity"
	ConfigUpdates      = "kmesh_config_updates_total"
	ProgramRunSeconds  = "kmesh_bpf_program_run_seconds_total"
	ProgramRuns        = "kmesh_bpf_program_runs_total"
	RingbufLostRecords = "kmesh_ringbuf_lost_records_total"
	// PoliciesNotEnforced counts valid policies of the mesh the node does
	// not enforce (CUSTOM), by action.
	PoliciesNotEnforced = "kmesh_authz_policies_not_enforced"
	// WaypointUnresolved counts services whose control plane named a
	// waypoint this node does not know: connects to them are refused.
	WaypointUnresolved = "kmesh_waypoint_unresolved_services"
	// WaypointUnserved counts workloads whose control plane gave them a
	// waypoint of their own: connections to their addresses go through it
	// (the name is from before such waypoints were served).
	WaypointUnserved = "kmesh_waypoint_unserved_workloads"
)

// Values of the result label of kmesh_config_updates_total.
const (
	ResultApplied  = "applied"
	ResultRejected = "rejected"
)

// MapStat is the fill of one BPF map at scrape time.
type MapStat struct {
	Name     string // km_frontend, ...
	Entries  uint64
	Capacity uint64
}

// ProgramStat is what the kernel counted for one BPF program since it was
// loaded. Both are zero unless run-time statistics are enabled
// (kernel.bpf_stats_enabled, or ebpf.EnableStats held open).
type ProgramStat struct {
	Name     string // km_connect4, ...
	RunCount uint64
	RunTime  float64 // seconds
}

// Sources are read at every scrape. A nil function leaves its metrics out.
type Sources struct {
	Maps     func() ([]MapStat, error)
	Programs func() ([]ProgramStat, error)
	Authz    func() ([]AuthzStat, error)
	Outliers func() ([]OutlierStat, error)
}

// Metrics is the registry of one daemon and the counters it reports.
type Metrics struct {
	reg *prometheus.Registry

	opened, closed *prometheus.CounterVec
	sent, received *prometheus.CounterVec
	tcpMu          sync.Mutex
	tcp            map[TCPLabels]*TCPCounters // resolved counters, by label set
	configUpdates  *prometheus.CounterVec
	ringbufLost    prometheus.Counter
	beforeScrape   atomic.Pointer[func()]
	notEnforced    *prometheus.GaugeVec
	// waypointUnresolved is the number of services refused for an
	// unknown waypoint.
	waypointUnresolved prometheus.Gauge
	// waypointUnserved is the number of workloads refused for a
	// waypoint of their own.
	waypointUnserved prometheus.Gauge
}

// New returns a registry with every kmeshd metric, plus the Go runtime's and
// the process's. log reports scrape-time read errors, once per source
// until it recovers; nil discards.
func New(src Sources, log *slog.Logger) *Metrics {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		tcp: map[TCPLabels]*TCPCounters{},
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: TCPConnectionsOpened,
			Help: "Total number of TCP connections opened.",
		}, tcpLabelNames),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: TCPConnectionsClosed,
			Help: "Total number of TCP connections closed.",
		}, tcpLabelNames),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: TCPSentBytes,
			Help: "Total bytes sent during response in case of a TCP connection.",
		}, tcpLabelNames),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: TCPReceivedBytes,
			Help: "Total bytes received during request in case of a TCP connection.",
		}, tcpLabelNames),
		configUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: ConfigUpdates,
			Help: "Mesh configs a source delivered, by source and result: applied to the maps, or rejected (invalid, or the maps refused it).",
		}, []string{"source", "result"}),
		notEnforced: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: PoliciesNotEnforced,
			Help: "Valid authorization policies of the mesh this node does not enforce, by action: CUSTOM ones (an external authorizer in a waypoint or gateway applies them), and every policy on a kernel without bpf_loop (kmeshd is then not ready).",
		}, []string{"action"}),
		waypointUnresolved: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: WaypointUnresolved,
			Help: "Services whose control plane assigned a waypoint this node cannot resolve: connections to them are refused, never sent around the waypoint.",
		}),
		waypointUnserved: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: WaypointUnserved,
			Help: "Workloads whose control plane assigned a waypoint for traffic to their own address: connections to them go through that waypoint over HBONE (refused without a CA), and connections around it are refused (except from the waypoint's instances).",
		}),
		ringbufLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: RingbufLostRecords,
			Help: "Connection records the kernel could not hand over because the ring buffer was full.",
		}),
	}
	m.notEnforced.WithLabelValues("custom")
	m.reg.MustRegister(m.opened, m.closed, m.sent, m.received, m.configUpdates, m.ringbufLost, m.notEnforced, m.waypointUnresolved, m.waypointUnserved,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if src.Maps != nil {
		m.reg.MustRegister(&mapCollector{read: src.Maps, errs: onceLogger{log: log, what: "map statistics"}})
	}
	if src.Programs != nil {
		m.reg.MustRegister(&programCollector{read: src.Programs, errs: onceLogger{log: log, what: "program statistics"}})
	}
	if src.Authz != nil {
		m.reg.MustRegister(&authzCollector{read: src.Authz, errs: onceLogger{log: log, what: "authorization counters"}})
	}
	if src.Outliers != nil {
		m.reg.MustRegister(&outlierCollector{read: src.Outliers, errs: onceLogger{log: log, what: "outlier detection"}})
	}
	return m
}

// Handler serves the registry in Prometheus' exposition formats.
func (m *Metrics) Handler() http.Handler {
	h := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f := m.beforeScrape.Load(); f != nil {
			(*f)()
		}
		h.ServeHTTP(w, r)
	})
}

// BeforeScrape runs f before every scrape through Handler: counters kept in
// the kernel are brought up to date then, not per event.
func (m *Metrics) BeforeScrape(f func()) { m.beforeScrape.Store(&f) }

// Registry is the underlying registry, for tests and for collectors a
// component brings itself.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ConfigSource makes the config update counters of a source visible at 0
// before its first update, so rate() and alerts see the series from the start.
func (m *Metrics) ConfigSource(source string) {
	m.configUpdates.WithLabelValues(source, ResultApplied)
	m.configUpdates.WithLabelValues(source, ResultRejected)
}

// ConfigUpdate counts one config from source: applied when err is nil,
// rejected otherwise.
func (m *Metrics) ConfigUpdate(source string, err error) {
	result := ResultApplied
	if err != nil {
		result = ResultRejected
	}
	m.configUpdates.WithLabelValues(source, result).Inc()
}

// RingbufLost counts n connection records lost because the ring buffer was
// full.
func (m *Metrics) RingbufLost(n uint64) { m.ringbufLost.Add(float64(n)) }

// mapCollector reads map fill at scrape time.
type mapCollector struct {
	read func() ([]MapStat, error)
	errs onceLogger
}

var (
	mapEntriesDesc  = prometheus.NewDesc(MapEntries, "Entries in a BPF map, counted when scraped.", []string{"map"}, nil)
	mapCapacityDesc = prometheus.NewDesc(MapCapacity, "Capacity (max entries) of a BPF map, set from kmeshd's --max-* flags.", []string{"map"}, nil)
	progRunsDesc    = prometheus.NewDesc(ProgramRuns, "Runs of a BPF program since it was loaded; 0 unless the kernel's BPF statistics are enabled.", []string{"program"}, nil)
	progSecondsDesc = prometheus.NewDesc(ProgramRunSeconds, "Time spent in a BPF program since it was loaded; 0 unless the kernel's BPF statistics are enabled.", []string{"program"}, nil)
)

func (c *mapCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- mapEntriesDesc
	ch <- mapCapacityDesc
}

func (c *mapCollector) Collect(ch chan<- prometheus.Metric) {
	stats, err := c.read()
	c.errs.report(err)
	for _, s := range stats {
		ch <- prometheus.MustNewConstMetric(mapEntriesDesc, prometheus.GaugeValue, float64(s.Entries), s.Name)
		ch <- prometheus.MustNewConstMetric(mapCapacityDesc, prometheus.GaugeValue, float64(s.Capacity), s.Name)
	}
}

// programCollector reads program run statistics at scrape time.
type programCollector struct {
	read func() ([]ProgramStat, error)
	errs onceLogger
}

func (c *programCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- progRunsDesc
	ch <- progSecondsDesc
}

func (c *programCollector) Collect(ch chan<- prometheus.Metric) {
	stats, err := c.read()
	c.errs.report(err)
	for _, s := range stats {
		ch <- prometheus.MustNewConstMetric(progRunsDesc, prometheus.CounterValue, float64(s.RunCount), s.Name)
		ch <- prometheus.MustNewConstMetric(progSecondsDesc, prometheus.CounterValue, s.RunTime, s.Name)
	}
}

// onceLogger logs a failing source once, and again only after it recovered:
// a scrape every 15 s must not fill the log with one problem.
type onceLogger struct {
	log  *slog.Logger
	what string

	mu     sync.Mutex
	failed bool
}

func (o *onceLogger) report(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case err != nil && !o.failed:
		o.failed = true
		o.log.Warn("metrics source failing", "source", o.what, "err", err)
	case err == nil && o.failed:
		o.failed = false
		o.log.Info("metrics source recovered", "source", o.what)
	}
}

// SetWaypointUnresolved sets how many services have a waypoint the node
// cannot resolve.
func (m *Metrics) SetWaypointUnresolved(n int) { m.waypointUnresolved.Set(float64(n)) }

// SetWaypointUnserved sets how many workloads have a waypoint of their
// own, reached only through it.
func (m *Metrics) SetWaypointUnserved(n int) { m.waypointUnserved.Set(float64(n)) }

// SetPoliciesNotEnforced sets how many policies of each action the mesh
// has that the node does not enforce.
func (m *Metrics) SetPoliciesNotEnforced(byAction map[string]int) {
	m.notEnforced.Reset()
	m.notEnforced.WithLabelValues("custom")
	for a, n := range byAction {
		m.notEnforced.WithLabelValues(a).Set(float64(n))
	}
}
