package testbed

import (
	"os"
	"strings"
	"sync"
	"testing"
)

// NewT returns a new Bed for a test, whose stderr logs go to t.Log, and
// closes it in t.Cleanup. Without root it skips the test, or fails it if
// KMESH_REQUIRE_PRIVILEGED=1 (as the privileged CI job sets, so that nothing
// is skipped there).
func NewT(t testing.TB) *Bed {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("KMESH_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("test bed needs root, and KMESH_REQUIRE_PRIVILEGED=1")
		}
		t.Skip("test bed needs root")
	}
	w := &testLog{t: t}
	b, err := New(Options{Log: w})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close test bed: %v", err)
		}
		w.stop()
	})
	return b
}

// testLog passes lines to t.Log until the test's cleanup, after which t.Log
// would panic.
type testLog struct {
	t       testing.TB
	mu      sync.Mutex
	stopped bool
}

func (w *testLog) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.t.Log(strings.TrimSuffix(string(b), "\n"))
	}
	return len(b), nil
}

func (w *testLog) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}
