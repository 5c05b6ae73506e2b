package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// DefaultFS is where hosts mount the BPF file system.
const DefaultFS = "/sys/fs/bpf"

// ensureFS makes sure dir can be created on a BPF file system. Some hosts do
// not mount bpffs at boot; like other eBPF daemons, kmeshd then mounts it at
// its usual place. Any other directory must already be on bpffs.
func ensureFS(dir string) error {
	dir = filepath.Clean(dir)
	probe := dir
	for {
		if _, err := os.Stat(probe); err == nil {
			break
		}
		parent := filepath.Dir(probe)
		if parent == probe {
			break
		}
		probe = parent
	}
	if onBPFFS(probe) {
		return nil
	}
	if dir == DefaultFS || filepath.Dir(dir) == DefaultFS || isUnder(dir, DefaultFS) {
		if onBPFFS(DefaultFS) {
			return nil
		}
		if err := unix.Mount("bpf", DefaultFS, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs at %s: %w", DefaultFS, err)
		}
		return nil
	}
	return fmt.Errorf("bpf dir %s: %w", dir, errNotBPFFS)
}

var errNotBPFFS = errors.New("not on a bpf file system (mount one with `mount -t bpf bpf DIR`)")

func onBPFFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

func isUnder(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !filepath.IsAbs(rel) && len(rel) >= 2 && rel[:2] != ".."
}
