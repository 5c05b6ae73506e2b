package xds

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/kmesh-go/kmesh/internal/model"
)

// adsClient is a state-of-the-world ADS client for clusters, endpoints and
// listeners. Cluster and listener responses carry every resource of their
// type; endpoint responses carry the load assignments of the EDS clusters
// the client names in its request.
type adsClient struct {
	cfg *Config
	log *slog.Logger

	eng      *engine
	handlers []sotwHandler
	versions map[string]string // last accepted version per type
	nonces   map[string]string // last nonce per type
	synced   map[string]bool   // types whose first response arrived
	edsNames []string          // endpoint names subscribed to
	resync   bool              // apply failed: restart the stream (see errResync)
}

func (c *adsClient) run(ctx context.Context, apply func(*model.Mesh) error) error {
	c.eng = newEngine(c.log, buildADSMesh, apply)
	c.handlers = []sotwHandler{clusterHandler{}, listenerHandler{}, endpointHandler{}}
	c.versions, c.nonces, c.synced = map[string]string{}, map[string]string{}, map[string]bool{}
	return reconnectLoop(ctx, c.log, c.cfg.Address, c.session)
}

func (c *adsClient) session(ctx context.Context) (bool, error) {
	conn, err := c.cfg.dial()
	if err != nil {
		return false, err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return false, err
	}
	node := c.cfg.node("sidecar")
	// A new stream starts without nonces; the versions say what this
	// client holds, so an unchanged control plane need not resend.
	clear(c.nonces)
	first := []*discovery.DiscoveryRequest{
		{Node: node, TypeUrl: ClusterType, VersionInfo: c.versions[ClusterType]},
		{Node: node, TypeUrl: ListenerType, VersionInfo: c.versions[ListenerType]},
	}
	if len(c.edsNames) > 0 {
		first = append(first, &discovery.DiscoveryRequest{Node: node, TypeUrl: EndpointType, VersionInfo: c.versions[EndpointType], ResourceNames: c.edsNames})
	}
	for _, req := range first {
		if err := stream.Send(req); err != nil {
			return false, err
		}
	}
	c.log.Info("xds stream established", "address", c.cfg.Address, "node_id", node.Id)
	worked := false
	for {
		resp, err := stream.Recv()
		if err != nil {
			return worked, err
		}
		worked = true
		for _, req := range c.handle(resp) {
			if err := stream.Send(req); err != nil {
				return worked, err
			}
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

// handle stages one response and returns the requests to send: its ACK or
// NACK, and a new endpoint request when the EDS clusters changed.
func (c *adsClient) handle(resp *discovery.DiscoveryResponse) []*discovery.DiscoveryRequest {
	t := resp.GetTypeUrl()
	log := c.log.With("type_url", t, "version", resp.GetVersionInfo(), "nonce", resp.GetNonce())
	c.nonces[t] = resp.GetNonce()
	reply := &discovery.DiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce(), VersionInfo: resp.GetVersionInfo()}
	if t == EndpointType {
		reply.ResourceNames = c.edsNames
	}
	i := slices.IndexFunc(c.handlers, func(h sotwHandler) bool { return h.typeURL() == t })
	if i < 0 {
		reply.VersionInfo = c.versions[t]
		return []*discovery.DiscoveryRequest{nack(log, reply, []string{"type " + t + " was not subscribed"})}
	}
	h := c.handlers[i]

	staged := c.eng.store.clone()
	fresh := map[resourceKey]bool{}
	var rejects []string
	seen := map[string]bool{}
	for n, r := range resp.GetResources() {
		name, v, err := h.convert(r)
		if err == nil && r.GetTypeUrl() != t {
			err = fmt.Errorf("type %s in a response of type %s", r.GetTypeUrl(), t)
		}
		if name == "" {
			name = fmt.Sprintf("#%d", n)
		}
		seen[name] = true // a rejected resource keeps its previous version
		fresh[resourceKey{t, name}] = true
		if err != nil {
			rejects = append(rejects, fmt.Sprintf("resource %s: %v", name, err))
			continue
		}
		staged.put(t, name, resp.GetVersionInfo(), v)
	}
	if t != EndpointType {
		// Full state: what the response leaves out is gone.
		for name := range staged.byType[t] {
			if !seen[name] {
				staged.remove(t, name)
			}
		}
	}
	var out []*discovery.DiscoveryRequest
	names := c.edsNames
	if t == ClusterType {
		names = edsNames(staged)
		for name := range staged.byType[EndpointType] {
			if !slices.Contains(names, name) {
				staged.remove(EndpointType, name)
			}
		}
	}
	log.Debug("response received", "resources", len(resp.GetResources()))

	first := !c.synced[t]
	c.synced[t] = true
	ready := c.synced[ClusterType] && c.synced[ListenerType] && (len(names) == 0 || c.synced[EndpointType])
	conflicts, err := c.eng.commit(staged, func(k resourceKey) bool { return fresh[k] }, ready, nil)
	rejects = append(rejects, conflicts...)
	if err != nil {
		rejects = append(rejects, "apply: "+err.Error())
		c.resync = true
	} else if t == ClusterType && !slices.Equal(names, c.edsNames) {
		c.edsNames = names
		out = append(out, &discovery.DiscoveryRequest{TypeUrl: EndpointType, ResourceNames: names, VersionInfo: c.versions[EndpointType], ResponseNonce: c.nonces[EndpointType]})
	}
	if first && ready && c.eng.applied {
		log.Info("initial config applied", "clusters", len(c.eng.store.byType[ClusterType]), "listeners", len(c.eng.store.byType[ListenerType]))
	}
	if len(rejects) > 0 {
		// The previous version stays the accepted one.
		reply.VersionInfo = c.versions[t]
		return append([]*discovery.DiscoveryRequest{nack(log, reply, rejects)}, out...)
	}
	c.versions[t] = resp.GetVersionInfo()
	return append([]*discovery.DiscoveryRequest{reply}, out...)
}

// edsNames lists the endpoint names of the EDS clusters, sorted.
func edsNames(st *store) []string {
	var names []string
	for _, e := range st.byType[ClusterType] {
		if c := e.value.(*cluster); c.skip == "" && c.eds != "" && !slices.Contains(names, c.eds) {
			names = append(names, c.eds)
		}
	}
	slices.Sort(names)
	return names
}
