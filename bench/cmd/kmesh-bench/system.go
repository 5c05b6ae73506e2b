package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/bench/kubeproxy"
	"github.com/kmesh-go/kmesh/bench/report"
	"github.com/kmesh-go/kmesh/internal/testbed"
	"golang.org/x/sys/unix"
)

// iptablesRestore loads rules into the nat table of the network namespace
// at nsPath, next to what is there.
func iptablesRestore(ctx context.Context, nsPath, rules string) error {
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+nsPath, "iptables-restore", "-w", "--noflush")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("iptables-restore in %s: %w: %s", filepath.Base(nsPath), err, out)
	}
	return nil
}

// iptablesFlush empties the nat table of the namespace at nsPath.
func iptablesFlush(nsPath string) error {
	for _, args := range kubeproxy.FlushArgs() {
		out, err := exec.Command("nsenter", append([]string{"--net=" + nsPath, "iptables"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("iptables %s in %s: %w: %s", strings.Join(args, " "), filepath.Base(nsPath), err, out)
		}
	}
	return nil
}

// cpuUsage sums the CPU time of the cgroups (cpu.stat usage_usec).
func cpuUsage(cgroups []string) (time.Duration, error) {
	var total time.Duration
	for _, cg := range cgroups {
		data, err := os.ReadFile(filepath.Join(cg, "cpu.stat"))
		if err != nil {
			return 0, err
		}
		for line := range strings.Lines(string(data)) {
			if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
				us, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("%s/cpu.stat: %w", cg, err)
				}
				total += time.Duration(us) * time.Microsecond
			}
		}
	}
	return total, nil
}

// threadsCPU is the CPU time of every thread of a process, from
// /proc/<pid>/task/*/schedstat (nanoseconds, unlike /proc/<pid>/stat's
// clock ticks).
func threadsCPU(pid int) (time.Duration, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("process %d: no schedstat (%v)", pid, err)
	}
	var total time.Duration
	for _, t := range tasks {
		data, err := os.ReadFile(t)
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(data))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", t, err)
		}
		total += time.Duration(ns)
	}
	return total, nil
}

// runProbe runs `kmesh-bench probe` in pod and waits for its result.
func runProbe(ctx context.Context, pod *testbed.Pod, self, addr string, httpGet bool, timeout time.Duration) (probeResult, error) {
	proc, err := startProbe(ctx, pod, self, addr, httpGet, timeout)
	if err != nil {
		return probeResult{}, err
	}
	return waitProbe(ctx, proc, timeout)
}

// startProbe starts a probe and returns once it is probing.
func startProbe(ctx context.Context, pod *testbed.Pod, self, addr string, httpGet bool, timeout time.Duration) (*testbed.Process, error) {
	args := []string{"probe", "--addr", addr, "--timeout", timeout.String()}
	if httpGet {
		args = append(args, "--http")
	}
	proc, err := pod.Start(self, args...)
	if err != nil {
		return nil, err
	}
	select {
	case line := <-proc.Lines():
		if line != "probing" {
			proc.Stop()
			return nil, fmt.Errorf("probe in %s: first line %q", pod.Name, line)
		}
		return proc, nil
	case <-ctx.Done():
		proc.Stop()
		return nil, ctx.Err()
	case <-time.After(10 * time.Second):
		proc.Stop()
		return nil, fmt.Errorf("probe in %s did not start: %s", pod.Name, proc.Stderr())
	}
}

// waitProbe waits for a started probe's result.
func waitProbe(ctx context.Context, proc *testbed.Process, timeout time.Duration) (probeResult, error) {
	select {
	case line, ok := <-proc.Lines():
		proc.Wait()
		var r probeResult
		if !ok {
			return r, fmt.Errorf("probe exited without a result: %s", proc.Stderr())
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return r, fmt.Errorf("probe: %q: %w", line, err)
		}
		if r.Error != "" {
			return r, fmt.Errorf("probe: no connection after %d attempts: %s", r.Attempts, r.Error)
		}
		return r, nil
	case <-ctx.Done():
		proc.Stop()
		return probeResult{}, ctx.Err()
	case <-time.After(timeout + 10*time.Second):
		proc.Stop()
		return probeResult{}, fmt.Errorf("probe gave no result in %v", timeout)
	}
}

// machine describes this machine and the tools' versions.
func machine(fortioBin string) (report.Machine, error) {
	m := report.Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return m, err
	}
	m.Kernel = unix.ByteSliceToString(u.Release[:])
	m.CPU = procField("/proc/cpuinfo", "model name")
	if kb, err := strconv.ParseFloat(strings.TrimSuffix(procField("/proc/meminfo", "MemTotal"), " kB"), 64); err == nil {
		m.MemGiB = kb / (1 << 20)
	}
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(data))
		m.LoadAvg = strings.Join(f[:min(3, len(f))], " ")
	}
	version := func(name string, args ...string) (string, error) {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("%s: %w (make bench installs it)", name, err)
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line, nil
	}
	var err error
	if m.Fortio, err = version(fortioBin, "version"); err != nil {
		return m, err
	}
	if m.HAProxy, err = version("haproxy", "-v"); err != nil {
		return m, err
	}
	m.HAProxy, _, _ = strings.Cut(m.HAProxy, " - ")
	if m.IPTables, err = version("iptables", "--version"); err != nil {
		return m, err
	}
	return m, nil
}

// procField returns the value of the first "key: value" line of a /proc file.
func procField(path, key string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "unknown"
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
