//go:build e2e

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/internal/testbed"
)

// TestAdminEnrollment enrolls the client pod through the admin API
// (kmeshctl enroll), with xDS as the config source, which enrolls nothing:
// the enrollment takes effect at once, survives a kmeshd restart, and
// kmeshctl unenroll takes it back.
func TestAdminEnrollment(t *testing.T) {
	m := newMesh(t)
	kmeshctl, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshctl")
	if err != nil {
		t.Fatal(err)
	}
	srv := helloXdsServer(t)
	start := func() *kmeshd {
		return m.startKmeshdBin(m.kmeshd, "node-a", "", "--xds-address", srv.Addr(), "--xds-mode", "workload")
	}
	ctl := func(k *kmeshd, args ...string) (string, error) {
		out, err := exec.Command(kmeshctl, append([]string{"--admin-address", k.admin, "--admin-socket", k.socket}, args...)...).CombinedOutput()
		return string(out), err
	}
	// reached reports whether all requests went through the service, and
	// fails the test when only some did.
	reached := func() bool {
		rs := m.get("client", "--url", "http://10.96.0.10/", "--count", "4", "--timeout", "1s")
		ok := 0
		for _, r := range rs {
			if r.Error == "" {
				ok++
			}
		}
		if ok != 0 && ok != len(rs) {
			t.Fatalf("%d of %d requests reached the service: %v", ok, len(rs), counts(rs))
		}
		return ok == len(rs)
	}
	client := m.pods["client"].NetnsPath

	k := start()
	if reached() {
		t.Fatal("the client reached the service before it was enrolled")
	}
	if out, err := ctl(k, "enroll", "--netns", client); err != nil || !strings.Contains(out, "enrolled "+client) {
		t.Fatalf("kmeshctl enroll: %v: %s", err, out)
	}
	if !reached() {
		t.Fatal("the client did not reach the service once enrolled")
	}
	if out, err := ctl(k, "enroll", "--netns", "/var/run/netns/no-such-namespace"); err == nil || !strings.Contains(out, "no-such-namespace") {
		t.Fatalf("kmeshctl enroll of a missing namespace: %v: %s", err, out)
	}

	// A restarted kmeshd keeps the enrollment.
	k.proc.Signal(syscall.SIGKILL)
	<-k.proc.Done()
	k = start()
	if !slices.Contains(k.configDump(t).Enrolled, client) {
		t.Fatalf("after a restart, enrolled %v, want the client's namespace", k.configDump(t).Enrolled)
	}
	if !reached() {
		t.Fatal("the client did not reach the service after kmeshd restarted")
	}

	if out, err := ctl(k, "unenroll", "--netns", client); err != nil || !strings.Contains(out, "unenrolled "+client) {
		t.Fatalf("kmeshctl unenroll: %v: %s", err, out)
	}
	if reached() {
		t.Fatal("the client still reached the service after kmeshctl unenroll")
	}
}

// TestAdminEnrollmentByIdentity: the admin socket refuses what is not a
// network namespace (a FIFO, at once) and kmeshd's own; spellings of one
// path are one enrollment; and after a restart, a path that now names
// another namespace (as /proc/PID/ns/net does once the PID is reused) does
// not carry the enrollment to it.
func TestAdminEnrollmentByIdentity(t *testing.T) {
	m := newMesh(t)
	kmeshctl, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshctl")
	if err != nil {
		t.Fatal(err)
	}
	srv := helloXdsServer(t)
	start := func() *kmeshd {
		return m.startKmeshdBin(m.kmeshd, "node-a", "", "--xds-address", srv.Addr(), "--xds-mode", "workload")
	}
	ctl := func(k *kmeshd, args ...string) (string, error) {
		out, err := exec.Command(kmeshctl, append([]string{"--admin-address", k.admin, "--admin-socket", k.socket, "--timeout", "5s"}, args...)...).CombinedOutput()
		return string(out), err
	}
	k := start()

	fifo := filepath.Join(m.dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		fifo:                "not a network namespace",
		"/proc/self/ns/net": "kmeshd's own network namespace",
		"/proc/self/ns/uts": "not a network namespace",
	} {
		if out, err := ctl(k, "enroll", "--netns", path); err == nil || !strings.Contains(out, want) {
			t.Errorf("kmeshctl enroll --netns %s: %v: %s; want %q", path, err, out, want)
		}
	}

	client := m.pods["client"].NetnsPath
	dir, base := filepath.Split(client)
	for _, p := range []string{client, "/" + client, dir + "./" + base, dir + "../" + filepath.Base(dir) + "/" + base} {
		if out, err := ctl(k, "enroll", "--netns", p); err != nil {
			t.Fatalf("kmeshctl enroll --netns %s: %v: %s", p, err, out)
		}
	}
	if got := k.configDump(t).Enrolled; len(got) != 1 {
		t.Fatalf("after enrolling one namespace by four spellings, enrolled %v", got)
	}
	pinned, err := ebpf.LoadPinnedMap(filepath.Join(k.node.BPFDir, "km_enrolled_v2"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	n := 0
	var key uint64
	val := make([]byte, pinned.ValueSize())
	for it := pinned.Iterate(); it.Next(&key, &val); {
		n++
	}
	if n != 1 {
		t.Fatalf("km_enrolled_v2 holds %d entries after four spellings of one namespace, want 1", n)
	}
	if out, err := ctl(k, "unenroll", "--netns", "/"+client); err != nil || len(k.configDump(t).Enrolled) != 0 {
		t.Fatalf("kmeshctl unenroll by another spelling: %v: %s; enrolled %v", err, out, k.configDump(t).Enrolled)
	}

	// A path enrolled by, then pointed at another namespace while kmeshd is
	// down: the restarted kmeshd drops the enrollment.
	moved := filepath.Join(m.dir, "moved-netns")
	if err := os.WriteFile(moved, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	bind := func(ns string) {
		t.Helper()
		if err := syscall.Mount(ns, moved, "", syscall.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { syscall.Unmount(moved, syscall.MNT_DETACH) })
	bind(m.pods["outsider"].NetnsPath)
	if out, err := ctl(k, "enroll", "--netns", moved); err != nil || !slices.Contains(k.configDump(t).Enrolled, moved) {
		t.Fatalf("kmeshctl enroll --netns %s: %v: %s; enrolled %v", moved, err, out, k.configDump(t).Enrolled)
	}
	k.proc.Signal(syscall.SIGKILL)
	<-k.proc.Done()
	if err := syscall.Unmount(moved, 0); err != nil {
		t.Fatal(err)
	}
	bind(m.pods["hello-1"].NetnsPath)
	k = start()
	if got := k.configDump(t).Enrolled; len(got) != 0 {
		t.Fatalf("after a restart with %s naming another namespace, enrolled %v, want none", moved, got)
	}
	k.waitLog(t, `admin enrollment dropped: its path no longer names the namespace enrolled`, 1)
}
