//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDirectoryConfig runs both nodes' kmeshd on --config DIR: the hello
// service in one file, each workload in a file of its own. The service
// balances over the workloads of every file; removing one workload's file
// takes it out; a bad file is refused alone, naming file:line, and traffic
// keeps its endpoints.
func TestDirectoryConfig(t *testing.T) {
	m := newMesh(t)
	dir := configPath(m, "mesh.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	svc, _, _ := strings.Cut(m.config("random", helloWorkloads), "workloads:\n")
	m.writeConfig(filepath.Join(dir, "service.yaml"), svc)
	for _, w := range helloWorkloads {
		_, body, _ := strings.Cut(m.config("random", []workloadSpec{w}), "workloads:\n")
		m.writeConfig(filepath.Join(dir, w.name+".yaml"), "workloads:\n"+body)
	}
	ka := m.startKmeshd("node-a", dir)
	m.startKmeshd("node-b", dir)

	rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "60")
	checkOnly(t, rs, allHello...)
	if c := counts(rs); len(c) != 3 {
		t.Fatalf("answers %v, want all of %v", c, allHello)
	}

	if err := os.Remove(filepath.Join(dir, "hello-3.yaml")); err != nil {
		t.Fatal(err)
	}
	waitOnly := func(pods ...string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "30")
			c := counts(rs)
			ok := len(c) == len(pods)
			for _, p := range pods {
				ok = ok && c[p] > 0
			}
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("answers %v, want only %v", c, pods)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitOnly("hello-1", "hello-2")

	bad := filepath.Join(dir, "bad.yaml")
	m.writeConfig(bad, "workloads:\n- {name: x, addresses: [\"not-an-ip\"], node: node-a}\n")
	rejected := func() bool {
		for _, line := range strings.Split(ka.proc.Stderr(), "\n") {
			if strings.Contains(line, "config rejected") && strings.Contains(line, bad+":2:") {
				return true
			}
		}
		return false
	}
	for deadline := time.Now().Add(10 * time.Second); !rejected(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no \"config rejected\" naming %s:2 in kmeshd's log", bad)
		}
	}
	rs = m.get("client", "--url", "http://10.96.0.10/", "--count", "30")
	checkOnly(t, rs, "hello-1", "hello-2")
	if c := counts(rs); len(c) != 2 {
		t.Fatalf("answers %v after the bad file, want hello-1 and hello-2", c)
	}
}
