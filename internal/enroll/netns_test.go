package enroll

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/testbed"
)

// TestCheck_RefusesWhatIsNotANetns: a FIFO fails at once (it is never
// opened for reading, which would block until a writer came), and so do a
// regular file, a namespace of another type and kmeshd's own namespace.
func TestCheck_RefusesWhatIsNotANetns(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("KMESH_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("needs root, and KMESH_REQUIRE_PRIVILEGED=1")
		}
		t.Skip("needs root (setns)")
	}
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	tests := []struct {
		name, path string
		want       error
		msg        string
	}{
		{"fifo", fifo, ErrNotNetns, "not a namespace file"},
		{"regular file", file, ErrNotNetns, "not a namespace file"},
		{"uts namespace", "/proc/self/ns/uts", ErrNotNetns, "another type"},
		{"own netns", "/proc/self/ns/net", ErrOwnNetns, ""},
		{"own netns, unclean", "/proc/self/../self/ns//net", ErrOwnNetns, ""},
		{"relative", "proc/self/ns/net", nil, "not an absolute path"},
		{"missing", filepath.Join(dir, "none"), os.ErrNotExist, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, err := Check(tt.path)
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(5 * time.Second):
				t.Fatalf("Check(%s) still blocked after 5s", tt.path)
			}
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) || !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), tt.path) {
				t.Fatalf("Check(%s): %v, want %v naming the path (%q)", tt.path, err, tt.want, tt.msg)
			}
		})
	}
}

// TestCheck_OneNamespaceOneCookie: every path to a namespace, however
// spelled, gives the cookie its sockets see; another namespace another.
func TestCheck_OneNamespaceOneCookie(t *testing.T) {
	bed := testbed.NewT(t)
	a, err := bed.AddNode("a", netip.MustParsePrefix("10.1.1.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := bed.AddNode("b", netip.MustParsePrefix("10.1.2.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := Check(a.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	dir, base := filepath.Split(a.NetnsPath)
	for _, p := range []string{"/" + a.NetnsPath, dir + "../" + filepath.Base(dir) + "/" + base, dir + "./" + base} {
		c, err := Check(p)
		if err != nil || c != ca {
			t.Errorf("Check(%s): %d, %v; want %d", p, c, err, ca)
		}
	}
	if cb, err := Check(b.NetnsPath); err != nil || cb == ca {
		t.Fatalf("Check(%s): %d, %v; want a cookie other than %d", b.NetnsPath, cb, err, ca)
	}
}
