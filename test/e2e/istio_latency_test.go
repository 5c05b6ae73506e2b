//go:build e2e

package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestIstioPushLatency measures how long a change in Kubernetes takes to
// reach kmeshd's maps through istiod: hello-3's readiness flips
// (KMESH_LATENCY_UPDATES times, default 100) and the test polls node-a's
// pinned maps until hello-3's endpoint appears or disappears. It reports
// two spans, p50/p90/p99/max, in the test log and in the file
// $KMESH_LATENCY_REPORT if set:
//
//   - API write to map: the status update returns ... the endpoint entry
//     changes; this includes istiod's informer, its debounce (100 ms by
//     default) and the push;
//   - push to map: kmeshd receives istiod's delta response (its debug log
//     "response received", millisecond timestamps) ... the entry changes.
func TestIstioPushLatency(t *testing.T) {
	updates := 100
	if s := os.Getenv("KMESH_LATENCY_UPDATES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 2 {
			t.Fatalf("KMESH_LATENCY_UPDATES=%q: want a number >= 2", s)
		}
		updates = n
	}
	m, env := newIstioMesh(t, istioPods)
	k := m.startIstioKmeshd(env, "node-a")
	waitHello(t, k, "10.71.1.11", "10.71.2.12", "10.71.2.13")
	maps := openPinnedMaps(t, k.node.BPFDir)
	hello3 := netip.MustParseAddr("10.71.2.13")

	var apiToMap, pushToMap []time.Duration
	for i := range updates {
		ready := i%2 == 1 // first update: not ready
		logFrom := len(k.proc.Stderr())
		start := time.Now()
		env.setPodReady(istioAppsNs, "hello-3", ready)
		var done time.Time
		for deadline := start.Add(20 * time.Second); ; {
			has, err := maps.hasEndpoint(hello3)
			if err != nil {
				t.Fatal(err)
			}
			if has == ready {
				done = time.Now()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("update %d (ready=%v): maps unchanged after 20s:\n%s", i, ready, tail(k.proc.Stderr()[logFrom:], 4000))
			}
			time.Sleep(200 * time.Microsecond)
		}
		apiToMap = append(apiToMap, done.Sub(start))
		// Let the log reader catch up, then take the last response
		// received before the maps changed: the one that changed them.
		time.Sleep(100 * time.Millisecond)
		if at, ok := lastResponseBefore(k.proc.Stderr()[logFrom:], done); ok {
			pushToMap = append(pushToMap, done.Sub(at))
		}
	}
	report := fmt.Sprintf("istiod push-to-map latency (TestIstioPushLatency, %s):\n"+
		"  API write to map, %d updates: %s\n"+
		"  push received to map, %d updates (kmeshd's ms log timestamps, up to +1ms): %s\n",
		time.Now().UTC().Format(time.DateTime), len(apiToMap), percentiles(apiToMap), len(pushToMap), percentiles(pushToMap))
	t.Log(report)
	if f := os.Getenv("KMESH_LATENCY_REPORT"); f != "" {
		if err := os.WriteFile(f, []byte(report), 0o644); err != nil {
			t.Error(err)
		}
	}
	if p := pct(apiToMap, 99); p > 5*time.Second {
		t.Fatalf("p99 API write to map %v, want under 5s", p)
	}
}

var responseReceived = regexp.MustCompile(`(?m)^time=(\S+) level=DEBUG msg="response received"`)

// lastResponseBefore returns the time of the last "response received"
// line in a kmeshd log logged at or before t. Log times are truncated to
// the millisecond, so the span from it to t is at most 1 ms too long.
func lastResponseBefore(log string, t time.Time) (time.Time, bool) {
	var last time.Time
	for _, m := range responseReceived.FindAllStringSubmatch(log, -1) {
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err == nil && !at.After(t) {
			last = at
		}
	}
	return last, !last.IsZero()
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100 // nearest rank
	return s[max(i-1, 0)]
}

func percentiles(ds []time.Duration) string {
	var b strings.Builder
	for _, p := range []int{50, 90, 99, 100} {
		name := "p" + strconv.Itoa(p)
		if p == 100 {
			name = "max"
		}
		b.WriteString(name + "=" + pct(ds, p).Round(10*time.Microsecond).String() + " ")
	}
	return strings.TrimSpace(b.String())
}
