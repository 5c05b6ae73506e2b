//go:build e2e

package e2e

import (
	"os"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// TestHBONE_RootRotation: in the middle of a root rotation node-a's
// kmeshd and tunnel still sign with the old CA and node-b's with the new
// one, both with --ca-roots naming the two roots (Istio's root-cert.pem
// during a rotation). Cross-node requests pass both ways through the
// tunnels (each side verifies a chain to the other root), and kmeshctl
// get certs lists both roots on each node.
func TestHBONE_RootRotation(t *testing.T) {
	m := newMesh(t)
	ctl, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshctl")
	if err != nil {
		t.Fatal(err)
	}
	oldCert, oldKey, oldPEM := m.writeCA("old")
	newCert, newKey, newPEM := m.writeCA("new")
	bundle := configPath(m, "roots.pem")
	if err := os.WriteFile(bundle, append(append([]byte{}, oldPEM...), newPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	caFlags := map[string][]string{
		"node-a": {"--ca-cert", oldCert, "--ca-key", oldKey, "--ca-roots", bundle},
		"node-b": {"--ca-cert", newCert, "--ca-key", newKey, "--ca-roots", bundle},
	}
	workloads := append(append([]workloadSpec{}, helloWorkloads...),
		workloadSpec{"client-b", "client", "node-b", []string{"10.1.2.10", "fd00:1:2::10"}, 1})
	m.addPod("node-b", "client-b", "10.1.2.10", "fd00:1:2::10")
	cfg := m.config("random", workloads)
	h := &hboneMesh{mesh: m, kmeshd: map[string]*kmeshd{}, tunnels: map[string]*testbed.Process{}, stateDirs: map[string]string{}}
	for _, node := range []string{"node-a", "node-b"} {
		path := configPath(m, node+".yaml")
		m.writeConfig(path, cfg)
		h.stateDirs[node] = configPath(m, node+"-state")
		h.caFlags = caFlags[node]
		h.kmeshd[node] = m.startKmeshdBin(m.kmeshd, node, path, h.kmeshdFlags(node)...)
	}
	for _, node := range []string{"node-a", "node-b"} {
		h.caFlags = caFlags[node]
		h.tunnels[node] = h.startTunnel(node)
	}

	requireAll(t, "client (node-a, old root) -> hello-2 (node-b, new root)",
		h.get("client", "--url", "http://10.1.2.12:8080/", "--count", "5"), "hello-2")
	requireAll(t, "client-b (node-b, new root) -> hello-1 (node-a, old root)",
		h.get("client-b", "--url", "http://10.1.1.11:8080/", "--count", "5"), "hello-1")
	if !hasLine(h.tunnels["node-a"].Stderr(), "msg=tunnelled", "dst=10.1.2.12:8080") {
		t.Errorf("node-a's tunnel did not carry the request to hello-2:\n%s", tail(h.tunnels["node-a"].Stderr(), 3000))
	}
	if !hasLine(h.tunnels["node-b"].Stderr(), "msg=tunnelled", "dst=10.1.1.11:8080") {
		t.Errorf("node-b's tunnel did not carry the request to hello-1:\n%s", tail(h.tunnels["node-b"].Stderr(), 3000))
	}
	for _, node := range []string{"node-a", "node-b"} {
		waitCerts(t, ctl, h.kmeshd[node], 10*time.Second, func(c api.Certs) string {
			if len(c.Roots) != 2 {
				return "want both roots listed"
			}
			return ""
		})
	}
}
