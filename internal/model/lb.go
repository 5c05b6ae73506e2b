package model

import (
	"fmt"
	"time"
)

// LBMaglev picks by a consistent hash of the client address (a Maglev
// table), so a client keeps its endpoint while the endpoint set changes
// little, and a change moves only its share of clients.
const LBMaglev LBMode = "maglev"

// LocalityScope is one level of a service's routing preference, as the
// workload API's LoadBalancing.Scope.
type LocalityScope string

const (
	ScopeNetwork LocalityScope = "network"
	ScopeRegion  LocalityScope = "region"
	ScopeZone    LocalityScope = "zone"
	ScopeSubzone LocalityScope = "subzone"
	ScopeNode    LocalityScope = "node"
	// ScopeCluster compares the workloads' clusters; this model has one
	// cluster, so it always matches.
	ScopeCluster LocalityScope = "cluster"
)

// LocalityMode says what happens when no endpoint matches every scope.
type LocalityMode string

const (
	// LocalityFailover uses the closest endpoints there are: those that
	// match the longest prefix of the preference.
	LocalityFailover LocalityMode = "failover"
	// LocalityStrict uses only endpoints that match every scope; without
	// one, the connect is refused.
	LocalityStrict LocalityMode = "strict"
)

// LocalityLB is a service's locality-aware balancing (ztunnel's
// LoadBalancer): closeness is measured from the client workload.
type LocalityLB struct {
	RoutingPreference []LocalityScope
	Mode              LocalityMode
}

// SessionAffinity keeps a client on one endpoint (Kubernetes
// sessionAffinity: ClientIP). The affinity lasts Timeout after the
// client's last new connection, as kube-proxy's.
type SessionAffinity struct {
	Timeout time.Duration
}

// DefaultAffinityTimeout is Kubernetes' default timeoutSeconds (3 hours).
const DefaultAffinityTimeout = 10800 * time.Second

// OutlierDetection ejects an endpoint whose connects fail, for a while
// (Envoy's names and defaults).
type OutlierDetection struct {
	// ConsecutiveFailures in a row (resets, timeouts) eject the endpoint.
	ConsecutiveFailures uint32
	// BaseEjectionTime times the number of ejections in a row is how long
	// it stays out (at most 300 s unless the base is longer).
	BaseEjectionTime time.Duration
	// MaxEjectionPercent of a service's endpoints may be out at once; at
	// least one may always go.
	MaxEjectionPercent uint32
}

// Defaults of OutlierDetection, as Envoy's.
const (
	DefaultConsecutiveFailures = 5
	DefaultBaseEjectionTime    = 30 * time.Second
	DefaultMaxEjectionPercent  = 10
)

// Rank is how close ep is to client under lb, as ztunnel ranks endpoints:
// the number of scopes matched in order until the first mismatch; when
// network is the first scope it is preferred, not required: a match ranks
// above every endpoint of another network, and a mismatch skips to the
// other scopes. ok is false when STRICT rules ep out.
func (lb *LocalityLB) Rank(client, ep *Workload) (rank int, ok bool) {
	networkFirst := len(lb.RoutingPreference) > 0 && lb.RoutingPreference[0] == ScopeNetwork
	adjust := 0
	for _, s := range lb.RoutingPreference {
		var match bool
		switch s {
		case ScopeRegion:
			match = client.Locality.Region() == ep.Locality.Region()
		case ScopeZone:
			match = client.Locality.Zone() == ep.Locality.Zone()
		case ScopeSubzone:
			match = client.Locality.Subzone() == ep.Locality.Subzone()
		case ScopeNode:
			match = client.Node == ep.Node
		case ScopeCluster:
			match = true
		case ScopeNetwork:
			match = client.Network == ep.Network
			if networkFirst {
				if !match {
					continue
				}
				adjust = len(lb.RoutingPreference) - 1
			}
		}
		if !match {
			break
		}
		rank++
	}
	if lb.Mode == LocalityStrict && rank != len(lb.RoutingPreference) {
		return 0, false
	}
	return rank + adjust, true
}

// String is the locality as Istio writes it: region/zone/subzone.
func (l Locality) String() string {
	if l == (Locality{}) {
		return ""
	}
	p := l.place()
	return p.region + "/" + p.zone + "/" + p.subzone
}

func (s *Service) validateLB() error {
	if lb := s.Locality; lb != nil {
		if s.LBMode == LBMaglev {
			return fmt.Errorf("service %s: load balancing mode maglev cannot be combined with a routing preference", s.Key())
		}
		switch lb.Mode {
		case LocalityFailover, LocalityStrict:
		default:
			return fmt.Errorf("service %s: unknown locality mode %q (want failover or strict)", s.Key(), lb.Mode)
		}
		if len(lb.RoutingPreference) == 0 {
			return fmt.Errorf("service %s: locality mode %s needs a routing preference", s.Key(), lb.Mode)
		}
		seen := map[LocalityScope]bool{}
		for _, sc := range lb.RoutingPreference {
			switch sc {
			case ScopeNetwork, ScopeRegion, ScopeZone, ScopeSubzone, ScopeNode, ScopeCluster:
			default:
				return fmt.Errorf("service %s: unknown routing preference %q", s.Key(), sc)
			}
			if seen[sc] {
				return fmt.Errorf("service %s: routing preference %s given twice", s.Key(), sc)
			}
			seen[sc] = true
		}
	}
	if a := s.SessionAffinity; a != nil && (a.Timeout < time.Second || a.Timeout > 86400*time.Second) {
		return fmt.Errorf("service %s: session affinity timeout %s out of range 1s..86400s", s.Key(), a.Timeout)
	}
	if o := s.OutlierDetection; o != nil {
		if o.ConsecutiveFailures < 1 || o.ConsecutiveFailures > 65535 {
			return fmt.Errorf("service %s: outlier detection consecutiveFailures %d out of range 1..65535", s.Key(), o.ConsecutiveFailures)
		}
		if o.BaseEjectionTime < time.Millisecond || o.BaseEjectionTime > 24*time.Hour {
			return fmt.Errorf("service %s: outlier detection baseEjectionTime %s out of range 1ms..24h", s.Key(), o.BaseEjectionTime)
		}
		if o.MaxEjectionPercent > 100 {
			return fmt.Errorf("service %s: outlier detection maxEjectionPercent %d over 100", s.Key(), o.MaxEjectionPercent)
		}
	}
	return nil
}
