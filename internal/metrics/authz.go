package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// AuthzDecisions counts connections by the authorization policy that
// decided them (kmesh_authz_decisions_total).
const AuthzDecisions = "kmesh_authz_decisions_total"

// Values of the decision label of kmesh_authz_decisions_total.
const (
	DecisionAllow  = "allow"   // an ALLOW policy matched, or none applied
	DecisionDeny   = "deny"    // a DENY policy matched, or no ALLOW policy did
	DecisionAudit  = "audit"   // an AUDIT policy matched: counted only
	DecisionDryRun = "dry_run" // a dry-run policy matched: counted, not enforced
)

// NoPolicy is the policy and action label of decisions no policy made:
// allowed because no ALLOW policy applies, denied because none matched.
const NoPolicy = "none"

// AuthzStat is what the kernel counted for one policy at one end of the
// connection, read when Prometheus scrapes.
type AuthzStat struct {
	Policy   string // namespace/name; "" for decisions no policy made
	Action   string // ALLOW, DENY or AUDIT; "" with no policy
	DryRun   bool
	Reporter string // ReporterSource (at connect) or ReporterDestination (on the SYN)
	Allowed  uint64
	Denied   uint64
	Matched  uint64 // AUDIT and dry-run policies
}

var authzDesc = prometheus.NewDesc(AuthzDecisions,
	"Connections decided by authorization policies, by policy (namespace/name, or none), its action, the decision "+
		"(allow, deny; audit and dry_run for policies only counted) and where it was made (reporter: source at connect, "+
		"destination on the SYN, where every retransmitted SYN counts).",
	[]string{"policy", "action", "decision", "reporter"}, nil)

// authzCollector reads the decision counters at scrape time.
type authzCollector struct {
	read func() ([]AuthzStat, error)
	errs onceLogger
}

func (c *authzCollector) Describe(ch chan<- *prometheus.Desc) { ch <- authzDesc }

func (c *authzCollector) Collect(ch chan<- prometheus.Metric) {
	stats, err := c.read()
	c.errs.report(err)
	for _, s := range stats {
		policy, action := s.Policy, s.Action
		if policy == "" {
			policy, action = NoPolicy, NoPolicy
		}
		emit := func(decision string, n uint64) {
			ch <- prometheus.MustNewConstMetric(authzDesc, prometheus.CounterValue, float64(n), policy, action, decision, s.Reporter)
		}
		switch {
		case s.Policy == "":
			emit(DecisionAllow, s.Allowed)
			emit(DecisionDeny, s.Denied)
		case s.DryRun:
			emit(DecisionDryRun, s.Matched)
		case s.Action == "AUDIT":
			emit(DecisionAudit, s.Matched)
		case s.Action == "DENY":
			emit(DecisionDeny, s.Denied)
		default:
			emit(DecisionAllow, s.Allowed)
		}
	}
}
