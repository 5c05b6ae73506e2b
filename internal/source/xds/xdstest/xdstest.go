// Package xdstest runs a real xDS control plane in a test process: a
// go-control-plane server on a loopback port with a LinearCache per Istio
// workload API type (served over delta ADS) and a SnapshotCache for the
// Envoy types (served over state-of-the-world ADS). It records every
// request the server receives, so tests can see ACKs and NACKs. It also
// builds the resources tests feed it.
package xdstest

import (
	"context"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Type URLs served (the same as package xds's; this package does not
// import it, so xds's own tests can use it).
const (
	AddressType       = "type.googleapis.com/istio.workload.Address"
	AuthorizationType = "type.googleapis.com/istio.security.Authorization"
	ClusterType       = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType      = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	ListenerType      = "type.googleapis.com/envoy.config.listener.v3.Listener"
)

// Server is an in-process xDS server. Change its caches to push config.
type Server struct {
	// Addresses and Authorizations serve the workload API types.
	Addresses      *cache.LinearCache
	Authorizations *cache.LinearCache
	// Snapshots serves clusters, endpoints and listeners; set a snapshot
	// for the client's node id (see xds.Config).
	Snapshots cache.SnapshotCache

	addr string
	xds  server.Server
	opts []grpc.ServerOption

	mu    sync.Mutex
	grpc  *grpc.Server
	delta []*discovery.DeltaDiscoveryRequest
	sotw  []*discovery.DiscoveryRequest
}

// Start serves on addr ("" for a free loopback port) until the test ends,
// with opts for the gRPC server (TLS credentials, interceptors).
func Start(tb testing.TB, addr string, opts ...grpc.ServerOption) *Server {
	tb.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	s := &Server{
		Addresses:      cache.NewLinearCache(AddressType),
		Authorizations: cache.NewLinearCache(AuthorizationType),
		Snapshots:      cache.NewSnapshotCache(false, cache.IDHash{}, nil),
		opts:           opts,
	}
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches: map[string]cache.Cache{
			AddressType:       s.Addresses,
			AuthorizationType: s.Authorizations,
			ClusterType:       s.Snapshots,
			EndpointType:      s.Snapshots,
			ListenerType:      s.Snapshots,
		},
	}
	cb := server.CallbackFuncs{
		StreamDeltaRequestFunc: func(_ int64, r *discovery.DeltaDiscoveryRequest) error {
			s.mu.Lock()
			s.delta = append(s.delta, proto.Clone(r).(*discovery.DeltaDiscoveryRequest))
			s.mu.Unlock()
			return nil
		},
		StreamRequestFunc: func(_ int64, r *discovery.DiscoveryRequest) error {
			s.mu.Lock()
			s.sotw = append(s.sotw, proto.Clone(r).(*discovery.DiscoveryRequest))
			s.mu.Unlock()
			return nil
		},
	}
	s.xds = server.NewServer(context.Background(), mux, cb)
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	s.addr = lis.Addr().String()
	s.serve(lis)
	tb.Cleanup(s.Stop)
	return s
}

func (s *Server) serve(lis net.Listener) {
	g := grpc.NewServer(s.opts...)
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
	s.mu.Lock()
	s.grpc = g
	s.mu.Unlock()
	go g.Serve(lis)
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

// Stop closes the listener and every stream, as a control plane that
// goes away. The caches keep their content.
func (s *Server) Stop() {
	s.mu.Lock()
	g := s.grpc
	s.grpc = nil
	s.mu.Unlock()
	if g != nil {
		g.Stop()
	}
}

// Restart serves again on the same address, with the same caches.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	var lis net.Listener
	var err error
	// The port was just released; retry briefly in case it lingers.
	for range 50 {
		if lis, err = net.Listen("tcp", s.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		tb.Fatal(err)
	}
	s.serve(lis)
}

// DeltaRequests returns the delta requests received so far.
func (s *Server) DeltaRequests() []*discovery.DeltaDiscoveryRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.delta)
}

// Requests returns the state-of-the-world requests received so far.
func (s *Server) Requests() []*discovery.DiscoveryRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.sotw)
}

// WaitDelta waits until a delta request after the first skip ones
// satisfies ok, and returns it and its index.
func (s *Server) WaitDelta(tb testing.TB, skip int, ok func(*discovery.DeltaDiscoveryRequest) bool) (*discovery.DeltaDiscoveryRequest, int) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		reqs := s.DeltaRequests()
		for i := skip; i < len(reqs); i++ {
			if ok(reqs[i]) {
				return reqs[i], i
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	tb.Fatalf("no matching delta request after 10s; got %d requests", len(s.DeltaRequests()))
	return nil, 0
}

// WaitRequest waits until a state-of-the-world request after the first
// skip ones satisfies ok, and returns it and its index.
func (s *Server) WaitRequest(tb testing.TB, skip int, ok func(*discovery.DiscoveryRequest) bool) (*discovery.DiscoveryRequest, int) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		reqs := s.Requests()
		for i := skip; i < len(reqs); i++ {
			if ok(reqs[i]) {
				return reqs[i], i
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	tb.Fatalf("no matching request after 10s; got %d requests", len(s.Requests()))
	return nil, 0
}
