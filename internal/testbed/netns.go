package testbed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// createNetns creates a network namespace and bind-mounts it at path, as
// `ip netns add` does, so it outlives every process in it and `ip netns`,
// nsenter and config files can name it.
func createNetns(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	if err := sharedMountDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	f.Close()
	err = onThread("", func() error {
		// unshare moves only this thread; onThread moves it back.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind mount: %w", err)
		}
		return nil
	})
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("netns %s: %w", path, err)
	}
	return nil
}

// sharedMountDir makes dir a shared mount point of its own, as `ip netns
// add` does before its first namespace. Otherwise the first `ip netns`
// run by anyone while a namespace of ours is mounted bind-mounts dir over
// itself, hiding our mount beneath: deleteNetns could then neither unmount
// nor remove it (EBUSY), and the namespace would leak.
func sharedMountDir(dir string) error {
	err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind mount %s on itself: %w", dir, err)
		}
		err = unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", dir, err)
	}
	return nil
}

// deleteNetns unmounts and removes a namespace made by createNetns. The
// kernel frees the namespace, and the veths in it, once no process is left
// in it. A missing path is not an error.
func deleteNetns(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netns %s: unmount: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	return nil
}

// onThread runs fn on a locked OS thread that has joined the network
// namespace at nsPath ("" keeps the current one), and moves the thread back
// afterwards. If moving back fails the thread stays locked, so the runtime
// ends it instead of letting other goroutines run in the wrong namespace.
func onThread(nsPath string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(orig)
		if nsPath != "" {
			target, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				runtime.UnlockOSThread()
				errc <- fmt.Errorf("open netns: %w", err)
				return
			}
			err = unix.Setns(target, unix.CLONE_NEWNET)
			unix.Close(target)
			if err != nil {
				runtime.UnlockOSThread()
				errc <- fmt.Errorf("enter netns %s: %w", nsPath, err)
				return
			}
		}
		fnErr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(fnErr, fmt.Errorf("return to own netns: %w", err))
			return // still locked: the thread dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// setSysctls writes sysctls (paths under /proc/sys) inside the namespace at
// nsPath. /proc/sys/net shows the namespace of the thread that opens it.
func setSysctls(nsPath string, kv ...string) error {
	return onThread(nsPath, func() error {
		for i := 0; i+1 < len(kv); i += 2 {
			if err := os.WriteFile(filepath.Join("/proc/sys", kv[i]), []byte(kv[i+1]), 0o644); err != nil {
				return fmt.Errorf("sysctl %s: %w", kv[i], err)
			}
		}
		return nil
	})
}
