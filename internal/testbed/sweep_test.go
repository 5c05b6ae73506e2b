package testbed

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

func TestRunPID(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		pid    int
		wantOK bool
	}{
		{"run id", "kmtb-" + strconv.FormatInt(12345, 36) + "ab12", 12345, true},
		{"with suffix", "kmtb-" + strconv.FormatInt(7, 36) + "zzzz-n-a", 7, true},
		{"fresh id", newRunID("kmtb", 4194304), 4194304, true},
		{"other prefix", "kmtbx-1abcd", 0, false},
		{"no pid", "kmtb-abcd", 0, false},
		{"not base 36", "kmtb-_xabcd", 0, false},
		{"unrelated", "cilium", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pid, ok := runPID("kmtb", tt.in)
			if pid != tt.pid || ok != tt.wantOK {
				t.Errorf("runPID(%q) = %d, %v; want %d, %v", tt.in, pid, ok, tt.pid, tt.wantOK)
			}
		})
	}
}

func TestSweep_RemovesOnlyDeadRuns(t *testing.T) {
	bed := NewT(t) // for the skip; its own names belong to a live run
	// Above the largest pid_max (2^22): no process can have it.
	dead := DefaultPrefix + "-" + strconv.FormatInt(0x7ffffff0, 36) + "dead"
	live := newRunID(DefaultPrefix, os.Getpid())

	leftovers := func(id string) []string {
		return []string{
			filepath.Join(netnsDir, id+"-ul"),
			filepath.Join(bed.cgroupRoot, id+"-a"),
			filepath.Join(bpfRoot, id+"-a"),
		}
	}
	for _, id := range []string{dead, live} {
		t.Cleanup(func() {
			l := leftovers(id)
			deleteNetns(l[0])
			removeCgroup(l[1])
			os.RemoveAll(l[2])
		})
		l := leftovers(id)
		if err := createNetns(l[0]); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(l[1], 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(l[2], "maps"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A process the crashed run left behind in its cgroup.
	orphan := startInCgroup(t, leftovers(dead)[1], "sleep", "100")

	if err := Sweep(DefaultPrefix); err != nil {
		t.Fatalf("sweep: %v", err)
	}
	for _, path := range leftovers(dead) {
		if exists(path) {
			t.Errorf("%s: still there", path)
		}
	}
	for _, path := range leftovers(live) {
		if !exists(path) {
			t.Errorf("%s: removed, but its run is alive", path)
		}
	}
	if err := <-orphan; err == nil {
		t.Error("process in the stale cgroup was not killed")
	}
}

// startInCgroup starts a command in cgroup and returns its exit error, which
// comes as soon as it ends: a zombie would keep the cgroup busy.
func startInCgroup(t *testing.T, cgroup, name string, args ...string) <-chan error {
	t.Helper()
	cg, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	return done
}
