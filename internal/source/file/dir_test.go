package file

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/model"
)

// dirFiles is a random directory mesh: files of services (selecting by
// app label) and workloads, and one file of policies.
type dirFiles struct {
	rng   *rand.Rand
	files map[string]map[string]string // file -> item name -> YAML of the item
}

func (f *dirFiles) workload(i int) string {
	return fmt.Sprintf("- {name: w-%d, labels: {app: a%d, tier: t%d}, addresses: [\"10.9.%d.%d\"], node: node-b, weight: %d}\n",
		i, f.rng.IntN(4), f.rng.IntN(2), i/200, i%200+1, 1+f.rng.IntN(3))
}

func (f *dirFiles) service(i int) string {
	sel := fmt.Sprintf("{app: a%d}", f.rng.IntN(4))
	if f.rng.IntN(3) == 0 {
		sel = fmt.Sprintf("{app: a%d, tier: t%d}", f.rng.IntN(4), f.rng.IntN(2))
	}
	return fmt.Sprintf("- {name: s-%d, addresses: [\"10.96.9.%d\"], ports: [{port: 80, targetPort: %d}], selector: %s}\n",
		i, i+1, 8080+f.rng.IntN(2), sel)
}

func (f *dirFiles) write(t *testing.T, path, name string) {
	var svc, wl []string
	for item, y := range f.files[name] {
		if strings.HasPrefix(item, "s-") {
			svc = append(svc, y)
		} else if strings.HasPrefix(item, "w-") {
			wl = append(wl, y)
		}
	}
	var b strings.Builder
	if len(svc) > 0 {
		b.WriteString("services:\n" + strings.Join(svc, ""))
	}
	if len(wl) > 0 {
		b.WriteString("workloads:\n" + strings.Join(wl, ""))
	}
	if y, ok := f.files[name]["policy"]; ok {
		b.WriteString(y)
	}
	writeFile(t, filepath.Join(path, name), b.String())
}

const dirPolicy = `authorizationPolicies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: deny-t1, namespace: default}
  spec:
    selector: {matchLabels: {tier: t1}}
    action: DENY
    rules: [{from: [{source: {namespaces: ["evil"]}}]}]
`

// stateSink is what kmeshd does with the source's output: the first mesh
// as a state, then changes checked and applied, whole meshes diffed.
type stateSink struct {
	mu      sync.Mutex
	st      *model.State
	wholes  int
	changes int
	last    *model.Changes
	err     error // the last change refused
}

func (k *stateSink) apply(m *model.Mesh) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.wholes++
	if k.st == nil {
		k.st = model.NewState()
	}
	c := k.st.DiffMesh(m)
	if err := k.st.Check(c); err != nil {
		k.err = err
		return err
	}
	k.st.Apply(c)
	return nil
}

func (k *stateSink) update(c *model.Changes) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.changes++
	k.last = c
	if err := k.st.Check(c); err != nil {
		k.err = err
		return err
	}
	k.st.Apply(c)
	return nil
}

// A directory mesh changed one file at a time, at random (workloads added,
// removed, relabelled, moved between files; services reselected), leaves
// after every step the same state as the whole directory parsed afresh;
// edits of services and workloads take the incremental path.
func TestDirSource_ChangesEqualWholeParse(t *testing.T) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			path := t.TempDir()
			f := &dirFiles{rng: rand.New(rand.NewPCG(seed, 7)), files: map[string]map[string]string{}}
			names := []string{"a.yaml", "b.yaml", "c.yml", "d.yaml"}
			if seed == 2 {
				// From 16 files on, the first load grows its maps ahead
				// (dir.reserve).
				for i := range 16 {
					names = append(names, fmt.Sprintf("e%02d.yaml", i))
				}
			}
			for _, n := range names {
				f.files[n] = map[string]string{}
			}
			where := map[string]string{} // item -> file
			for i := range 40 {
				n := names[f.rng.IntN(len(names))]
				f.files[n][fmt.Sprintf("w-%d", i)] = f.workload(i)
				where[fmt.Sprintf("w-%d", i)] = n
			}
			for i := range 8 {
				n := names[f.rng.IntN(len(names))]
				f.files[n][fmt.Sprintf("s-%d", i)] = f.service(i)
				where[fmt.Sprintf("s-%d", i)] = n
			}
			f.files["d.yaml"]["policy"] = dirPolicy
			for _, n := range names {
				f.write(t, path, n)
			}
			src := New(path, "", slog.New(slog.DiscardHandler))
			src.dirRejected = map[string]digest{}
			sink := &stateSink{}
			src.syncDir(nil, sink.apply, sink.update)
			if sink.st == nil {
				t.Fatal("no first state")
			}
			for step := range 60 {
				// One edit in one file.
				i := f.rng.IntN(50)
				item := fmt.Sprintf("w-%d", i)
				if i >= 40 {
					item = fmt.Sprintf("s-%d", i%8)
				}
				from := where[item]
				switch op := f.rng.IntN(4); {
				case op == 0 && from != "": // remove
					delete(f.files[from], item)
					delete(where, item)
					f.write(t, path, from)
					src.syncDir([]string{from}, sink.apply, sink.update)
				case op == 1 && from != "": // move: out of one file, then into another
					to := names[f.rng.IntN(len(names))]
					y := f.files[from][item]
					delete(f.files[from], item)
					f.write(t, path, from)
					src.syncDir([]string{from}, sink.apply, sink.update)
					f.files[to][item] = y
					where[item] = to
					f.write(t, path, to)
					src.syncDir([]string{to}, sink.apply, sink.update)
				default: // add or change in place
					if from == "" {
						from = names[f.rng.IntN(len(names))]
						where[item] = from
					}
					if strings.HasPrefix(item, "w-") {
						f.files[from][item] = f.workload(i)
					} else {
						f.files[from][item] = f.service(i % 8)
					}
					f.write(t, path, from)
					src.syncDir([]string{from}, sink.apply, sink.update)
				}
				if sink.err != nil {
					t.Fatalf("step %d: refused: %v", step, sink.err)
				}
				want, err := New(path, "", nil).Load()
				if err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				want.Sort()
				got := sink.st.Mesh()
				if !reflect.DeepEqual(got.Services, want.Services) || !reflect.DeepEqual(got.Workloads, want.Workloads) ||
					!reflect.DeepEqual(got.Policies, want.Policies) {
					t.Fatalf("step %d (item %s, file %s): state from changes differs from the directory parsed whole: %s\nlast change %s", step, item, from, meshDiff(got, want), sink.last)
				}
			}
			if sink.changes == 0 {
				t.Errorf("no edit took the incremental path (%d whole meshes)", sink.wholes)
			}
			t.Logf("%d incremental changes, %d whole meshes", sink.changes, sink.wholes)
		})
	}
}

// A bad file is refused alone with file:line; the mesh keeps its previous
// version of that file and the other files' changes still apply. A name
// that another file defines is refused naming both files, and the file
// applies once the other lets go of the name.
func TestDirSource_BadFileRefusedAlone(t *testing.T) {
	path := t.TempDir()
	a, b := filepath.Join(path, "a.yaml"), filepath.Join(path, "b.yaml")
	writeFile(t, a, "workloads:\n- {name: w-1, labels: {app: x}, addresses: [\"10.9.0.1\"], node: node-b}\n")
	writeFile(t, b, "services:\n- {name: s, addresses: [\"10.96.9.1\"], ports: [{port: 80}], selector: {app: x}}\n")
	var logs logBuffer
	src := New(path, "", slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	var rejects []error
	src.OnReject(func(err error) { rejects = append(rejects, err) })
	src.dirRejected = map[string]digest{}
	sink := &stateSink{}
	src.syncDir(nil, sink.apply, sink.update)

	writeFile(t, a, "workloads:\n- {name: w-1, labels: {app: x}, addresses: [\"10.9.0.1\"], node: node-b}\n- {name: w-2, addresses: [\"10.9.0.300\"], node: node-b}\n")
	src.syncDir([]string{"a.yaml"}, sink.apply, sink.update)
	if len(rejects) != 1 || !strings.Contains(rejects[0].Error(), a+":3:") {
		t.Fatalf("rejects %v, want one naming %s:3", rejects, a)
	}
	if sink.st.Workload("default/w-2") != nil || sink.st.Workload("default/w-1") == nil {
		t.Fatal("the bad file changed the state")
	}
	// The other file still applies.
	writeFile(t, b, "services:\n- {name: s, addresses: [\"10.96.9.1\"], ports: [{port: 80, targetPort: 81}], selector: {app: x}}\n")
	src.syncDir([]string{"b.yaml"}, sink.apply, sink.update)
	if s := sink.st.Service("default/s"); s == nil || s.Ports[0].TargetPort != 81 || len(s.Endpoints) != 1 {
		t.Fatalf("service after the good file: %+v\n%s", s, logs.String())
	}
	// A workload b defines too: refused naming a.
	writeFile(t, b, "services:\n- {name: s, addresses: [\"10.96.9.1\"], ports: [{port: 80, targetPort: 81}], selector: {app: x}}\n"+
		"workloads:\n- {name: w-1, addresses: [\"10.9.0.9\"], node: node-b}\n")
	src.syncDir([]string{"b.yaml"}, sink.apply, sink.update)
	if len(rejects) != 2 || !strings.Contains(rejects[1].Error(), b+":4: workloads[0].name: workload default/w-1 is already defined in a.yaml") {
		t.Fatalf("rejects %v, want the second naming %s:4 and a.yaml", rejects, b)
	}
	// a lets go of w-1: b's version applies on the same sync.
	writeFile(t, a, "")
	src.syncDir([]string{"a.yaml"}, sink.apply, sink.update)
	if w := sink.st.Workload("default/w-1"); w == nil || w.Addresses[0].String() != "10.9.0.9" {
		t.Fatalf("w-1 after a let go: %+v", w)
	}
}

// Through the watcher: one endpoint changed in one file of many reaches
// the sink as a change naming that workload alone.
func TestDirSource_WatchHandsOneChange(t *testing.T) {
	path := t.TempDir()
	for i := range 20 {
		var b strings.Builder
		fmt.Fprintf(&b, "services:\n- {name: s-%d, addresses: [\"10.96.9.%d\"], ports: [{port: 80}], selector: {app: a%d}}\nworkloads:\n", i, i+1, i)
		for j := range 10 {
			fmt.Fprintf(&b, "- {name: w-%d-%d, labels: {app: a%d}, addresses: [\"10.9.%d.%d\"], node: node-b}\n", i, j, i, i, j+1)
		}
		writeFile(t, filepath.Join(path, fmt.Sprintf("part-%02d.yaml", i)), b.String())
	}
	src := New(path, "", nil)
	m, err := src.Load()
	if err != nil {
		t.Fatal(err)
	}
	sink := &stateSink{}
	if err := sink.apply(m); err != nil {
		t.Fatal(err)
	}
	got := make(chan *model.Changes, 8)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- src.RunChanges(ctx, sink.apply, func(c *model.Changes) error {
			err := sink.update(c)
			got <- c
			return err
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	time.Sleep(100 * time.Millisecond) // the watch is set up
	content, _ := os.ReadFile(filepath.Join(path, "part-07.yaml"))
	writeFile(t, filepath.Join(path, "part-07.yaml"), strings.Replace(string(content), "10.9.7.3\"", "10.9.77.3\"", 1))
	select {
	case c := <-got:
		if len(c.Workloads) != 1 || c.Workloads[0].Key() != "default/w-7-2" || len(c.Services)+len(c.RemovedServices)+len(c.RemovedWorkloads) != 0 {
			t.Fatalf("change %s, want workload default/w-7-2 alone", c)
		}
	case <-time.After(eventTimeout):
		t.Fatal("no change handed over")
	}
	if w := sink.st.Workload("default/w-7-2"); w.Addresses[0].String() != "10.9.77.3" {
		t.Fatalf("w-7-2 is %v", w.Addresses)
	}
}

// meshDiff names the first item two meshes disagree on.
func meshDiff(got, want *model.Mesh) string {
	for i := range max(len(got.Services), len(want.Services)) {
		if i >= len(got.Services) || i >= len(want.Services) || !reflect.DeepEqual(got.Services[i], want.Services[i]) {
			var g, w any
			if i < len(got.Services) {
				g = got.Services[i]
			}
			if i < len(want.Services) {
				w = want.Services[i]
			}
			return fmt.Sprintf("service %d:\ngot  %+v\nwant %+v", i, g, w)
		}
	}
	for i := range max(len(got.Workloads), len(want.Workloads)) {
		if i >= len(got.Workloads) || i >= len(want.Workloads) || !reflect.DeepEqual(got.Workloads[i], want.Workloads[i]) {
			var g, w any
			if i < len(got.Workloads) {
				g = got.Workloads[i]
			}
			if i < len(want.Workloads) {
				w = want.Workloads[i]
			}
			return fmt.Sprintf("workload %d:\ngot  %+v\nwant %+v", i, g, w)
		}
	}
	return fmt.Sprintf("policies:\ngot  %+v\nwant %+v", got.Policies, want.Policies)
}

// A directory holds each workload once: after the first mesh, the parsed
// item is the mesh's copy (which the daemon keeps), also for a workload
// that a policy selects; workloads of a file with the same labels share
// one labels map.
func TestDirSource_HoldsEachWorkloadOnce(t *testing.T) {
	path := t.TempDir()
	writeFile(t, filepath.Join(path, "a.yaml"), "workloads:\n"+
		"- {name: w-1, labels: {app: x, tier: t1}, addresses: [\"10.9.0.1\"], node: node-b}\n"+
		"- {name: w-2, labels: {tier: t1, app: x}, addresses: [\"10.9.0.2\"], node: node-b}\n"+
		"- {name: w-3, labels: {app: y}, addresses: [\"10.9.0.3\"], node: node-b}\n")
	writeFile(t, filepath.Join(path, "b.yaml"), "services:\n- {name: s, addresses: [\"10.96.9.1\"], ports: [{port: 80}], selector: {app: x}}\n"+dirPolicy)
	src := New(path, "", nil)
	m, err := src.Load()
	if err != nil {
		t.Fatal(err)
	}
	d := src.dir
	if len(m.Workloads) != 3 || len(d.workloads) != 3 {
		t.Fatalf("%d workloads in the mesh, %d parsed, want 3", len(m.Workloads), len(d.workloads))
	}
	for i := range m.Workloads {
		key := m.Workloads[i].Key()
		if d.workloads[key].Workload != &m.Workloads[i] || d.outWl[key] != &m.Workloads[i] {
			t.Errorf("workload %s: the parsed item or the record of what was handed over is a copy, not the mesh's", key)
		}
	}
	if got := m.Workloads[0].Policies; !reflect.DeepEqual(got, []string{"default/deny-t1"}) {
		t.Errorf("w-1's policies %v, want [default/deny-t1]", got)
	}
	w1, w2, w3 := d.workloads["default/w-1"].Labels, d.workloads["default/w-2"].Labels, d.workloads["default/w-3"].Labels
	if reflect.ValueOf(w1).UnsafePointer() != reflect.ValueOf(w2).UnsafePointer() {
		t.Error("w-1 and w-2 have the same labels in two maps")
	}
	if reflect.ValueOf(w1).UnsafePointer() == reflect.ValueOf(w3).UnsafePointer() {
		t.Error("w-1 and w-3 share a labels map but their labels differ")
	}
	// Re-reading a.yaml unchanged but for w-3 changes w-3 alone: the
	// mesh's policies on w-1 do not make it look changed.
	writeFile(t, filepath.Join(path, "a.yaml"), "workloads:\n"+
		"- {name: w-1, labels: {app: x, tier: t1}, addresses: [\"10.9.0.1\"], node: node-b}\n"+
		"- {name: w-2, labels: {tier: t1, app: x}, addresses: [\"10.9.0.2\"], node: node-b}\n"+
		"- {name: w-3, labels: {app: y}, addresses: [\"10.9.0.4\"], node: node-b}\n")
	src.dirRejected = map[string]digest{}
	var got *model.Changes
	src.syncDir([]string{"a.yaml"}, func(*model.Mesh) error { t.Fatal("whole mesh for a workload change"); return nil },
		func(c *model.Changes) error { got = c; return nil })
	if got == nil || len(got.Workloads) != 1 || got.Workloads[0].Key() != "default/w-3" || len(got.Services)+len(got.RemovedWorkloads) != 0 {
		t.Fatalf("changes %+v, want w-3 alone", got)
	}
	// The file's new parse keeps no copy of the workloads that did not
	// change: they still hold the mesh's.
	for _, w := range d.parts["a.yaml"].workloads {
		if d.workloads[w.key] != w {
			t.Errorf("workload %s: the index holds another item than the file's part", w.key)
		}
		if w.key != "default/w-3" && w.Workload != &m.Workloads[slices.IndexFunc(m.Workloads, func(x model.Workload) bool { return x.Key() == w.key })] {
			t.Errorf("unchanged workload %s: the new parse holds a copy of its own", w.key)
		}
	}
	// A file that takes a service address of another is refused naming it.
	writeFile(t, filepath.Join(path, "c.yaml"), "services:\n- {name: s2, addresses: [\"10.96.9.1\"], ports: [{port: 80}]}\n")
	var rejected error
	src.OnReject(func(err error) { rejected = err })
	src.syncDir([]string{"c.yaml"}, func(*model.Mesh) error { return nil }, func(*model.Changes) error { return nil })
	if rejected == nil || !strings.Contains(rejected.Error(), "10.96.9.1:80 is already used by service default/s (b.yaml)") {
		t.Fatalf("c.yaml taking s's address: %v, want a refusal naming s and b.yaml", rejected)
	}
}
