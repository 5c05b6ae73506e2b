package main

import (
	"context"
	"log/slog"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/file"
	"github.com/kmesh-go/kmesh/internal/source/kubewaypoint"
)

// source is where the waypoint's config comes from: the file or
// Kubernetes.
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
	return kubeSource{ks}, nil
}

type fileSource struct{ *file.Source }

func (fileSource) Ready(context.Context) {}

type kubeSource struct{ *kubewaypoint.Source }

func (k kubeSource) Load() (*model.Mesh, error) { return k.Build() }

func (k kubeSource) Ready(ctx context.Context) { k.SyncStatus(ctx, nil) }
