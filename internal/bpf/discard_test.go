package bpf

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// TestDiscard_RemovesOnlyTheDirsOpenMade: kmeshd loads the programs while
// it reads its config, so a refused config discards a data plane that was
// opened. Its --bpf-dir (and the parents Open made for it) go; a directory
// that was there before Open stays, with what is in it.
func TestDiscard_RemovesOnlyTheDirsOpenMade(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("KMESH_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("loading eBPF programs needs root")
		}
		t.Skip("loading eBPF programs needs root")
	}
	top := filepath.Join(DefaultFS, fmt.Sprintf("kmesh-test-discard-%d", os.Getpid()))
	t.Cleanup(func() {
		Remove(filepath.Join(top, "a", "b"))
		os.Remove(filepath.Join(top, "a"))
		os.Remove(top)
	})
	limits := Limits{Services: 8, Frontends: 8, Endpoints: 8, Backends: 8, Workloads: 8, Sockets: 8,
		Policies: 8, PolicyMatches: 8, PolicyValues: 8, PolicyIPBlocks: 8, PolicyRefs: 8, WorkloadAddresses: 8, AffinityClients: 8}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	open := func(dir string) *Datapath {
		t.Helper()
		d, err := Open(Options{Dir: dir, Limits: limits}, log)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	exists := func(dir string) bool {
		_, err := os.Stat(dir)
		return !errors.Is(err, os.ErrNotExist)
	}

	dir := filepath.Join(top, "a", "b")
	if err := open(dir).Discard(); err != nil {
		t.Fatal(err)
	}
	if exists(top) {
		t.Fatalf("Discard left %s behind (Open created it and %s)", top, dir)
	}

	// A directory that existed stays, and so does a parent that did.
	if err := os.MkdirAll(filepath.Join(top, "a"), 0o700); err != nil {
		t.Fatal(err)
	}
	open(dir).Discard()
	if exists(dir) || !exists(filepath.Join(top, "a")) {
		t.Fatalf("after Discard: %s exists %v (want false), its parent %v (want true)", dir, exists(dir), exists(filepath.Join(top, "a")))
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	open(dir).Discard()
	if !exists(dir) {
		t.Fatalf("Discard removed %s, which was there before Open", dir)
	}
	// The instance lock went with it: the directory opens again.
	open(dir).Close()
}
