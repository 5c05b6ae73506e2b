package metrics

import (
	"slices"
	"testing"
)

func TestMetrics_AuthzDecisions(t *testing.T) {
	m := New(Sources{Authz: func() ([]AuthzStat, error) {
		return []AuthzStat{
			{Reporter: ReporterSource, Allowed: 7, Denied: 2},
			{Policy: "default/allow-client", Action: "ALLOW", Reporter: ReporterDestination, Allowed: 5},
			{Policy: "default/deny-legacy", Action: "DENY", Reporter: ReporterSource, Denied: 3},
			{Policy: "istio-system/audit", Action: "AUDIT", Reporter: ReporterSource, Matched: 4},
			{Policy: "default/try", Action: "DENY", DryRun: true, Reporter: ReporterDestination, Matched: 1},
		}, nil
	}}, nil)
	got := series(t, m, AuthzDecisions)
	want := []string{
		`kmesh_authz_decisions_total{action="ALLOW",decision="allow",policy="default/allow-client",reporter="destination"} 5`,
		`kmesh_authz_decisions_total{action="AUDIT",decision="audit",policy="istio-system/audit",reporter="source"} 4`,
		`kmesh_authz_decisions_total{action="DENY",decision="deny",policy="default/deny-legacy",reporter="source"} 3`,
		`kmesh_authz_decisions_total{action="DENY",decision="dry_run",policy="default/try",reporter="destination"} 1`,
		`kmesh_authz_decisions_total{action="none",decision="allow",policy="none",reporter="source"} 7`,
		`kmesh_authz_decisions_total{action="none",decision="deny",policy="none",reporter="source"} 2`,
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("series:\n%q\nwant\n%q", got, want)
	}
}
