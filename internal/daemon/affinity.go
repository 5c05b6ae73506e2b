package daemon

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/kube"
)

// affinityOverlay puts the sessionAffinity of Kubernetes Services onto the
// services xDS hands over, which never carry it (Istio's workload API has
// no such field). It sits between the xDS client and the daemon: every
// mesh and change from xDS is decorated on the way, and a Service whose
// affinity changes re-emits its one xDS service, decorated anew.
type affinityOverlay struct {
	log *slog.Logger

	mu     sync.Mutex                 // held across calls into the daemon, so they stay in order
	want   map[string]time.Duration   // Service key -> ClientIP timeout (absent: none)
	base   map[string]*model.Service  // xDS services as the client handed them over
	update func(*model.Changes) error // the daemon's
	ready  bool                       // a mesh was applied: update may be called
}

func newAffinityOverlay(update func(*model.Changes) error, log *slog.Logger) *affinityOverlay {
	return &affinityOverlay{log: log, update: update, want: map[string]time.Duration{}, base: map[string]*model.Service{}}
}

// decorate returns s with the affinity its Service asks for: s itself when
// that is what it has, else a copy (s belongs to the xDS client).
func (o *affinityOverlay) decorate(s *model.Service) *model.Service {
	var want *model.SessionAffinity
	if t, ok := o.want[s.Key()]; ok {
		want = &model.SessionAffinity{Timeout: t}
	}
	if (want == nil && s.SessionAffinity == nil) || (want != nil && s.SessionAffinity != nil && *want == *s.SessionAffinity) {
		return s
	}
	c := *s
	c.SessionAffinity = want
	return &c
}

// mesh decorates a whole mesh from xDS and hands it to apply.
func (o *affinityOverlay) mesh(m *model.Mesh, apply func(*model.Mesh) error) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := *m
	out.Services = make([]model.Service, len(m.Services))
	base := make(map[string]*model.Service, len(m.Services))
	for i := range m.Services {
		base[m.Services[i].Key()] = &m.Services[i]
		out.Services[i] = *o.decorate(&m.Services[i])
	}
	if err := apply(&out); err != nil {
		return err
	}
	o.base, o.ready = base, true
	return nil
}

// changes decorates one change from xDS and hands it to update.
func (o *affinityOverlay) changes(c *model.Changes, update func(*model.Changes) error) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := *c
	out.Services = make([]*model.Service, len(c.Services))
	for i, s := range c.Services {
		out.Services[i] = o.decorate(s)
	}
	if err := update(&out); err != nil {
		return err
	}
	for _, s := range c.Services {
		o.base[s.Key()] = s
	}
	for _, k := range c.RemovedServices {
		delete(o.base, k)
	}
	return nil
}

// report takes one Service's affinity from Kubernetes. When it differs
// from what the xDS service of that name has, that service alone is
// re-emitted. A failed update is logged; the affinity is kept and goes
// out with the service's next change.
func (o *affinityOverlay) report(a kube.ServiceAffinity) {
	o.mu.Lock()
	defer o.mu.Unlock()
	old, had := o.want[a.Key]
	if had == (a.Timeout > 0) && old == a.Timeout {
		return
	}
	if a.Timeout > 0 {
		o.want[a.Key] = a.Timeout
	} else {
		delete(o.want, a.Key)
	}
	s := o.base[a.Key]
	if s == nil || !o.ready {
		return // no such xDS service (yet): it is decorated when it comes
	}
	if err := o.update(&model.Changes{Services: []*model.Service{o.decorate(s)}}); err != nil {
		o.log.Error("sessionAffinity from the Service not applied", "service", a.Key, "err", err)
		return
	}
	o.log.Info("sessionAffinity from the Service applied", "service", a.Key, "timeout", a.Timeout)
}

// run watches Services with ks until ctx ends.
func (o *affinityOverlay) run(ctx context.Context, ks *kube.Source) {
	go func() {
		if err := ks.WatchServiceAffinity(ctx, o.report); err != nil && ctx.Err() == nil {
			o.log.Error("watching services for sessionAffinity stopped", "err", err)
		}
	}()
}
