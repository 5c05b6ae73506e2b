package tunnel

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kmesh-go/kmesh/internal/model"
)

// StateFile is the name of the state kmeshd hands the tunnel, in the
// state directory of the node.
const StateFile = "tunnel-state.json"

// DefaultStateDir is where kmeshd writes the state of node and the tunnel
// reads it, unless --state-dir says otherwise.
func DefaultStateDir(node string) string { return filepath.Join("/run/kmesh", node) }

// State is what the tunnel needs from kmeshd: the mesh (destinations,
// their identities, policies) and this node's enrolled workloads. kmeshd
// writes it after every config it applies; the tunnel keeps the last copy
// it read, so it goes on tunnelling while kmeshd is down.
type State struct {
	// Version is kmeshd's config version; a restarted kmeshd starts again.
	Version uint64 `json:"version"`
	Node    string `json:"node"`
	// MeshHasCA is whether kmeshd has a CA, which decides the default
	// tunnel protocol of workloads (model.Workload.TunnelFor).
	MeshHasCA bool        `json:"meshHasCA"`
	Mesh      *model.Mesh `json:"mesh"`
	// Pods are this node's enrolled workloads, whatever enrolled them (a
	// mesh file's netns, --enroll-netns, Kubernetes, the admin API): the
	// tunnel listens in each one's network namespace.
	Pods []Pod `json:"pods"`
}

// Pod is an enrolled workload of this node.
type Pod struct {
	Workload string `json:"workload"` // namespace/name in Mesh
	Netns    string `json:"netns"`
}

// WriteState replaces the state file in dir atomically: a reader sees the
// old file or the new one, never a part.
func WriteState(dir string, s *State) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tunnel state dir %s: %w", dir, err)
	}
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("tunnel state: %w", err)
	}
	f, err := os.CreateTemp(dir, StateFile+".*")
	if err != nil {
		return fmt.Errorf("tunnel state: %w", err)
	}
	_, werr := f.Write(b)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("tunnel state %s: %w", f.Name(), err)
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, StateFile)); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("tunnel state: %w", err)
	}
	return nil
}

// ReadState reads the state file in dir. A missing file is
// os.ErrNotExist; a malformed one is an error naming the file.
func ReadState(dir string) (*State, error) {
	path := filepath.Join(dir, StateFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("tunnel state %s: %w", path, err)
	}
	if s.Mesh == nil {
		return nil, fmt.Errorf("tunnel state %s: no mesh", path)
	}
	if err := s.Mesh.Validate(); err != nil {
		return nil, fmt.Errorf("tunnel state %s: %w", path, err)
	}
	return &s, nil
}
