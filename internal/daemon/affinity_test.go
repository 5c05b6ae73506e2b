package daemon

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/kube"
)

// The overlay between the xDS client and the daemon: whole meshes and
// changes are decorated with the Services' affinity, and a Service's new
// affinity re-emits its one xDS service. The Istio-tier e2e
// TestIstioLB_PreferCloseFailoverStrict runs it with istiod and the kernel.
func TestAffinityOverlay(t *testing.T) {
	var updates []*model.Changes
	fail := false
	update := func(c *model.Changes) error {
		if fail {
			return errors.New("map full")
		}
		updates = append(updates, c)
		return nil
	}
	o := newAffinityOverlay(update, slog.New(slog.DiscardHandler))
	affinity := func(s *model.Service) time.Duration {
		if s.SessionAffinity == nil {
			return 0
		}
		return s.SessionAffinity.Timeout
	}

	// Before the first mesh: remembered, nothing emitted.
	o.report(kube.ServiceAffinity{Key: "apps/a", Timeout: 5 * time.Second})
	if len(updates) != 0 {
		t.Fatalf("emitted before the first mesh: %v", updates)
	}
	m := &model.Mesh{Services: []model.Service{{Name: "a", Namespace: "apps"}, {Name: "b", Namespace: "apps"}}}
	var applied *model.Mesh
	if err := o.mesh(m, func(m *model.Mesh) error { applied = m; return nil }); err != nil {
		t.Fatal(err)
	}
	if affinity(&applied.Services[0]) != 5*time.Second || affinity(&applied.Services[1]) != 0 {
		t.Fatalf("first mesh: %+v", applied.Services)
	}
	if m.Services[0].SessionAffinity != nil {
		t.Fatal("the xDS client's service was modified")
	}

	// A Service's affinity changes: its one service is re-emitted.
	o.report(kube.ServiceAffinity{Key: "apps/b", Timeout: 3 * time.Second})
	if len(updates) != 1 || len(updates[0].Services) != 1 || updates[0].Services[0].Key() != "apps/b" || affinity(updates[0].Services[0]) != 3*time.Second {
		t.Fatalf("after apps/b got affinity: %+v", updates)
	}
	// The same again (another field of the Service changed): nothing.
	o.report(kube.ServiceAffinity{Key: "apps/b", Timeout: 3 * time.Second})
	// A Service istiod does not send: nothing to emit.
	o.report(kube.ServiceAffinity{Key: "apps/none", Timeout: 3 * time.Second})
	if len(updates) != 1 {
		t.Fatalf("emitted for no change: %+v", updates[1:])
	}

	// An xDS change of apps/a keeps its affinity; a removal forgets it.
	if err := o.changes(&model.Changes{Services: []*model.Service{{Name: "a", Namespace: "apps", LBMode: model.LBRandom}}, RemovedServices: []string{"apps/b"}}, update); err != nil {
		t.Fatal(err)
	}
	if c := updates[1]; len(c.Services) != 1 || affinity(c.Services[0]) != 5*time.Second || len(c.RemovedServices) != 1 {
		t.Fatalf("xDS change: %+v", c)
	}
	o.report(kube.ServiceAffinity{Key: "apps/b"})
	if len(updates) != 2 {
		t.Fatalf("emitted for a removed service: %+v", updates[2:])
	}

	// Affinity removed from the Service: the service without it.
	o.report(kube.ServiceAffinity{Key: "apps/a"})
	if c := updates[2]; len(c.Services) != 1 || c.Services[0].Key() != "apps/a" || c.Services[0].SessionAffinity != nil {
		t.Fatalf("affinity removed: %+v", c)
	}

	// A failed xDS change leaves the overlay's view as it was.
	fail = true
	if err := o.changes(&model.Changes{RemovedServices: []string{"apps/a"}}, update); err == nil {
		t.Fatal("failed update not returned")
	}
	fail = false
	o.report(kube.ServiceAffinity{Key: "apps/a", Timeout: time.Second})
	if len(updates) != 4 || updates[3].Services[0].Key() != "apps/a" {
		t.Fatalf("after a failed xDS removal, apps/a is still there: %+v", updates)
	}
}
