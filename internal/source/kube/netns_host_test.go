package kube

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"testing"

	"github.com/kmesh-go/kmesh/internal/testbed"
)

// TestResolver_OnThisHost finds test-bed pods by their addresses among
// every namespace of this host (root; skipped without it).
func TestResolver_OnThisHost(t *testing.T) {
	bed := testbed.NewT(t)
	n, err := bed.AddNode("node", netip.MustParsePrefix("10.72.1.0/24"), netip.MustParsePrefix("fd00:72:1::/64"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := n.AddPod("a", netip.MustParseAddr("10.72.1.10"), netip.MustParseAddr("fd00:72:1::10"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.AddPod("b", netip.MustParseAddr("10.72.1.11"))
	if err != nil {
		t.Fatal(err)
	}
	r := NewResolver()
	for _, tc := range []struct {
		pod *testbed.Pod
		ips []netip.Addr
	}{
		{a, ips("10.72.1.10", "fd00:72:1::10")},
		{b, ips("10.72.1.11")},
	} {
		got, err := r.Resolve(tc.pod.Name, tc.ips)
		if err != nil || got != tc.pod.NetnsPath {
			t.Fatalf("Resolve(%v) = %q, %v; want %s", tc.ips, got, err, tc.pod.NetnsPath)
		}
	}
	if r.scans != 1 {
		t.Fatalf("%d scans, want 1: the first scan indexes every namespace", r.scans)
	}
	// The node holds its pods' gateway, not a pod address; the host holds
	// neither.
	if _, err := r.Resolve("x", ips("10.72.1.99")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Resolve of an unused address: %v, want ErrNotFound", err)
	}
}

// userNetns starts, as uid 65534 (nobody), a process in a network namespace
// of its own inside a user namespace of its own (unshare -U -r -n, which
// needs no privilege) with ip on its loopback, as any local user could to
// claim a pod's address. It returns the namespace's /proc path; the
// process is killed at the test's end.
func userNetns(t *testing.T, ip string) string {
	t.Helper()
	cmd := exec.Command("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
		"unshare", "-U", "-r", "-n", "sh", "-c", "ip addr add "+ip+"/32 dev lo && ip link set lo up && echo ready && exec sleep 600")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("user namespace with %s: %q, %v", ip, line, err)
	}
	return fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)
}

// TestResolver_SkipsNamespacesOfOtherUserNamespaces: a namespace made
// inside an unprivileged user namespace is no evidence of a pod. One that
// holds a pod's address does not make the pod ambiguous, and one that
// holds an address no pod has is not chosen for it. On main before this,
// the first was ErrAmbiguous and the second resolved to the user's
// namespace.
func TestResolver_SkipsNamespacesOfOtherUserNamespaces(t *testing.T) {
	bed := testbed.NewT(t)
	n, err := bed.AddNode("node", netip.MustParsePrefix("10.73.1.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	pod, err := n.AddPod("a", netip.MustParseAddr("10.73.1.10"))
	if err != nil {
		t.Fatal(err)
	}
	twin := userNetns(t, "10.73.1.10")
	alone := userNetns(t, "10.73.1.50")

	r := NewResolver()
	if owned, err := r.initialUserns(pod.NetnsPath); err != nil || !owned {
		t.Fatalf("pod namespace %s: owned by the initial user namespace = %v, %v; want true", pod.NetnsPath, owned, err)
	}
	if owned, err := r.initialUserns(twin); err != nil || owned {
		t.Fatalf("user's namespace %s: owned by the initial user namespace = %v, %v; want false", twin, owned, err)
	}
	if got, err := r.Resolve("a", ips("10.73.1.10")); err != nil || got != pod.NetnsPath {
		t.Fatalf("Resolve(pod a's address) = %q, %v; want %s (the user's %s is no evidence)", got, err, pod.NetnsPath, twin)
	}
	if got, err := r.Resolve("b", ips("10.73.1.50")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Resolve(an address only the user's %s holds) = %q, %v; want ErrNotFound", alone, got, err)
	}
}
