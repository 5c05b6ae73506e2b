package bpf

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ErrInUse is returned when another process holds an instance's bpf dir.
var ErrInUse = errors.New("in use by another kmeshd (each instance needs its own --bpf-dir)")

// lockDir takes the instance lock of dir: an exclusive flock on the
// directory itself (bpffs holds no regular files), held until the returned
// file is closed or the process ends, however it ends. Two kmeshd on one
// --bpf-dir would overwrite each other's maps and programs; the second is
// refused instead.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("bpf dir %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("bpf dir %s: %w", dir, ErrInUse)
		}
		return nil, fmt.Errorf("bpf dir %s: lock: %w", dir, err)
	}
	return f, nil
}
