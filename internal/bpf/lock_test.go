package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("KMESH_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("needs root, and KMESH_REQUIRE_PRIVILEGED=1")
		}
		t.Skip("needs root (bpffs)")
	}
}

// TestRemove_LeavesWhatIsNotBPFFS: cleanup of a directory that is not on
// bpffs removes nothing and says why.
func TestRemove_LeavesWhatIsNotBPFFS(t *testing.T) {
	dir := t.TempDir()
	keep := filepath.Join(dir, "precious")
	if err := os.WriteFile(keep, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Remove(dir)
	if err == nil || !strings.Contains(err.Error(), "not on a bpf file system") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Remove(%s): %v, want a refusal naming the dir and bpffs", dir, err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatalf("Remove of a non-bpffs dir removed its files: %v", err)
	}
}

// TestLockDir_OneInstancePerDir: while one holder has a bpf dir's lock, a
// second is refused and cleanup removes nothing; once released, both work.
func TestLockDir_OneInstancePerDir(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(DefaultFS, fmt.Sprintf("kmesh-locktest-%d", os.Getpid()))
	if err := ensureFS(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	first, err := lockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockDir(dir); !errors.Is(err, ErrInUse) {
		t.Fatalf("second lock of %s: %v, want ErrInUse", dir, err)
	}
	if err := Remove(dir); err == nil || !strings.Contains(err.Error(), "a running kmeshd holds it") {
		t.Fatalf("Remove of a held dir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "sub")); err != nil {
		t.Fatalf("Remove of a held dir removed its entries: %v", err)
	}
	first.Close()
	if err := Remove(dir); err != nil {
		t.Fatalf("Remove after release: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s still there after Remove: %v", dir, err)
	}
}
