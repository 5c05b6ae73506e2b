//go:build e2e

package e2e

import (
	"encoding/json"
	"net/netip"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	v1beta1 "istio.io/istio/pkg/workloadapi/security"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/metrics"
	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// TestXdsSourceSideAuthz: under an xDS control plane (go-control-plane in
// this process), which names no network namespace, pods enrolled by path
// (client by --enroll-netns, client-2 through the admin API) are matched to
// their xDS workloads by address, so connect() checks policies as them: a
// DENY policy on the hello pods fails their connect() at once with EACCES,
// while hello-1 (enrolled, not denied) still connects. Node-b runs no
// kmeshd, so nothing else would stop the connection: before the match, the
// denied clients got through. /explain says the same.
func TestXdsSourceSideAuthz(t *testing.T) {
	m := newMesh(t)
	m.addPod("node-a", "client-2", "10.1.1.30", "fd00:1:1::30")
	kmeshctl, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshctl")
	if err != nil {
		t.Fatal(err)
	}
	srv := xdstest.Start(t, "")
	name, svc := xdstest.Service("default", "hello", []string{"10.96.0.10", "fd00:96::10"}, xdstest.Port{Service: 80, Target: 8080})
	mustUpdate(t, srv.Addresses, name, svc)
	workloads := append([]workloadSpec{{"client-2", "client", "node-a", []string{"10.1.1.30", "fd00:1:1::30"}, 1}}, helloWorkloads...)
	for _, w := range workloads {
		xw := xdstest.Workload{Namespace: "default", Name: w.name, Node: w.node, IPs: w.addrs}
		if w.app == "hello" {
			xw.Services = map[string][]xdstest.Port{"default/hello": {{Service: 80, Target: 8080}}}
			xw.Policies = []string{"default/deny-clients"}
		}
		name, a := xw.Address()
		mustUpdate(t, srv.Addresses, name, a)
	}
	var from []*v1beta1.Address
	for _, ip := range []string{"10.1.1.10", "fd00:1:1::10", "10.1.1.30", "fd00:1:1::30"} {
		a := netip.MustParseAddr(ip)
		from = append(from, &v1beta1.Address{Address: a.AsSlice(), Length: uint32(a.BitLen())})
	}
	mustUpdate(t, srv.Authorizations, "default/deny-clients", &v1beta1.Authorization{
		Name: "deny-clients", Namespace: "default", Scope: v1beta1.Scope_WORKLOAD_SELECTOR, Action: v1beta1.Action_DENY,
		Groups: []*v1beta1.Group{{Rules: []*v1beta1.Rules{{Matches: []*v1beta1.Match{{SourceIps: from}}}}}},
	})

	k := m.startXdsKmeshd(srv, "workload") // --enroll-netns client
	for _, pod := range []string{"client-2", "hello-1"} {
		out, err := exec.Command(kmeshctl, "--admin-address", k.admin, "--admin-socket", k.socket, "enroll", "--netns", m.pods[pod].NetnsPath).CombinedOutput()
		if err != nil {
			t.Fatalf("kmeshctl enroll %s: %v: %s", pod, err, out)
		}
	}
	want := map[string]string{}
	for _, pod := range []string{"client", "client-2", "hello-1"} {
		want["default/"+pod] = m.pods[pod].NetnsPath
	}
	deadline := time.Now().Add(10 * time.Second)
	for d := k.configDump(t); !mapsEqual(d.EnrolledWorkloads, want); d = k.configDump(t) {
		if time.Now().After(deadline) {
			t.Fatalf("enrolled workloads %v, want %v\n%s", d.EnrolledWorkloads, want, tail(k.proc.Stderr(), 4000))
		}
		time.Sleep(50 * time.Millisecond)
	}

	for _, pod := range []string{"client", "client-2"} {
		for _, u := range []string{"http://10.96.0.10/", "http://[fd00:96::10]/", "http://10.1.2.13:8080/"} {
			rs, took := m.getTimed(pod, "--url", u, "--count", "1", "--timeout", "5s")
			if len(rs) != 1 || !strings.Contains(rs[0].Error, "connect: permission denied") {
				t.Fatalf("%s to %s: %+v, want connect: permission denied (EACCES)", pod, u, rs)
			}
			if took > 2*time.Second {
				t.Fatalf("%s to %s: failed after %v, not at once", pod, u, took)
			}
		}
	}
	if got := metricSum(t, k.metrics, metrics.AuthzDecisions, map[string]string{
		"policy": "default/deny-clients", "action": "DENY", "decision": metrics.DecisionDeny, "reporter": metrics.ReporterSource}); got < 6 {
		t.Fatalf("source-side denials by default/deny-clients: %v, want at least 6", got)
	}
	rs := m.get("hello-1", "--url", "http://10.96.0.10/", "--count", "20")
	checkOnly(t, rs, allHello...)

	explain := func(source string) api.Explanation {
		t.Helper()
		code, body := httpGet(t, "http://"+k.admin+"/explain?source="+source+"&destination="+url.QueryEscape("10.96.0.10:80"))
		if code != 200 {
			t.Fatalf("/explain %s: %d %s", source, code, body)
		}
		var e api.Explanation
		if err := json.Unmarshal([]byte(body), &e); err != nil {
			t.Fatal(err)
		}
		return e
	}
	for _, src := range []string{"default/client", "default/client-2"} {
		e := explain(src)
		if !e.Source.Enrolled || e.Source.Netns != want[src] || !strings.HasPrefix(e.Result, "denied: policies deny every eligible endpoint") {
			t.Fatalf("/explain from %s: source %+v, result %q; want enrolled in %s and denied", src, e.Source, e.Result, want[src])
		}
	}
	if e := explain("default/hello-1"); !e.Source.Enrolled || !strings.HasPrefix(e.Result, "balanced (random) over 3 of 3 endpoints") {
		t.Fatalf("/explain from hello-1: source %+v, result %q", e.Source, e.Result)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
