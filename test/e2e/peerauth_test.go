//go:build e2e

package e2e

import (
	"strings"
	"testing"
)

// peerAuthConfig is the authz mesh (service accounts client and hello)
// plus outsider-b as a workload of node-b that no kmeshd enrolls (no
// netns: its connections are never tunnelled), with a PeerAuthentication
// on the hello pods in the given mode.
func peerAuthConfig(m *mesh, mode string) string {
	return authzConfig(m, "") + `- name: outsider-b
  namespace: default
  addresses: ["10.1.2.20", "fd00:1:2::20"]
  node: node-b
  serviceAccount: legacy
peerAuthentications:
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: hello, namespace: default}
  spec:
    selector: {matchLabels: {app: hello}}
    mtls: {mode: ` + mode + `}
`
}

// TestPeerAuthentication: with a CA, STRICT refuses plaintext from outside
// the node (the SYN is dropped by hello-1's node: no handshake), even from
// an address the mesh gives an identity, which only a certificate proves
// across nodes; a workload of the same node, known by its address, gets
// through. PERMISSIVE accepts both.
func TestPeerAuthentication(t *testing.T) {
	m := newMesh(t)
	m.addPod("node-b", "outsider-b", "10.1.2.20", "fd00:1:2::20")
	certPath, keyPath, _ := m.writeCA("ca")
	cfg := configPath(m, "mesh.yaml")
	m.writeConfig(cfg, peerAuthConfig(m, "STRICT"))
	flags := []string{"--ca-cert", certPath, "--ca-key", keyPath}
	ka := m.startKmeshdBin(m.kmeshd, "node-a", cfg, flags...)
	kb := m.startKmeshdBin(m.kmeshd, "node-b", cfg, flags...)

	timesOut := func(from, url string) {
		t.Helper()
		rs := m.get(from, "--url", url, "--count", "1", "--timeout", "2s")
		if len(rs) != 1 || !strings.Contains(strings.ToLower(rs[0].Error), "timeout") {
			t.Fatalf("%s -> %s: %+v, want a timeout (SYN dropped)", from, url, rs)
		}
	}
	answers := func(from, url, pod string) {
		t.Helper()
		rs := m.get(from, "--url", url, "--count", "1", "--timeout", "5s")
		if len(rs) != 1 || rs[0].Error != "" || rs[0].Pod != pod {
			t.Fatalf("%s -> %s: %+v, want %s's answer", from, url, rs, pod)
		}
	}

	t.Run("strict", func(t *testing.T) {
		// Same node, enrolled: its address stands for its identity.
		answers("client", "http://10.1.1.11:8080/", "hello-1")
		answers("client", "http://[fd00:1:1::11]:8080/", "hello-1")
		// Plaintext from a workload of another node: its address proves
		// nothing there, so no principal: refused.
		timesOut("outsider-b", "http://10.1.1.11:8080/")
		timesOut("outsider-b", "http://[fd00:1:1::11]:8080/")
		// The same workload on its own node: its address stands for it.
		answers("outsider-b", "http://10.1.2.12:8080/", "hello-2")
	})

	t.Run("permissive", func(t *testing.T) {
		m.writeConfig(cfg, peerAuthConfig(m, "PERMISSIVE"))
		ka.waitVersion(t, 2)
		kb.waitVersion(t, 2)
		answers("outsider-b", "http://10.1.1.11:8080/", "hello-1")
		answers("outsider-b", "http://10.1.2.12:8080/", "hello-2")
		answers("client", "http://10.1.1.11:8080/", "hello-1")
	})
}
