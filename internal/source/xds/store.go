package xds

import (
	"cmp"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sync"

	"github.com/kmesh-go/kmesh/internal/model"
)

// entry is one accepted resource, already converted by its type's handler.
type entry struct {
	version string
	// seq orders resources by first arrival; an update keeps it. When two
	// resources claim the same thing (a service address, a workload name)
	// the older one wins, so a newcomer cannot take over a live service.
	seq   uint64
	value any
}

// store holds the accepted resources by type URL and name. A response is
// staged on a clone and the clone replaces the store only once the mesh
// built from it is applied, so a failed apply leaves the store as it was.
type store struct {
	seq    uint64
	byType map[string]map[string]*entry
}

func newStore() *store { return &store{byType: map[string]map[string]*entry{}} }

// clone copies the maps; entries are never modified in place, so they are
// shared.
func (s *store) clone() *store {
	c := &store{seq: s.seq, byType: make(map[string]map[string]*entry, len(s.byType))}
	for t, m := range s.byType {
		c.byType[t] = maps.Clone(m)
	}
	return c
}

// reserve makes room for n resources of a type it holds none of yet: a
// first response brings all of them at once (100,000 at scale), and
// growing the map step by step rehashes it a dozen times.
func (s *store) reserve(typeURL string, n int) {
	if len(s.byType[typeURL]) == 0 && n > 0 {
		s.byType[typeURL] = make(map[string]*entry, n)
	}
}

func (s *store) put(typeURL, name, version string, value any) {
	m := s.byType[typeURL]
	if m == nil {
		m = map[string]*entry{}
		s.byType[typeURL] = m
	}
	e := &entry{version: version, value: value}
	if old := m[name]; old != nil {
		e.seq = old.seq
	} else {
		s.seq++
		e.seq = s.seq
	}
	m[name] = e
}

func (s *store) remove(typeURL, name string) { delete(s.byType[typeURL], name) }

func (s *store) get(typeURL, name string) *entry { return s.byType[typeURL][name] }

// versions returns name -> version of every resource of a type, the
// initial_resource_versions of a delta stream.
func (s *store) versions(typeURL string) map[string]string {
	m := s.byType[typeURL]
	if len(m) == 0 {
		return nil
	}
	v := make(map[string]string, len(m))
	for name, e := range m {
		v[name] = e.version
	}
	return v
}

// named is an entry with its name, as build functions iterate them.
type named struct {
	name string
	*entry
}

// sorted returns a type's entries oldest first. No two entries of a
// store share a seq (put gives each new name the next one), so the seq
// alone orders them. When the seqs are dense (a first state: every one of
// them from 1 up), each entry is placed at its seq instead of sorted: at
// 550,000 entries the sort took ~0.6 s of CPU on the one core the build
// runs on.
func (s *store) sorted(typeURL string) []named {
	m := s.byType[typeURL]
	if len(m) == 0 {
		return nil
	}
	lo, hi := uint64(math.MaxUint64), uint64(0)
	for _, e := range m {
		lo, hi = min(lo, e.seq), max(hi, e.seq)
	}
	if span := hi - lo + 1; span <= 2*uint64(len(m)) {
		out := make([]named, span)
		for name, e := range m {
			out[e.seq-lo] = named{name, e}
		}
		return slices.DeleteFunc(out, func(n named) bool { return n.entry == nil })
	}
	out := make([]named, 0, len(m))
	for name, e := range m {
		out = append(out, named{name, e})
	}
	slices.SortFunc(out, func(a, b named) int { return cmp.Compare(a.seq, b.seq) })
	return out
}

// resourceKey names a resource across types: type URL and name.
type resourceKey struct{ typeURL, name string }

// built is what a build function makes of a store: the mesh, the
// resources left out because they clash with an older one (with the
// reason), and notes on what the data plane cannot do yet.
type built struct {
	mesh      *model.Mesh
	conflicts map[resourceKey]string
	notes     []string
	// workloads is what the workload API's build found, for the change
	// index to take over (newWorkloadIndex).
	workloads workloadClaims
}

func (b *built) conflict(typeURL, name, format string, args ...any) {
	if b.conflicts == nil {
		b.conflicts = map[resourceKey]string{}
	}
	b.conflicts[resourceKey{typeURL, name}] = fmt.Sprintf(format, args...)
}

// engine turns staged stores into applied meshes. Both clients use it.
type engine struct {
	log   *slog.Logger
	build func(*store) *built
	apply func(*model.Mesh) error

	store   *store
	applied bool            // a mesh has been applied: the data plane is ready
	built   *built          // what the last commit applied, for the workload index
	notes   map[string]bool // notes already logged
}

func newEngine(log *slog.Logger, build func(*store) *built, apply func(*model.Mesh) error) *engine {
	return &engine{log: log, build: build, apply: apply, store: newStore(), notes: map[string]bool{}}
}

// commit builds the mesh of staged and, when apply is set, applies it;
// on success staged becomes the store. It returns the rejections to
// report for the resources fresh names (the current response's): those left
// out of the mesh for clashing with older resources. An error means
// nothing was applied and the store is unchanged. alongside, when set,
// runs on the built mesh while it is validated and applied (all only read it): the
// workload client builds its index there, so it is ready for the first
// change when the data plane is, not hundreds of milliseconds after.
func (e *engine) commit(staged *store, fresh func(resourceKey) bool, apply bool, alongside func(*store, *built)) ([]string, error) {
	b := e.build(staged)
	var rejects []string
	for k, reason := range b.conflicts {
		if fresh(k) {
			rejects = append(rejects, fmt.Sprintf("resource %s: %s", k.name, reason))
		}
	}
	slices.Sort(rejects)
	// alongside starts before Validate, which it does not wait for: both
	// only read the mesh, and at 500,000 workloads Validate is ~0.6 s on
	// one core, the other one's to use. An invalid mesh is not applied,
	// and what alongside made of it is the caller's to drop.
	var wg sync.WaitGroup
	if apply && alongside != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			alongside(staged, b)
		}()
	}
	if err := b.mesh.Validate(); err != nil {
		wg.Wait()
		// The build functions check everything Validate does; this
		// catches the day they drift apart.
		return rejects, fmt.Errorf("translated mesh is invalid: %w", err)
	}
	if apply {
		err := e.apply(b.mesh)
		wg.Wait()
		if err != nil {
			return rejects, err
		}
		e.applied = true
		if alongside != nil {
			// Only the workload index takes it: the build's claims
			// are tens of MB at 500,000 workloads.
			e.built = b
		}
		e.logNotes(b.notes)
	}
	e.store = staged
	return rejects, nil
}

// addNotes logs the notes not logged yet (an incremental change knows
// only the notes of what it touched, so none is forgotten here).
func (e *engine) addNotes(notes []string) {
	for _, n := range notes {
		if !e.notes[n] {
			e.notes[n] = true
			e.log.Warn("config not fully supported", "detail", n)
		}
	}
}

// logNotes logs each note once while it holds; one that goes away and
// comes back is logged again.
func (e *engine) logNotes(notes []string) {
	now := make(map[string]bool, len(notes))
	for _, n := range notes {
		now[n] = true
		if !e.notes[n] {
			e.log.Warn("config not fully supported", "detail", n)
		}
	}
	e.notes = now
}
