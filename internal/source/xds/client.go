package xds

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/kmesh-go/kmesh/internal/model"
)

// Modes of [New]: which xDS API the client speaks.
const (
	// ModeWorkload is Istio ambient's workload API (delta xDS, ztunnel role).
	ModeWorkload = "workload"
	// ModeADS is classic Envoy ADS (state of the world, sidecar role).
	ModeADS = "ads"
)

// Client is a config source fed by an xDS control plane. Like file.Source,
// it hands every new valid mesh to the apply function of Run.
type Client struct {
	cfg  Config
	log  *slog.Logger
	run  func(context.Context, func(*model.Mesh) error) error
	mode string
	// delta is the workload API client (nil in ADS mode).
	delta *deltaClient
	// fullBuilds: RunChanges hands whole meshes only (NewWaypointClient).
	fullBuilds bool
}

// NewWorkloadClient returns a client of Istio ambient's workload API: it
// subscribes to istio.workload.Address and istio.security.Authorization
// over delta ADS as a ztunnel-role node. log should already carry the
// component attribute; nil discards.
func NewWorkloadClient(cfg Config, log *slog.Logger) *Client {
	c := newClient(ModeWorkload, cfg, log)
	d := &deltaClient{
		cfg:      &c.cfg,
		role:     "ztunnel",
		log:      c.log,
		handlers: []handler{addressHandler{}, authorizationHandler{}},
		build:    buildWorkloadMesh,
	}
	c.run = d.run
	c.delta = d
	return c
}

// NewWaypointClient is NewWorkloadClient for a waypoint (kmesh-waypoint):
// the same stream and resources, but every service keeps its own endpoints
// when istiod gives it a waypoint (kmeshd's client balances such a service
// over the waypoint's instances instead), so the waypoint learns the
// endpoints, their health, tunnel protocol, locality and service accounts
// of the services it serves from istiod, as Istio's waypoint does. It
// makes no deny policy for workloads with a waypoint of their own.
func NewWaypointClient(cfg Config, log *slog.Logger) *Client {
	c := NewWorkloadClient(cfg, log)
	c.delta.build = buildWaypointView
	// The incremental path redirects waypointed services as kmeshd's
	// build does: the waypoint's view takes full builds only.
	c.fullBuilds = true
	return c
}

// NewADSClient returns a client of classic Envoy ADS: clusters, their
// endpoints and listeners over state-of-the-world ADS as a sidecar-role
// node. log should already carry the component attribute; nil discards.
func NewADSClient(cfg Config, log *slog.Logger) *Client {
	c := newClient(ModeADS, cfg, log)
	a := &adsClient{cfg: &c.cfg, log: c.log}
	c.run = a.run
	return c
}

// New returns a client for mode, ModeWorkload or ModeADS.
func New(mode string, cfg Config, log *slog.Logger) (*Client, error) {
	switch mode {
	case ModeWorkload:
		return NewWorkloadClient(cfg, log), nil
	case ModeADS:
		return NewADSClient(cfg, log), nil
	}
	return nil, fmt.Errorf("xds: unknown mode %q (want %s or %s)", mode, ModeWorkload, ModeADS)
}

func newClient(mode string, cfg Config, log *slog.Logger) *Client {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{cfg: cfg, log: log, mode: mode}
}

// Run follows the control plane until ctx ends, then returns nil. It
// calls apply with the whole mesh once every subscribed type has had its
// first response, then after every response that changes it. Run returns
// an error only for a config it cannot use (no address, a token without
// TLS); connection failures are retried for ever.
func (c *Client) Run(ctx context.Context, apply func(*model.Mesh) error) error {
	return c.RunChanges(ctx, apply, nil)
}

// RunChanges is Run that, in workload mode, hands each response after the
// first state to changes as the model changes it makes (O(what it
// touches)); apply still gets the first state, and whole meshes for the
// rare response the incremental path leaves to the full build (resources
// that contest a name or address). nil changes, or ADS mode: as Run.
func (c *Client) RunChanges(ctx context.Context, apply func(*model.Mesh) error, changes func(*model.Changes) error) error {
	if c.delta != nil && !c.fullBuilds {
		c.delta.changes = changes
	}
	if err := c.cfg.setDefaults(); err != nil {
		return err
	}
	c.log.Info("xds source starting", "mode", c.mode, "address", c.cfg.Address, "tls", c.cfg.RootCertFile != "")
	return c.run(ctx, apply)
}
