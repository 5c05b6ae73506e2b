package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/kmesh-go/kmesh/internal/enroll"
	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/xds"
)

// xdsSource runs an xDS client from start-up. The client's first mesh (the
// control plane's whole state) waits for the daemon to apply it before the
// programs go live, as the file's first mesh does; later meshes go
// straight to the daemon's apply.
type xdsSource struct {
	client *xds.Client
	name   string

	first    chan *model.Mesh
	firstErr chan error
	done     chan error // Run's result

	mu          sync.Mutex
	live        func(*model.Mesh) error // set once the first mesh is applied
	liveChanges func(*model.Changes) error

	// affinity, when kmeshd watches Kubernetes, adds the Services'
	// sessionAffinity to what the client hands over (affinity.go).
	affinity *affinityOverlay
}

// newXDSSource returns the xDS source of cfg, or nil when cfg names no
// control plane.
func newXDSSource(cfg Config, log *slog.Logger) (*xdsSource, error) {
	if cfg.XDS.Address == "" {
		return nil, nil
	}
	mode := cfg.XDS.Mode
	if mode == "" {
		mode = xds.ModeWorkload
	}
	xc := cfg.XDS.Config
	xc.Node = cfg.Node
	c, err := xds.New(mode, xc, log.With("component", "xds"))
	if err != nil {
		return nil, err
	}
	return &xdsSource{
		client: c, name: fmt.Sprintf("xds %s (%s)", xc.Address, mode),
		first: make(chan *model.Mesh), firstErr: make(chan error), done: make(chan error, 1),
	}, nil
}

// start runs the client until ctx ends.
func (x *xdsSource) start(ctx context.Context) {
	apply, changes := x.apply, x.changes
	if o := x.affinity; o != nil {
		apply = func(m *model.Mesh) error { return o.mesh(m, x.apply) }
		changes = func(c *model.Changes) error { return o.changes(c, x.changes) }
	}
	go func() { x.done <- x.client.RunChanges(ctx, apply, changes) }()
}

// changes comes only after the first mesh is applied (the client hands
// changes once it has applied a state).
func (x *xdsSource) changes(c *model.Changes) error {
	x.mu.Lock()
	live := x.liveChanges
	x.mu.Unlock()
	if live == nil {
		return errors.New("changes before the first state was applied")
	}
	return live(c)
}

func (x *xdsSource) apply(m *model.Mesh) error {
	x.mu.Lock()
	live := x.live
	x.mu.Unlock()
	if live != nil {
		return live(m)
	}
	x.first <- m
	return <-x.firstErr
}

// wait returns the first mesh, or an error if the client stops first.
func (x *xdsSource) wait(ctx context.Context) (*model.Mesh, error) {
	select {
	case m := <-x.first:
		return m, nil
	case err := <-x.done:
		if err == nil {
			err = ctx.Err()
		}
		return nil, err
	}
}

// applied reports the start-up apply of the first mesh; from then on the
// client applies through apply.
func (x *xdsSource) applied(apply func(*model.Mesh) error, update func(*model.Changes) error, err error) {
	if err == nil {
		x.mu.Lock()
		x.live, x.liveChanges = apply, update
		x.mu.Unlock()
	}
	x.firstErr <- err
}

// checkNetns checks the --enroll-netns paths once at start-up, so a typo
// stops the daemon rather than leaving a workload out of the mesh.
func checkNetns(paths []string) error {
	for _, p := range paths {
		if _, err := enroll.Cookie(p); err != nil {
			return fmt.Errorf("--enroll-netns: %w", err)
		}
	}
	return nil
}
