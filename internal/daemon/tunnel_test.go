package daemon

import (
	"slices"
	"testing"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/tunnel"
)

// TestPodsOf: every enrolled namespace matched to a workload is a pod of
// the tunnel, whatever enrolled it, in a stable order; a match to a
// workload the mesh no longer has is dropped.
func TestPodsOf(t *testing.T) {
	m := &model.Mesh{Workloads: []model.Workload{
		{Namespace: "apps", Name: "file", Netns: "/ns/file"},
		{Namespace: "apps", Name: "kube"},
	}}
	who := map[string]string{"apps/kube": "/var/run/netns/kube", "apps/file": "/ns/file", "apps/gone": "/ns/gone"}
	want := []tunnel.Pod{{Workload: "apps/file", Netns: "/ns/file"}, {Workload: "apps/kube", Netns: "/var/run/netns/kube"}}
	if got := podsOf(m, who); !slices.Equal(got, want) {
		t.Fatalf("pods %+v, want %+v", got, want)
	}
}
