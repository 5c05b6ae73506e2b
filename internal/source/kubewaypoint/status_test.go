package kubewaypoint

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// conds renders conditions as TYPE=STATUS/REASON.
func conds(cs []condition) string {
	var out []string
	for _, c := range cs {
		out = append(out, fmt.Sprintf("%s=%s/%s", c.Type, c.Status, c.Reason))
	}
	return strings.Join(out, " ")
}

// TestDesired_AsIstioWritesAWaypoint: the status a waypoint instance
// writes: addresses and conditions by the Service and the config, and the
// listener accepted only when it is the single HBONE listener on 15008.
func TestDesired_AsIstioWritesAWaypoint(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "waypoint", Namespace: "apps"},
		Spec: corev1.ServiceSpec{ClusterIPs: []string{"10.96.75.20"}}}
	hbone := []listenerSpec{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}
	for _, c := range []struct {
		name      string
		listeners []listenerSpec
		svc       *corev1.Service
		applyErr  error
		addrs     int
		gateway   string
		listener  []string
	}{
		{"serving", hbone, svc, nil, 2,
			"Accepted=True/Accepted Programmed=True/Programmed ResolvedRefs=True/ResolvedRefs",
			[]string{"Accepted=True/Accepted Conflicted=False/NoConflicts Programmed=True/Programmed ResolvedRefs=True/ResolvedRefs"}},
		{"no service", hbone, nil, nil, 0,
			"Accepted=True/Accepted Programmed=False/AddressNotAssigned ResolvedRefs=True/ResolvedRefs",
			[]string{"Accepted=True/Accepted Conflicted=False/NoConflicts Programmed=True/Programmed ResolvedRefs=True/ResolvedRefs"}},
		{"config not applied", hbone, svc, errors.New("bad"), 0,
			"Accepted=True/Accepted Programmed=False/Invalid ResolvedRefs=True/ResolvedRefs",
			[]string{"Accepted=True/Accepted Conflicted=False/NoConflicts Programmed=True/Programmed ResolvedRefs=True/ResolvedRefs"}},
		{"an HTTP listener", []listenerSpec{{Name: "web", Port: 80, Protocol: "HTTP"}}, svc, nil, 2,
			"Accepted=True/Accepted Programmed=True/Programmed ResolvedRefs=True/ResolvedRefs",
			[]string{"Accepted=False/UnsupportedProtocol Conflicted=False/NoConflicts Programmed=False/Invalid ResolvedRefs=True/ResolvedRefs"}},
		{"two listeners", append(hbone, listenerSpec{Name: "other", Port: 15009, Protocol: "HBONE"}), svc, nil, 2,
			"Accepted=True/Accepted Programmed=True/Programmed ResolvedRefs=True/ResolvedRefs",
			[]string{"Accepted=False/UnsupportedProtocol Conflicted=False/NoConflicts Programmed=False/Invalid ResolvedRefs=True/ResolvedRefs",
				"Accepted=False/UnsupportedProtocol Conflicted=False/NoConflicts Programmed=False/Invalid ResolvedRefs=True/ResolvedRefs"}},
	} {
		st := desired(7, c.listeners, c.svc, "waypoint", "apps", c.applyErr)
		if len(st.Addresses) != c.addrs {
			t.Errorf("%s: addresses %v, want %d", c.name, st.Addresses, c.addrs)
		}
		if got := conds(st.Conditions); got != c.gateway {
			t.Errorf("%s: gateway conditions %s, want %s", c.name, got, c.gateway)
		}
		if len(st.Listeners) != len(c.listener) {
			t.Fatalf("%s: %d listeners, want %d", c.name, len(st.Listeners), len(c.listener))
		}
		for i, l := range st.Listeners {
			if got := conds(l.Conditions); got != c.listener[i] {
				t.Errorf("%s: listener %s conditions %s, want %s", c.name, l.Name, got, c.listener[i])
			}
			if l.Name != c.listeners[i].Name || l.AttachedRoutes != 0 || len(l.SupportedKinds) != 2 {
				t.Errorf("%s: listener %+v", c.name, l)
			}
		}
		for _, cd := range st.Conditions {
			if cd.ObservedGeneration != 7 {
				t.Errorf("%s: condition %s observedGeneration %d, want 7", c.name, cd.Type, cd.ObservedGeneration)
			}
		}
	}
}
