package file

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/examples"
	"github.com/kmesh-go/kmesh/internal/model"
)

// Long enough for a loaded CI machine; the tests return as soon as the
// event they wait for happens.
const (
	eventTimeout = 5 * time.Second
	// quietPeriod is how long a test waits to be sure something did not
	// happen: well past the debounce.
	quietPeriod = 5 * debounce
)

// logBuffer collects log output from Run's goroutine for the test to read.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitLog waits until the log contains all of want.
func (b *logBuffer) waitLog(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(eventTimeout)
	for {
		s := b.String()
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(s, w)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("log does not contain %q after %v:\n%s", want, eventTimeout, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runSource starts s.Run with an apply that sends each mesh to the returned
// channel (failing while fail returns true), and stops it when the test ends.
func runSource(t *testing.T, s *Source, fail func() bool) <-chan *model.Mesh {
	t.Helper()
	applied := make(chan *model.Mesh, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Run(ctx, func(m *model.Mesh) error {
			applied <- m
			if fail != nil && fail() {
				return errors.New("dataplane is busy")
			}
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return applied
}

func waitApply(t *testing.T, applied <-chan *model.Mesh) *model.Mesh {
	t.Helper()
	select {
	case m := <-applied:
		return m
	case <-time.After(eventTimeout):
		t.Fatalf("apply not called within %v", eventTimeout)
		return nil
	}
}

func expectNoApply(t *testing.T, applied <-chan *model.Mesh) {
	t.Helper()
	select {
	case m := <-applied:
		t.Fatalf("apply called with %+v, want no call", m)
	case <-time.After(quietPeriod):
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// meshWith returns a config with one workload per name.
func meshWith(names ...string) string {
	s := "workloads:\n"
	for _, n := range names {
		s += "- name: " + n + "\n  node: node-a\n"
	}
	return s
}

func workloadNames(m *model.Mesh) string {
	var names []string
	for _, w := range m.Workloads {
		names = append(names, w.Name)
	}
	return strings.Join(names, ",")
}

func TestSource_RunAppliesChangesAndKeepsStateOnBadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mesh.yaml")
	writeFile(t, path, meshWith("a"))
	var logs logBuffer
	s := New(path, "node-a", slog.New(slog.NewTextHandler(&logs, nil)))
	m, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got := workloadNames(m); got != "a" {
		t.Fatalf("Load workloads = %s, want a", got)
	}
	applied := runSource(t, s, nil)
	// Run's first read finds what Load read, so it applies nothing.
	expectNoApply(t, applied)

	writeFile(t, path, meshWith("a", "b"))
	if got := workloadNames(waitApply(t, applied)); got != "a,b" {
		t.Fatalf("after rewrite, applied workloads %s, want a,b", got)
	}

	writeFile(t, path, meshWith("a", "b")+"  weight: 0\n")
	logs.waitLog(t, "config rejected", "mesh.yaml:6: workloads[1].weight: 0 is out of range 1..128")
	expectNoApply(t, applied)

	// An editor's save: write a new file, rename it over the old one.
	tmp := filepath.Join(dir, ".mesh.yaml.swp")
	writeFile(t, tmp, meshWith("a", "c"))
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if got := workloadNames(waitApply(t, applied)); got != "a,c" {
		t.Fatalf("after rename-over, applied workloads %s, want a,c", got)
	}
}

func TestSource_ReloadRereadsFile(t *testing.T) {
	// The config is a symlink into a directory Run does not watch, so only
	// Reload can see changes to it, as for a SIGHUP after such an edit.
	target := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, target, meshWith("a"))
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	s := New(path, "", nil)
	if _, err := s.Load(); err != nil {
		t.Fatal(err)
	}
	applied := runSource(t, s, nil)
	// Let Run's first read happen before the change, or it would see it.
	expectNoApply(t, applied)

	writeFile(t, target, meshWith("a", "b"))
	expectNoApply(t, applied)
	s.Reload()
	if got := workloadNames(waitApply(t, applied)); got != "a,b" {
		t.Fatalf("after Reload, applied workloads %s, want a,b", got)
	}
	// Unchanged content: nothing to apply.
	s.Reload()
	expectNoApply(t, applied)
}

func TestSource_RetriesAfterApplyFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, path, meshWith("a"))
	var logs logBuffer
	s := New(path, "", slog.New(slog.NewTextHandler(&logs, nil)))
	var mu sync.Mutex
	failing := true
	applied := runSource(t, s, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return failing
	})

	// Without Load, Run's first read applies the file.
	waitApply(t, applied)
	logs.waitLog(t, "config apply failed", "dataplane is busy")

	mu.Lock()
	failing = false
	mu.Unlock()
	// The content is unchanged, but it was never applied, so Reload retries.
	s.Reload()
	if got := workloadNames(waitApply(t, applied)); got != "a" {
		t.Fatalf("retry applied workloads %s, want a", got)
	}
	s.Reload()
	expectNoApply(t, applied)
}

func TestSource_EmbeddedDefault(t *testing.T) {
	s := New("", "", nil)
	m, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	want, err := Parse("examples/hello.yaml", examples.Hello, "")
	if err != nil {
		t.Fatal(err)
	}
	if workloadNames(m) != workloadNames(want) || len(m.Services) != 1 {
		t.Fatalf("Load = %+v, want the hello example", m)
	}
	// Nothing to watch: Run waits for ctx and returns nil (checked by runSource).
	applied := runSource(t, s, nil)
	s.Reload()
	expectNoApply(t, applied)
}

func TestSource_LoadReportsMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing.yaml")
	if _, err := New(path, "", nil).Load(); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load = %v, want an error wrapping os.ErrNotExist", err)
	}
}

func TestSource_SeesConfigMapSymlinkSwap(t *testing.T) {
	// The layout kubelet gives a mounted ConfigMap: mesh.yaml -> ..data/mesh.yaml,
	// ..data -> a timestamped directory. An update writes a new directory and
	// renames a new ..data symlink over the old one; mesh.yaml never changes.
	dir := t.TempDir()
	version := func(name, data string) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name, "mesh.yaml"), data)
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_01_01_00_00_00.1", meshWith("a"))
	path := filepath.Join(dir, "mesh.yaml")
	if err := os.Symlink(filepath.Join("..data", "mesh.yaml"), path); err != nil {
		t.Fatal(err)
	}
	s := New(path, "", nil)
	if _, err := s.Load(); err != nil {
		t.Fatal(err)
	}
	applied := runSource(t, s, nil)
	expectNoApply(t, applied)

	version("..2026_01_01_00_01_00.2", meshWith("a", "b"))
	if got := workloadNames(waitApply(t, applied)); got != "a,b" {
		t.Fatalf("after ConfigMap update, applied workloads %s, want a,b", got)
	}
}
