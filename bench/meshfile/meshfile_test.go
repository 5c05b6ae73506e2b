package meshfile

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
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
