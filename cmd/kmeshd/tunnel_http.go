package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/kmesh-go/kmesh/internal/metrics"
)

// servePprof serves Go's profiles on addr until ctx ends and returns the
// address it listens on. Off unless asked for: a profile costs the data
// path while it runs, and the endpoints say much about the process.
func servePprof(ctx context.Context, addr string) (string, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("--pprof-address: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	context.AfterFunc(ctx, func() { srv.Close() })
	return l.Addr().String(), nil
}

// serveMetrics serves m at /metrics on addr until ctx ends and returns the
// address it listens on. It also serves GET /healthz/ready: 200 while
// ready() (the tunnel owns the node's listeners and listens in every pod of
// its state), else 503. A DaemonSet's surge upgrade deletes the old tunnel
// pod once the new one is ready, so readiness must mean the hand-off is
// done, not that the process is up (the chart's probe, docs/install.md).
func serveMetrics(ctx context.Context, addr string, m *metrics.Metrics, ready func() bool) (string, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("--metrics-address: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready: the tunnel does not listen in every enrolled pod of its state (starting, taking over, or handed over to a successor)", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	context.AfterFunc(ctx, func() { srv.Close() })
	return l.Addr().String(), nil
}
