package kubewaypoint

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
)

// ClusterDomain is the DNS suffix of the Service hostname written in a
// Gateway's status (istiod looks the waypoint up by it).
const ClusterDomain = "cluster.local"

// ControllerName is the GatewayClass controllerName kmesh-waypoint owns:
// it writes the status of a GatewayClass with it (Accepted), as Istio's
// controller does for istio-waypoint. A class with another controllerName
// is someone else's and its status is left alone.
const ControllerName = "kmesh.net/waypoint"

// WaypointPort and WaypointProtocol are the one listener a waypoint
// Gateway has, as Istio requires of its own.
const (
	WaypointPort     = 15008
	WaypointProtocol = "HBONE"
)

var gatewayClassGVR = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gatewayclasses"}

// statusWriter writes one Gateway's status, and its GatewayClass's. Every
// instance of the waypoint writes the same status, and only when it
// differs from what the API server holds, so instances do not fight.
type statusWriter struct {
	dyn             dynamic.Interface
	log             *slog.Logger
	namespace, name string
}

type condition struct {
	Type               string `json:"type"`
	Status             string `json:"status"`
	Reason             string `json:"reason"`
	Message            string `json:"message"`
	ObservedGeneration int64  `json:"observedGeneration"`
	LastTransitionTime string `json:"lastTransitionTime"`
}

type address struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

type routeKind struct {
	Group string `json:"group"`
	Kind  string `json:"kind"`
}

type listenerStatus struct {
	Name           string      `json:"name"`
	SupportedKinds []routeKind `json:"supportedKinds"`
	AttachedRoutes int         `json:"attachedRoutes"`
	Conditions     []condition `json:"conditions"`
}

// gatewayStatus is the part of a Gateway's status kmesh-waypoint writes.
type gatewayStatus struct {
	Addresses  []address        `json:"addresses"`
	Conditions []condition      `json:"conditions"`
	Listeners  []listenerStatus `json:"listeners"`
}

type listenerSpec struct {
	Name     string `json:"name"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
}

func cond(typ string, ok bool, reason, msg string, gen int64) condition {
	st := "True"
	if !ok {
		st = "False"
	}
	return condition{Type: typ, Status: st, Reason: reason, Message: msg, ObservedGeneration: gen}
}

// desired is the status this instance wants, as Istio writes a waypoint's:
// the Service's hostname and cluster IPs (istiod prefers the hostname);
// Gateway conditions Accepted, Programmed and ResolvedRefs; and per
// listener Accepted (only a single HBONE listener on 15008 is a
// waypoint's), Conflicted, Programmed and ResolvedRefs, the route kinds a
// waypoint takes and the routes attached to it (none: GAMMA routes attach
// to Services).
func desired(gen int64, listeners []listenerSpec, svc *corev1.Service, svcName, ns string, applyErr error) gatewayStatus {
	programmed := cond("Programmed", true, "Programmed", "", gen)
	var addrs []address
	switch {
	case svc == nil:
		programmed = cond("Programmed", false, "AddressNotAssigned", fmt.Sprintf("service %s/%s not found: the waypoint has no address", ns, svcName), gen)
	case applyErr != nil:
		programmed = cond("Programmed", false, "Invalid", "config not applied: "+applyErr.Error(), gen)
	default:
		addrs = append(addrs, address{Type: "Hostname", Value: svc.Name + "." + svc.Namespace + ".svc." + ClusterDomain})
		for _, ip := range svc.Spec.ClusterIPs {
			if ip != "" && ip != corev1.ClusterIPNone {
				addrs = append(addrs, address{Type: "IPAddress", Value: ip})
			}
		}
		programmed.Message = fmt.Sprintf("kmesh-waypoint is ready behind service %s/%s", ns, svcName)
	}
	st := gatewayStatus{
		Addresses: addrs,
		Conditions: []condition{
			cond("Accepted", true, "Accepted", "kmesh-waypoint serves this Gateway", gen),
			programmed,
			cond("ResolvedRefs", true, "ResolvedRefs", "All references resolved", gen),
		},
		Listeners: []listenerStatus{},
	}
	single := len(listeners) == 1
	for _, l := range listeners {
		ok := single && l.Port == WaypointPort && l.Protocol == WaypointProtocol
		accepted := cond("Accepted", true, "Accepted", "No errors found", gen)
		lprog := cond("Programmed", true, "Programmed", "No errors found", gen)
		if !ok {
			accepted = cond("Accepted", false, "UnsupportedProtocol", fmt.Sprintf("Expected a single listener on port %d with protocol %q", WaypointPort, WaypointProtocol), gen)
			lprog = cond("Programmed", false, "Invalid", "the listener is not a waypoint's", gen)
		}
		st.Listeners = append(st.Listeners, listenerStatus{
			Name:           l.Name,
			SupportedKinds: []routeKind{{Group: "gateway.networking.k8s.io", Kind: "HTTPRoute"}, {Group: "gateway.networking.k8s.io", Kind: "GRPCRoute"}},
			Conditions: []condition{accepted, cond("Conflicted", false, "NoConflicts", "No errors found", gen), lprog,
				cond("ResolvedRefs", true, "ResolvedRefs", "No errors found", gen)},
		})
	}
	return st
}

// keepTimes gives each condition the transition time of the current one
// of its type when its status did not change, else now.
func keepTimes(conds, cur []condition, now string) {
	for i := range conds {
		conds[i].LastTransitionTime = now
		for _, old := range cur {
			if old.Type == conds[i].Type && old.Status == conds[i].Status && old.LastTransitionTime != "" {
				conds[i].LastTransitionTime = old.LastTransitionTime
			}
		}
	}
}

// statusOf decodes obj's status into out (zero when it has none).
func statusOf(obj *unstructured.Unstructured, out any) {
	if st, ok := obj.Object["status"]; ok {
		data, _ := json.Marshal(st)
		_ = json.Unmarshal(data, out)
	}
}

func (w *statusWriter) sync(ctx context.Context, gw *unstructured.Unstructured, svc *corev1.Service, svcName string, applyErr error) error {
	var listeners []listenerSpec
	if ls, ok, _ := unstructured.NestedSlice(gw.Object, "spec", "listeners"); ok {
		data, _ := json.Marshal(ls)
		_ = json.Unmarshal(data, &listeners)
	}
	want := desired(gw.GetGeneration(), listeners, svc, svcName, w.namespace, applyErr)
	var cur gatewayStatus
	statusOf(gw, &cur)
	now := metav1.Now().UTC().Format(time.RFC3339)
	keepTimes(want.Conditions, cur.Conditions, now)
	for i := range want.Listeners {
		for _, old := range cur.Listeners {
			if old.Name == want.Listeners[i].Name {
				keepTimes(want.Listeners[i].Conditions, old.Conditions, now)
			}
		}
		if want.Listeners[i].Conditions[0].LastTransitionTime == "" {
			keepTimes(want.Listeners[i].Conditions, nil, now)
		}
	}
	if want.Addresses == nil {
		want.Addresses = []address{}
	}
	if cur.Addresses == nil {
		cur.Addresses = []address{}
	}
	if cur.Listeners == nil {
		cur.Listeners = []listenerStatus{}
	}
	if reflect.DeepEqual(cur, want) {
		return nil
	}
	patch, err := json.Marshal(map[string]any{"status": want})
	if err != nil {
		return err
	}
	_, err = w.dyn.Resource(gatewayGVR).Namespace(w.namespace).Patch(ctx, w.name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "kmesh-waypoint"}, "status")
	if err != nil {
		return err
	}
	w.log.Info("gateway status written", "gateway", w.namespace+"/"+w.name, "addresses", len(want.Addresses),
		"programmed", want.Conditions[1].Status, "reason", want.Conditions[1].Reason)
	return nil
}

// syncClass writes Accepted on the GatewayClass named class when its
// controllerName is ours; a class of another controller, or none, is left
// alone.
func (w *statusWriter) syncClass(ctx context.Context, class string) error {
	gc, err := w.dyn.Resource(gatewayClassGVR).Get(ctx, class, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("gatewayclass %s: %w", class, err)
	}
	if ctl, _, _ := unstructured.NestedString(gc.Object, "spec", "controllerName"); ctl != ControllerName {
		return nil
	}
	var cur struct {
		Conditions []condition `json:"conditions"`
	}
	statusOf(gc, &cur)
	want := []condition{cond("Accepted", true, "Accepted", "Handled by kmesh-waypoint", gc.GetGeneration())}
	keepTimes(want, cur.Conditions, metav1.Now().UTC().Format(time.RFC3339))
	for _, c := range cur.Conditions {
		if c == want[0] {
			return nil
		}
	}
	// Other conditions (SupportedVersion, ...) are kept: a merge patch
	// replaces the list, so they are written back as they were.
	conds := want
	for _, c := range cur.Conditions {
		if c.Type != "Accepted" {
			conds = append(conds, c)
		}
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": conds}})
	if err != nil {
		return err
	}
	if _, err := w.dyn.Resource(gatewayClassGVR).Patch(ctx, class, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "kmesh-waypoint"}, "status"); err != nil {
		return fmt.Errorf("gatewayclass %s: %w", class, err)
	}
	w.log.Info("gatewayclass status written", "gatewayclass", class, "accepted", "True")
	return nil
}
