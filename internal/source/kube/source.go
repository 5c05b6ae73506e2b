package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// Config says how to reach the API server and which node this is.
type Config struct {
	// Kubeconfig is a kubeconfig file; "" means the in-cluster config (the
	// service account of the pod kmeshd runs in).
	Kubeconfig string
	// Node is this node's name: the spec.nodeName of the pods to enroll.
	Node string
	// HBONE marks enrolled pods for istiod as taking HBONE on port 15008
	// (ambient.istio.io/redirection=enabled): set when this node serves
	// mutual TLS for them (the mesh has a CA).
	HBONE bool
}

// Enabled reports whether kmeshd should watch Kubernetes: with a
// kubeconfig, or when it runs in a pod (KUBERNETES_SERVICE_HOST is set).
func (c Config) Enabled() bool {
	return c.Kubeconfig != "" || os.Getenv("KUBERNETES_SERVICE_HOST") != ""
}

// Source enrolls the pods of one node; see the package doc.
type Source struct {
	node     string
	client   kubernetes.Interface
	resolve  func(key string, ips []netip.Addr) (string, error)
	forget   func(keep map[string]bool)
	log      *slog.Logger
	retryMin time.Duration
	retryMax time.Duration
	hbone    bool // see Config.HBONE

	enrolled map[types.UID]enrolledPod // as last reported
	failing  map[types.UID]string      // pod -> last resolve error, logged once
}

// New returns a Source for the API server of cfg, finding namespaces on
// this host.
func New(cfg Config, log *slog.Logger) (*Source, error) {
	if cfg.Node == "" {
		return nil, errors.New("kube: no node name")
	}
	var rc *rest.Config
	var err error
	if cfg.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	rc.UserAgent = "kmeshd/" + cfg.Node
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	r := NewResolver()
	src := NewWithClient(client, cfg.Node, r.Resolve, r.Forget, log)
	src.hbone = cfg.HBONE
	return src, nil
}

// NewWithClient returns a Source on a given client and namespace resolver
// (forget may be nil), for tests and embedding.
func NewWithClient(client kubernetes.Interface, node string, resolve func(key string, ips []netip.Addr) (string, error), forget func(keep map[string]bool), log *slog.Logger) *Source {
	if forget == nil {
		forget = func(map[string]bool) {}
	}
	return &Source{
		node: node, client: client, resolve: resolve, forget: forget, log: log,
		retryMin: 500 * time.Millisecond, retryMax: 30 * time.Second,
		enrolled: map[types.UID]enrolledPod{}, failing: map[types.UID]string{},
	}
}

// Pod is an enrolled pod: the network namespace found for it and who it
// is, so the daemon can tell the connect programs which workload the
// namespace is (its Kubernetes name, or its address).
type Pod struct {
	Netns     string
	Namespace string
	Name      string
	IPs       []netip.Addr
}

// Key is the pod's namespace/name, the key of its workload under istiod.
func (p Pod) Key() string { return p.Namespace + "/" + p.Name }

func podEqual(a, b Pod) bool {
	return a.Netns == b.Netns && a.Namespace == b.Namespace && a.Name == b.Name && slices.Equal(a.IPs, b.IPs)
}

// Run watches this node's pods and their namespaces until ctx ends. It
// calls report with the pods to enroll (sorted by namespace path, then
// pod) once the first full list is in, and again after every change to
// that set. A pod whose namespace cannot be found yet is retried with
// backoff. Run returns an error only if the first list fails before ctx
// ends.
func (s *Source) Run(ctx context.Context, report func(pods []Pod)) error {
	factory := informers.NewSharedInformerFactoryWithOptions(s.client, 10*time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", s.node).String()
		}))
	nsFactory := informers.NewSharedInformerFactory(s.client, 10*time.Minute)
	pods := factory.Core().V1().Pods()
	nss := nsFactory.Core().V1().Namespaces()

	kick := make(chan struct{}, 1)
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	}
	if _, err := pods.Informer().AddEventHandler(handler); err != nil {
		return fmt.Errorf("kube: %w", err)
	}
	if _, err := nss.Informer().AddEventHandler(handler); err != nil {
		return fmt.Errorf("kube: %w", err)
	}
	factory.Start(ctx.Done())
	nsFactory.Start(ctx.Done())
	defer factory.Shutdown()
	defer nsFactory.Shutdown()
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("kube: %v: cache not synced: %w", typ, context.Cause(ctx))
		}
	}
	for typ, ok := range nsFactory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("kube: %v: cache not synced: %w", typ, context.Cause(ctx))
		}
	}
	s.log.Info("watching pods", "node", s.node)

	var last []Pod
	first := true
	retry := s.retryMin
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		enrolled, pending := s.reconcile(ctx, pods.Lister().List, nss.Lister().Get)
		if first || !slices.EqualFunc(enrolled, last, podEqual) {
			report(enrolled)
			last, first = enrolled, false
		}
		s.annotate(ctx, pods.Lister().List)
		if pending {
			timer.Reset(retry)
			retry = min(2*retry, s.retryMax)
		} else {
			retry = s.retryMin
		}
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		case <-timer.C:
		}
	}
}

type enrolledPod struct {
	name, netns string
	pod         Pod
}

type (
	listPods func(labels.Selector) ([]*corev1.Pod, error)
	getNs    func(string) (*corev1.Namespace, error)
)

// reconcile works out the pods to enroll, with their namespaces, from the
// informers' caches. pending is true when a wanted pod's namespace was not
// found.
func (s *Source) reconcile(ctx context.Context, list listPods, ns getNs) (out []Pod, pending bool) {
	all, _ := list(labels.Everything()) // a cache lister does not fail
	enrolled := map[types.UID]enrolledPod{}
	keep := map[string]bool{}
	for _, pod := range all {
		if pod.Spec.NodeName != s.node {
			continue
		}
		keep[string(pod.UID)] = true
		namespace, _ := ns(pod.Namespace)
		want, why := Wants(pod, namespace)
		if !want {
			if p, ok := s.enrolled[pod.UID]; ok {
				s.log.Info("pod unenrolled", "pod", p.name, "netns", p.netns, "reason", why)
			}
			continue
		}
		ips := parseIPs(podIPs(pod))
		path, err := s.resolve(string(pod.UID), ips)
		if err != nil {
			pending = true
			if s.failing[pod.UID] != err.Error() {
				s.failing[pod.UID] = err.Error()
				s.log.Warn("pod not enrolled yet: network namespace not found", "pod", pod.Namespace+"/"+pod.Name, "err", err)
			}
			continue
		}
		delete(s.failing, pod.UID)
		enrolled[pod.UID] = enrolledPod{name: pod.Namespace + "/" + pod.Name, netns: path,
			pod: Pod{Netns: path, Namespace: pod.Namespace, Name: pod.Name, IPs: ips}}
		if s.enrolled[pod.UID].netns != path {
			s.log.Info("pod enrolled", "pod", pod.Namespace+"/"+pod.Name, "netns", path, "reason", why)
		}
	}
	for uid, p := range s.enrolled {
		if _, ok := enrolled[uid]; !ok && !keep[string(uid)] {
			s.log.Info("pod unenrolled", "pod", p.name, "netns", p.netns, "reason", "deleted")
		}
	}
	for uid := range s.failing {
		if !keep[string(uid)] {
			delete(s.failing, uid)
		}
	}
	s.forget(keep)
	s.enrolled = enrolled
	for _, p := range enrolled {
		out = append(out, p.pod)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Netns != out[j].Netns {
			return out[i].Netns < out[j].Netns
		}
		return out[i].Key() < out[j].Key()
	})
	return out, pending
}

// Paths returns the distinct namespace paths of pods, sorted.
func Paths(pods []Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Netns)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// annotate sets the redirection annotations on enrolled pods and removes
// them from the others, after their namespaces were reported. A failed
// patch is logged and tried again at the next event.
func (s *Source) annotate(ctx context.Context, list listPods) {
	all, _ := list(labels.Everything())
	for _, pod := range all {
		if pod.Spec.NodeName != s.node {
			continue
		}
		_, want := s.enrolled[pod.UID]
		if patch := annotationPatch(pod.Annotations, want, s.hbone); patch != "" {
			_, err := s.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
			if err != nil && ctx.Err() == nil {
				s.log.Warn("pod annotation not updated", "pod", pod.Namespace+"/"+pod.Name, "err", err)
			}
		}
	}
}

// annotationPatch is the merge patch that makes a pod's annotations say
// whether kmeshd enrolled it (kmesh.net/redirection) and, with HBONE,
// tells istiod the pod takes HBONE (ambient.istio.io/redirection), or ""
// when nothing changes. Istio's annotation is removed only from pods that
// carry kmeshd's too: on another pod someone else set it.
func annotationPatch(ann map[string]string, enrolled, hbone bool) string {
	ours := ann[RedirectionAnnotation] != ""
	set := map[string]*string{}
	enabled := RedirectionEnabled
	switch {
	case enrolled && ann[RedirectionAnnotation] != RedirectionEnabled:
		set[RedirectionAnnotation] = &enabled
	case !enrolled && ours:
		set[RedirectionAnnotation] = nil
	}
	wantIstio := enrolled && hbone
	switch {
	case wantIstio && ann[AmbientRedirectionAnnotation] != RedirectionEnabled:
		set[AmbientRedirectionAnnotation] = &enabled
	case !wantIstio && ours && ann[AmbientRedirectionAnnotation] != "":
		set[AmbientRedirectionAnnotation] = nil
	}
	if len(set) == 0 {
		return ""
	}
	b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": set}})
	return string(b)
}

func parseIPs(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, ip)
		}
	}
	return out
}
