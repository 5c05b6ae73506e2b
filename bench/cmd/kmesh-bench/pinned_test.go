package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestPinThreads_Child is the process the test below pins: a Go program
// with several threads.
func TestPinThreads_Child(t *testing.T) {
	if os.Getenv("KMESH_BENCH_PIN_CHILD") == "" {
		t.Skip("run by TestPinThreads_MovesEveryThreadAndBack")
	}
	time.Sleep(time.Minute)
}

// Checked as the kernel sees it: every thread's Cpus_allowed_list, as
// taskset -p shows it.
func TestPinThreads_MovesEveryThreadAndBack(t *testing.T) {
	plan, ok, err := newCPUPlan()
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Skip("fewer than 2 CPUs")
	}
	child := exec.Command(os.Args[0], "-test.run=^TestPinThreads_Child$")
	child.Env = append(os.Environ(), "KMESH_BENCH_PIN_CHILD=1", "GOMAXPROCS=2")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	pid := child.Process.Pid
	threads := func() ([]int, error) { return processThreads(pid) }
	// allowed is each thread's CPU list, and says whether they agree.
	allowed := func() string {
		tids, err := threads()
		if err != nil || len(tids) < 2 {
			t.Fatalf("threads of %d: %v %v", pid, tids, err)
		}
		lists := map[string]bool{}
		for _, tid := range tids {
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", pid, tid))
			if err != nil {
				continue // exited
			}
			for line := range strings.Lines(string(data)) {
				if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
					lists[strings.TrimSpace(v)] = true
				}
			}
		}
		var out []string
		for l := range lists {
			out = append(out, l)
		}
		return strings.Join(out, " and ")
	}
	time.Sleep(100 * time.Millisecond) // the runtime's threads started
	before := allowed()
	if err := pinThreads(threads, &plan.b); err != nil {
		t.Fatal(err)
	}
	if got, want := allowed(), cpuList(&plan.b); got != want {
		t.Errorf("pinned: threads allowed on %s, want %s", got, want)
	}
	if err := pinThreads(threads, &plan.all); err != nil {
		t.Fatal(err)
	}
	if got := allowed(); got != before {
		t.Errorf("unpinned: threads allowed on %s, want %s as before", got, before)
	}
}

// cpuList writes a one-CPU set as the kernel's lists do.
func cpuList(s *unix.CPUSet) string {
	for i := 0; i < len(s)*64; i++ {
		if s.IsSet(i) {
			return fmt.Sprint(i)
		}
	}
	return ""
}

func TestCPUMask(t *testing.T) {
	var s unix.CPUSet
	s.Set(1)
	if got := cpuMask(&s); got != "2" {
		t.Errorf("CPU 1: %s, want 2", got)
	}
	s.Set(40)
	if got := cpuMask(&s); got != "100,00000002" {
		t.Errorf("CPUs 1 and 40: %s, want 100,00000002", got)
	}
}
