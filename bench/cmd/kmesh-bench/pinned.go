package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/internal/testbed"
)

// topoPinned (-cpu-per-node) is the cross-node path with each node on a
// CPU of its own: every process of node-a (its pods' processes: the fortio
// client, the HAProxys, the waypoint; its kmeshd and its tunnel) may run
// only on one CPU, node-b's (the remote fortio server, haproxy-mtls's
// server end in its pod, its kmeshd and tunnel) only on another, and
// packets entering a node from the underlay are received on its CPU. In
// cross-node both nodes share the machine's CPUs, so node-b's work
// competes with node-a's; here it cannot, but each node has one CPU, where
// a real one has several: node-b's tunnel and the server no longer
// overlap. Which of the two the kmesh-mtls goal is judged on, and why:
// docs/hbone.md. A process keeps the GOMAXPROCS it started with (fortio's
// does not follow its affinity).
const topoPinned = "cross-node-pinned"

// cpuPlan is where each node's processes may run in topoPinned, and the
// CPUs everything gets back afterwards.
type cpuPlan struct {
	a, b, all unix.CPUSet
	pinned    bool // the processes are pinned now
}

// newCPUPlan takes node-a's and node-b's CPUs from the first two this
// process may run on; false if it may run on fewer than two.
func newCPUPlan() (cpuPlan, bool, error) {
	var p cpuPlan
	if err := unix.SchedGetaffinity(0, &p.all); err != nil {
		return p, false, fmt.Errorf("sched_getaffinity: %w", err)
	}
	var cpus []int
	for i := 0; i < len(p.all)*64 && len(cpus) < 2; i++ {
		if p.all.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	if len(cpus) < 2 {
		return p, false, nil
	}
	p.a.Set(cpus[0])
	p.b.Set(cpus[1])
	return p, true, nil
}

// describe says which CPU each node gets.
func (p *cpuPlan) describe() string {
	first := func(s *unix.CPUSet) int {
		for i := 0; ; i++ {
			if s.IsSet(i) {
				return i
			}
		}
	}
	return fmt.Sprintf("node-a on CPU %d, node-b on CPU %d", first(&p.a), first(&p.b))
}

// placeCPUs pins every process of each node to its node's CPU (pinned), or
// gives every one back all the CPUs when they were pinned before. Called
// before each test: the mode's daemons may have started since the last.
func (d *dataplane) placeCPUs(pinned bool) error {
	if !pinned && !d.cpus.pinned {
		return nil
	}
	for _, n := range []*testbed.Node{d.nodeA, d.nodeB} {
		set := &d.cpus.all
		if pinned && n == d.nodeA {
			set = &d.cpus.a
		} else if pinned {
			set = &d.cpus.b
		}
		if err := pinThreads(func() ([]int, error) { return cgroupThreads(n.Cgroup) }, set); err != nil {
			return fmt.Errorf("%s: %w", n.Name, err)
		}
		for _, pid := range d.daemonPIDs(n) {
			if err := pinThreads(func() ([]int, error) { return processThreads(pid) }, set); err != nil {
				return fmt.Errorf("%s: process %d: %w", n.Name, pid, err)
			}
		}
	}
	if pinned != d.cpus.pinned {
		if err := d.steerReceive(pinned); err != nil {
			return err
		}
	}
	d.cpus.pinned = pinned
	return nil
}

// steerReceive makes the packets that enter a node from the underlay go
// through the kernel's receive path on the node's own CPU (RPS on its
// underlay interface), as a machine's NIC interrupt and softirq run on
// that machine; without it the veth runs the receiver's stack on the
// sender's CPU. Off again (an empty mask) when unpinned.
func (d *dataplane) steerReceive(pinned bool) error {
	for _, n := range []*testbed.Node{d.nodeA, d.nodeB} {
		mask := "0"
		if pinned && n == d.nodeA {
			mask = cpuMask(&d.cpus.a)
		} else if pinned {
			mask = cpuMask(&d.cpus.b)
		}
		// sysfs shows the devices of the namespace it was mounted in:
		// ip netns exec mounts one for the node's.
		file := fmt.Sprintf("/sys/class/net/%s/queues/rx-0/rps_cpus", testbed.UnderlayLink)
		out, err := exec.Command("ip", "netns", "exec", filepath.Base(n.NetnsPath),
			"sh", "-c", fmt.Sprintf("echo %s > %s", mask, file)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: RPS on %s: %w: %s", n.Name, testbed.UnderlayLink, err, out)
		}
	}
	return nil
}

// daemonPIDs are node's processes that run outside its cgroup, in the
// bed's own: its kmeshd and its tunnel.
func (d *dataplane) daemonPIDs(n *testbed.Node) []int {
	var pids []int
	for _, k := range d.running {
		if k.node == n {
			pids = append(pids, k.proc.PID())
		}
	}
	for _, t := range d.mtls.tunnels {
		if t.node == n {
			pids = append(pids, t.proc.PID())
		}
	}
	return pids
}

// pinThreads sets the affinity of every thread threads lists, listing
// again until no new one appears: a thread created meanwhile by one not
// yet pinned would otherwise keep the old CPUs (a new thread inherits its
// creator's). Threads that exit meanwhile are skipped.
func pinThreads(threads func() ([]int, error), set *unix.CPUSet) error {
	done := map[int]bool{}
	for {
		tids, err := threads()
		if err != nil {
			return err
		}
		fresh := false
		for _, tid := range tids {
			if done[tid] {
				continue
			}
			done[tid], fresh = true, true
			if err := unix.SchedSetaffinity(tid, set); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("sched_setaffinity %d: %w", tid, err)
			}
		}
		if !fresh {
			return nil
		}
	}
}

// cgroupThreads lists the threads of a cgroup v2 directory and those below.
func cgroupThreads(cg string) ([]int, error) {
	var tids []int
	err := filepath.WalkDir(cg, func(path string, e os.DirEntry, err error) error {
		if err != nil || !e.IsDir() {
			return err
		}
		data, err := os.ReadFile(filepath.Join(path, "cgroup.threads"))
		if err != nil {
			return err
		}
		for _, f := range strings.Fields(string(data)) {
			tid, err := strconv.Atoi(f)
			if err != nil {
				return fmt.Errorf("%s/cgroup.threads: %w", path, err)
			}
			tids = append(tids, tid)
		}
		return nil
	})
	return tids, err
}

// processThreads lists the threads of a process; none once it has exited.
func processThreads(pid int) ([]int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// cpuMask writes a CPU set as sysfs's masks: hexadecimal words of 32 CPUs,
// the highest first, separated by commas.
func cpuMask(s *unix.CPUSet) string {
	var words []uint32
	for _, w := range s {
		words = append(words, uint32(w), uint32(w>>32))
	}
	for len(words) > 1 && words[len(words)-1] == 0 {
		words = words[:len(words)-1]
	}
	var b strings.Builder
	for i := len(words) - 1; i >= 0; i-- {
		if b.Len() > 0 {
			fmt.Fprintf(&b, ",%08x", words[i])
		} else {
			fmt.Fprintf(&b, "%x", words[i])
		}
	}
	return b.String()
}
