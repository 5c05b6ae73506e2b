package model

import "testing"

// TestWorkload_TunnelledFrom: a client reaches HBONE workloads of other
// nodes through the tunnel, and a waypoint instance on its own node too
// (as Istio ambient sends a same-node waypoint HBONE); every other
// same-node workload, and any workload without HBONE, goes direct.
func TestWorkload_TunnelledFrom(t *testing.T) {
	wp := map[string]string{LabelGatewayName: "waypoint"}
	for _, tc := range []struct {
		name string
		w    Workload
		want bool
	}{
		{"other node, HBONE", Workload{Node: "b", TunnelProtocol: TunnelHBONE}, true},
		{"other node, netns with a CA", Workload{Node: "b", Netns: "/x"}, true},
		{"other node, NONE", Workload{Node: "b", Netns: "/x", TunnelProtocol: TunnelNone}, false},
		{"same node, HBONE", Workload{Node: "a", TunnelProtocol: TunnelHBONE}, false},
		{"same node, waypoint, HBONE", Workload{Node: "a", TunnelProtocol: TunnelHBONE, Labels: wp}, true},
		{"same node, waypoint, NONE", Workload{Node: "a", TunnelProtocol: TunnelNone, Labels: wp}, false},
	} {
		if got := tc.w.TunnelledFrom("a", true); got != tc.want {
			t.Errorf("%s: TunnelledFrom = %v, want %v", tc.name, got, tc.want)
		}
	}
	if (&Workload{Node: "b", Netns: "/x"}).TunnelledFrom("a", false) {
		t.Error("without a CA a workload with a netns is not tunnelled")
	}
}
