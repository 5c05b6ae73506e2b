package waypoint

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/internal/model"
)

// rule is a compiled route rule.
type rule struct {
	route    *model.Route
	index    int
	name     string // kind/namespace/name#index, for logs and explain
	matches  []*match
	filters  []model.RouteFilter
	backends []backend
	total    int // sum of weights
	timeouts model.RouteTimeouts
	retry    retryPolicy
	// invalid is why the rule answers 500 (a backend that does not exist).
	invalid string
}

// backend is one weighted backendRef.
type backend struct {
	svc     *service
	port    uint16
	weight  int
	filters []model.RouteFilter
	name    string // namespace/name:port
}

// match is one compiled route match. A rule without matches gets one that
// matches every request (Gateway API's default PathPrefix "/").
type match struct {
	pathKind string
	path     string
	pathRE   *regexp.Regexp
	method   string
	headers  []valueMatcher
	query    []valueMatcher
}

// routeEntry is one match of one rule, the unit routes are ordered by.
type routeEntry struct {
	rule  *rule
	match *match
}

// retryPolicy is when and how often a request is tried again.
type retryPolicy struct {
	attempts int   // retries after the first try
	codes    []int // HTTP statuses that are retried
	backoff  time.Duration
	// grpc: retry on gRPC statuses UNAVAILABLE and CANCELLED (Istio's
	// unavailable,cancelled); always with the connect-failure and
	// refused-stream conditions.
}

// defaultRetry is Istio's mesh default: 2 retries on connect-failure,
// refused-stream, unavailable, cancelled and retriable-status-codes (503),
// used where a route says nothing.
var defaultRetry = retryPolicy{attempts: 2, codes: []int{503}, backoff: 25 * time.Millisecond}

func (s *snapshot) compileRule(r *model.Route, i int) (*rule, error) {
	mr := &r.Rules[i]
	cr := &rule{route: r, index: i, name: fmt.Sprintf("%s#%d", r.Key(), i), filters: mr.Filters, timeouts: mr.Timeouts,
		retry: defaultRetry}
	if mr.Name != "" {
		cr.name = r.Key() + "#" + mr.Name
	}
	if mr.Retry != nil {
		cr.retry = retryPolicy{attempts: mr.Retry.Attempts, codes: mr.Retry.Codes, backoff: mr.Retry.Backoff}
		if cr.retry.attempts < 0 {
			cr.retry.attempts = defaultRetry.attempts
		}
		if cr.retry.backoff == 0 {
			cr.retry.backoff = defaultRetry.backoff
		}
	}
	for _, mm := range mr.Matches {
		m, err := compileMatch(r.Kind, mm)
		if err != nil {
			return nil, err
		}
		cr.matches = append(cr.matches, m)
	}
	if len(cr.matches) == 0 {
		cr.matches = []*match{{pathKind: model.MatchTypePathPrefix, path: "/"}}
	}
	for _, b := range mr.BackendRefs {
		be, err := s.backend(r.Namespace, b)
		if err != nil {
			cr.invalid = err.Error()
			continue
		}
		cr.backends = append(cr.backends, be)
		cr.total += be.weight
	}
	return cr, nil
}

// backend resolves a backendRef to a service of the mesh.
func (s *snapshot) backend(routeNS string, b model.BackendRef) (backend, error) {
	ns := b.Namespace
	if ns == "" {
		ns = routeNS
	}
	svc := s.services[ns+"/"+b.Name]
	if svc == nil {
		return backend{}, fmt.Errorf("backend service %s/%s does not exist", ns, b.Name)
	}
	if svc.ports[b.Port] == nil {
		return backend{}, fmt.Errorf("backend service %s/%s has no port %d", ns, b.Name, b.Port)
	}
	return backend{svc: svc, port: b.Port, weight: b.Weight, filters: b.Filters, name: fmt.Sprintf("%s:%d", svc.key, b.Port)}, nil
}

func compileMatch(kind model.RouteKind, mm model.RouteMatch) (*match, error) {
	m := &match{pathKind: model.MatchTypePathPrefix, path: "/", method: mm.Method}
	if mm.Path != nil {
		m.pathKind, m.path = mm.Path.Type, mm.Path.Value
		if m.pathKind == model.MatchTypeRegex {
			re, err := regexp.Compile("^(?:" + mm.Path.Value + ")$")
			if err != nil {
				return nil, fmt.Errorf("path regular expression %q: %w", mm.Path.Value, err)
			}
			m.pathRE = re
		}
	}
	if g := mm.GRPC; g != nil {
		// A gRPC call is POST /service/method.
		m.method = http.MethodPost
		svc, meth := g.Service, g.Method
		if g.Type == model.MatchTypeRegex {
			if svc == "" {
				svc = "[^/]+"
			}
			if meth == "" {
				meth = "[^/]+"
			}
			re, err := regexp.Compile("^/(?:" + svc + ")/(?:" + meth + ")$")
			if err != nil {
				return nil, fmt.Errorf("grpc method regular expression: %w", err)
			}
			m.pathKind, m.pathRE, m.path = model.MatchTypeRegex, re, "/"+svc+"/"+meth
		} else {
			switch {
			case svc != "" && meth != "":
				m.pathKind, m.path = model.MatchTypeExact, "/"+svc+"/"+meth
			case svc != "":
				m.pathKind, m.path = model.MatchTypePathPrefix, "/"+svc+"/"
			case meth != "":
				m.pathKind, m.pathRE, m.path = model.MatchTypeRegex, regexp.MustCompile("^/[^/]+/"+regexp.QuoteMeta(meth)+"$"), "/*/"+meth
			}
		}
	} else if kind == model.KindGRPCRoute {
		m.method = http.MethodPost
	}
	for _, h := range mm.Headers {
		vm, err := newValueMatcher(model.ValueMatch{Type: h.Type, Name: http.CanonicalHeaderKey(h.Name), Value: h.Value})
		if err != nil {
			return nil, fmt.Errorf("header %s: %w", h.Name, err)
		}
		m.headers = append(m.headers, vm)
	}
	for _, q := range mm.QueryParams {
		vm, err := newValueMatcher(q)
		if err != nil {
			return nil, fmt.Errorf("query parameter %s: %w", q.Name, err)
		}
		m.query = append(m.query, vm)
	}
	return m, nil
}

// matches reports whether the request matches.
func (m *match) matches(r *http.Request) bool {
	path := r.URL.Path
	switch m.pathKind {
	case model.MatchTypeExact:
		if path != m.path {
			return false
		}
	case model.MatchTypeRegex:
		if !m.pathRE.MatchString(path) {
			return false
		}
	default:
		if !prefixMatch(path, m.path) {
			return false
		}
	}
	if m.method != "" && r.Method != m.method {
		return false
	}
	for _, h := range m.headers {
		vals := r.Header.Values(h.name)
		if h.name == "Host" {
			vals = []string{r.Host}
		}
		if len(vals) == 0 || !h.match(strings.Join(vals, ",")) {
			return false
		}
	}
	if len(m.query) > 0 {
		q := r.URL.Query()
		for _, qm := range m.query {
			if !q.Has(qm.name) || !qm.match(q.Get(qm.name)) {
				return false
			}
		}
	}
	return true
}

// prefixMatch is Gateway API's PathPrefix: element-wise, so /foo matches
// /foo and /foo/bar but not /foobar; a trailing slash is ignored.
func prefixMatch(path, prefix string) bool {
	prefix = strings.TrimSuffix(prefix, "/")
	if prefix == "" {
		return true
	}
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || path[len(prefix)] == '/'
}

// sortRoutes orders matches by Gateway API precedence: exact path, then
// regular expression, then the longest prefix; then a method; then more
// headers; then more query parameters; ties keep config order (the oldest
// route first).
func sortRoutes(es []*routeEntry) {
	rank := func(m *match) int {
		switch m.pathKind {
		case model.MatchTypeExact:
			return 0
		case model.MatchTypeRegex:
			return 1
		}
		return 2
	}
	sort.SliceStable(es, func(i, j int) bool {
		a, b := es[i].match, es[j].match
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra < rb
		}
		if a.pathKind == model.MatchTypePathPrefix && len(a.path) != len(b.path) {
			return len(a.path) > len(b.path)
		}
		if (a.method != "") != (b.method != "") {
			return a.method != ""
		}
		if len(a.headers) != len(b.headers) {
			return len(a.headers) > len(b.headers)
		}
		return len(a.query) > len(b.query)
	})
}

// matchRoute returns the first of routes a request matches, or nil (404).
func matchRoute(routes []*routeEntry, r *http.Request) *routeEntry {
	for _, e := range routes {
		if e.match.matches(r) {
			return e
		}
	}
	return nil
}

// pick chooses a backend by weight; nil when every weight is 0.
func (r *rule) pick() *backend {
	if r.total <= 0 {
		return nil
	}
	n := rand.IntN(r.total)
	for i := range r.backends {
		if n < r.backends[i].weight {
			return &r.backends[i]
		}
		n -= r.backends[i].weight
	}
	return nil
}
