//go:build e2e

package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

var allHello = []string{"hello-1", "hello-2", "hello-3"}

// chiSquare is Pearson's statistic of observed counts against expected
// shares (which sum to 1).
func chiSquare(obs map[string]int, shares map[string]float64) float64 {
	total := 0
	for _, n := range obs {
		total += n
	}
	x := 0.0
	for k, s := range shares {
		e := s * float64(total)
		d := float64(obs[k]) - e
		x += d * d / e
	}
	return x
}

// chi2Crit2df is the 0.1% critical value of chi-square with 2 degrees of
// freedom: a fair balancer exceeds it once in a thousand runs.
const chi2Crit2df = 13.82

func checkOnly(t *testing.T, rs []result, pods ...string) {
	t.Helper()
	c := counts(rs)
	allowed := map[string]bool{}
	for _, p := range pods {
		allowed[p] = true
	}
	for k, n := range c {
		if !allowed[k] {
			t.Fatalf("%d requests answered by %q, want only %v; all: %v", n, k, pods, c)
		}
	}
}

// TestL4 drives the service of examples/hello.yaml through one topology:
// two nodes, each with its own kmeshd, a client and three hello pods.
func TestL4(t *testing.T) {
	m := newMesh(t)
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, m.config("random", helloWorkloads))
	ka := m.startKmeshd("node-a", cfg)
	kb := m.startKmeshd("node-b", cfg)
	version := uint64(1)

	t.Run("ipv4_reaches_every_endpoint_and_hides_it", func(t *testing.T) {
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "60")
		checkOnly(t, rs, allHello...)
		if c := counts(rs); len(c) != 3 {
			t.Fatalf("answers %v, want all of %v", c, allHello)
		}
		for _, r := range rs {
			if r.Peer != "10.96.0.10:80" {
				t.Fatalf("getpeername = %s, want the service address 10.96.0.10:80", r.Peer)
			}
			if !strings.HasPrefix(r.ServerSaw, "10.1.1.10:") {
				t.Fatalf("server saw the client as %s, want its own address 10.1.1.10 (no NAT)", r.ServerSaw)
			}
		}
	})

	t.Run("ipv6_reaches_every_endpoint_and_hides_it", func(t *testing.T) {
		rs := m.get("client", "--url", "http://[fd00:96::10]/", "--count", "60")
		checkOnly(t, rs, allHello...)
		if c := counts(rs); len(c) != 3 {
			t.Fatalf("answers %v, want all of %v", c, allHello)
		}
		for _, r := range rs {
			if r.Peer != "[fd00:96::10]:80" {
				t.Fatalf("getpeername = %s, want [fd00:96::10]:80", r.Peer)
			}
			if !strings.HasPrefix(r.ServerSaw, "[fd00:1:1::10]:") {
				t.Fatalf("server saw the client as %s, want [fd00:1:1::10]", r.ServerSaw)
			}
		}
	})

	t.Run("v4_mapped_socket_gets_ipv4_endpoint", func(t *testing.T) {
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "30", "--v4-mapped")
		checkOnly(t, rs, allHello...)
		for _, r := range rs {
			if r.Peer != "[::ffff:10.96.0.10]:80" {
				t.Fatalf("getpeername on the AF_INET6 socket = %s, want [::ffff:10.96.0.10]:80", r.Peer)
			}
		}
	})

	t.Run("random_spreads_evenly", func(t *testing.T) {
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "600")
		checkOnly(t, rs, allHello...)
		c := counts(rs)
		x := chiSquare(c, map[string]float64{"hello-1": 1. / 3, "hello-2": 1. / 3, "hello-3": 1. / 3})
		t.Logf("600 requests: %v, chi-square %.2f", c, x)
		if x > chi2Crit2df {
			t.Fatalf("answers %v are not uniform: chi-square %.2f > %.2f", c, x, chi2Crit2df)
		}
	})

	t.Run("not_enrolled_namespace_is_not_rewritten", func(t *testing.T) {
		// outsider runs in node-a's cgroup, under the same programs, but its
		// namespace is not in the config: the service address means nothing.
		rs := m.get("outsider", "--url", "http://10.96.0.10/", "--count", "3", "--timeout", "2s")
		for _, r := range rs {
			if r.Error == "" {
				t.Fatalf("outsider reached %s through the service address; want no rewrite", r.Pod)
			}
		}
		// The same pod reaches the endpoints by their own addresses.
		rs = m.get("outsider", "--url", "http://10.1.2.12:8080/", "--count", "1")
		checkOnly(t, rs, "hello-2")
	})

	t.Run("other_port_passes_untouched", func(t *testing.T) {
		rs := m.get("client", "--url", "http://10.96.0.10:8080/", "--count", "2", "--timeout", "2s")
		for _, r := range rs {
			if r.Error == "" {
				t.Fatalf("port 8080 of the service address reached %s; only port 80 is a service port", r.Pod)
			}
		}
	})

	t.Run("round_robin_cycles", func(t *testing.T) {
		m.writeConfig(cfg, m.config("round_robin", helloWorkloads))
		version++
		ka.waitVersion(t, version)
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "30")
		checkOnly(t, rs, allHello...)
		for i := 3; i < len(rs); i++ {
			if rs[i].Pod != rs[i-3].Pod {
				t.Fatalf("request %d went to %s, request %d to %s: not a cycle of 3 (%v)", i, rs[i].Pod, i-3, rs[i-3].Pod, pods(rs))
			}
		}
		if rs[0].Pod == rs[1].Pod || rs[1].Pod == rs[2].Pod || rs[0].Pod == rs[2].Pod {
			t.Fatalf("first cycle %v repeats a pod", pods(rs[:3]))
		}
	})

	t.Run("weights_shift_the_share", func(t *testing.T) {
		ws := append([]workloadSpec(nil), helloWorkloads...)
		ws[1].weight = 4 // hello-1
		m.writeConfig(cfg, m.config("random", ws))
		version++
		ka.waitVersion(t, version)
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "600")
		checkOnly(t, rs, allHello...)
		c := counts(rs)
		x := chiSquare(c, map[string]float64{"hello-1": 4. / 6, "hello-2": 1. / 6, "hello-3": 1. / 6})
		t.Logf("600 requests, weights 4:1:1: %v, chi-square %.2f", c, x)
		if x > chi2Crit2df {
			t.Fatalf("answers %v do not follow weights 4:1:1: chi-square %.2f > %.2f", c, x, chi2Crit2df)
		}
	})

	t.Run("bad_files_keep_the_old_state", func(t *testing.T) {
		good := m.config("random", helloWorkloads)
		m.writeConfig(cfg, good)
		version++
		ka.waitVersion(t, version)
		missingNetns := strings.Replace(good, m.pods["hello-1"].NetnsPath, m.pods["hello-1"].NetnsPath+"-gone", 1)
		cases := []struct{ name, content, want string }{
			{"yaml_error", good + "  - [unclosed\n", "mesh.yaml:"},
			{"unknown_field", strings.Replace(good, "selector:", "selecter:", 1), "selecter"},
			{"invalid_address", strings.Replace(good, "10.96.0.10", "10.96.0.300", 1), "10.96.0.300"},
			{"port_out_of_range", strings.Replace(good, "port: 80,", "port: 70000,", 1), "70000"},
			{"duplicate_service_address", "", "10.96.0.10"},
			{"missing_netns", missingNetns, "-gone"},
		}
		rejected := 0
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				// duplicate_service_address appends a second service under services:.
				content := tc.content
				if tc.name == "duplicate_service_address" {
					parts := strings.SplitN(good, "workloads:", 2)
					dup := strings.Replace(parts[0], "services:\n- name: hello", "- name: hello-copy", 1)
					content = parts[0] + dup + "workloads:" + parts[1]
				}
				m.writeConfig(cfg, content)
				rejected++
				ka.waitLog(t, `msg="config rejected"`, rejected)
				logs := ka.proc.Stderr()
				last := logs[strings.LastIndex(logs, `msg="config rejected"`):]
				last = last[:strings.IndexByte(last, '\n')]
				if !strings.Contains(last, "mesh.yaml:") || !strings.Contains(last, tc.want) {
					t.Fatalf("rejection %q does not name file:line and %q", last, tc.want)
				}
				if v := ka.configDump(t).Version; v != version {
					t.Fatalf("config version %d after a bad file, want %d (unchanged)", v, version)
				}
				rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "30")
				checkOnly(t, rs, allHello...)
				if c := counts(rs); len(c) != 3 {
					t.Fatalf("after a bad file the old endpoints answer %v, want all of %v", c, allHello)
				}
			})
		}
		m.writeConfig(cfg, good) // same as the last good state: nothing to apply
	})

	t.Run("removed_workload_gets_no_new_connections_but_keeps_its_own", func(t *testing.T) {
		// A keep-alive client holds one connection to some endpoint.
		held, err := m.pods["client"].Start(m.echo, "get", "--url", "http://10.96.0.10/", "--count", "0", "--interval", "50ms", "--keepalive")
		if err != nil {
			t.Fatal(err)
		}
		first := readResult(t, held)
		if first.Error != "" {
			t.Fatalf("keep-alive client: %s", first.Error)
		}
		victim := first.Pod
		var rest []workloadSpec
		for _, w := range helloWorkloads {
			if w.name != victim {
				rest = append(rest, w)
			}
		}
		m.writeConfig(cfg, m.config("random", rest))
		version++
		ka.waitVersion(t, version)
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "60")
		var others []string
		for _, p := range allHello {
			if p != victim {
				others = append(others, p)
			}
		}
		checkOnly(t, rs, others...)
		// The held connection still talks to the removed workload.
		time.Sleep(300 * time.Millisecond)
		held.Stop()
		n := 0
		for line := range held.Lines() {
			r := parseResult(t, line)
			if r.Error != "" || r.Pod != victim || r.Conn != first.Conn {
				t.Fatalf("held connection: %+v, want answers from %s on connection %d", r, victim, first.Conn)
			}
			n++
		}
		if n < 5 {
			t.Fatalf("held connection answered %d times after the reload, want it to keep going", n)
		}
	})

	t.Run("no_endpoints_fails_connect_at_once", func(t *testing.T) {
		ws := []workloadSpec{helloWorkloads[0]} // only the client: hello has no endpoint
		m.writeConfig(cfg, m.config("random", ws))
		version++
		ka.waitVersion(t, version)
		start := time.Now()
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "3", "--timeout", "5s")
		if d := time.Since(start); d > 4*time.Second {
			t.Fatalf("three failing requests took %v; connect must fail at once", d)
		}
		for _, r := range rs {
			if !strings.Contains(r.Error, "connection refused") {
				t.Fatalf("request to a service with no endpoint: %q, want connection refused", r.Error)
			}
		}
	})
	_ = kb
}

func pods(rs []result) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Pod)
	}
	return out
}

func readResult(t *testing.T, p interface{ Lines() <-chan string }) result {
	t.Helper()
	select {
	case line := <-p.Lines():
		return parseResult(t, line)
	case <-time.After(10 * time.Second):
		t.Fatal("no result in 10s")
	}
	return result{}
}

func parseResult(t *testing.T, line string) result {
	t.Helper()
	var r result
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatalf("line %q: %v", line, err)
	}
	return r
}
