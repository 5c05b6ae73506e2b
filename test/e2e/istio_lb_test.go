//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/source/kube"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// The locality topology of the Istio tier: three Nodes in two regions,
// labelled topology.kubernetes.io/{region,zone} as a cloud provider labels
// them; istiod gives each pod its node's locality.
//
//	node-a  region-1/zone-a: client-a, hello-1
//	node-b  region-1/zone-b: hello-2
//	node-c  region-2/zone-c: hello-3
//
// Service apps/hello (10.96.74.10) has trafficDistribution: PreferClose,
// which istiod sends as load_balancing FAILOVER over [network region zone];
// apps/hello-local (10.96.74.11) has internalTrafficPolicy: Local, sent as
// STRICT over [node]; apps/hello-sticky (10.96.74.12) has neither and
// gets sessionAffinity: ClientIP during the test, which istiod does not
// send: kmeshd reads it from the Service. All: port 80 -> 8080 on
// app=hello.
const (
	lbHelloIP  = "10.96.74.10"
	lbLocalIP  = "10.96.74.11"
	lbStickyIP = "10.96.74.12"
)

var istioLBNodes = []struct {
	name, region, zone string
	cidr               netip.Prefix
}{
	{"node-a", "region-1", "zone-a", netip.MustParsePrefix("10.74.1.0/24")},
	{"node-b", "region-1", "zone-b", netip.MustParsePrefix("10.74.2.0/24")},
	{"node-c", "region-2", "zone-c", netip.MustParsePrefix("10.74.3.0/24")},
}

var istioLBPods = []istioPod{
	{"client-a", "node-a", "10.74.1.10", istioAppsNs, map[string]string{"app": "client"}},
	{"hello-1", "node-a", "10.74.1.11", istioAppsNs, map[string]string{"app": "hello"}},
	{"hello-2", "node-b", "10.74.2.12", istioAppsNs, map[string]string{"app": "hello"}},
	{"hello-3", "node-c", "10.74.3.13", istioAppsNs, map[string]string{"app": "hello"}},
}

// TestIstioLB_PreferCloseFailoverStrict drives the kernel's locality
// balancing from Kubernetes objects through the stock istiod: every
// connection stays in the client's zone while it has a ready endpoint, the
// first connect after the zone empties goes to the next closest zone (same
// region before another region) with no failed request in between, and
// internalTrafficPolicy: Local refuses at once when the client's node has
// no endpoint.
func TestIstioLB_PreferCloseFailoverStrict(t *testing.T) {
	findIstioTools(t)
	m := &mesh{t: t, bed: testbed.NewT(t), nodes: map[string]*testbed.Node{}, pods: map[string]*testbed.Pod{}, dir: t.TempDir()}
	var err error
	if m.echo, err = testbed.Build("github.com/kmesh-go/kmesh/internal/testbed/kmesh-echo"); err != nil {
		t.Fatal(err)
	}
	if m.kmeshd, err = testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshd"); err != nil {
		t.Fatal(err)
	}
	env := newIstioEnv(t, m.bed)
	for _, n := range istioLBNodes {
		m.addNode(n.name, n.cidr)
		env.nodeIn(m.nodes[n.name], n.region, n.zone)
	}
	env.namespace(istioAppsNs, map[string]string{kube.DataplaneModeLabel: kube.ModeAmbient})
	servers := map[string]*testbed.Process{}
	serve := func(pod string) {
		t.Helper()
		p, err := m.pods[pod].Start(m.echo, "serve", "--name", pod)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case line := <-p.Lines():
			if !strings.HasPrefix(line, "listening ") {
				t.Fatalf("%s: first line %q, want listening ...", pod, line)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: not listening after 10s: %s", pod, p.Stderr())
		}
		servers[pod] = p
	}
	for _, p := range istioLBPods {
		m.addPod(p.node, p.name, p.ip)
		env.pod(m.pods[p.name], p.ns, p.labels)
		if p.labels["app"] == "hello" {
			serve(p.name)
		}
	}
	preferClose := corev1.ServiceTrafficDistributionPreferClose
	env.service(istioAppsNs, "hello", lbHelloIP, map[string]string{"app": "hello"}, 80, 8080,
		func(s *corev1.ServiceSpec) { s.TrafficDistribution = &preferClose })
	local := corev1.ServiceInternalTrafficPolicyLocal
	env.service(istioAppsNs, "hello-local", lbLocalIP, map[string]string{"app": "hello"}, 80, 8080,
		func(s *corev1.ServiceSpec) { s.InternalTrafficPolicy = &local })
	env.service(istioAppsNs, "hello-sticky", lbStickyIP, map[string]string{"app": "hello"}, 80, 8080)
	ka := m.startIstioKmeshd(env, "node-a")

	// setReady flips a hello pod's readiness, as its probe would, and
	// rewrites the services' EndpointSlices, as the controller would.
	setReady := func(pod string, ready bool) {
		t.Helper()
		env.setPodReady(istioAppsNs, pod, ready)
		env.endpointSlice(istioAppsNs, "hello")
		env.endpointSlice(istioAppsNs, "hello-local")
	}
	// waitPriority waits until node-a's kmeshd picks hello's connects of
	// client-a from the priority that holds exactly the pods in want, and
	// returns when it saw it.
	waitPriority := func(what string, want ...string) time.Time {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			e := explainFrom(t, ka, "apps/client-a", lbHelloIP+":80")
			var eligible []string
			for _, ep := range e.Endpoints {
				if ep.Eligible {
					eligible = append(eligible, strings.TrimPrefix(ep.Workload, "apps/"))
				}
			}
			if strings.Contains(e.Service.Priority, "of failover [network region zone] from the source (region-1/zone-a/, node node-a)") &&
				strings.Join(eligible, ",") == strings.Join(want, ",") {
				return time.Now()
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: /explain priority %q, eligible %v after 30s, want %v\n%s", what, e.Service.Priority, eligible, want, tail(ka.proc.Stderr(), 4000))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	hello := "http://" + lbHelloIP + "/"
	helloLocal := "http://" + lbLocalIP + "/"

	// istiod's locality (from the Node labels) and load_balancing (from
	// trafficDistribution) reach kmeshd: client-a's zone holds hello-1.
	waitPriority("PreferClose from istiod", "hello-1")

	t.Run("prefer_close_keeps_connections_in_zone", func(t *testing.T) {
		rs := m.get("client-a", "--url", hello, "--count", "50")
		if c := counts(rs); c["hello-1"] != 50 {
			t.Fatalf("50 connections of client-a (zone-a) went to %v, want all to hello-1 (zone-a)", c)
		}
	})

	t.Run("internal_traffic_policy_local_stays_on_the_node", func(t *testing.T) {
		rs := m.get("client-a", "--url", helloLocal, "--count", "30")
		if c := counts(rs); c["hello-1"] != 30 {
			t.Fatalf("30 connections to hello-local went to %v, want all to hello-1 (node-a)", c)
		}
	})

	t.Run("failover_to_same_region_within_one_connect", func(t *testing.T) {
		// Requests every 20 ms while hello-1 turns unready, leaves the
		// priority, and then its server stops (as a terminating pod's).
		tr := m.lbTraffic("client-a", hello)
		time.Sleep(500 * time.Millisecond)
		setReady("hello-1", false)
		applied := waitPriority("hello-1 unready", "hello-2")
		// A connection balanced to hello-1 just before the change may still
		// sit in its listener's backlog; stopping the server now would reset
		// it. Kubernetes users give a terminating pod a preStop delay for the
		// same reason: wait as one would.
		time.Sleep(500 * time.Millisecond)
		if err := servers["hello-1"].Stop(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond)
		rs, _ := tr.stop(t)
		before, after := map[string]int{}, map[string]int{}
		for _, r := range rs {
			if r.Error != "" {
				t.Fatalf("request %d failed during the failover: %s (all: %v)", r.Seq, r.Error, counts(rs))
			}
			if time.Unix(0, r.At).Before(applied) {
				before[r.Pod]++
			} else {
				after[r.Pod]++
			}
		}
		t.Logf("answers before kmeshd had the change %v, after %v", before, after)
		// hello-3 is in another region: never while zone-b has hello-2.
		if before["hello-3"]+after["hello-3"] != 0 || before["hello-2"]+before["hello-1"] == 0 || after["hello-2"] < 20 || len(after) != 1 {
			t.Fatalf("answers before kmeshd had the change %v, after %v; want hello-1 then only hello-2 (zone-b, same region), never hello-3", before, after)
		}
	})

	t.Run("strict_refuses_when_nothing_local", func(t *testing.T) {
		start := time.Now()
		rs := m.get("client-a", "--url", helloLocal, "--count", "5", "--timeout", "3s")
		for _, r := range rs {
			if !strings.Contains(r.Error, "connection refused") {
				t.Fatalf("hello-local with no ready endpoint on node-a: %+v, want connection refused", r)
			}
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("5 refused connects took %s, want at once", d)
		}
		e := explainFrom(t, ka, "apps/client-a", lbLocalIP+":80")
		if !strings.HasPrefix(e.Result, "refused: locality mode strict") {
			t.Fatalf("/explain result %q", e.Result)
		}
	})

	t.Run("fails_over_to_the_next_region", func(t *testing.T) {
		setReady("hello-2", false)
		waitPriority("hello-2 unready", "hello-3")
		rs := m.get("client-a", "--url", hello, "--count", "30")
		if c := counts(rs); c["hello-3"] != 30 {
			t.Fatalf("30 connections went to %v, want all to hello-3 (region-2), the only ready endpoint", c)
		}
	})

	t.Run("returns_to_the_zone", func(t *testing.T) {
		serve("hello-1")
		setReady("hello-1", true)
		setReady("hello-2", true)
		waitPriority("hello-1 ready again", "hello-1")
		if c := counts(m.get("client-a", "--url", hello, "--count", "30")); c["hello-1"] != 30 {
			t.Fatalf("30 connections went to %v, want all to hello-1 again", c)
		}
		if c := counts(m.get("client-a", "--url", helloLocal, "--count", "10")); c["hello-1"] != 10 {
			t.Fatalf("10 connections to hello-local went to %v, want all to hello-1", c)
		}
	})

	// sessionAffinity is not in istiod's workload API: kmeshd watches the
	// Service and re-emits that one service when it changes.
	sticky := "http://" + lbStickyIP + "/"
	setAffinity := func(timeout int32) {
		t.Helper()
		svc, err := env.kube.CoreV1().Services(istioAppsNs).Get(env.ctx(), "hello-sticky", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		svc.Spec.SessionAffinity, svc.Spec.SessionAffinityConfig = corev1.ServiceAffinityNone, nil
		if timeout > 0 {
			svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}
		}
		if _, err := env.kube.CoreV1().Services(istioAppsNs).Update(env.ctx(), svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// kmeshd logs each Service's affinity it applies.
		want := fmt.Sprintf("service=%s/hello-sticky timeout=%s", istioAppsNs, time.Duration(timeout)*time.Second)
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(ka.proc.Stderr(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("kmeshd did not apply %q in 30s\n%s", want, tail(ka.proc.Stderr(), 4000))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	spreads := func(what string) {
		t.Helper()
		if c := counts(m.get("client-a", "--url", sticky, "--count", "60")); len(c) < 2 || c[""] != 0 {
			t.Fatalf("%s: 60 new connections went to %v, want more than one backend", what, c)
		}
	}

	t.Run("without_session_affinity_connections_spread", func(t *testing.T) {
		spreads("no sessionAffinity")
		if e := explainFrom(t, ka, "apps/client-a", lbStickyIP+":80"); e.Affinity != nil {
			t.Fatalf("/explain affinity %+v, want none", e.Affinity)
		}
	})

	t.Run("client_ip_affinity_from_the_service_holds_then_expires", func(t *testing.T) {
		setAffinity(3)
		rs := m.get("client-a", "--url", sticky, "--count", "100")
		c := counts(rs)
		if len(c) != 1 || c[""] != 0 {
			t.Fatalf("100 new connections of client-a went to %v, want one backend", c)
		}
		e := explainFrom(t, ka, "apps/client-a", lbStickyIP+":80")
		if e.Affinity == nil || e.Affinity.Workload != "apps/"+rs[0].Pod {
			t.Fatalf("/explain affinity %+v, want apps/%s", e.Affinity, rs[0].Pod)
		}
		// Idle past the timeout, the entry is gone and the client is
		// balanced afresh: over 8 expiries it reaches more than one
		// backend (all the same: (1/3)^7).
		seen := map[string]bool{rs[0].Pod: true}
		for i := range 8 {
			time.Sleep(3300 * time.Millisecond)
			if e := explainFrom(t, ka, "apps/client-a", lbStickyIP+":80"); e.Affinity != nil {
				t.Fatalf("expiry %d: /explain affinity %+v after 3.3 s idle, want expired", i, e.Affinity)
			}
			r := m.get("client-a", "--url", sticky, "--count", "1")
			if r[0].Error != "" {
				t.Fatalf("expiry %d: %s", i, r[0].Error)
			}
			seen[r[0].Pod] = true
		}
		if len(seen) < 2 {
			t.Fatalf("after 8 expiries client-a only reached %v", seen)
		}
	})

	t.Run("affinity_removed_from_the_service_spreads_again", func(t *testing.T) {
		setAffinity(0)
		spreads("sessionAffinity removed")
	})
}

// lbTraffic runs a client in pod that sends a request to url every 20 ms
// until stopped.
func (m *mesh) lbTraffic(pod, url string) *traffic {
	m.t.Helper()
	p, err := m.pods[pod].Start(m.echo, "get", "--url", url, "--count", "0", "--interval", "20ms", "--timeout", "3s")
	if err != nil {
		m.t.Fatal(err)
	}
	return &traffic{name: pod, proc: p, start: time.Now()}
}

// explainFrom asks a kmeshd what a connect of source (namespace/name) to
// dst does.
func explainFrom(t *testing.T, k *kmeshd, source, dst string) api.Explanation {
	t.Helper()
	code, body := httpGet(t, "http://"+k.admin+"/explain?source="+url.QueryEscape(source)+"&destination="+url.QueryEscape(dst))
	if code != 200 {
		t.Fatalf("/explain: %d %s", code, body)
	}
	var e api.Explanation
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatal(err)
	}
	return e
}
