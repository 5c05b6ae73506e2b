package metrics

import (
	"bytes"
	"errors"
	"log/slog"
	"net/http/httptest"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// scrape returns the registry's exposition, without comments.
func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: %d %s", rec.Code, rec.Body)
	}
	var out []string
	for _, l := range strings.Split(rec.Body.String(), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// series returns the scraped lines of one metric.
func series(t *testing.T, m *Metrics, name string) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(scrape(t, m), "\n") {
		if strings.HasPrefix(l, name+"{") || strings.HasPrefix(l, name+" ") {
			out = append(out, l)
		}
	}
	return out
}

func TestMetrics_TCPMetricsHaveIstiosNamesAndLabels(t *testing.T) {
	m := New(Sources{}, nil)
	l := TCPLabels{
		Reporter:                     ReporterSource,
		SourceWorkload:               "client",
		SourceWorkloadNamespace:      "default",
		DestinationService:           "hello.default.svc.cluster.local",
		DestinationWorkload:          "hello-1",
		DestinationWorkloadNamespace: "default",
	}
	m.ConnectionOpened(l)
	m.ConnectionOpened(l)
	m.ConnectionBytes(l, 100, 10)
	m.ConnectionClosed(l, 5, 1)

	// Istio's label set, exactly: the dashboards select on these.
	istio := []string{"connection_security_policy", "destination_principal", "destination_service",
		"destination_workload", "destination_workload_namespace", "reporter", "request_protocol",
		"response_flags", "source_principal", "source_workload", "source_workload_namespace"}
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), "istio_") {
			continue
		}
		seen++
		var names []string
		for _, p := range f.GetMetric()[0].GetLabel() {
			names = append(names, p.GetName())
		}
		sort.Strings(names)
		if !slices.Equal(names, istio) {
			t.Errorf("%s labels %v, want %v", f.GetName(), names, istio)
		}
	}
	if seen != 4 {
		t.Errorf("%d istio_* metrics, want 4", seen)
	}

	labels := `{connection_security_policy="unknown",destination_principal="unknown",destination_service="hello.default.svc.cluster.local",destination_workload="hello-1",destination_workload_namespace="default",reporter="source",request_protocol="tcp",response_flags="-",source_principal="unknown",source_workload="client",source_workload_namespace="default"}`
	for name, want := range map[string]string{
		TCPConnectionsOpened: "2",
		TCPConnectionsClosed: "1",
		TCPSentBytes:         "105",
		TCPReceivedBytes:     "11",
	} {
		got := series(t, m, name)
		if len(got) != 1 || got[0] != name+labels+" "+want {
			t.Errorf("%s: %q, want %s", name, got, name+labels+" "+want)
		}
	}
}

func TestMetrics_ConfigUpdatesCountAppliedAndRejected(t *testing.T) {
	m := New(Sources{}, nil)
	m.ConfigSource("file")
	want := []string{
		`kmesh_config_updates_total{result="applied",source="file"} 0`,
		`kmesh_config_updates_total{result="rejected",source="file"} 0`,
	}
	if got := series(t, m, ConfigUpdates); !slices.Equal(got, want) {
		t.Fatalf("before any update: %q, want %q", got, want)
	}
	m.ConfigUpdate("file", nil)
	m.ConfigUpdate("file", nil)
	m.ConfigUpdate("file", errors.New("bad.yaml:3: name: empty"))
	want = []string{
		`kmesh_config_updates_total{result="applied",source="file"} 2`,
		`kmesh_config_updates_total{result="rejected",source="file"} 1`,
	}
	if got := series(t, m, ConfigUpdates); !slices.Equal(got, want) {
		t.Fatalf("after updates: %q, want %q", got, want)
	}
}

func TestMetrics_RingbufLost(t *testing.T) {
	m := New(Sources{}, nil)
	m.RingbufLost(3)
	m.RingbufLost(4)
	if got := series(t, m, RingbufLostRecords); !slices.Equal(got, []string{RingbufLostRecords + " 7"}) {
		t.Fatalf("%q", got)
	}
}

func TestMetrics_SourcesReadAtScrape(t *testing.T) {
	entries := uint64(2)
	m := New(Sources{
		Maps: func() ([]MapStat, error) {
			return []MapStat{{Name: "km_frontend", Entries: entries, Capacity: 64}}, nil
		},
		Programs: func() ([]ProgramStat, error) {
			return []ProgramStat{{Name: "km_connect4", RunCount: 10, RunTime: 0.5}}, nil
		},
	}, nil)
	want := []string{
		`kmesh_map_capacity{map="km_frontend"} 64`,
		`kmesh_map_entries{map="km_frontend"} 2`,
		`kmesh_bpf_program_run_seconds_total{program="km_connect4"} 0.5`,
		`kmesh_bpf_program_runs_total{program="km_connect4"} 10`,
	}
	for _, w := range want {
		name := w[:strings.IndexByte(w, '{')]
		if got := series(t, m, name); !slices.Equal(got, []string{w}) {
			t.Errorf("%s: %q, want %q", name, got, w)
		}
	}
	entries = 5
	if got := series(t, m, MapEntries); !slices.Equal(got, []string{`kmesh_map_entries{map="km_frontend"} 5`}) {
		t.Errorf("second scrape: %q", got)
	}
}

func TestMetrics_FailingSourceLoggedOnceAndScrapeGoesOn(t *testing.T) {
	var logs bytes.Buffer
	fail := true
	m := New(Sources{Maps: func() ([]MapStat, error) {
		if fail {
			return []MapStat{{Name: "km_backend", Entries: 1, Capacity: 8}}, errors.New("read km_frontend: boom")
		}
		return nil, nil
	}}, slog.New(slog.NewTextHandler(&logs, nil)))
	for range 3 {
		// What was read before the error still shows.
		if got := series(t, m, MapEntries); !slices.Equal(got, []string{`kmesh_map_entries{map="km_backend"} 1`}) {
			t.Fatalf("failing source: %q", got)
		}
	}
	if n := strings.Count(logs.String(), "metrics source failing"); n != 1 {
		t.Fatalf("%d warnings for one failing source, want 1:\n%s", n, logs.String())
	}
	fail = false
	scrape(t, m)
	if !strings.Contains(logs.String(), "metrics source recovered") {
		t.Fatalf("no recovery logged:\n%s", logs.String())
	}
}

// Counters kept in the kernel are added by a BeforeScrape function: what it
// adds shows in the same scrape.
func TestMetrics_BeforeScrapeCountsInTheSameScrape(t *testing.T) {
	m := New(Sources{}, nil)
	c := m.TCP(TCPLabels{Reporter: ReporterSource, SourceWorkload: "client", SourceWorkloadNamespace: "default"})
	m.BeforeScrape(func() { c.Add(2, 1, 300, 40) })
	for n := 1; n <= 2; n++ {
		out := scrape(t, m)
		for name, per := range map[string]int{TCPConnectionsOpened: 2, TCPConnectionsClosed: 1, TCPSentBytes: 300, TCPReceivedBytes: 40} {
			var line string
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, name+"{") {
					line = l
				}
			}
			if want := " " + strconv.Itoa(n*per); !strings.HasSuffix(line, want) {
				t.Errorf("scrape %d: %q, want %s", n, line, want)
			}
		}
	}
}
