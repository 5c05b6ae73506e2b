package testbed

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// removeCgroup removes a cgroup directory made by a test bed, with any child
// cgroups. Processes still in it (children a stopped process left behind, or
// everything of a crashed run) are killed through cgroup.kill first: they are
// all descendants of processes a test bed started. A missing path is not an
// error.
func removeCgroup(path string) error {
	entries, err := os.ReadDir(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", path, err)
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() {
			errs = append(errs, removeCgroup(filepath.Join(path, e.Name())))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	killed := false
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := os.Remove(path)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: %w", path, err)
		}
		if !killed && populated(path) {
			if err := os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0); err != nil {
				return fmt.Errorf("cgroup %s: kill: %w", path, err)
			}
			killed = true
		}
		// Killed processes leave the cgroup only once they are reaped.
		time.Sleep(20 * time.Millisecond)
	}
}

// populated reports whether a process lives in the cgroup or below.
func populated(path string) bool {
	events, err := os.ReadFile(filepath.Join(path, "cgroup.events"))
	return err == nil && bytes.Contains(events, []byte("populated 1"))
}
