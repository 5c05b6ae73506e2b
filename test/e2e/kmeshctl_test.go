//go:build e2e

package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// kmeshctlAddr finds an address of the "kmeshd ready" log line.
func kmeshctlAddr(t *testing.T, k *kmeshd, key string) string {
	t.Helper()
	sm := regexp.MustCompile(`msg="kmeshd ready".* ` + key + `=(\S+)`).FindStringSubmatch(k.proc.Stderr())
	if sm == nil {
		t.Fatalf("kmeshd ready line has no %s=ADDR:\n%s", key, k.proc.Stderr())
	}
	return sm[1]
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestKmeshctlAgainstKmeshd runs the real kmeshctl binary against a real
// kmeshd serving examples' hello mesh, and reads its metrics.
func TestKmeshctlAgainstKmeshd(t *testing.T) {
	m := newMesh(t)
	ctl, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshctl")
	if err != nil {
		t.Fatal(err)
	}
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, m.config("random", helloWorkloads))
	k := m.startKmeshd("node-a", cfg)
	kmeshctl := func(args ...string) string {
		t.Helper()
		out, err := execOutput(ctl, append(args, "--admin-address", k.admin, "--admin-socket", k.socket)...)
		if err != nil {
			t.Fatalf("kmeshctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	// rows splits a table into rows of fields.
	rows := func(out string) [][]string {
		var rs [][]string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			rs = append(rs, strings.Fields(l))
		}
		return rs
	}

	// The ready line says where the start went (docs/kmeshctl.md): the
	// phases after the first mesh is in hand fit in the total, their CPU
	// times add up to the process's, and
	// bpf.Open's own line counts the maps of a fresh pin directory.
	t.Run("ready line startup_ms and startup_cpu_ms", func(t *testing.T) {
		ms := map[string]int{}
		for _, key := range []string{"total", "bpf_open", "config", "apply", "commit", "settle"} {
			v, err := strconv.Atoi(kmeshctlAddr(t, k, `startup_ms\.`+key))
			if err != nil || v < 0 {
				t.Fatalf("startup_ms.%s: %v (%d)", key, err, v)
			}
			ms[key] = v
		}
		if ms["total"] == 0 || ms["config"]+ms["apply"]+ms["commit"]+ms["settle"] > ms["total"]+3 {
			t.Errorf("startup_ms %v: config, apply, commit and settle follow one another within total", ms)
		}
		cpu := map[string]int{}
		for _, key := range []string{"total", "config", "apply", "settle"} {
			v, err := strconv.Atoi(kmeshctlAddr(t, k, `startup_cpu_ms\.`+key))
			if err != nil || v < 0 {
				t.Fatalf("startup_cpu_ms.%s: %v (%d)", key, err, v)
			}
			cpu[key] = v
		}
		if sum := cpu["config"] + cpu["apply"] + cpu["settle"]; cpu["total"] == 0 || sum < cpu["total"]-2 || sum > cpu["total"]+2 {
			t.Errorf("startup_cpu_ms %v: config, apply and settle add up to total", cpu)
		}
		sm := regexp.MustCompile(`msg="programs loaded" .*maps_created=(\d+) maps_reused=(\d+)`).FindStringSubmatch(k.proc.Stderr())
		if sm == nil || sm[1] == "0" || sm[2] != "0" {
			t.Errorf("programs loaded line %q: want maps created, none reused, on a fresh start", sm)
		}
	})

	t.Run("status", func(t *testing.T) {
		out := kmeshctl("status")
		for _, want := range []string{"NODE:      node-a", "READY:     yes", "SERVICES:  1", "WORKLOADS: 4", "ENROLLED:  2 network namespaces"} {
			if !strings.Contains(out, want) {
				t.Errorf("status lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("get services", func(t *testing.T) {
		got := rows(kmeshctl("get", "services"))
		want := [][]string{
			{"NAMESPACE", "NAME", "ADDRESSES", "PORTS", "ENDPOINTS", "MODE"},
			{"default", "hello", "10.96.0.10,fd00:96::10", "80->8080/TCP", "3", "random"},
		}
		if !slices.EqualFunc(got, want, slices.Equal) {
			t.Fatalf("get services: %q, want %q", got, want)
		}
	})

	t.Run("get workloads -o json", func(t *testing.T) {
		var ws []api.Workload
		if err := json.Unmarshal([]byte(kmeshctl("get", "workloads", "-o", "json")), &ws); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, w := range ws {
			names = append(names, w.Namespace+"/"+w.Name+"@"+w.Node)
		}
		want := []string{"default/client@node-a", "default/hello-1@node-a", "default/hello-2@node-b", "default/hello-3@node-b"}
		if !slices.Equal(names, want) {
			t.Fatalf("workloads %q, want %q", names, want)
		}
		// The table says which of them this node enrolled.
		for _, r := range rows(kmeshctl("get", "workloads"))[1:] {
			wantEnrolled := map[string]string{"client": "yes", "hello-1": "yes", "hello-2": "-", "hello-3": "-"}[r[1]]
			if r[len(r)-1] != wantEnrolled {
				t.Errorf("workload %s: enrolled %s, want %s", r[1], r[len(r)-1], wantEnrolled)
			}
		}
	})

	t.Run("dump maps", func(t *testing.T) {
		out := kmeshctl("dump", "maps")
		for _, re := range []string{
			`(?m)^frontend 10\.96\.0\.10:80/TCP service=\d+ target_port=8080$`,
			`(?m)^frontend \[fd00:96::10\]:80/TCP service=\d+ target_port=8080$`,
			`(?m)^backend \d+ v4=10\.1\.2\.13 v6=fd00:1:2::13$`,
		} {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("dump maps has no line matching %s:\n%s", re, out)
			}
		}
	})

	t.Run("log --level", func(t *testing.T) {
		// kmeshd runs at debug in these tests: go to info and back.
		for _, level := range []string{"info", "debug"} {
			if out := kmeshctl("log", "--level", level); out != "log level: "+level+"\n" {
				t.Fatalf("log --level %s: %q", level, out)
			}
			_, body := httpGet(t, "http://"+k.admin+"/logging")
			var l api.Logging
			if err := json.Unmarshal([]byte(body), &l); err != nil || l.Level != level {
				t.Fatalf("/logging after log --level %s: %s (%v)", level, body, err)
			}
		}
		k.waitLog(t, `msg="log level changed" node=node-a component=admin from=info to=debug`, 1)
	})

	t.Run("accesslog", func(t *testing.T) {
		if out := kmeshctl("accesslog", "on"); out != "access log: on\n" {
			t.Fatalf("accesslog on: %q", out)
		}
		if out := kmeshctl("accesslog"); out != "access log: on\n" {
			t.Fatalf("accesslog: %q", out)
		}
		kmeshctl("accesslog", "off")
	})

	t.Run("explain", func(t *testing.T) {
		var e api.Explanation
		if err := json.Unmarshal([]byte(kmeshctl("explain", "client", "10.96.0.10:80", "-o", "json")), &e); err != nil {
			t.Fatal(err)
		}
		if e.Service == nil || e.Service.Name != "hello" || !e.Source.Enrolled {
			t.Fatalf("explain: service %+v, source %+v; want hello, enrolled", e.Service, e.Source)
		}
		var eps []string
		for _, ep := range e.Endpoints {
			if !ep.Eligible {
				t.Errorf("endpoint %s not eligible: %v", ep.Workload, ep.Reasons)
			}
			eps = append(eps, ep.Workload+"="+ep.Address)
		}
		want := []string{"default/hello-1=10.1.1.11:8080", "default/hello-2=10.1.2.12:8080", "default/hello-3=10.1.2.13:8080"}
		if !slices.Equal(eps, want) {
			t.Fatalf("explain endpoints %q, want %q", eps, want)
		}
		out := kmeshctl("explain", "client", "10.96.0.10:80")
		if !strings.Contains(out, "SERVICE:     default/hello, port 80->8080, random") || strings.Count(out, "default/hello-") != 3 {
			t.Fatalf("explain table:\n%s", out)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		// Connects through the service run km_connect4, which the kernel
		// counts since kmeshd enabled BPF statistics.
		checkOnly(t, m.get("client", "--url", "http://10.96.0.10/", "--count", "3"), allHello...)
		code, body := httpGet(t, "http://"+kmeshctlAddr(t, k, "metrics")+"/metrics")
		if code != 200 {
			t.Fatalf("/metrics: %d", code)
		}
		if !strings.Contains(body, "\n"+`kmesh_map_entries{map="km_frontend"} 2`+"\n") {
			t.Errorf("/metrics has no kmesh_map_entries{map=\"km_frontend\"} 2:\n%s", grepLines(body, "kmesh_map_"))
		}
		sm := regexp.MustCompile(`(?m)^kmesh_config_updates_total\{result="applied",source="file"\} (\S+)$`).FindStringSubmatch(body)
		if sm == nil {
			t.Fatalf("/metrics has no applied config updates:\n%s", grepLines(body, "kmesh_config"))
		}
		if n, _ := strconv.ParseFloat(sm[1], 64); n < 1 {
			t.Errorf("kmesh_config_updates_total applied = %s, want >= 1", sm[1])
		}
		sm = regexp.MustCompile(`(?m)^kmesh_bpf_program_runs_total\{program="km_connect4"\} (\S+)$`).FindStringSubmatch(body)
		if sm == nil {
			t.Fatalf("/metrics has no runs of km_connect4:\n%s", grepLines(body, "kmesh_bpf"))
		}
		if n, _ := strconv.ParseFloat(sm[1], 64); n < 3 {
			t.Errorf("kmesh_bpf_program_runs_total{program=\"km_connect4\"} = %s after 3 connects, want >= 3", sm[1])
		}
		for _, name := range []string{"kmesh_bpf_program_run_seconds_total", "kmesh_ringbuf_lost_records_total", "kmesh_map_capacity"} {
			if !strings.Contains(body, "\n"+name) {
				t.Errorf("/metrics has no %s", name)
			}
		}
	})

	t.Run("readiness address", func(t *testing.T) {
		if code, body := httpGet(t, "http://"+kmeshctlAddr(t, k, "readiness")+"/healthz/ready"); code != 200 {
			t.Fatalf("readiness: %d %s", code, body)
		}
	})
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
