package dataplane

import (
	"bytes"
	"flag"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/source/file"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/*.txtar")

// testStores runs f on the fake store and, as root, on real maps: the
// same logic must write the same entries into both.
func testStores(t *testing.T, limits bpf.Limits, f func(t *testing.T, s *Store)) {
	t.Run("fake", func(t *testing.T) { f(t, NewFakeStore(limits).Store) })
	t.Run("maps", func(t *testing.T) { f(t, newMaps(t, limits)) })
}

// archive is a txtar file: a comment, then "-- name --" sections.
type archive struct {
	comment string
	files   []archiveFile
}

type archiveFile struct {
	name string
	data []byte
}

func parseArchive(data []byte) archive {
	var a archive
	cur := (*archiveFile)(nil)
	for _, line := range strings.SplitAfter(string(data), "\n") {
		if name, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "-- "); ok && strings.HasSuffix(name, " --") {
			a.files = append(a.files, archiveFile{name: strings.TrimSuffix(name, " --")})
			cur = &a.files[len(a.files)-1]
			continue
		}
		if cur == nil {
			a.comment += line
		} else {
			cur.data = append(cur.data, line...)
		}
	}
	return a
}

func (a archive) format() []byte {
	var b bytes.Buffer
	b.WriteString(a.comment)
	for _, f := range a.files {
		b.WriteString("-- " + f.name + " --\n")
		b.Write(f.data)
	}
	return b.Bytes()
}

// TestDataplane_Golden runs testdata/*.txtar: each "-- N.yaml --" config
// (the file source's format) is applied in turn to one dataplane and the
// maps must then equal "-- N.maps --" (the /maps dump). Last, the final
// config applied to empty maps must give "-- full.maps --": what a
// restart without pins writes. Run with -update to rewrite the dumps.
func TestDataplane_Golden(t *testing.T) {
	paths, err := filepath.Glob("testdata/*.txtar")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txtar"), func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			testStores(t, bpf.DefaultLimits, func(t *testing.T, s *Store) {
				a := parseArchive(data)
				got := runArchive(t, a, s)
				if *update && t.Name() == "TestDataplane_Golden/"+strings.TrimSuffix(filepath.Base(path), ".txtar")+"/fake" {
					if err := os.WriteFile(path, got.format(), 0o644); err != nil {
						t.Fatal(err)
					}
					return
				}
				for i, f := range a.files {
					if string(f.data) != string(got.files[i].data) {
						t.Errorf("%s:\n%s\nwant:\n%s", f.name, got.files[i].data, f.data)
					}
				}
			})
		})
	}
}

// runArchive applies the archive's configs and returns it with the
// dumps the maps gave.
func runArchive(t *testing.T, a archive, s *Store) archive {
	t.Helper()
	d, err := New(s, bpf.DefaultLimits, discard)
	if err != nil {
		t.Fatal(err)
	}
	out := archive{comment: a.comment}
	var last []byte
	var stepDumps = map[string][]byte{}
	for _, f := range a.files {
		step, ok := strings.CutSuffix(f.name, ".yaml")
		if !ok {
			continue
		}
		m, err := file.Parse(f.name, f.data, "")
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Apply(m); err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		stepDumps[step+".maps"] = []byte(dump(t, s) + "\n")
		last = f.data
	}
	if last != nil {
		full := NewFakeStore(bpf.DefaultLimits).Store
		fd, err := New(full, bpf.DefaultLimits, discard)
		if err != nil {
			t.Fatal(err)
		}
		m, err := file.Parse("last", last, "")
		if err != nil {
			t.Fatal(err)
		}
		if err := fd.Apply(m); err != nil {
			t.Fatal(err)
		}
		stepDumps["full.maps"] = []byte(dump(t, full) + "\n")
	}
	for _, f := range a.files {
		if d, ok := stepDumps[f.name]; ok {
			f.data = d
			delete(stepDumps, f.name)
		}
		out.files = append(out.files, f)
	}
	for _, name := range slices.Sorted(maps.Keys(stepDumps)) {
		out.files = append(out.files, archiveFile{name: name, data: stepDumps[name]})
	}
	return out
}
