package main

import (
	"context"
	"log/slog"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/kmesh-go/kmesh/internal/metrics"
)

// TestServeMetrics_ReadyFollowsTheTunnel: /healthz/ready answers what the
// tunnel says, each time it is asked.
func TestServeMetrics_ReadyFollowsTheTunnel(t *testing.T) {
	var ready atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := serveMetrics(ctx, "127.0.0.1:0", metrics.New(metrics.Sources{}, slog.New(slog.DiscardHandler)), ready.Load)
	if err != nil {
		t.Fatal(err)
	}
	status := func() int {
		t.Helper()
		resp, err := http.Get("http://" + addr + "/healthz/ready")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status(); got != http.StatusServiceUnavailable {
		t.Errorf("not ready: %d, want 503", got)
	}
	ready.Store(true)
	if got := status(); got != http.StatusOK {
		t.Errorf("ready: %d, want 200", got)
	}
	ready.Store(false)
	if got := status(); got != http.StatusServiceUnavailable {
		t.Errorf("handed over: %d, want 503", got)
	}
}
