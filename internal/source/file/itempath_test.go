package file

import (
	"fmt"
	"testing"
	"unsafe"
)

func TestItemPath_SharedForTopLevelLists(t *testing.T) {
	for _, c := range []struct {
		path   string
		i      int
		shared bool
	}{
		{"workloads", 0, true},
		{"workloads", 99, true},
		{"services", sharedItemPaths - 1, true},
		{"workloads", sharedItemPaths, false},
		{"services[3].ports", 2, false},
		{"authorizationPolicies[0].spec.rules", 1, false},
	} {
		a, b := itemPath(c.path, c.i), itemPath(c.path, c.i)
		if want := fmt.Sprintf("%s[%d]", c.path, c.i); a != want || b != want {
			t.Errorf("itemPath(%q, %d) = %q, %q; want %q", c.path, c.i, a, b, want)
		}
		if same := unsafe.StringData(a) == unsafe.StringData(b); same != c.shared {
			t.Errorf("itemPath(%q, %d): two calls share one string: %v, want %v", c.path, c.i, same, c.shared)
		}
	}
}
