package kubewaypoint

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kmesh-go/kmesh/internal/model"
)

// The custom resources the waypoint reads, by the file list they go to.
var (
	gatewayGVR = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"}
	customGVRs = []struct {
		section string
		gvr     schema.GroupVersionResource
	}{
		{"gateways", gatewayGVR},
		{"httpRoutes", schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}},
		{"grpcRoutes", schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "grpcroutes"}},
		{"virtualServices", schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}},
		{"authorizationPolicies", schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}},
	}
)

// Config says how to reach the API server and which Gateway this is.
type Config struct {
	// Kubeconfig is a kubeconfig file; "" means the in-cluster config.
	Kubeconfig string
	// Namespace and Name are the Gateway's.
	Namespace, Name string
	// Service is the Service whose addresses the Gateway's status gets
	// (Istio names a waypoint's Service after its Gateway); default Name.
	Service string
	// Debounce gathers a burst of changes into one build; default 100 ms.
	Debounce time.Duration
}

// Source watches the API server; see the package doc.
type Source struct {
	cfg  Config
	kube kubernetes.Interface
	dyn  dynamic.Interface
	log  *slog.Logger

	services, pods, namespaces cache.SharedIndexInformer
	custom                     map[string]cache.SharedIndexInformer // by section
	kick                       chan struct{}
	b                          builder
	status                     statusWriter
}

// New connects to the API server (nothing is watched until Start).
func New(cfg Config, log *slog.Logger) (*Source, error) {
	var rc *rest.Config
	var err error
	if cfg.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	rc.UserAgent = "kmesh-waypoint"
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	return NewWithClients(cfg, kube, dyn, log), nil
}

// NewWithClients is New with clients the caller made.
func NewWithClients(cfg Config, kube kubernetes.Interface, dyn dynamic.Interface, log *slog.Logger) *Source {
	if cfg.Service == "" {
		cfg.Service = cfg.Name
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	s := &Source{cfg: cfg, kube: kube, dyn: dyn, log: log, kick: make(chan struct{}, 1), custom: map[string]cache.SharedIndexInformer{}}
	s.status = statusWriter{dyn: dyn, log: log, namespace: cfg.Namespace, name: cfg.Name}
	return s
}

// Gateway is the Gateway's key, namespace/name.
func (s *Source) Gateway() string { return s.cfg.Namespace + "/" + s.cfg.Name }

// Start starts the informers and waits until their caches are filled. A
// kind whose CRD is not installed (say, no Istio VirtualService) is
// skipped with a log line: the waypoint then has none of those objects.
func (s *Source) Start(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(s.kube, 10*time.Minute)
	s.services = factory.Core().V1().Services().Informer()
	s.pods = factory.Core().V1().Pods().Informer()
	s.namespaces = factory.Core().V1().Namespaces().Informer()
	dfactory := dynamicinformer.NewDynamicSharedInformerFactory(s.dyn, 10*time.Minute)
	for _, c := range customGVRs {
		_, err := s.dyn.Resource(c.gvr).List(ctx, metav1.ListOptions{Limit: 1})
		if apierrors.IsNotFound(err) {
			s.log.Info("kind not installed in the cluster: skipped", "resource", c.gvr.String())
			continue
		}
		if err != nil {
			return fmt.Errorf("kubernetes: list %s: %w", c.gvr.Resource, err)
		}
		s.custom[c.section] = dfactory.ForResource(c.gvr).Informer()
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.poke() },
		UpdateFunc: func(_, _ any) { s.poke() },
		DeleteFunc: func(any) { s.poke() },
	}
	infs := []cache.SharedIndexInformer{s.services, s.pods, s.namespaces}
	for _, inf := range s.custom {
		infs = append(infs, inf)
	}
	for _, inf := range infs {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return err
		}
	}
	factory.Start(ctx.Done())
	dfactory.Start(ctx.Done())
	for _, inf := range infs {
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			return fmt.Errorf("kubernetes: caches not synced: %w", ctx.Err())
		}
	}
	return nil
}

func (s *Source) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Build builds the mesh from what the informers hold now, logging each
// rejected object by name.
func (s *Source) Build() (*model.Mesh, error) {
	objs, err := s.objects()
	if err != nil {
		return nil, err
	}
	m, rejected, err := s.b.build(objs)
	for _, r := range rejected {
		s.log.Error("object rejected: its last accepted version (if any) stays", "object", r.Object, "err", r.Err)
	}
	return m, err
}

// Run builds a mesh after every burst of changes and calls apply with it,
// until ctx ends; after each it brings the Gateway's status up to date.
// A build that fails keeps the previous mesh (nothing is applied).
func (s *Source) Run(ctx context.Context, apply func(*model.Mesh) error) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.cfg.Debounce):
		}
		m, err := s.Build()
		if err != nil {
			s.log.Error("kubernetes config rejected: the previous config stays", "err", err)
			continue
		}
		applyErr := apply(m)
		if applyErr != nil {
			s.log.Error("kubernetes config not applied: the previous config stays", "err", applyErr)
		}
		s.SyncStatus(ctx, applyErr)
	}
}

// SyncStatus writes the Gateway's status: the addresses of its Service,
// Accepted/Programmed/ResolvedRefs conditions (Programmed is false while
// the Service is missing or the config was not applied: applyErr) and its
// listeners' status; and Accepted on its GatewayClass when the class's
// controllerName is ControllerName.
func (s *Source) SyncStatus(ctx context.Context, applyErr error) {
	var svc *corev1.Service
	if obj, ok, _ := s.services.GetStore().GetByKey(s.cfg.Namespace + "/" + s.cfg.Service); ok {
		svc = obj.(*corev1.Service)
	}
	var gw *unstructured.Unstructured
	if inf := s.custom["gateways"]; inf != nil {
		if obj, ok, _ := inf.GetStore().GetByKey(s.Gateway()); ok {
			gw = obj.(*unstructured.Unstructured)
		}
	}
	if gw == nil {
		return
	}
	if err := s.status.sync(ctx, gw, svc, s.cfg.Service, applyErr); err != nil {
		s.log.Error("gateway status not written", "gateway", s.Gateway(), "err", err)
	}
	if class, _, _ := unstructured.NestedString(gw.Object, "spec", "gatewayClassName"); class != "" {
		if err := s.status.syncClass(ctx, class); err != nil {
			s.log.Error("gatewayclass status not written", "gateway", s.Gateway(), "err", err)
		}
	}
}

// objects renders every object the waypoint reads, in a stable order.
func (s *Source) objects() ([]object, error) {
	var pods []*corev1.Pod
	for _, o := range s.pods.GetStore().List() {
		pods = append(pods, o.(*corev1.Pod))
	}
	sort.Slice(pods, func(i, j int) bool {
		return pods[i].Namespace+"/"+pods[i].Name < pods[j].Namespace+"/"+pods[j].Name
	})
	var out []object
	gateways := map[string]bool{}
	var custom []object
	for _, c := range customGVRs {
		inf := s.custom[c.section]
		if inf == nil {
			continue
		}
		items := inf.GetStore().List()
		us := make([]*unstructured.Unstructured, 0, len(items))
		for _, o := range items {
			us = append(us, o.(*unstructured.Unstructured))
		}
		sort.Slice(us, func(i, j int) bool {
			return us[i].GetNamespace()+"/"+us[i].GetName() < us[j].GetNamespace()+"/"+us[j].GetName()
		})
		for _, u := range us {
			if !wanted(c.section, u) {
				continue
			}
			if c.section == "gateways" {
				gateways[u.GetNamespace()+"/"+u.GetName()] = true
			}
			o, err := crdObject(c.section, u)
			if err != nil {
				return nil, err
			}
			custom = append(custom, o)
		}
	}
	var svcs []*corev1.Service
	for _, o := range s.services.GetStore().List() {
		svcs = append(svcs, o.(*corev1.Service))
	}
	sort.Slice(svcs, func(i, j int) bool {
		return svcs[i].Namespace+"/"+svcs[i].Name < svcs[j].Namespace+"/"+svcs[j].Name
	})
	for _, svc := range svcs {
		var nsLabels map[string]string
		if obj, ok, _ := s.namespaces.GetStore().GetByKey(svc.Namespace); ok {
			nsLabels = obj.(*corev1.Namespace).Labels
		}
		o, ok, err := serviceObject(svc, pods, nsLabels, gateways)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, o)
		}
	}
	for _, p := range pods {
		var nsLabels map[string]string
		if obj, ok, _ := s.namespaces.GetStore().GetByKey(p.Namespace); ok {
			nsLabels = obj.(*corev1.Namespace).Labels
		}
		o, ok, err := podObject(p, nsLabels, gateways)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, o)
		}
	}
	return append(out, custom...), nil
}

// wanted picks the objects a waypoint acts on: Gateways of its class,
// routes attached to a Service (GAMMA; a route of an ingress Gateway is
// not the mesh's), mesh VirtualServices, policies with targetRefs.
func wanted(section string, u *unstructured.Unstructured) bool {
	switch section {
	case "gateways":
		class, _, _ := unstructured.NestedString(u.Object, "spec", "gatewayClassName")
		return class == model.WaypointClass
	case "httpRoutes", "grpcRoutes":
		refs, _, _ := unstructured.NestedSlice(u.Object, "spec", "parentRefs")
		for _, r := range refs {
			if m, ok := r.(map[string]any); ok && m["kind"] == "Service" {
				return true
			}
		}
		return false
	case "virtualServices":
		gws, found, _ := unstructured.NestedStringSlice(u.Object, "spec", "gateways")
		return !found || slices.Contains(gws, "mesh")
	case "authorizationPolicies":
		_, one, _ := unstructured.NestedFieldNoCopy(u.Object, "spec", "targetRef")
		_, many, _ := unstructured.NestedFieldNoCopy(u.Object, "spec", "targetRefs")
		return one || many
	}
	return false
}
