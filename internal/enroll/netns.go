package enroll

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// ErrNotNetns is returned for a path that is not a network namespace.
var ErrNotNetns = errors.New("not a network namespace")

// ErrOwnNetns is returned for kmeshd's own network namespace, which the
// admin API must not enroll: every host process would join the mesh.
var ErrOwnNetns = errors.New("kmeshd's own network namespace")

// openNetns opens the network namespace file at path for setns, and
// never blocks on what is not one: the path is opened with O_PATH (a
// FIFO or device is not opened for I/O), checked to live on nsfs, and only
// then reopened read-only through /proc/self/fd; the kernel confirms the
// namespace type (NS_GET_NSTYPE).
func openNetns(path string) (*os.File, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("netns %s: not an absolute path", path)
	}
	pfd, err := unix.Open(path, unix.O_PATH|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	defer unix.Close(pfd)
	var fs unix.Statfs_t
	if err := unix.Fstatfs(pfd, &fs); err != nil {
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	if fs.Type != unix.NSFS_MAGIC {
		return nil, fmt.Errorf("netns %s: %w (not a namespace file)", path, ErrNotNetns)
	}
	f, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(pfd), os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	typ, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("netns %s: namespace type: %w", path, err)
	}
	if typ != unix.CLONE_NEWNET {
		f.Close()
		return nil, fmt.Errorf("netns %s: %w (a namespace of another type)", path, ErrNotNetns)
	}
	return f, nil
}

// identity is what names a network namespace for as long as it lives: its
// nsfs device and inode (what `stat -L` shows, the same for every path to
// it).
type identity struct{ dev, ino uint64 }

func identityOf(f *os.File) (identity, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return identity{}, err
	}
	return identity{dev: st.Dev, ino: st.Ino}, nil
}

// Check opens the network namespace at path as Cookie does and returns its
// cookie, or why kmeshd's admin API may not enroll it: not a network
// namespace (ErrNotNetns), or kmeshd's own (ErrOwnNetns). The cookie, not
// the path, is what names it from then on: a cookie is never reused while
// the kernel runs, while /proc/PID/ns/net names another namespace once the
// PID is reused.
func Check(path string) (uint64, error) {
	f, err := openNetns(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	id, err := identityOf(f)
	if err != nil {
		return 0, fmt.Errorf("netns %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("own netns: %w", err)
	}
	if id == (identity{dev: st.Dev, ino: st.Ino}) {
		return 0, fmt.Errorf("netns %s: %w", path, ErrOwnNetns)
	}
	return cookieOf(path, f)
}
