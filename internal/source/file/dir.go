package file

import (
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/kmesh-go/kmesh/internal/model"
)

// dir is a mesh made of many files: the part of each file as last
// accepted, and the indexes that turn one file's new part into the
// changes it makes without re-reading or re-joining the other files.
//
// A change to services and workloads alone (an endpoint added, moved,
// relabelled) costs the changed file's parse plus O(what it touches):
// the services whose selectors match the old or new labels of a changed
// workload get their endpoints from the label index. A change that
// touches policies, peer authentications or L7 objects, or a mesh with
// waypoints or peer authentications (whose translation reads every
// workload), is joined whole from the kept parts (no file is read again)
// and handed over as a whole mesh.
type dir struct {
	node  string
	parts map[string]*part // by file name

	// owner: kind and key -> file that defines it, for the kinds other
	// than workloads and services, which hold their file (ownerOf).
	owner     map[ownerKey]string
	fronts    map[netip.AddrPort]string // service address:port -> service key
	workloads map[string]*workload      // by key, as parsed
	services  map[string]*service       // by key, as parsed (no endpoints)
	labels    map[string]map[labelPair]map[string]struct{}
	// selectors: namespace -> one label of a selector -> keys of the
	// services whose selector has it; a workload's labels find the
	// services that may select it without a look at the others.
	selectors map[string]map[labelPair]map[string]struct{}
	policies  []*policy // kernel workload-selector policies of all files
	waypoints int       // services and workloads using a waypoint
	peerAuths int

	// What the mesh handed over holds, for the incremental diff.
	outSvc map[string]*model.Service
	outWl  map[string]*model.Workload
}

func newDir(node string) *dir {
	return &dir{
		node: node, parts: map[string]*part{}, owner: map[ownerKey]string{}, fronts: map[netip.AddrPort]string{},
		workloads: map[string]*workload{}, services: map[string]*service{},
		labels: map[string]map[labelPair]map[string]struct{}{}, selectors: map[string]map[labelPair]map[string]struct{}{},
		outSvc: map[string]*model.Service{}, outWl: map[string]*model.Workload{},
	}
}

// reserve grows the maps by key of a directory being read for files
// times the items of the files read so far (the first sixteenth of them):
// at 500,000 endpoints rehashing them as they grew was ~3 % of a first
// sync, on the one goroutine that takes the files in order.
func (d *dir) reserve(files int) {
	if len(d.parts) == 0 {
		return
	}
	grow := func(have int) int { return have * files / len(d.parts) }
	if n := grow(len(d.workloads)); n > len(d.workloads) {
		m := make(map[string]*workload, n)
		maps.Copy(m, d.workloads)
		d.workloads = m
	}
	if n := grow(len(d.services)); n > len(d.services) {
		m := make(map[string]*service, n)
		maps.Copy(m, d.services)
		d.services = m
	}
	if n := grow(len(d.fronts)); n > len(d.fronts) {
		m := make(map[netip.AddrPort]string, n)
		maps.Copy(m, d.fronts)
		d.fronts = m
	}
}

// parsePart parses one file of a directory. Routes may name services of
// the other files.
func (d *dir) parsePart(name string, data []byte) (*part, error) {
	a := arenas.Get().(*nodeArena)
	root, err := decode(data, a)
	pt, err := d.parseDecoded(name, data, root, err)
	release(a, pt)
	return pt, err
}

// parseDecoded is parsePart for a file already decoded (readAhead):
// root and err are what decode returned for data.
func (d *dir) parseDecoded(name string, data []byte, root *yaml.Node, err error) (*part, error) {
	if err != nil {
		return nil, syntaxError(name, data, err)
	}
	p := newParser(name, d.node, len(data))
	pt := &part{}
	if root != nil {
		pt = p.items(root, d.external(name))
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	return pt, nil
}

// parseAlone is parseDecoded of a decoded file for a reader of many files
// at once (readAhead): ok is false, and nothing is parsed, when its items
// need the services of the other files (a file with routes), which only
// the reader taking the files in order has.
func parseAlone(path, node string, data []byte, root *yaml.Node) (pt *part, ok bool, err error) {
	if root == nil {
		return &part{}, true, nil
	}
	p := newParser(path, node, len(data))
	needs := false
	pt = p.items(root, func() []*service { needs = true; return nil })
	if needs {
		return nil, false, nil
	}
	return pt, true, p.err()
}

// external returns the services of the files other than name.
func (d *dir) external(name string) func() []*service {
	return func() []*service {
		var out []*service
		for f, pt := range d.parts {
			if f != name {
				out = append(out, pt.services...)
			}
		}
		return out
	}
}

// ownerKey is a kind ("workload", "service", ...) and an item's key.
type ownerKey struct{ kind, key string }

// owned is one key a part defines, with where, for messages.
type owned struct {
	key         ownerKey
	line        int
	path, field string
	what        string // kind, or the kind's longer name
}

func lineOf(n *yaml.Node) int {
	if n == nil {
		return 0
	}
	return n.Line
}

// eachOwned calls f with each key the part defines; items false leaves
// out workloads and services, which are not in dir.owner: a map of 110,000
// of them by key would cost ~7 MB at 100,000 endpoints, so they hold their
// file name instead.
func (pt *part) eachOwned(items bool, f func(owned)) {
	add := func(kind, key string, line int, path, field, what string) {
		if line != 0 {
			f(owned{ownerKey{kind, key}, line, path, field, what})
		}
	}
	if items {
		for _, w := range pt.workloads {
			add("workload", w.key, w.nameLine, w.path, "name", "workload")
		}
		for _, s := range pt.services {
			add("service", s.key, s.nameLine, s.path, "name", "service")
		}
	}
	for _, p := range pt.policies {
		add("policy", p.Key(), lineOf(p.nameNode), p.path, "metadata.name", "policy")
	}
	for _, pa := range pt.peerAuths {
		add("peer authentication", pa.key(), lineOf(pa.nameNode), pa.path, "metadata.name", "peer authentication")
	}
	for _, g := range pt.gateways {
		add("gateway", g.Key(), lineOf(g.nameNode), g.path, "metadata.name", "gateway")
	}
	for _, r := range pt.routes {
		add(string(r.Kind), r.Namespace+"/"+r.Name, lineOf(r.nameNode), r.path, "metadata.name", string(r.Kind))
	}
	for _, vs := range pt.vss {
		add("virtual service", vs.Key(), lineOf(vs.nameNode), vs.path, "metadata.name", "virtual service")
	}
}

// ownerOf returns the file that defines k.
func (d *dir) ownerOf(k ownerKey) (string, bool) {
	switch k.kind {
	case "workload":
		if w := d.workloads[k.key]; w != nil {
			return w.file, true
		}
		return "", false
	case "service":
		if s := d.services[k.key]; s != nil {
			return s.file, true
		}
		return "", false
	}
	f, ok := d.owner[k]
	return f, ok
}

// check reports what file name's new part claims that another file
// holds: a name, or a service address and port. The errors name
// path:line.
func (d *dir) check(name, path string, data []byte, pt *part) error {
	p := newParser(path, d.node, len(data))
	pt.eachOwned(true, func(o owned) {
		if f, ok := d.ownerOf(o.key); ok && f != name {
			p.errorAt(o.line, o.path+"."+o.field, "%s %s is already defined in %s", o.what, o.key.key, f)
		}
	})
	for _, s := range pt.services {
		for i, a := range s.Addresses {
			for _, sp := range s.Ports {
				ap := netip.AddrPortFrom(a, sp.Port)
				if k, ok := d.fronts[ap]; ok && k != s.key {
					if f, _ := d.ownerOf(ownerKey{"service", k}); f != name {
						p.errorAt(s.addrLines[i], s.addrPaths[i], "%s is already used by service %s (%s)", ap, k, f)
					}
				}
			}
		}
	}
	return p.err()
}

// swap replaces file name's part old (nil: none) with new (nil: the file
// is gone) in the indexes, and returns the workload and service keys
// whose parsed form changed. Swapping back undoes it.
func (d *dir) swap(name string, old, new *part) (workloads, services map[string]bool) {
	workloads, services = map[string]bool{}, map[string]bool{}
	if old == nil {
		old = &part{}
	}
	if new == nil {
		new = &part{}
	}
	old.eachOwned(false, func(o owned) { delete(d.owner, o.key) })
	new.eachOwned(false, func(o owned) { d.owner[o.key] = name })
	for _, w := range new.workloads {
		w.file = name
	}
	for _, s := range new.services {
		s.file = name
	}
	// A new file (the whole first sync) has no old items to match.
	var newW map[string]*workload
	if len(old.workloads) > 0 {
		newW = make(map[string]*workload, len(new.workloads))
		for _, w := range new.workloads {
			newW[w.key] = w
		}
	}
	for _, w := range old.workloads {
		if n := newW[w.key]; n == nil || !sameWorkload(n.Workload, w.Workload) {
			workloads[w.key] = true
			d.unindexWorkload(w)
		}
	}
	oldW := make(map[string]*workload, len(old.workloads))
	for _, w := range old.workloads {
		oldW[w.key] = w
	}
	for _, w := range new.workloads {
		if o := oldW[w.key]; o == nil || !sameWorkload(o.Workload, w.Workload) {
			workloads[w.key] = true
			d.indexWorkload(w)
		} else if d.workloads[w.key] == o {
			// Unchanged: the new item takes the copy the old one
			// holds (the mesh's, see whole), so the file's new parse
			// does not keep a second copy of every workload in it.
			w.Workload = o.Workload
			d.workloads[w.key] = w
		}
	}
	var newS map[string]*service
	if len(old.services) > 0 {
		newS = make(map[string]*service, len(new.services))
		for _, s := range new.services {
			newS[s.key] = s
		}
	}
	for _, s := range old.services {
		if n := newS[s.key]; n == nil || !sameService(n, s) {
			services[s.key] = true
			d.unindexService(s)
		}
	}
	oldS := make(map[string]*service, len(old.services))
	for _, s := range old.services {
		oldS[s.key] = s
	}
	for _, s := range new.services {
		if o := oldS[s.key]; o == nil || !sameService(o, s) {
			services[s.key] = true
			d.indexService(s)
		}
	}
	d.peerAuths += len(new.peerAuths) - len(old.peerAuths)
	d.parts[name] = new
	return workloads, services
}

// sameWorkload compares two parsed workloads; Policies are the mesh's
// (see workload), not the file's.
func sameWorkload(a, b *model.Workload) bool {
	x, y := *a, *b
	x.Policies, y.Policies = nil, nil
	return reflect.DeepEqual(&x, &y)
}

func sameService(a, b *service) bool {
	return reflect.DeepEqual(a.Service, b.Service) && maps.Equal(a.selector, b.selector)
}

// labelPair is one label of a workload or selector, a key of the label
// and selector indexes: a struct, not one string made of both, so that
// indexing a workload allocates nothing per label.
type labelPair struct{ k, v string }

func (d *dir) indexWorkload(w *workload) {
	d.workloads[w.key] = w
	if w.UsesWaypoint() != "" {
		d.waypoints++
	}
	ns := d.labels[w.Namespace]
	if ns == nil {
		ns = map[labelPair]map[string]struct{}{}
		d.labels[w.Namespace] = ns
	}
	for k, v := range w.Labels {
		set := ns[labelPair{k, v}]
		if set == nil {
			set = map[string]struct{}{}
			ns[labelPair{k, v}] = set
		}
		set[w.key] = struct{}{}
	}
}

func (d *dir) unindexWorkload(w *workload) {
	// By key: an unchanged workload keeps the pointer of an older part.
	// Keys are unique across files (check).
	delete(d.workloads, w.key)
	if w.UsesWaypoint() != "" {
		d.waypoints--
	}
	ns := d.labels[w.Namespace]
	for k, v := range w.Labels {
		if set := ns[labelPair{k, v}]; set != nil {
			delete(set, w.key)
			if len(set) == 0 {
				delete(ns, labelPair{k, v})
			}
		}
	}
}

func (d *dir) indexService(s *service) {
	d.services[s.key] = s
	if s.UsesWaypoint() != "" {
		d.waypoints++
	}
	for _, a := range s.Addresses {
		for _, sp := range s.Ports {
			d.fronts[netip.AddrPortFrom(a, sp.Port)] = s.key
		}
	}
	ns := d.selectors[s.Namespace]
	if ns == nil {
		ns = map[labelPair]map[string]struct{}{}
		d.selectors[s.Namespace] = ns
	}
	for k, v := range s.selector {
		set := ns[labelPair{k, v}]
		if set == nil {
			set = map[string]struct{}{}
			ns[labelPair{k, v}] = set
		}
		set[s.key] = struct{}{}
	}
}

func (d *dir) unindexService(s *service) {
	delete(d.services, s.key)
	if s.UsesWaypoint() != "" {
		d.waypoints--
	}
	for _, a := range s.Addresses {
		for _, sp := range s.Ports {
			if ap := netip.AddrPortFrom(a, sp.Port); d.fronts[ap] == s.key {
				delete(d.fronts, ap)
			}
		}
	}
	ns := d.selectors[s.Namespace]
	for k, v := range s.selector {
		if set := ns[labelPair{k, v}]; set != nil {
			delete(set, s.key)
			if len(set) == 0 {
				delete(ns, labelPair{k, v})
			}
		}
	}
}

// selectWorkloads appends to into the keys of the workloads of namespace
// whose labels include selector, sorted; none for an empty selector.
func (d *dir) selectWorkloads(namespace string, selector map[string]string, into []string) []string {
	if len(selector) == 0 {
		return into
	}
	ns := d.labels[namespace]
	var shortest map[string]struct{}
	for k, v := range selector {
		set := ns[labelPair{k, v}]
		if len(set) == 0 {
			return into
		}
		if shortest == nil || len(set) < len(shortest) {
			shortest = set
		}
	}
	out := slices.Grow(into, len(shortest))
	for key := range shortest {
		// With one label the set is the answer: no look-up of each
		// workload in a map of them all (a cache miss each).
		if len(selector) == 1 || model.SelectorMatches(selector, d.workloads[key].Labels) {
			out = append(out, key)
		}
	}
	slices.Sort(out[len(into):])
	return out
}

// incremental reports whether a change from old to new can take the
// incremental path (see dir).
func (d *dir) incremental(old, new *part) bool {
	if d.waypoints > 0 || d.peerAuths > 0 {
		return false
	}
	if old == nil {
		old = &part{}
	}
	if new == nil {
		new = &part{}
	}
	return samePolicies(old.policies, new.policies) && len(old.peerAuths)+len(new.peerAuths) == 0 &&
		len(old.gateways)+len(new.gateways)+len(old.routes)+len(new.routes)+len(old.vss)+len(new.vss) == 0
}

func samePolicies(a, b []*policy) bool {
	return slices.EqualFunc(a, b, func(x, y *policy) bool {
		return reflect.DeepEqual(x.Policy, y.Policy) && maps.Equal(x.selector, y.selector) &&
			x.notEnforced == y.notEnforced && reflect.DeepEqual(x.waypoint, y.waypoint)
	})
}

// changes returns what the swap that changed workloads and services
// (their keys) makes of the mesh handed over, and records it as handed
// over; undo puts the record back.
func (d *dir) changes(workloads, services map[string]bool) (c *model.Changes, undo func()) {
	c = &model.Changes{}
	oldSvc, oldWl := map[string]*model.Service{}, map[string]*model.Workload{}
	// Services whose selector matches a changed workload, before or after.
	for key := range workloads {
		var ls []map[string]string
		if w := d.workloads[key]; w != nil {
			ls = append(ls, w.Labels)
		}
		if w := d.outWl[key]; w != nil {
			ls = append(ls, w.Labels)
		}
		ns := d.selectors[key[:strings.IndexByte(key, '/')]]
		for _, l := range ls {
			for k, v := range l {
				for sk := range ns[labelPair{k, v}] {
					if s := d.services[sk]; s != nil && model.SelectorMatches(s.selector, l) {
						services[sk] = true
					}
				}
			}
		}
	}
	for key := range workloads {
		old, had := d.outWl[key]
		w := d.workloads[key]
		if w == nil {
			if had {
				oldWl[key] = old
				delete(d.outWl, key)
				c.RemovedWorkloads = append(c.RemovedWorkloads, key)
			}
			continue
		}
		mw := *w.Workload
		mw.Policies = d.policiesOf(&mw)
		if had && reflect.DeepEqual(old, &mw) {
			continue
		}
		oldWl[key] = old
		d.outWl[key] = &mw
		c.Workloads = append(c.Workloads, &mw)
	}
	for key := range services {
		old, had := d.outSvc[key]
		s := d.services[key]
		if s == nil {
			if had {
				oldSvc[key] = old
				delete(d.outSvc, key)
				c.RemovedServices = append(c.RemovedServices, key)
			}
			continue
		}
		ms := s.Service
		ms.Endpoints = slices.Clone(ms.Endpoints)
		for _, wk := range d.selectWorkloads(s.Namespace, s.selector, nil) {
			ms.Endpoints = append(ms.Endpoints, model.Endpoint{Workload: wk})
		}
		slices.SortFunc(ms.Endpoints, func(a, b model.Endpoint) int { return strings.Compare(a.Workload, b.Workload) })
		if had && reflect.DeepEqual(old, &ms) {
			continue
		}
		oldSvc[key] = old
		d.outSvc[key] = &ms
		c.Services = append(c.Services, &ms)
	}
	return c, func() {
		for k, s := range oldSvc {
			if s == nil {
				delete(d.outSvc, k)
			} else {
				d.outSvc[k] = s
			}
		}
		for k, w := range oldWl {
			if w == nil {
				delete(d.outWl, k)
			} else {
				d.outWl[k] = w
			}
		}
	}
}

// policiesOf lists the kernel workload-selector policies that select w,
// as selectPolicies does for a whole mesh.
func (d *dir) policiesOf(w *model.Workload) []string {
	var out []string
	for _, pol := range d.policies {
		if pol.Scope != model.ScopeWorkloadSelector || (pol.Namespace != w.Namespace && pol.Namespace != RootNamespace) {
			continue
		}
		if model.SelectorMatches(pol.selector, w.Labels) {
			out = append(out, pol.Key())
		}
	}
	slices.Sort(out)
	return out
}

// whole joins every kept part into one mesh and records it as handed
// over; undo puts the record back.
func (d *dir) whole() (m *model.Mesh, undo func()) {
	all := &part{}
	var services, workloads int
	for _, pt := range d.parts {
		services, workloads = services+len(pt.services), workloads+len(pt.workloads)
	}
	all.services, all.workloads = make([]*service, 0, services), make([]*workload, 0, workloads)
	for _, name := range slices.Sorted(maps.Keys(d.parts)) {
		pt := d.parts[name]
		all.services = append(all.services, pt.services...)
		all.workloads = append(all.workloads, pt.workloads...)
		all.policies = append(all.policies, pt.policies...)
		all.gateways = append(all.gateways, pt.gateways...)
		all.routes = append(all.routes, pt.routes...)
		all.vss = append(all.vss, pt.vss...)
		all.peerAuths = append(all.peerAuths, pt.peerAuths...)
	}
	m = &model.Mesh{}
	all.buildWorkloads(m)
	oldSvc, oldWl, oldPol := d.outSvc, d.outWl, d.policies
	// The record of the workloads handed over is made on another core
	// while the rest of the mesh is joined: at 500,000 endpoints it is
	// a map of as many, ~0.2 s of a first sync. The endpoints come from
	// the directory's own label index, which holds the same workloads,
	// rather than one made again of the whole mesh.
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		d.outWl = make(map[string]*model.Workload, len(m.Workloads))
		for i, w := range all.workloads {
			d.outWl[w.key] = &m.Workloads[i]
		}
	}()
	all.join(m, d.selectWorkloads)
	<-recorded
	for i, w := range all.workloads {
		// The parsed item now points at the mesh's copy, which the
		// daemon keeps: one copy of each workload, not two. (Not
		// beside join: selectWorkloads reads the items' labels.)
		w.Workload = &m.Workloads[i]
	}
	d.outSvc = make(map[string]*model.Service, len(m.Services))
	for i, s := range all.services {
		d.outSvc[s.key] = &m.Services[i]
	}
	d.policies = slices.DeleteFunc(all.policies, func(p *policy) bool { return p.notEnforced != "" })
	return m, func() { d.outSvc, d.outWl, d.policies = oldSvc, oldWl, oldPol }
}
