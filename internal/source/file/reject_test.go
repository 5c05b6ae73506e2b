package file

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestSource_OnRejectCalledOncePerBadContent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, path, meshWith("a"))
	s := New(path, "node-a", nil)
	var mu sync.Mutex
	var rejected []string
	s.OnReject(func(err error) {
		mu.Lock()
		defer mu.Unlock()
		rejected = append(rejected, err.Error())
	})
	if _, err := s.Load(); err != nil {
		t.Fatal(err)
	}
	applied := runSource(t, s, nil)

	// Replace the file whole, so no read sees it half written.
	replace := func(data string) {
		tmp := path + ".tmp"
		writeFile(t, tmp, data)
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	bad := meshWith("a", "b") + "  weight: 0\n"
	replace(bad)
	s.Reload()
	replace(bad) // same bad content again: reported once
	s.Reload()
	expectNoApply(t, applied)
	replace(meshWith("a", "c"))
	waitApply(t, applied)

	deadline := time.Now().Add(eventTimeout)
	for {
		mu.Lock()
		got := append([]string(nil), rejected...)
		mu.Unlock()
		if len(got) == 1 && strings.Contains(got[0], "weight: 0 is out of range") {
			return
		}
		if len(got) > 1 || time.Now().After(deadline) {
			t.Fatalf("rejections %q, want one for the bad weight", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
