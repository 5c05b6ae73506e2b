package daemon

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
)

// A --config beside --xds-address would be ignored; kmeshd refuses to
// start, naming both, before it touches the kernel.
func TestRun_RefusesConfigWithXDSAddress(t *testing.T) {
	var cfg Config
	cfg.Node = "node-a"
	cfg.ConfigFile = "mesh.yaml"
	cfg.XDS.Address = "127.0.0.1:15010"
	cfg.Cgroup = t.TempDir()
	cfg.BPFDir = t.TempDir()
	err := Run(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil {
		t.Fatal("kmeshd started with both --config and --xds-address")
	}
	for _, want := range []string{"--config mesh.yaml", "--xds-address 127.0.0.1:15010"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}
