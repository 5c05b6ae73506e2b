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
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
)

// ClusterDomain is the DNS suffix of the Service hostname written in a
// Gateway's status (istiod looks the waypoint up by it).
const ClusterDomain = "cluster.local"

// statusWriter writes one Gateway's status. Every instance of the
// waypoint writes the same status, and only when it differs from what
// the API server holds, so instances do not fight.
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

// desired is the status this instance wants: the Service's hostname and
// cluster IPs (istiod prefers the hostname) and the two conditions
// Gateway API clients read.
func desired(gen int64, svc *corev1.Service, svcName, ns string, applyErr error) ([]address, []condition) {
	accepted := condition{Type: "Accepted", Status: "True", Reason: "Accepted", Message: "kmesh-waypoint serves this Gateway", ObservedGeneration: gen}
	programmed := condition{Type: "Programmed", Status: "True", Reason: "Programmed", ObservedGeneration: gen}
	var addrs []address
	switch {
	case svc == nil:
		programmed.Status, programmed.Reason = "False", "AddressNotAssigned"
		programmed.Message = fmt.Sprintf("service %s/%s not found: the waypoint has no address", ns, svcName)
	case applyErr != nil:
		programmed.Status, programmed.Reason = "False", "Invalid"
		programmed.Message = "config not applied: " + applyErr.Error()
	default:
		addrs = append(addrs, address{Type: "Hostname", Value: svc.Name + "." + svc.Namespace + ".svc." + ClusterDomain})
		for _, ip := range svc.Spec.ClusterIPs {
			if ip != "" && ip != corev1.ClusterIPNone {
				addrs = append(addrs, address{Type: "IPAddress", Value: ip})
			}
		}
		programmed.Message = fmt.Sprintf("kmesh-waypoint is ready behind service %s/%s", ns, svcName)
	}
	return addrs, []condition{accepted, programmed}
}

func (w *statusWriter) sync(ctx context.Context, gw *unstructured.Unstructured, svc *corev1.Service, svcName string, applyErr error) error {
	addrs, conds := desired(gw.GetGeneration(), svc, svcName, w.namespace, applyErr)
	var cur struct {
		Addresses  []address   `json:"addresses"`
		Conditions []condition `json:"conditions"`
	}
	if st, ok := gw.Object["status"]; ok {
		data, _ := json.Marshal(st)
		_ = json.Unmarshal(data, &cur)
	}
	now := metav1.Now().UTC().Format(time.RFC3339)
	same := reflect.DeepEqual(cur.Addresses, addrs) || (len(cur.Addresses) == 0 && len(addrs) == 0)
	for i := range conds {
		c := &conds[i]
		c.LastTransitionTime = now
		for _, old := range cur.Conditions {
			if old.Type != c.Type {
				continue
			}
			if old.Status == c.Status {
				c.LastTransitionTime = old.LastTransitionTime
			}
			if old != *c {
				same = false
			}
		}
	}
	if same && len(cur.Conditions) >= len(conds) {
		return nil
	}
	if addrs == nil {
		addrs = []address{}
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"addresses": addrs, "conditions": conds}})
	if err != nil {
		return err
	}
	_, err = w.dyn.Resource(gatewayGVR).Namespace(w.namespace).Patch(ctx, w.name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "kmesh-waypoint"}, "status")
	if err != nil {
		return err
	}
	w.log.Info("gateway status written", "gateway", w.namespace+"/"+w.name, "addresses", len(addrs), "programmed", conds[1].Status, "reason", conds[1].Reason)
	return nil
}
