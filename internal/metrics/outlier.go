package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Outlier detection metrics (bpf/include/lb.h): ejections the kernel made.
const (
	OutlierEjections = "kmesh_outlier_ejections_total"
	OutlierEjected   = "kmesh_outlier_ejected_endpoints"
)

// OutlierStat is one service's outlier detection, read when Prometheus
// scrapes.
type OutlierStat struct {
	Service string // namespace/name
	Total   uint64 // ejections so far
	Ejected int    // endpoints out now
}

var (
	ejectionsDesc = prometheus.NewDesc(OutlierEjections,
		"Endpoints ejected by passive outlier detection (consecutive failed connects), by service.",
		[]string{"service"}, nil)
	ejectedDesc = prometheus.NewDesc(OutlierEjected,
		"Endpoints out of a service because of outlier detection now, by service.",
		[]string{"service"}, nil)
)

type outlierCollector struct {
	read func() ([]OutlierStat, error)
	errs onceLogger
}

func (c *outlierCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- ejectionsDesc
	ch <- ejectedDesc
}

func (c *outlierCollector) Collect(ch chan<- prometheus.Metric) {
	stats, err := c.read()
	c.errs.report(err)
	for _, s := range stats {
		ch <- prometheus.MustNewConstMetric(ejectionsDesc, prometheus.CounterValue, float64(s.Total), s.Service)
		ch <- prometheus.MustNewConstMetric(ejectedDesc, prometheus.GaugeValue, float64(s.Ejected), s.Service)
	}
}
