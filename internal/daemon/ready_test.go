package daemon

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

const readyMesh = `services:
- name: hello
  addresses: ["10.96.0.10"]
  ports: [{port: 80, targetPort: 8080}]
  selector: {app: hello}
workloads:
- name: hello-1
  labels: {app: hello}
  addresses: ["10.1.1.11"]
  node: node-b
`

const readyPolicy = `authorizationPolicies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: deny-block, namespace: default}
  spec:
    action: DENY
    rules: [{from: [{source: {ipBlocks: ["10.9.9.0/24"]}}]}]
`

// TestRun_NotReadyWhilePoliciesAreNotEnforced runs kmeshd in this process
// on a throwaway cgroup and bpffs directory, with the kernel probe's result
// edited to a kernel without bpf_loop (Config.features; the probe itself
// is tested in internal/bpf). Policy never fails open: with a policy in the
// mesh /healthz/ready answers 503 with the reason, the gauge counts the
// policy and /config_dump marks it not enforced; without one it is ready.
// On main before this, it was ready and listed the policy as in force.
// With the real probe (this kernel has bpf_loop) the same mesh is ready.
func TestRun_NotReadyWhilePoliciesAreNotEnforced(t *testing.T) {
	bed := testbed.NewT(t)
	n, err := bed.AddNode("node-a", netip.MustParsePrefix("10.77.1.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := bpf.Remove(n.BPFDir); err != nil {
			t.Errorf("remove %s: %v", n.BPFDir, err)
		}
	})
	file := filepath.Join(t.TempDir(), "mesh.yaml")
	write := func(content string) {
		t.Helper()
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	start := func(t *testing.T, features func(bpf.Features) bpf.Features) (ready, metrics, admin string) {
		t.Helper()
		ready, metrics, admin = freeAddr(t), freeAddr(t), freeAddr(t)
		cfg := Config{
			ConfigFile: file, Node: "node-a", Cgroup: n.Cgroup, BPFDir: n.BPFDir,
			AdminAddress: admin, AdminSocket: filepath.Join(t.TempDir(), "admin.sock"),
			MetricsAddress: metrics, ReadinessAddress: ready,
			Limits: bpf.DefaultLimits, features: features,
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- Run(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("kmeshd: %v", err)
			}
		})
		return ready, metrics, admin
	}
	noBPFLoop := func(f bpf.Features) bpf.Features { f.Authz = false; return f }

	t.Run("no_bpf_loop", func(t *testing.T) {
		write(readyMesh + readyPolicy)
		ready, metrics, admin := start(t, noBPFLoop)
		code, body := waitGet(t, "http://"+ready+"/healthz/ready", func(code int, _ string) bool { return code != 0 })
		if want := "not ready: 1 authorization policies are not enforced: the kernel lacks bpf_loop in cgroup programs (5.17)"; code != http.StatusServiceUnavailable || strings.TrimSpace(body) != want {
			t.Fatalf("/healthz/ready with a policy the kernel cannot enforce: %d %q, want 503 %q", code, body, want)
		}
		if _, m := get(t, "http://"+metrics+"/metrics"); !strings.Contains(m, `kmesh_authz_policies_not_enforced{action="deny"} 1`) {
			t.Fatalf("metrics without kmesh_authz_policies_not_enforced{action=\"deny\"} 1:\n%s", grepLines(m, "not_enforced"))
		}
		_, body = get(t, "http://"+admin+"/config_dump")
		var d api.ConfigDump
		if err := json.Unmarshal([]byte(body), &d); err != nil {
			t.Fatal(err)
		}
		if len(d.Policies) != 1 || d.Policies[0].NotEnforced != bpf.NoAuthzReason {
			t.Fatalf("config dump policies %+v, want deny-block marked not enforced: %s", d.Policies, bpf.NoAuthzReason)
		}
		// The policy goes: nothing is left unenforced, kmeshd is ready.
		write(readyMesh)
		if code, body := waitGet(t, "http://"+ready+"/healthz/ready", func(code int, _ string) bool { return code == http.StatusOK }); code != http.StatusOK {
			t.Fatalf("/healthz/ready without policies: %d %q, want 200", code, body)
		}
		if _, m := get(t, "http://"+metrics+"/metrics"); strings.Contains(m, `kmesh_authz_policies_not_enforced{action="deny"} 1`) {
			t.Fatalf("the removed policy is still counted:\n%s", grepLines(m, "not_enforced"))
		}
	})

	t.Run("real_probe", func(t *testing.T) {
		write(readyMesh + readyPolicy)
		ready, _, _ := start(t, nil)
		if code, body := waitGet(t, "http://"+ready+"/healthz/ready", func(code int, _ string) bool { return code != 0 }); code != http.StatusOK {
			t.Fatalf("/healthz/ready on this kernel (bpf_loop): %d %q, want 200", code, body)
		}
	})
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// get fetches url; code 0 when nothing answers.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitGet fetches url until done says so, for up to 20 s.
func waitGet(t *testing.T, url string, done func(int, string) bool) (int, string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := get(t, url)
		if done(code, body) || time.Now().After(deadline) {
			return code, body
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
