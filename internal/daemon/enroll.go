package daemon

import (
	"context"
	"errors"
	"log/slog"
	"maps"
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
// Nothing is synced until every source has spoken once (the first mesh is
// applied; the kube source, when on, has listed the node's pods): the first
// sync removes entries nobody wants, and a restarted kmeshd must not drop
// the pods a previous instance enrolled while its pod list is still loading.
type enrollment struct {
	mu      sync.Mutex
	mesh    []string
	meshSet bool
	// workloads names the workload of each mesh netns, so connect() can
	// check policies as that workload (dataplane.ApplyNetns).
	workloads map[string]string
	kube      []string
	kubeOn    bool
	kubeSet   bool
	// admin are the namespaces enrolled through the admin API, by cookie
	// (with the path they were enrolled by), as kept in the pinned
	// km_enrolled_v2.
	admin map[uint64]string
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
	_, err = d.syncEnrollment()
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
	_, err := d.syncEnrollment()
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

func (d *daemon) kubeReport(paths []string) {
	d.enrolling.mu.Lock()
	defer d.enrolling.mu.Unlock()
	d.enrolling.kube, d.enrolling.kubeSet = paths, true
	n, err := d.syncEnrollment()
	d.log.Info("kubernetes pods enrolled", "pods", len(paths), "enrolled", n)
	if err != nil {
		d.log.Error("enrollment incomplete", "err", err)
	}
}

// enrollChanged enrolls the workloads of this node with a netns, with the
// other sources' namespaces, when c (undo: what it replaced) touches one,
// or on a full sync; and returns how many namespaces are enrolled.
// Changes to other workloads (every xDS change) cost nothing here.
func (d *daemon) enrollChanged(c, undo *model.Changes, full bool) (int, error) {
	// A waypoint speaks for itself: kmeshd never captures its traffic.
	local := func(w *model.Workload) bool { return w.Node == d.node && w.Netns != "" && !w.IsWaypoint() }
	d.enrolling.mu.Lock()
	defer d.enrolling.mu.Unlock()
	e := &d.enrolling
	if e.workloads == nil {
		e.workloads = map[string]string{}
	}
	// Policies change who a namespace is to connect() (ApplyNetns).
	touched := full || len(c.Policies)+len(c.RemovedPolicies) > 0
	for _, w := range undo.Workloads {
		if local(w) {
			delete(e.workloads, w.Netns)
			touched = true
		}
	}
	for _, k := range c.RemovedWorkloads {
		for p, wk := range e.workloads {
			if wk == k {
				delete(e.workloads, p)
				touched = true
			}
		}
	}
	for _, w := range c.Workloads {
		if local(w) {
			e.workloads[w.Netns] = w.Key()
			touched = true
		}
	}
	if !touched {
		return len(d.enroller.Cookies()), nil
	}
	e.mesh = slices.Sorted(maps.Keys(e.workloads))
	e.meshSet = true
	return d.syncEnrollment()
}

// syncEnrollment makes km_manage the union of the sources, once each has
// spoken. The caller holds enrolling.mu.
func (d *daemon) syncEnrollment() (int, error) {
	e := &d.enrolling
	if !e.meshSet || (e.kubeOn && !e.kubeSet) {
		return 0, nil
	}
	union := slices.Concat(d.static, e.mesh, e.kube)
	slices.Sort(union)
	union = slices.Compact(union)
	err := d.enroller.Sync(union, e.admin)
	// Namespaces enrolled only by --enroll-netns or Kubernetes name no
	// workload here; the destination side checks their connections.
	cookies := map[uint64]string{}
	for path, c := range d.enroller.Cookies() {
		if w, ok := e.workloads[path]; ok {
			cookies[c] = w
		}
	}
	return len(d.enroller.Cookies()), errors.Join(err, d.writer.ApplyNetns(cookies))
}
