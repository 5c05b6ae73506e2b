package daemon

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"

	"github.com/kmesh-go/kmesh/internal/enroll"
	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/kube"
)

// enrollment is the union of the network namespaces each source wants
// enrolled: --enroll-netns, the mesh's workloads of this node (a file
// names their netns; xDS never does) and this node's pods from Kubernetes.
// One enroller keeps km_manage equal to the union.
//
// Every enrolled namespace is also matched to its workload in the mesh, so
// connect() checks policies as that workload (EACCES at once), whatever
// enrolled it (see workloadOf).
//
// Nothing is synced until every source has spoken once (the first mesh is
// applied; the kube source, when on, has listed the node's pods): the first
// sync removes entries nobody wants, and a restarted kmeshd must not drop
// the pods a previous instance enrolled while its pod list is still loading.
type enrollment struct {
	mu      sync.Mutex
	mesh    []string
	meshSet bool
	// workloads names the workload of each mesh netns (the file's).
	workloads map[string]string
	// local are the mesh's workloads of this node (waypoints left out), by
	// key: the candidates for namespaces enrolled by other sources.
	local   map[string]*model.Workload
	kube    []kube.Pod
	kubeOn  bool
	kubeSet bool
	// admin are the namespaces enrolled through the admin API, by cookie
	// (with the path they were enrolled by), as kept in the pinned
	// km_enrolled_v2.
	admin map[uint64]string
	// addrs caches the addresses read from namespaces that only a path
	// names (--enroll-netns, the admin API), by cookie.
	addrs map[uint64][]netip.Addr
	// who is the workload of each enrolled namespace as last synced:
	// workload key -> netns path (for /config_dump and explain).
	who map[string]string
}

// Enroll puts a network namespace in the mesh through the admin API
// (kmeshctl enroll), whatever the config source; it stays enrolled across
// kmeshd restarts until Unenroll or kmeshd cleanup. The namespace is kept
// by its cookie, so another spelling of the path, or another path to the
// same namespace, is the same enrollment, and a path that later names
// another namespace (a reused PID) does not carry the enrollment to it.
// kmeshd's own namespace is refused: every host process would join.
func (d *daemon) Enroll(path string) error {
	path = filepath.Clean(path)
	cookie, err := enroll.Check(path)
	if err != nil {
		return err
	}
	d.enrolling.mu.Lock()
	defer d.enrolling.mu.Unlock()
	if err := d.adminEnrolled.Add(cookie, path); err != nil {
		return err
	}
	d.enrolling.admin[cookie] = path
	_, err = d.syncEnrollment(true)
	d.log.Info("enrolled through the admin API", "netns", path, "cookie", cookie)
	return err
}

// Unenroll takes a namespace the admin API enrolled out of the mesh (other
// sources may still enroll it): the namespace path names now, and any
// enrollment made by that path whose namespace it no longer names.
func (d *daemon) Unenroll(path string) error {
	path = filepath.Clean(path)
	d.enrolling.mu.Lock()
	defer d.enrolling.mu.Unlock()
	gone := map[uint64]bool{}
	if c, err := enroll.Cookie(path); err == nil {
		gone[c] = true
	}
	for c, p := range d.enrolling.admin {
		if p == path {
			gone[c] = true
		}
	}
	for c := range gone {
		if err := d.adminEnrolled.Remove(c); err != nil {
			return err
		}
		delete(d.enrolling.admin, c)
	}
	_, err := d.syncEnrollment(true)
	d.log.Info("unenrolled through the admin API", "netns", path, "enrollments", len(gone))
	return err
}

// loadAdminEnrolled reads the admin API's enrollments a previous instance
// kept. Each must still be reachable by the path it was enrolled by, as the
// same namespace: one whose path is gone or names another namespace now
// (its PID was reused) is dropped, never carried to the newcomer. Entries
// of the earlier path-keyed km_enrolled are carried over once.
func (d *daemon) loadAdminEnrolled() error {
	kept, err := d.adminEnrolled.List()
	if err != nil {
		return err
	}
	d.enrolling.admin = map[uint64]string{}
	for c, p := range kept {
		now, err := enroll.Cookie(p)
		if err == nil && now == c {
			d.enrolling.admin[c] = p
			continue
		}
		d.log.Warn("admin enrollment dropped: its path no longer names the namespace enrolled", "netns", p, "cookie", c, "err", err)
		if err := d.adminEnrolled.Remove(c); err != nil {
			return err
		}
	}
	legacy, err := d.adminEnrolled.Legacy()
	if err != nil {
		return err
	}
	for _, p := range legacy {
		p = filepath.Clean(p)
		c, err := enroll.Check(p)
		if err != nil {
			d.log.Warn("admin enrollment of an earlier kmeshd dropped", "netns", p, "err", err)
			continue
		}
		if err := d.adminEnrolled.Add(c, p); err != nil {
			return err
		}
		d.enrolling.admin[c] = p
	}
	if legacy != nil {
		return d.adminEnrolled.DropLegacy()
	}
	return nil
}

// newKubeSource returns the Kubernetes enrollment source of cfg, or nil
// when kmeshd does not watch Kubernetes.
func newKubeSource(cfg Config, log *slog.Logger) (*kube.Source, error) {
	if !cfg.Kube.Enabled() {
		return nil, nil
	}
	kc := cfg.Kube
	kc.Node = cfg.Node
	// With a CA this node serves HBONE for its pods: istiod must know.
	kc.HBONE = cfg.Identity.Enabled()
	return kube.New(kc, log.With("component", "kube"))
}

// startKube runs the kube source until ctx ends; its reports feed the
// enrollment.
func (d *daemon) startKube(ctx context.Context, ks *kube.Source) {
	if ks == nil {
		return
	}
	d.enrolling.mu.Lock()
	d.enrolling.kubeOn = true
	d.enrolling.mu.Unlock()
	go func() {
		if err := ks.Run(ctx, d.kubeReport); err != nil && ctx.Err() == nil {
			d.log.Error("kubernetes enrollment stopped", "err", err)
		}
	}()
}

func (d *daemon) kubeReport(pods []kube.Pod) {
	d.enrolling.mu.Lock()
	defer d.enrolling.mu.Unlock()
	d.enrolling.kube, d.enrolling.kubeSet = pods, true
	n, err := d.syncEnrollment(true)
	d.log.Info("kubernetes pods enrolled", "pods", len(pods), "enrolled", n)
	if err != nil {
		d.log.Error("enrollment incomplete", "err", err)
	}
}

// enrollChanged enrolls the workloads of this node with a netns, with the
// other sources' namespaces, when c (undo: what it replaced) touches a
// workload of this node, or on a full sync; and returns how many
// namespaces are enrolled. Changes to other nodes' workloads (most xDS
// changes) cost nothing here.
func (d *daemon) enrollChanged(c, undo *model.Changes, full bool) (int, error) {
	// A waypoint speaks for itself: kmeshd never captures its traffic.
	local := func(w *model.Workload) bool { return w.Node == d.node && !w.IsWaypoint() }
	d.enrolling.mu.Lock()
	defer d.enrolling.mu.Unlock()
	e := &d.enrolling
	if e.workloads == nil {
		e.workloads = map[string]string{}
		e.local = map[string]*model.Workload{}
	}
	// Policies change who a namespace is to connect() (ApplyNetns).
	touched := full || len(c.Policies)+len(c.RemovedPolicies) > 0
	for _, w := range undo.Workloads {
		if local(w) {
			delete(e.local, w.Key())
			if w.Netns != "" {
				delete(e.workloads, w.Netns)
			}
			touched = true
		}
	}
	for _, k := range c.RemovedWorkloads {
		if _, ok := e.local[k]; ok {
			delete(e.local, k)
			touched = true
		}
		for p, wk := range e.workloads {
			if wk == k {
				delete(e.workloads, p)
				touched = true
			}
		}
	}
	for _, w := range c.Workloads {
		if local(w) {
			e.local[w.Key()] = w
			if w.Netns != "" {
				e.workloads[w.Netns] = w.Key()
			}
			touched = true
		}
	}
	if !touched {
		return len(d.enroller.Cookies()), nil
	}
	e.mesh = slices.Sorted(maps.Keys(e.workloads))
	e.meshSet = true
	// A change re-reads no namespace it does not add (an xDS workload
	// has none: a local workload's change reads nothing); a full sync
	// (start-up, resync) reads every one again.
	return d.syncEnrollment(full)
}

// syncEnrollment makes km_manage the union of the sources, once each has
// spoken, and tells connect() the workload of each enrolled namespace.
// With reread, every path's cookie is read again (a source reported its
// paths anew, or a full sync); without, only paths not read before are
// (Enroller.Change), and namespaces enrolled by path alone keep the
// addresses read before. The caller holds enrolling.mu.
func (d *daemon) syncEnrollment(reread bool) (int, error) {
	e := &d.enrolling
	if !e.meshSet || (e.kubeOn && !e.kubeSet) {
		return 0, nil
	}
	union := slices.Concat(d.static, e.mesh, kube.Paths(e.kube))
	slices.Sort(union)
	union = slices.Compact(union)
	var err error
	if reread {
		err = d.enroller.Sync(union, e.admin)
	} else {
		err = d.enroller.Change(union, e.admin)
	}
	enrolled := d.enroller.Cookies()
	cookies, who := e.workloadOf(d.enroller.Paths(), enrolled, reread, d.log)
	if !maps.Equal(who, e.who) {
		// The tunnel listens in each of them (internal/tunnel).
		d.tunnelEnrollmentChanged()
	}
	e.who = who
	return len(enrolled), errors.Join(err, d.writer.ApplyNetns(cookies))
}

// workloadOf finds the workload of each enrolled namespace (enrolled: path
// -> cookie, one path per namespace; paths: every path read) among the
// mesh's workloads of this node, and returns them by cookie, and by
// workload key (-> netns path). In order:
//
//   - the file names the namespace as a workload's netns;
//   - Kubernetes enrolled it for a pod: the workload named as the pod
//     (namespace/name, as istiod names it), else the one with the pod's IPs;
//   - --enroll-netns or the admin API enrolled it: the workload with the
//     namespace's own addresses (read once per namespace, and again while
//     none matches on a reread, or when none were read).
//
// An address match must name one workload; a namespace whose addresses
// belong to several (or none) stays unnamed, and only the destination side
// checks its connections. The caller holds enrolling.mu.
func (e *enrollment) workloadOf(paths, enrolled map[string]uint64, reread bool, log *slog.Logger) (map[uint64]string, map[string]string) {
	out := map[uint64]string{}
	who := map[string]string{}
	set := func(c uint64, key, path string) {
		if _, ok := out[c]; !ok && key != "" {
			out[c] = key
			who[key] = path
		}
	}
	for path, key := range e.workloads {
		if c, ok := paths[path]; ok {
			set(c, key, path)
		}
	}
	byAddr := map[netip.Addr][]string{}
	for key, w := range e.local {
		for _, a := range w.Addresses {
			byAddr[a.Unmap()] = append(byAddr[a.Unmap()], key)
		}
	}
	match := func(addrs []netip.Addr) string {
		found := ""
		for _, a := range addrs {
			for _, key := range byAddr[a.Unmap()] {
				if found != "" && found != key {
					return "" // ambiguous
				}
				found = key
			}
		}
		return found
	}
	for _, p := range e.kube {
		c, ok := paths[p.Netns]
		if !ok {
			continue
		}
		if _, ok := e.local[p.Key()]; ok {
			set(c, p.Key(), p.Netns)
		} else {
			set(c, match(p.IPs), p.Netns)
		}
	}
	if e.addrs == nil {
		e.addrs = map[uint64][]netip.Addr{}
	}
	for path, c := range enrolled {
		if _, ok := out[c]; ok {
			continue
		}
		addrs, cached := e.addrs[c]
		key := ""
		if cached {
			key = match(addrs)
		}
		if key == "" && (reread || len(addrs) == 0) {
			var err error
			if addrs, err = enroll.Addresses(path); err != nil {
				log.Debug("addresses of an enrolled namespace unread", "netns", path, "err", err)
				continue
			}
			e.addrs[c] = addrs
			key = match(addrs)
		}
		set(c, key, path)
	}
	live := map[uint64]bool{}
	for _, c := range enrolled {
		live[c] = true
	}
	for c := range e.addrs {
		if !live[c] {
			delete(e.addrs, c)
		}
	}
	return out, who
}

// enrolledWorkloads returns the workload of each enrolled namespace this
// kmeshd matched: workload key -> netns path.
func (d *daemon) enrolledWorkloads() map[string]string {
	d.enrolling.mu.Lock()
	defer d.enrolling.mu.Unlock()
	return maps.Clone(d.enrolling.who)
}
