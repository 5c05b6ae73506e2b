package xdstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
)

// PushCache is a go-control-plane cache for one type URL that, like
// istiod, pushes a wildcard delta subscriber only the resources that
// changed since its last response: an update costs O(what changed) per
// stream. go-control-plane's LinearCache instead compares every resource
// with what the stream knows on each update and on each ACK (and copies
// that map), O(resources) per push; at 100,000 resources a benchmark of a
// client against it times the server. Only wildcard delta subscriptions
// are served (the workload API's); state-of-the-world requests are
// refused.
type PushCache struct {
	typeURL string

	mu      sync.Mutex
	version uint64
	res     map[string]pushed
	streams map[string]*pushStream // by the token in the stream's returned-resources map
}

type pushed struct {
	version string
	any     *anypb.Any
}

// pushStream is what one stream was sent and what changed since.
type pushStream struct {
	token string
	known map[string]string // name -> version the stream was sent
	dirty map[string]struct{}
	// all: the stream is sent every resource with its next response
	// (a new stream that holds none), without a dirty set of every name.
	all bool
	// watch is the stream's open watch, nil while a response is on its
	// way and the stream has not asked again (ACK or NACK).
	watch *pushWatch
	// tokenMap is handed to the server as the stream's returned
	// resources: the server keeps it and gives it back with the next
	// request, which is how a watch finds its stream.
	tokenMap map[string]string
}

type pushWatch struct {
	req *discovery.DeltaDiscoveryRequest
	out chan cache.DeltaResponse
}

// tokenKey is the one key of a stream's token map; no resource has an
// empty name.
const tokenKey = ""

var _ cache.Cache = (*PushCache)(nil)

// NewPushCache returns an empty cache for typeURL.
func NewPushCache(typeURL string) *PushCache {
	return &PushCache{typeURL: typeURL, res: map[string]pushed{}, streams: map[string]*pushStream{}}
}

// SetResources replaces every resource (a first state).
func (c *PushCache) SetResources(res map[string]types.Resource) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.version++
	v := strconv.FormatUint(c.version, 10)
	next := make(map[string]pushed, len(res))
	for name, r := range res {
		a, err := anypb.New(r)
		if err != nil {
			return fmt.Errorf("resource %s: %w", name, err)
		}
		next[name] = pushed{v, a}
	}
	for _, s := range c.streams {
		for name := range c.res {
			if _, ok := next[name]; !ok {
				s.dirty[name] = struct{}{}
			}
		}
		for name := range next {
			s.dirty[name] = struct{}{}
		}
	}
	c.res = next
	c.notify()
	return nil
}

// UpdateResource sets one resource and pushes it to every stream.
func (c *PushCache) UpdateResource(name string, r types.Resource) error {
	a, err := anypb.New(r)
	if err != nil {
		return fmt.Errorf("resource %s: %w", name, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.version++
	c.res[name] = pushed{strconv.FormatUint(c.version, 10), a}
	c.touch(name)
	return nil
}

// DeleteResource removes one resource and tells every stream.
func (c *PushCache) DeleteResource(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.version++
	delete(c.res, name)
	c.touch(name)
}

func (c *PushCache) touch(name string) {
	for _, s := range c.streams {
		s.dirty[name] = struct{}{}
	}
	c.notify()
}

// notify answers every open watch whose stream has changes. c.mu is held.
func (c *PushCache) notify() {
	for _, s := range c.streams {
		if s.watch != nil && len(s.dirty) > 0 {
			c.respond(s, s.watch, false)
		}
	}
}

// respond sends s its dirty resources on w. c.mu is held.
func (c *PushCache) respond(s *pushStream, w *pushWatch, evenIfEmpty bool) {
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: c.typeURL, SystemVersionInfo: strconv.FormatUint(c.version, 10)}
	if s.all {
		// One pass over the resources, their entries from one array:
		// at 550,000 resources the dirty set of every name and a
		// lookup of each in the cache were ~1.6 s of the server's CPU
		// per first state (perf of the bench's server), on the cores
		// the client under test shares with it.
		s.all = false
		entries := make([]discovery.Resource, 0, len(c.res))
		resp.Resources = make([]*discovery.Resource, 0, len(c.res))
		for name, r := range c.res {
			entries = append(entries, discovery.Resource{Name: name, Version: r.version, Resource: r.any})
			resp.Resources = append(resp.Resources, &entries[len(entries)-1])
			s.known[name] = r.version
		}
	}
	for name := range s.dirty {
		r, ok := c.res[name]
		switch {
		case ok && s.known[name] != r.version:
			resp.Resources = append(resp.Resources, &discovery.Resource{Name: name, Version: r.version, Resource: r.any})
			s.known[name] = r.version
		case !ok && s.known[name] != "":
			resp.RemovedResources = append(resp.RemovedResources, name)
			delete(s.known, name)
		}
	}
	// A new set, not clear: a resumed stream's first push filled it with every resource,
	// and ranging over a Go map costs its capacity, not its length (at
	// 550,000 resources ~2 ms of each later push and ACK, two thirds of
	// the benchmark's CPU per change, on the timed path).
	s.dirty = map[string]struct{}{}
	if len(resp.Resources)+len(resp.RemovedResources) == 0 && !evenIfEmpty {
		return
	}
	s.watch = nil
	w.out <- &cache.DeltaPassthroughResponse{DeltaRequest: w.req, NextVersionMap: s.tokenMap, DeltaDiscoveryResponse: resp}
}

// CreateDeltaWatch implements cache.ConfigWatcher. A new stream (its
// returned resources are the client's initial versions) is sent every
// resource it does not have at that version, and told of those it has
// that are gone: the one O(resources) step, at (re)connect.
func (c *PushCache) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, out chan cache.DeltaResponse) (func(), error) {
	if req.GetTypeUrl() != c.typeURL {
		return nil, fmt.Errorf("request type %s does not match cache type %s", req.GetTypeUrl(), c.typeURL)
	}
	if !sub.IsWildcard() {
		return nil, errors.New("xdstest.PushCache serves wildcard subscriptions only")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	returned := sub.ReturnedResources()
	s := c.streams[returned[tokenKey]]
	first := s == nil
	if first {
		token := strconv.Itoa(len(c.streams) + 1)
		s = &pushStream{token: token, known: make(map[string]string, len(c.res)), dirty: map[string]struct{}{}, tokenMap: map[string]string{tokenKey: token}}
		for name, v := range returned {
			s.known[name] = v
			s.dirty[name] = struct{}{}
		}
		if len(returned) == 0 {
			s.all = true
		} else {
			for name := range c.res {
				s.dirty[name] = struct{}{}
			}
		}
		c.streams[token] = s
	}
	w := &pushWatch{req: req, out: out}
	s.watch = w
	// The first request of a wildcard subscription is answered even when
	// there is nothing to send: the client waits for it to be ready.
	c.respond(s, w, first && req.GetResponseNonce() == "")
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if s.watch == w {
			s.watch = nil
		}
	}, nil
}

// CreateWatch implements cache.ConfigWatcher: state of the world is not
// served.
func (c *PushCache) CreateWatch(*cache.Request, cache.Subscription, chan cache.Response) (func(), error) {
	return nil, errors.New("xdstest.PushCache serves delta subscriptions only")
}

// Fetch implements cache.ConfigFetcher: not served.
func (c *PushCache) Fetch(context.Context, *cache.Request) (cache.Response, error) {
	return nil, errors.New("xdstest.PushCache serves delta subscriptions only")
}

// PushServer is a go-control-plane delta ADS server of the workload API
// types over PushCaches: an independent control plane that, like istiod,
// costs O(change) per push, for benchmarks at scale.
type PushServer struct {
	Addresses      *PushCache
	Authorizations *PushCache
	addr           string
}

// StartPush serves on a free loopback port until the test ends, with opts
// for the gRPC server.
func StartPush(tb testing.TB, opts ...grpc.ServerOption) *PushServer {
	tb.Helper()
	s := &PushServer{Addresses: NewPushCache(AddressType), Authorizations: NewPushCache(AuthorizationType)}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s.addr = lis.Addr().String()
	g := grpc.NewServer(opts...)
	discovery.RegisterAggregatedDiscoveryServiceServer(g, server.NewServer(context.Background(), s.Mux(), nil))
	go g.Serve(lis)
	tb.Cleanup(g.Stop)
	return s
}

// Mux routes each type URL to its cache, for a server built elsewhere.
func (s *PushServer) Mux() *cache.MuxCache {
	return &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cache.Cache{AddressType: s.Addresses, AuthorizationType: s.Authorizations},
	}
}

// Addr is the server's host:port.
func (s *PushServer) Addr() string { return s.addr }
