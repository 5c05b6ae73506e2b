package kubewaypoint

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/file"
	"github.com/kmesh-go/kmesh/internal/source/kube"
)

// docName is the "file" name the parser's errors carry.
const docName = "kubernetes"

// section is one list of the mesh config file and the kind of its items.
type section struct{ key, kind string }

// sections in the order the file has them.
var sections = []section{
	{"services", "Service"}, {"workloads", "Pod"}, {"gateways", "Gateway"},
	{"httpRoutes", "HTTPRoute"}, {"grpcRoutes", "GRPCRoute"},
	{"virtualServices", "VirtualService"}, {"authorizationPolicies", "AuthorizationPolicy"},
}

// object is one Kubernetes object rendered as an item of the file: one
// line of JSON, so a parser error's line names the object.
type object struct {
	section string // key in the file
	id      string // "Kind namespace/name", for reports
	json    []byte
}

// Rejection is an object the parser refused, with the parser's words.
type Rejection struct {
	Object string // "Kind namespace/name"
	Err    error
}

func (r Rejection) Error() string { return r.Object + ": " + r.Err.Error() }

// builder parses snapshots of objects and remembers each object's last
// accepted rendering, which stands in for a rejected newer one.
type builder struct {
	good map[string][]byte
}

// build renders objs into a mesh config document and parses it. An object
// a parser error points at is replaced by its last accepted version, or
// left out, and the document is parsed again; rejected lists them. err is
// set only when an error names no object (the previous mesh should stay).
func (b *builder) build(objs []object) (m *model.Mesh, rejected []Rejection, err error) {
	cur := slices.Clone(objs)
	fellBack := map[string]bool{}
	for range len(objs) + 1 {
		doc, lineOf := render(cur)
		m, err = file.Parse(docName, doc, "")
		if err == nil {
			good := make(map[string][]byte, len(cur))
			for _, o := range cur {
				good[o.id] = o.json
			}
			b.good = good
			return m, rejected, nil
		}
		bad := blame(err, lineOf)
		if len(bad) == 0 {
			return nil, rejected, err
		}
		var keep []object
		for i, o := range cur {
			msgs, isBad := bad[i]
			if !isBad {
				keep = append(keep, o)
				continue
			}
			rejected = append(rejected, Rejection{Object: o.id, Err: errors.New(strings.Join(msgs, "; "))})
			if old, ok := b.good[o.id]; ok && !fellBack[o.id] && !bytes.Equal(old, o.json) {
				fellBack[o.id] = true
				o.json = old
				keep = append(keep, o)
			}
		}
		cur = keep
	}
	return nil, rejected, err
}

// render writes the objects as the file's lists, one object per line;
// lineOf maps a line number (1-based) to the index of its object.
func render(objs []object) (doc []byte, lineOf map[int]int) {
	var buf bytes.Buffer
	lineOf = map[int]int{}
	line := 1
	for _, s := range sections {
		first := true
		for i, o := range objs {
			if o.section != s.key {
				continue
			}
			if first {
				buf.WriteString(s.key + ":\n")
				line++
				first = false
			}
			buf.WriteString("- ")
			buf.Write(o.json)
			buf.WriteByte('\n')
			lineOf[line] = i
			line++
		}
	}
	return buf.Bytes(), lineOf
}

var errLine = regexp.MustCompile(`^` + docName + `:(\d+): (.*)$`)

// blame maps the parser's errors to the objects on their lines.
func blame(err error, lineOf map[int]int) map[int][]string {
	bad := map[int][]string{}
	for _, l := range strings.Split(err.Error(), "\n") {
		sm := errLine.FindStringSubmatch(l)
		if sm == nil {
			continue
		}
		n, _ := strconv.Atoi(sm[1])
		if i, ok := lineOf[n]; ok {
			bad[i] = append(bad[i], sm[2])
		}
	}
	return bad
}

func newObject(section, kind, ns, name string, v any) (object, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return object{}, fmt.Errorf("%s %s/%s: %w", kind, ns, name, err)
	}
	return object{section: section, id: kind + " " + ns + "/" + name, json: data}, nil
}

// crdObject is a custom resource as kubectl shows it, less what the API
// server adds (status, uid, resourceVersion, managedFields, ...) and
// kubectl's own annotations.
func crdObject(section string, u *unstructured.Unstructured) (object, error) {
	meta := map[string]any{"name": u.GetName(), "namespace": u.GetNamespace()}
	if l := u.GetLabels(); len(l) > 0 {
		meta["labels"] = l
	}
	ann := map[string]string{}
	for k, v := range u.GetAnnotations() {
		if !strings.HasPrefix(k, "kubectl.kubernetes.io/") {
			ann[k] = v
		}
	}
	if len(ann) > 0 {
		meta["annotations"] = ann
	}
	out := map[string]any{"apiVersion": u.GetAPIVersion(), "kind": u.GetKind(), "metadata": meta}
	if spec, ok := u.Object["spec"]; ok {
		out["spec"] = spec
	}
	return newObject(section, u.GetKind(), u.GetNamespace(), u.GetName(), out)
}

// podObject is a running, ready pod as a workload of the file; ok is
// false for pods that take no traffic (not ready, no IP, host network).
// Its use-waypoint label (or, without one, its namespace's in nsLabels)
// is kept as serviceObject keeps a Service's: only when it names one of
// gateways.
func podObject(p *corev1.Pod, nsLabels map[string]string, gateways map[string]bool) (object, bool, error) {
	if p.Spec.HostNetwork || p.Spec.NodeName == "" || p.Status.Phase != corev1.PodRunning || !podReady(p) {
		return object{}, false, nil
	}
	var addrs []string
	var v4, v6 bool
	for _, ip := range p.Status.PodIPs {
		a, err := netip.ParseAddr(ip.IP)
		if err != nil || (a.Is4() && v4) || (a.Is6() && v6) {
			continue
		}
		v4, v6 = v4 || a.Is4(), v6 || a.Is6()
		addrs = append(addrs, a.String())
	}
	if len(addrs) == 0 {
		return object{}, false, nil
	}
	w := map[string]any{"name": p.Name, "namespace": p.Namespace, "addresses": addrs, "node": p.Spec.NodeName}
	if lbls := useWaypointLabels(p.Labels, p.Namespace, nsLabels, gateways); len(lbls) > 0 {
		w["labels"] = lbls
	}
	if p.Spec.ServiceAccountName != "" {
		w["serviceAccount"] = p.Spec.ServiceAccountName
	}
	// A pod whose node proxy takes HBONE for it (the annotation kmeshd and
	// ztunnel set for istiod) is reached over HBONE when the waypoint has a CA.
	if p.Annotations[kube.AmbientRedirectionAnnotation] == kube.RedirectionEnabled {
		w["tunnelProtocol"] = string(model.TunnelHBONE)
	}
	o, err := newObject("workloads", "Pod", p.Namespace, p.Name, w)
	return o, err == nil, err
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// serviceObject is a ClusterIP Service as a service of the file; ok is
// false for headless and ExternalName services. A use-waypoint label is
// kept only when it names one of gateways (namespace/name): a service of
// another waypoint is not this one's business. A named targetPort is
// looked up in the containers of the selected pods; a port that cannot be
// resolved, or is not TCP, is left out.
//
// A Service without its own istio.io/use-waypoint takes its namespace's
// (nsLabels), as istiod does; its own "none" opts it out.
func serviceObject(s *corev1.Service, pods []*corev1.Pod, nsLabels map[string]string, gateways map[string]bool) (object, bool, error) {
	var addrs []string
	for _, ip := range s.Spec.ClusterIPs {
		if _, err := netip.ParseAddr(ip); err == nil {
			addrs = append(addrs, ip)
		}
	}
	if len(addrs) == 0 {
		return object{}, false, nil
	}
	var ports []map[string]any
	for _, sp := range s.Spec.Ports {
		if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
			continue
		}
		target := int32(sp.TargetPort.IntValue())
		if sp.TargetPort.String() == "" || sp.TargetPort.String() == "0" {
			target = sp.Port
		} else if target == 0 {
			target = namedPort(s, pods, sp.TargetPort.String())
		}
		if target == 0 {
			continue
		}
		p := map[string]any{"port": sp.Port, "targetPort": target}
		if sp.Name != "" {
			p["name"] = sp.Name
		}
		if sp.AppProtocol != nil {
			p["appProtocol"] = *sp.AppProtocol
		}
		ports = append(ports, p)
	}
	if len(ports) == 0 {
		return object{}, false, nil
	}
	svc := map[string]any{"name": s.Name, "namespace": s.Namespace, "addresses": addrs, "ports": ports}
	if len(s.Spec.Selector) > 0 {
		svc["selector"] = s.Spec.Selector
	}
	if lbls := useWaypointLabels(s.Labels, s.Namespace, nsLabels, gateways); len(lbls) > 0 {
		svc["labels"] = lbls
	}
	o, err := newObject("services", "Service", s.Namespace, s.Name, svc)
	return o, err == nil, err
}

// useWaypointLabels returns a copy of an object's labels whose
// use-waypoint is its own, else its namespace's (as istiod reads it; its
// own "none" opts it out), kept only when it names one of gateways
// (namespace/name): an object of another waypoint is not this one's
// business.
func useWaypointLabels(own map[string]string, namespace string, nsLabels map[string]string, gateways map[string]bool) map[string]string {
	lbls := make(map[string]string, len(own)+2)
	for k, v := range own {
		lbls[k] = v
	}
	if lbls[model.LabelUseWaypoint] == "" && nsLabels[model.LabelUseWaypoint] != "" {
		lbls[model.LabelUseWaypoint] = nsLabels[model.LabelUseWaypoint]
		if ns := nsLabels[model.LabelUseWaypointNamespace]; ns != "" {
			lbls[model.LabelUseWaypointNamespace] = ns
		}
	}
	like := model.Workload{Namespace: namespace, Labels: lbls}
	if key := like.UsesWaypoint(); key != "" && !gateways[key] {
		delete(lbls, model.LabelUseWaypoint)
		delete(lbls, model.LabelUseWaypointNamespace)
	}
	return lbls
}

func namedPort(s *corev1.Service, pods []*corev1.Pod, name string) int32 {
	if len(s.Spec.Selector) == 0 {
		return 0
	}
	sel := labels.SelectorFromSet(s.Spec.Selector)
	for _, p := range pods {
		if p.Namespace != s.Namespace || !sel.Matches(labels.Set(p.Labels)) {
			continue
		}
		for _, c := range p.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == name {
					return cp.ContainerPort
				}
			}
		}
	}
	return 0
}
