package xds

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/kmesh-go/kmesh/internal/model"
)

// Long enough for a loaded CI machine; tests return as soon as the event
// they wait for happens.
const (
	eventTimeout = 10 * time.Second
	// quietPeriod is how long a test waits to be sure nothing happened.
	quietPeriod = 300 * time.Millisecond
)

// syncBuffer collects log output for the test to read.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// applier records the meshes a client applies; fail makes apply fail.
type applier struct {
	ch   chan *model.Mesh
	mu   sync.Mutex
	fail error
	log  *syncBuffer
}

func (a *applier) apply(m *model.Mesh) error {
	a.mu.Lock()
	err := a.fail
	a.mu.Unlock()
	if err != nil {
		return err
	}
	a.ch <- m
	return nil
}

func (a *applier) setFail(err error) {
	a.mu.Lock()
	a.fail = err
	a.mu.Unlock()
}

// next waits for the next applied mesh.
func (a *applier) next(t *testing.T) *model.Mesh {
	t.Helper()
	select {
	case m := <-a.ch:
		return m
	case <-time.After(eventTimeout):
		t.Fatalf("no mesh applied after %v; log:\n%s", eventTimeout, a.log)
		return nil
	}
}

// until waits for an applied mesh that satisfies ok, skipping others.
func (a *applier) until(t *testing.T, ok func(*model.Mesh) bool) *model.Mesh {
	t.Helper()
	deadline := time.After(eventTimeout)
	for {
		select {
		case m := <-a.ch:
			if ok(m) {
				return m
			}
		case <-deadline:
			t.Fatalf("no matching mesh applied after %v; log:\n%s", eventTimeout, a.log)
			return nil
		}
	}
}

// quiet fails if a mesh is applied within quietPeriod.
func (a *applier) quiet(t *testing.T) {
	t.Helper()
	select {
	case m := <-a.ch:
		t.Fatalf("unexpected mesh applied: %s", meshString(m))
	case <-time.After(quietPeriod):
	}
}

// runClient runs c until the test ends.
func runClient(t *testing.T, newClient func(Config, *slog.Logger) *Client, addr string) *applier {
	t.Helper()
	a := &applier{ch: make(chan *model.Mesh, 64), log: &syncBuffer{}}
	log := slog.New(slog.NewTextHandler(a.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := newClient(testConfig(addr), log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, a.apply) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(eventTimeout):
			t.Errorf("Run did not return after its context ended")
		}
	})
	return a
}

func testConfig(addr string) Config {
	return Config{Address: addr, Node: "node-a", ClusterID: "Kubernetes"}
}

// meshString renders a mesh compactly for failure messages and
// comparisons: one line per service and workload.
func meshString(m *model.Mesh) string {
	var b strings.Builder
	for _, s := range m.Services {
		fmt.Fprintf(&b, "service %s %s %v", s.Key(), s.LBMode, s.Addresses)
		for _, p := range s.Ports {
			fmt.Fprintf(&b, " %d->%d", p.Port, p.TargetPort)
		}
		b.WriteString(" endpoints")
		for _, e := range s.Endpoints {
			b.WriteString(" " + e.Workload)
		}
		b.WriteString("\n")
	}
	for _, w := range m.Workloads {
		fmt.Fprintf(&b, "workload %s %v node=%s weight=%d\n", w.Key(), w.Addresses, w.Node, w.Weight)
	}
	for _, p := range m.Policies {
		fmt.Fprintf(&b, "policy %s %s %s rules=%d\n", p.Key(), p.Scope, p.Action, len(p.Rules))
	}
	return b.String()
}

func endpointsOf(m *model.Mesh, key string) []string {
	for _, s := range m.Services {
		if s.Key() == key {
			var out []string
			for _, e := range s.Endpoints {
				out = append(out, e.Workload)
			}
			return out
		}
	}
	return nil
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func put(t *testing.T, c interface {
	UpdateResource(string, types.Resource) error
}, name string, res types.Resource) {
	t.Helper()
	if err := c.UpdateResource(name, res); err != nil {
		t.Fatal(err)
	}
}

var errFull = errors.New("dataplane is full")

func isNack(r *discovery.DeltaDiscoveryRequest) bool {
	return r.GetErrorDetail() != nil && r.GetResponseNonce() != ""
}

func isAck(typeURL string) func(*discovery.DeltaDiscoveryRequest) bool {
	return func(r *discovery.DeltaDiscoveryRequest) bool {
		return r.GetTypeUrl() == typeURL && r.GetResponseNonce() != "" && r.GetErrorDetail() == nil
	}
}
