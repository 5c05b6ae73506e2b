package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/file"
	"github.com/kmesh-go/kmesh/internal/source/kubewaypoint"
	"github.com/kmesh-go/kmesh/internal/source/xds"
)

// source is where the waypoint's config comes from: the file or
// Kubernetes (with endpoints from istiod's workload API or not).
type source interface {
	// Load returns the first mesh.
	Load() (*model.Mesh, error)
	// Run calls apply with every later mesh until ctx ends.
	Run(ctx context.Context, apply func(*model.Mesh) error) error
	// Ready says the waypoint serves the first mesh (Kubernetes: the
	// Gateway's status is written).
	Ready(ctx context.Context)
}

func newSource(ctx context.Context, c config, gwNamespace, gwName string, log *slog.Logger) (source, error) {
	if c.configPath != "" {
		return fileSource{file.New(c.configPath, "", log.With("component", "file"))}, nil
	}
	ks, err := kubewaypoint.New(kubewaypoint.Config{Kubeconfig: c.kubeconfig, Namespace: gwNamespace, Name: gwName,
		Service: c.waypointSvc}, log.With("component", "kubernetes"))
	if err != nil {
		return nil, err
	}
	if err := ks.Start(ctx); err != nil {
		return nil, err
	}
	if c.xds.Address == "" {
		return kubeSource{ks}, nil
	}
	xc := c.xds
	xc.ClusterID = c.ca.ClusterID
	// istiod reads a ztunnel-role node id; the waypoint names itself by
	// its Gateway.
	xc.PodName, xc.PodNamespace = gwName, gwNamespace
	if xc.Node == "" {
		xc.Node = gwName
	}
	return &istiodSource{ctx: ctx, kube: ks, xds: xds.NewWaypointClient(xc, log.With("component", "xds")), log: log,
		first: make(chan struct{}), kick: make(chan struct{}, 1)}, nil
}

type fileSource struct{ *file.Source }

func (fileSource) Ready(context.Context) {}

type kubeSource struct{ *kubewaypoint.Source }

func (k kubeSource) Load() (*model.Mesh, error) { return k.Build() }

func (k kubeSource) Ready(ctx context.Context) { k.SyncStatus(ctx, nil) }

// istiodSource is the Kubernetes source whose services take their
// endpoints and workloads from istiod's workload API
// (kubewaypoint.WithIstiodEndpoints): the Kubernetes objects and the
// workload API's mesh are kept side by side, and a change to either
// applies the two joined.
type istiodSource struct {
	ctx  context.Context
	kube *kubewaypoint.Source
	xds  *xds.Client
	log  *slog.Logger

	first chan struct{} // closed at istiod's first mesh
	kick  chan struct{} // a new mesh from istiod

	mu      sync.Mutex
	k, x    *model.Mesh
	noted   map[string]bool // the notes of the last join
	applyMu sync.Mutex      // one apply at a time, with the meshes it joined
}

// Load starts the workload API client and returns the first joined mesh
// once istiod has sent its state.
func (s *istiodSource) Load() (*model.Mesh, error) {
	k, err := s.kube.Build()
	if err != nil {
		return nil, err
	}
	var once sync.Once
	stopped := make(chan error, 1) // Run returns only for a config it cannot use
	go func() {
		err := s.xds.Run(s.ctx, func(x *model.Mesh) error {
			s.mu.Lock()
			s.x = x
			s.mu.Unlock()
			once.Do(func() { close(s.first) })
			select {
			case s.kick <- struct{}{}:
			default:
			}
			return nil
		})
		if err != nil {
			s.log.Error("xds source stopped", "err", err)
		}
		stopped <- err
	}()
	for {
		select {
		case <-s.first:
			s.mu.Lock()
			s.k = k
			x := s.x
			s.mu.Unlock()
			return s.join(k, x), nil
		case <-s.ctx.Done():
			return nil, s.ctx.Err()
		case err := <-stopped:
			if err == nil { // ctx ended
				return nil, s.ctx.Err()
			}
			return nil, fmt.Errorf("--xds-address: %w", err)
		case <-time.After(10 * time.Second):
			s.log.Info("waiting for istiod's workload API: no endpoints yet")
		}
	}
}

// join joins the two meshes, logging each note once while it holds (a
// Service istiod does not send would otherwise be logged at every push).
func (s *istiodSource) join(k, x *model.Mesh) *model.Mesh {
	m, notes := kubewaypoint.WithIstiodEndpoints(k, x)
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := make(map[string]bool, len(notes))
	for _, n := range notes {
		seen[n] = true
		if !s.noted[n] {
			s.log.Info("endpoints from istiod", "note", n)
		}
	}
	s.noted = seen
	return m
}

// Run applies the joined mesh after every Kubernetes build and every
// push from istiod. An apply that fails after a push is logged; the
// push itself was accepted (the previous config stays in the waypoint).
func (s *istiodSource) Run(ctx context.Context, apply func(*model.Mesh) error) error {
	joined := func() error {
		s.applyMu.Lock()
		defer s.applyMu.Unlock()
		s.mu.Lock()
		k, x := s.k, s.x
		s.mu.Unlock()
		return apply(s.join(k, x))
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.kick:
				if err := joined(); err != nil {
					s.log.Error("istiod's endpoints not applied: the previous config stays", "err", err)
				}
			}
		}
	}()
	return s.kube.Run(ctx, func(k *model.Mesh) error {
		s.mu.Lock()
		s.k = k
		s.mu.Unlock()
		return joined()
	})
}

func (s *istiodSource) Ready(ctx context.Context) { s.kube.SyncStatus(ctx, nil) }
