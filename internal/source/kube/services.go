package kube

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

// DefaultAffinityTimeout is Kubernetes' default
// sessionAffinityConfig.clientIP.timeoutSeconds (3 hours).
const DefaultAffinityTimeout = 10800 * time.Second

// ServiceAffinity reports one Service's ClientIP session affinity:
// Timeout is 0 when the Service has none (or was deleted).
type ServiceAffinity struct {
	Key     string // namespace/name, the key of the xDS service of the same name
	Timeout time.Duration
}

// WatchServiceAffinity watches core/v1 Services until ctx ends and calls
// report for every Service added, changed or deleted, with its affinity.
// Istio's workload API carries no sessionAffinity, so under istiod kmeshd
// reads it from the Service itself. Only the fields it needs are kept in
// the cache (a transform drops the rest), so a cluster's Services cost
// little memory. report is called from one goroutine; a report may repeat
// the last one (a Service's other fields changed). It returns an error
// only when the cache does not sync before ctx ends.
func (s *Source) WatchServiceAffinity(ctx context.Context, report func(ServiceAffinity)) error {
	factory := informers.NewSharedInformerFactoryWithOptions(s.client, 10*time.Minute,
		informers.WithTransform(trimService))
	inf := factory.Core().V1().Services().Informer()
	send := func(obj any) {
		if svc, ok := obj.(*corev1.Service); ok {
			report(ServiceAffinity{Key: svc.Namespace + "/" + svc.Name, Timeout: affinityOf(svc)})
		}
	}
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    send,
		UpdateFunc: func(_, obj any) { send(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if svc, ok := obj.(*corev1.Service); ok {
				report(ServiceAffinity{Key: svc.Namespace + "/" + svc.Name})
			}
		},
	})
	if err != nil {
		return fmt.Errorf("kube: services: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("kube: %v: cache not synced: %w", typ, context.Cause(ctx))
		}
	}
	s.log.Info("watching services for sessionAffinity")
	<-ctx.Done()
	return nil
}

// affinityOf is the ClientIP affinity timeout of svc, 0 for none.
func affinityOf(svc *corev1.Service) time.Duration {
	if svc.Spec.SessionAffinity != corev1.ServiceAffinityClientIP {
		return 0
	}
	if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		return time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
	}
	return DefaultAffinityTimeout
}

// trimService keeps what WatchServiceAffinity reads.
func trimService(obj any) (any, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: svc.Name, Namespace: svc.Namespace, UID: svc.UID, ResourceVersion: svc.ResourceVersion},
		Spec: corev1.ServiceSpec{
			SessionAffinity:       svc.Spec.SessionAffinity,
			SessionAffinityConfig: svc.Spec.SessionAffinityConfig,
		},
	}, nil
}
