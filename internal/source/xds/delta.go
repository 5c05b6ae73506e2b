package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/kmesh-go/kmesh/internal/model"
)

// handler converts the resources of one type URL (ztunnel's Handler).
type handler interface {
	typeURL() string
	// convert turns one resource, called name, into the value the store
	// keeps; sl, when set, holds what stays of it (workload.go). An error
	// rejects this resource alone; the store keeps its previous version.
	convert(name string, res *anypb.Any, sl *slab) (any, error)
}

// convertResource checks the Any's type before handing it to h.
func convertResource(h handler, name string, res *anypb.Any, sl *slab) (any, error) {
	if res == nil {
		return nil, errors.New("no resource in the response entry")
	}
	if res.GetTypeUrl() != h.typeURL() {
		return nil, fmt.Errorf("type %s in a response of type %s", res.GetTypeUrl(), h.typeURL())
	}
	return h.convert(name, res, sl)
}

// deltaClient is an incremental (delta) ADS client over a set of handlers.
type deltaClient struct {
	cfg      *Config
	role     string
	log      *slog.Logger
	handlers []handler // in subscription order
	build    func(*store) *built

	eng *engine
	// changes, when set, takes each response's changes once the first
	// state is applied (workload API: workloadIndex); apply then gets
	// only whole meshes (the first state, and responses the index leaves
	// to the full build).
	changes func(*model.Changes) error
	index   *workloadIndex
	synced  map[string]bool // types whose first response arrived
	resync  bool            // apply failed: restart the stream to be sent the change again
}

func (c *deltaClient) run(ctx context.Context, apply func(*model.Mesh) error) error {
	c.eng = newEngine(c.log, c.build, apply)
	c.synced = map[string]bool{}
	return reconnectLoop(ctx, c.log, c.cfg.Address, c.session)
}

// errResync ends a stream after a failed apply. The store kept its
// previous state, so the new stream's initial versions make the control
// plane send the refused change again: the apply is retried, with backoff
// while it keeps failing.
var errResync = errors.New("apply failed; resyncing")

// reconnectLoop runs session until ctx ends, waiting with backoff between
// attempts. The data plane keeps its state while the control plane is
// away: nothing is applied until a new stream brings changes.
func reconnectLoop(ctx context.Context, log *slog.Logger, address string, session func(context.Context) (bool, error)) error {
	var bo backoff
	for {
		worked, err := session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if worked {
			bo.reset()
		}
		d := bo.wait()
		log.Warn("xds stream closed; reconnecting", "address", address, "err", err, "retry_in", d.Round(time.Millisecond))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// session runs one stream. It reports whether a response arrived, so the
// backoff restarts after a stream that worked.
func (c *deltaClient) session(ctx context.Context) (bool, error) {
	conn, err := c.cfg.dial()
	if err != nil {
		return false, err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx, callCodec())
	if err != nil {
		return false, err
	}
	node := c.cfg.node(c.role)
	for _, h := range c.handlers {
		// An empty subscription is a wildcard: every resource of the type.
		req := &discovery.DeltaDiscoveryRequest{
			Node:                    node,
			TypeUrl:                 h.typeURL(),
			InitialResourceVersions: c.eng.store.versions(h.typeURL()),
		}
		if err := stream.Send(req); err != nil {
			return false, err
		}
		c.log.Debug("subscribed", "type_url", h.typeURL(), "resources", len(req.InitialResourceVersions))
	}
	c.log.Info("xds stream established", "address", c.cfg.Address, "node_id", node.Id)
	worked := false
	for {
		resp, err := stream.Recv()
		if err != nil {
			return worked, err
		}
		worked = true
		if err := stream.Send(c.handle(resp)); err != nil {
			return worked, err
		}
		if c.resync {
			// Half-close and drain, so the NACK reaches the server
			// before the stream ends.
			c.resync = false
			stream.CloseSend()
			for {
				if _, err := stream.Recv(); err != nil {
					return false, errResync
				}
			}
		}
	}
}

// handle stages one response and returns its ACK or NACK.
func (c *deltaClient) handle(resp *discovery.DeltaDiscoveryResponse) *discovery.DeltaDiscoveryRequest {
	t := resp.GetTypeUrl()
	log := c.log.With("type_url", t, "version", resp.GetSystemVersionInfo(), "nonce", resp.GetNonce())
	reply := &discovery.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce()}
	h := c.handler(t)
	if h == nil {
		return nack(log, reply, []string{"type " + t + " was not subscribed"})
	}
	if c.changes != nil && c.eng.applied && c.index != nil {
		return c.handleChanges(resp, h, log, reply)
	}

	// A response that brings nothing (the first one of a type the
	// control plane has none of, as the policies of a mesh without any)
	// is staged on the store itself: it changes nothing, so there is
	// nothing to put back; a copy of a first state's 550,000 entries
	// cost ~16 MB of map and 20-140 ms of the first sync.
	staged := c.eng.store
	if len(resp.GetResources())+len(resp.GetRemovedResources())+len(resp.GetRemovedResourceNames()) > 0 {
		staged = c.eng.store.clone()
	}
	// fresh are the resources whose clashes the reply names: this
	// response's. Until the first state is applied, every staged
	// resource is new to the data plane and all are named, so no set of
	// every name (100,000 at scale) is built for the first state.
	var fresh map[resourceKey]bool
	if c.eng.applied {
		fresh = make(map[resourceKey]bool, len(resp.GetResources()))
	}
	var rejects []string
	changed := false
	values, errs := convertAll(h, resp.GetResources())
	staged.reserve(t, len(resp.GetResources()))
	for i, r := range resp.GetResources() {
		if fresh != nil {
			fresh[resourceKey{t, r.GetName()}] = true
		}
		if errs[i] != nil {
			rejects = append(rejects, fmt.Sprintf("resource %s: %v", r.GetName(), errs[i]))
			continue
		}
		staged.put(t, r.GetName(), r.GetVersion(), values[i])
		changed = true
	}
	removed := resp.GetRemovedResources()
	for _, rn := range resp.GetRemovedResourceNames() {
		removed = append(removed, rn.GetName())
	}
	for _, name := range removed {
		if staged.get(t, name) != nil {
			staged.remove(t, name)
			changed = true
		}
	}
	log.Debug("response received", "resources", len(resp.GetResources()), "removed", len(removed))

	first := !c.synced[t]
	c.synced[t] = true
	ready := c.allSynced()
	if !ready && !c.eng.applied {
		// Until every type has had its first response, stage without
		// building: the first mesh applied is the control plane's whole
		// state, not a part of it, and a build here (O(mesh), 100,000
		// workloads at scale) would be thrown away. Clashes among these
		// resources are named in the reply to the response that
		// completes the state.
		c.eng.store = staged
		if len(rejects) > 0 {
			return nack(log, reply, rejects)
		}
		return reply
	}
	// The change index is built while the mesh is applied (commit), from
	// the same store and mesh.
	var ix *workloadIndex
	var along func(*store, *built)
	if c.changes != nil {
		along = func(st *store, b *built) { ix = newWorkloadIndex(st, b) }
	}
	if changed || (ready && !c.eng.applied) {
		// Until every type has had its first response, stage without
		// applying: the first mesh applied is the control plane's whole
		// state, not a part of it.
		isFresh := func(k resourceKey) bool { return fresh[k] }
		if fresh == nil {
			isFresh = func(resourceKey) bool { return true }
		}
		conflicts, err := c.eng.commit(staged, isFresh, ready, along)
		rejects = append(rejects, conflicts...)
		if err != nil {
			rejects = append(rejects, "apply: "+err.Error())
			c.resync = true
		}
	}
	if c.changes != nil && c.eng.applied && c.eng.built != nil {
		if ix == nil { // not built alongside: this response applied nothing new
			ix = newWorkloadIndex(c.eng.store, c.eng.built)
		}
		c.index = ix
		c.eng.built = nil
	}
	if first && ready && c.eng.applied {
		log.Info("initial config applied", "resources", c.countResources())
	}
	if len(rejects) > 0 {
		return nack(log, reply, rejects)
	}
	return reply
}

// handleChanges applies one response in place (no store copy) and hands
// the dataplane its changes (workloadIndex.delta), or, when the response
// touches a contested key, the whole mesh as the full build makes it. A
// failed apply puts the store and the index back and resyncs, as handle.
func (c *deltaClient) handleChanges(resp *discovery.DeltaDiscoveryResponse, h handler, log *slog.Logger, reply *discovery.DeltaDiscoveryRequest) *discovery.DeltaDiscoveryRequest {
	t := resp.GetTypeUrl()
	st := c.eng.store
	old := map[string]*entry{}
	save := func(name string) {
		if _, ok := old[name]; !ok {
			old[name] = st.get(t, name)
		}
	}
	fresh := map[resourceKey]bool{}
	var rejects []string
	for _, r := range resp.GetResources() {
		fresh[resourceKey{t, r.GetName()}] = true
		v, err := convertResource(h, r.GetName(), r.GetResource(), nil)
		if err != nil {
			rejects = append(rejects, fmt.Sprintf("resource %s: %v", r.GetName(), err))
			continue
		}
		save(r.GetName())
		st.put(t, r.GetName(), r.GetVersion(), v)
	}
	removed := resp.GetRemovedResources()
	for _, rn := range resp.GetRemovedResourceNames() {
		removed = append(removed, rn.GetName())
	}
	for _, name := range removed {
		if st.get(t, name) != nil {
			save(name)
			st.remove(t, name)
		}
	}
	log.Debug("response received", "resources", len(resp.GetResources()), "removed", len(removed))
	if len(old) == 0 {
		if len(rejects) > 0 {
			return nack(log, reply, rejects)
		}
		return reply
	}
	rollback := func() {
		for name, e := range old {
			if e == nil {
				st.remove(t, name)
			} else {
				st.byType[t][name] = e
			}
		}
	}
	ch, notes, full := c.index.delta(st, t, old)
	var err error
	if full {
		b := c.eng.build(st)
		for k, reason := range b.conflicts {
			if fresh[k] {
				rejects = append(rejects, fmt.Sprintf("resource %s: %s", k.name, reason))
			}
		}
		if err = c.eng.apply(b.mesh); err == nil {
			c.index = newWorkloadIndex(st, b)
			c.eng.logNotes(b.notes)
		}
	} else if err = c.changes(ch); err == nil {
		c.eng.addNotes(notes)
	}
	if err != nil {
		rollback()
		c.index = newWorkloadIndex(st, c.eng.build(st))
		rejects = append(rejects, "apply: "+err.Error())
		c.resync = true
	}
	if len(rejects) > 0 {
		return nack(log, reply, rejects)
	}
	return reply
}

// convertAll converts a response's resources, on every CPU when there
// are many: a first state of 100,000 workloads is mostly protobuf
// decoding, and each resource decodes alone. Each worker of a large
// response keeps what stays of its workloads in a slab.
func convertAll(h handler, rs []*discovery.Resource) ([]any, []error) {
	values, errs := make([]any, len(rs)), make([]error, len(rs))
	workers := min(runtime.GOMAXPROCS(0), len(rs)/1024+1)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var sl *slab
			if len(rs) >= slabSize {
				sl = &slab{}
			}
			for i := w; i < len(rs); i += workers {
				values[i], errs[i] = convertResource(h, rs[i].GetName(), rs[i].GetResource(), sl)
			}
		}()
	}
	wg.Wait()
	return values, errs
}

func (c *deltaClient) handler(typeURL string) handler {
	for _, h := range c.handlers {
		if h.typeURL() == typeURL {
			return h
		}
	}
	return nil
}

func (c *deltaClient) allSynced() bool {
	for _, h := range c.handlers {
		if !c.synced[h.typeURL()] {
			return false
		}
	}
	return true
}

func (c *deltaClient) countResources() int {
	n := 0
	for _, m := range c.eng.store.byType {
		n += len(m)
	}
	return n
}

// request is either kind of discovery request.
type request interface {
	*discovery.DeltaDiscoveryRequest | *discovery.DiscoveryRequest
}

// nack turns reply into a NACK whose message names every rejection.
func nack[R request](log *slog.Logger, reply R, rejects []string) R {
	msg := strings.Join(rejects, "; ")
	log.Warn("config rejected", "err", msg)
	st := &status.Status{Code: int32(codes.InvalidArgument), Message: msg}
	switch r := any(reply).(type) {
	case *discovery.DeltaDiscoveryRequest:
		r.ErrorDetail = st
	case *discovery.DiscoveryRequest:
		r.ErrorDetail = st
	}
	return reply
}
