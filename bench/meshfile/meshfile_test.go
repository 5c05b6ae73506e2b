package meshfile

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/internal/source/file"
)

// The files must pass kmeshd's own parser.
func TestSynthetic_ParsesWithKmeshdsParser(t *testing.T) {
	m := Synthetic(10, 95, 3, "remote")
	m.Workloads = append(m.Workloads, Workload{Name: "client", App: "client", Node: "node-a",
		Netns: "/var/run/netns/client", Address: netip.MustParseAddr("10.1.1.10")})
	var buf bytes.Buffer
	if err := Write(&buf, m); err != nil {
		t.Fatal(err)
	}
	mesh, err := file.Parse("synthetic.yaml", buf.Bytes(), "")
	if err != nil {
		t.Fatalf("%v\n%s", err, buf.String())
	}
	if len(mesh.Services) != 10 || len(mesh.Workloads) != 96 {
		t.Fatalf("%d services, %d workloads; want 10, 96", len(mesh.Services), len(mesh.Workloads))
	}
	total := 0
	for i, s := range mesh.Services {
		if want := 9 + min(1, 5/(i+1)); len(s.Endpoints) != want { // 95 = 5×10 + 5×9
			t.Errorf("service %s: %d endpoints, want %d", s.Name, len(s.Endpoints), want)
		}
		if s.Addresses[0] != SyntheticAddress(i) || s.Name != SyntheticService(i) || s.Namespace != SyntheticNamespace(i, 3) {
			t.Errorf("service %d: %s/%s at %v", i, s.Namespace, s.Name, s.Addresses)
		}
		total += len(s.Endpoints)
	}
	if total != 95 {
		t.Errorf("%d endpoints, want 95", total)
	}
	if w := mesh.Workloads[95]; w.Netns != "/var/run/netns/client" || w.Node != "node-a" {
		t.Errorf("client workload: %+v", w)
	}
}

func TestSynthetic_AddressesAreUnique(t *testing.T) {
	m := Synthetic(65000, 70000, 100, "remote")
	seen := map[netip.Addr]bool{}
	for _, s := range m.Services {
		seen[s.Address] = true
	}
	for _, w := range m.Workloads {
		seen[w.Address] = true
	}
	if len(seen) != 135000 {
		t.Errorf("%d distinct addresses, want 135000", len(seen))
	}
}

func TestWriteFile_ReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mesh.yaml")
	for _, n := range []int{3, 1} {
		size, err := WriteFile(path, Synthetic(1, n, 1, "remote"))
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(path)
		if err != nil || int64(len(data)) != size {
			t.Fatalf("read %d bytes (%v), WriteFile said %d", len(data), err, size)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d files, want only mesh.yaml", len(entries))
	}
}

// Split puts each service with the workloads of its app, the rest in one
// file, and loses nothing.
func TestSplit_ServicesWithTheirWorkloads(t *testing.T) {
	m := Synthetic(20, 60, 3, "remote")
	m.Workloads = append(m.Workloads, Workload{Name: "loner", App: "nobody", Node: "remote"})
	fileOf := func(app string) string {
		if app == SyntheticService(0) || app == SyntheticService(1) {
			return "first.yaml"
		}
		if strings.HasPrefix(app, "svc-") {
			return "others.yaml"
		}
		return ""
	}
	parts := Split(m, fileOf, "rest.yaml")
	if len(parts) != 3 {
		t.Fatalf("files %v, want first, others, rest", len(parts))
	}
	if n := len(parts["first.yaml"].Services); n != 2 {
		t.Errorf("first.yaml has %d services, want 2", n)
	}
	for _, w := range parts["first.yaml"].Workloads {
		if w.App != SyntheticService(0) && w.App != SyntheticService(1) {
			t.Errorf("first.yaml has workload %s of app %s", w.Name, w.App)
		}
	}
	if r := parts["rest.yaml"]; len(r.Services) != 0 || len(r.Workloads) != 1 || r.Workloads[0].Name != "loner" {
		t.Errorf("rest.yaml: %+v", r)
	}
	total := 0
	for _, p := range parts {
		total += len(p.Workloads)
	}
	if total != len(m.Workloads) {
		t.Errorf("%d workloads in the files, want %d", total, len(m.Workloads))
	}
}
