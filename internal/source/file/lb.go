package file

import (
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/kmesh-go/kmesh/internal/model"
)

// loadBalancing reads a service's loadBalancing: mode, routingPreference
// (a list of scopes, closest last) and localityMode.
func (p *parser) loadBalancing(s *service, n *yaml.Node, path string) {
	lb := p.fields(n, path, "mode", "routingPreference", "localityMode")
	if lb == nil {
		return
	}
	if v := lb["mode"]; v != nil {
		if mode, ok := p.str(v, join(path, "mode")); ok {
			switch model.LBMode(mode) {
			case model.LBRandom, model.LBRoundRobin, model.LBMaglev:
				s.LBMode = model.LBMode(mode)
			default:
				p.errorf(v, join(path, "mode"), "unknown load balancing mode %q (want %s, %s or %s)",
					mode, model.LBRandom, model.LBRoundRobin, model.LBMaglev)
			}
		}
	}
	var loc model.LocalityLB
	if v := lb["routingPreference"]; v != nil {
		seen := map[model.LocalityScope]bool{}
		p.list(v, join(path, "routingPreference"), func(item *yaml.Node, ipath string) {
			sc, ok := p.str(item, ipath)
			if !ok {
				return
			}
			switch model.LocalityScope(sc) {
			case model.ScopeNetwork, model.ScopeRegion, model.ScopeZone, model.ScopeSubzone, model.ScopeNode:
			default:
				p.errorf(item, ipath, "unknown scope %q (want network, region, zone, subzone or node)", sc)
				return
			}
			if seen[model.LocalityScope(sc)] {
				p.errorf(item, ipath, "scope %s is listed twice", sc)
				return
			}
			seen[model.LocalityScope(sc)] = true
			loc.RoutingPreference = append(loc.RoutingPreference, model.LocalityScope(sc))
		})
		if len(loc.RoutingPreference) == 0 && v.Kind == yaml.SequenceNode {
			p.errorf(v, join(path, "routingPreference"), "at least one scope is required")
		}
	}
	loc.Mode = model.LocalityFailover
	if v := lb["localityMode"]; v != nil {
		if mode, ok := p.str(v, join(path, "localityMode")); ok {
			switch model.LocalityMode(mode) {
			case model.LocalityFailover, model.LocalityStrict:
				loc.Mode = model.LocalityMode(mode)
			default:
				p.errorf(v, join(path, "localityMode"), "unknown locality mode %q (want failover or strict)", mode)
			}
			if lb["routingPreference"] == nil {
				p.errorf(v, join(path, "localityMode"), "needs loadBalancing.routingPreference")
			}
		}
	}
	if len(loc.RoutingPreference) > 0 {
		if s.LBMode == model.LBMaglev {
			p.errorf(n, join(path, "routingPreference"), "cannot be combined with mode maglev")
			return
		}
		s.Locality = &loc
	}
}

// sessionAffinity reads {timeoutSeconds: N}, Kubernetes' ClientIP affinity.
func (p *parser) sessionAffinity(s *service, n *yaml.Node, path string) {
	f := p.fields(n, path, "timeoutSeconds")
	if f == nil {
		return
	}
	a := &model.SessionAffinity{Timeout: model.DefaultAffinityTimeout}
	if v := f["timeoutSeconds"]; v != nil {
		secs, ok := p.integer(v, join(path, "timeoutSeconds"), 1, 86400)
		if !ok {
			return
		}
		a.Timeout = time.Duration(secs) * time.Second
	}
	s.SessionAffinity = a
}

// outlierDetection reads Envoy's consecutiveFailures, baseEjectionTime (a
// duration such as 30s) and maxEjectionPercent; missing ones take Envoy's
// defaults.
func (p *parser) outlierDetection(s *service, n *yaml.Node, path string) {
	f := p.fields(n, path, "consecutiveFailures", "baseEjectionTime", "maxEjectionPercent")
	if f == nil {
		return
	}
	o := &model.OutlierDetection{
		ConsecutiveFailures: model.DefaultConsecutiveFailures,
		BaseEjectionTime:    model.DefaultBaseEjectionTime,
		MaxEjectionPercent:  model.DefaultMaxEjectionPercent,
	}
	ok := true
	if v := f["consecutiveFailures"]; v != nil {
		n, good := p.integer(v, join(path, "consecutiveFailures"), 1, 65535)
		ok = ok && good
		o.ConsecutiveFailures = uint32(n)
	}
	if v := f["baseEjectionTime"]; v != nil {
		if str, good := p.str(v, join(path, "baseEjectionTime")); good {
			d, err := time.ParseDuration(str)
			switch {
			case err != nil:
				p.errorf(v, join(path, "baseEjectionTime"), "not a duration such as 30s: %q", str)
				ok = false
			case d < time.Millisecond || d > 24*time.Hour:
				p.errorf(v, join(path, "baseEjectionTime"), "%s out of range 1ms..24h", d)
				ok = false
			default:
				o.BaseEjectionTime = d
			}
		} else {
			ok = false
		}
	}
	if v := f["maxEjectionPercent"]; v != nil {
		n, good := p.integer(v, join(path, "maxEjectionPercent"), 0, 100)
		ok = ok && good
		o.MaxEjectionPercent = uint32(n)
	}
	if ok {
		s.OutlierDetection = o
	}
}

// locality reads Istio's form region/zone/subzone (trailing parts may be
// left out).
func (p *parser) locality(w *workload, n *yaml.Node, path string) {
	str, ok := p.str(n, path)
	if !ok {
		return
	}
	parts := strings.Split(str, "/")
	if len(parts) > 3 || str == "" {
		p.errorf(n, path, "want region/zone/subzone, got %q", str)
		return
	}
	parts = append(parts, "", "")
	w.Locality = model.NewLocality(parts[0], parts[1], parts[2])
}
