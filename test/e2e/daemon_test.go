//go:build e2e

package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestTwoNodesDoNotInterfere runs two kmeshd on one kernel with different
// configs: each balances only its own node's workloads, by its own config,
// and cleaning one up leaves the other working.
func TestTwoNodesDoNotInterfere(t *testing.T) {
	m := newMesh(t)
	m.addPod("node-b", "client-b", "10.1.2.30", "fd00:1:2::30")
	ws := append(helloWorkloads, workloadSpec{"client-b", "client", "node-b", []string{"10.1.2.30", "fd00:1:2::30"}, 1})

	cfgA, cfgB := configPath(m, "a.yaml"), configPath(m, "b.yaml")
	m.writeConfig(cfgA, m.config("random", ws))
	// node-b's config says hello is hello-2 alone.
	var onlyTwo []workloadSpec
	for _, w := range ws {
		if w.app != "hello" || w.name == "hello-2" {
			onlyTwo = append(onlyTwo, w)
		}
	}
	m.writeConfig(cfgB, m.config("random", onlyTwo))
	m.startKmeshd("node-a", cfgA)
	kb := m.startKmeshd("node-b", cfgB)

	rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "60")
	checkOnly(t, rs, allHello...)
	if c := counts(rs); len(c) != 3 {
		t.Fatalf("node-a client: answers %v, want all of %v", c, allHello)
	}
	rs = m.get("client-b", "--url", "http://10.96.0.10/", "--count", "30")
	checkOnly(t, rs, "hello-2")

	// node-b's kmeshd does not enroll node-a's client: its enrolled set is
	// its own node's namespaces only.
	for _, ns := range kb.configDump(t).Enrolled {
		if ns == m.pods["client"].NetnsPath || ns == m.pods["hello-1"].NetnsPath {
			t.Fatalf("node-b enrolled node-a's namespace %s", ns)
		}
	}

	kb.proc.Stop()
	if out, err := runCleanup(m.kmeshd, kb.node.BPFDir); err != nil {
		t.Fatalf("cleanup node-b: %v: %s", err, out)
	}
	if _, err := os.Stat(kb.node.BPFDir); !os.IsNotExist(err) {
		t.Fatalf("bpf dir of node-b after cleanup: %v, want it gone", err)
	}
	rs = m.get("client-b", "--url", "http://10.96.0.10/", "--count", "2", "--timeout", "2s")
	for _, r := range rs {
		if r.Error == "" {
			t.Fatalf("node-b client reached %s through the service after cleanup; want no rewrite", r.Pod)
		}
	}
	rs = m.get("client", "--url", "http://10.96.0.10/", "--count", "30")
	checkOnly(t, rs, allHello...)
}

// TestStoppedDaemonLeavesDataPlane: kmeshd stopping (SIGTERM or SIGKILL)
// leaves services balanced; only cleanup removes them.
func TestStoppedDaemonLeavesDataPlane(t *testing.T) {
	m := newMesh(t)
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, m.config("random", helloWorkloads))
	m.startKmeshd("node-b", cfg)
	ka := m.startKmeshd("node-a", cfg)
	ka.proc.Stop()
	rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "30")
	checkOnly(t, rs, allHello...)
	if c := counts(rs); len(c) != 3 {
		t.Fatalf("with kmeshd stopped: answers %v, want all of %v", c, allHello)
	}
}

// TestStartupRejectsBadFile: a bad file at start-up makes kmeshd exit
// non-zero with file, line and field, and load nothing.
func TestStartupRejectsBadFile(t *testing.T) {
	m := newMesh(t)
	cfg := configPath(m, "bad.yaml")
	m.writeConfig(cfg, strings.Replace(m.config("random", helloWorkloads), "targetPort: 8080", "targetPort: 0", 1))
	n := m.nodes["node-a"]
	out, err := execOutput(m.kmeshd, "--node", "node-a", "--config", cfg, "--cgroup", n.Cgroup, "--bpf-dir", n.BPFDir, "--admin-address", "127.0.0.1:0")
	if err == nil {
		t.Fatalf("kmeshd started with a bad file:\n%s", out)
	}
	if !strings.Contains(out, "bad.yaml:5:") || !strings.Contains(out, "targetPort") {
		t.Fatalf("start-up error does not name file:line and field:\n%s", out)
	}
	if _, err := os.Stat(n.BPFDir); !os.IsNotExist(err) {
		t.Fatalf("kmeshd left %s behind after refusing its config", n.BPFDir)
	}
}

// TestOneKmeshdPerBPFDir: a second kmeshd on the --bpf-dir of a running
// one exits at once with the reason, and `kmeshd cleanup` of it removes
// nothing while the first runs; the first keeps serving.
func TestOneKmeshdPerBPFDir(t *testing.T) {
	m := newMesh(t)
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, m.config("random", helloWorkloads))
	k := m.startKmeshd("node-a", cfg)
	n := m.nodes["node-a"]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	twin, err := exec.CommandContext(ctx, m.kmeshd, "--node", "node-a-twin", "--config", cfg, "--cgroup", n.Cgroup, "--bpf-dir", n.BPFDir,
		"--admin-address", "127.0.0.1:0", "--admin-socket", m.adminSocket("node-a-twin"),
		"--metrics-address", "127.0.0.1:0", "--readiness-address", "127.0.0.1:0").CombinedOutput()
	out := string(twin)
	if err == nil || !strings.Contains(out, "in use by another kmeshd") {
		t.Fatalf("second kmeshd on %s: %v\n%s", n.BPFDir, err, out)
	}
	if out, err := runCleanup(m.kmeshd, n.BPFDir); err == nil || !strings.Contains(out, "a running kmeshd holds it") {
		t.Fatalf("cleanup of a running kmeshd's dir: %v\n%s", err, out)
	}
	if rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "3", "--timeout", "2s"); len(counts(rs)) == 0 || rs[0].Error != "" {
		t.Fatalf("after the refused twin, the mesh answers %v", counts(rs))
	}
	if code, _ := httpGet(t, "http://"+k.admin+"/healthz/ready"); code != 200 {
		t.Fatalf("first kmeshd ready: %d", code)
	}
}

// TestCleanupOnExitRemovesDataPlane: with --cleanup-on-exit (the Helm
// chart's cleanupOnStop, for uninstalling) a kmeshd stopped by SIGTERM
// removes its pins and programs, so the service is no longer balanced.
func TestCleanupOnExitRemovesDataPlane(t *testing.T) {
	m := newMesh(t)
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, m.config("random", helloWorkloads))
	ka := m.startKmeshdBin(m.kmeshd, "node-a", cfg, "--cleanup-on-exit")
	checkOnly(t, m.get("client", "--url", "http://10.96.0.10/", "--count", "10"), allHello...)
	if err := ka.proc.Stop(); err != nil {
		t.Fatalf("kmeshd --cleanup-on-exit: %v\n%s", err, ka.proc.Stderr())
	}
	if !strings.Contains(ka.proc.Stderr(), "data plane removed on exit") {
		t.Errorf("kmeshd did not log the cleanup:\n%s", tail(ka.proc.Stderr(), 2000))
	}
	if _, err := os.Stat(ka.node.BPFDir); !os.IsNotExist(err) {
		t.Fatalf("bpf dir after kmeshd --cleanup-on-exit stopped: %v, want it gone", err)
	}
	for _, r := range m.get("client", "--url", "http://10.96.0.10/", "--count", "2", "--timeout", "2s") {
		if r.Error == "" {
			t.Fatalf("client reached %s through the service after cleanup on exit; want no rewrite", r.Pod)
		}
	}
}
