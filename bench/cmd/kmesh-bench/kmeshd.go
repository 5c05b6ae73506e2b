package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/internal/testbed"
)

// kmeshd is a running daemon of one test-bed node.
type kmeshd struct {
	proc  *testbed.Process
	bin   string
	node  *testbed.Node
	admin string
	// Ready is how long it took from exec to /healthz/ready answering 200:
	// load and attach the programs, parse the file, fill the maps.
	Ready time.Duration
	// ReadyCPU is the CPU time (user + system, every thread) kmeshd had
	// used when it became ready: on a shared machine Ready also counts
	// the time it waited for a core.
	ReadyCPU time.Duration
	// readyAt is when /healthz/ready first answered 200 (the changes'
	// log says how long after it each began).
	readyAt time.Time
}

// readyTimeout is how long startKmeshd waits for /healthz/ready (longer
// for a bigger control-plane test: main sets it from -endpoints).
var readyTimeout = 2 * time.Minute

// startKmeshd runs kmeshd for node on the config file, as the e2e tests do
// (its own cgroup and bpffs directory, local addresses on free ports), and
// waits until it is ready.
func startKmeshd(ctx context.Context, bed *testbed.Bed, tl tools, node *testbed.Node, config string, extra ...string) (*kmeshd, error) {
	bin := tl.kmeshd
	admin, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := []string{"--node", node.Name, "--cgroup", node.Cgroup,
		"--bpf-dir", node.BPFDir, "--admin-address", admin, "--log-level", "info"}
	if config != "" { // "": the config comes from --xds-address in extra
		args = append(args, "--config", config)
	}
	for _, f := range []string{"--metrics-address", "--readiness-address"} {
		if tl.kmeshdFlags[f] {
			args = append(args, f, "127.0.0.1:0")
		}
	}
	if tl.kmeshdFlags["--admin-socket"] {
		// Its own socket, so it never meets another kmeshd of the same node
		// name (an e2e test, the demo).
		args = append(args, "--admin-socket", filepath.Join(os.TempDir(), filepath.Base(node.BPFDir)+"-admin.sock"))
	}
	args = append(args, extra...)
	start := time.Now()
	proc, err := bed.StartRoot(bin, args...)
	if err != nil {
		return nil, err
	}
	k := &kmeshd{proc: proc, bin: bin, node: node, admin: admin}
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(readyTimeout)
	for {
		resp, err := client.Get("http://" + admin + "/healthz/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				k.readyAt = time.Now()
				k.Ready = k.readyAt.Sub(start)
				k.ReadyCPU, _ = processCPU(proc.PID())
				return k, nil
			}
		}
		select {
		case <-proc.Done():
			k.Stop()
			return nil, fmt.Errorf("kmeshd %s exited: %v: %s", node.Name, proc.Wait(), lastLines(proc.Stderr(), 5))
		case <-ctx.Done():
			k.Stop()
			return nil, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			k.Stop()
			return nil, fmt.Errorf("kmeshd %s not ready after %v: %s", node.Name, readyTimeout, lastLines(proc.Stderr(), 5))
		}
	}
}

// Stop stops the daemon and removes its data plane: stopping kmeshd alone
// leaves the programs attached, by design.
func (k *kmeshd) Stop() error {
	k.proc.Stop()
	out, err := exec.Command(k.bin, "cleanup", "--bpf-dir", k.node.BPFDir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("kmeshd cleanup %s: %w: %s", k.node.BPFDir, err, out)
	}
	return nil
}

// processCPU is a process's user + system time, its exited threads
// included (/proc/PID/stat's utime and stime, in clock ticks of 10 ms).
func processCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, may hold spaces: count from its ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// Memory returns the daemon's resident set and its peak, in MiB.
func (k *kmeshd) Memory() (rss, peak float64, err error) {
	return procMemory(k.proc.PID())
}

func procMemory(pid int) (rss, peak float64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			peak = kb / 1024
		}
	}
	return rss, peak, nil
}

// flagsOf returns the long flags `bin --help` lists, such as
// "--accelerate": kmeshd grows flags while the benchmark runs it.
func flagsOf(bin string) (map[string]bool, error) {
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s --help: %w: %s", bin, err, out)
	}
	flags := map[string]bool{}
	for _, f := range strings.Fields(string(out)) {
		if name, ok := strings.CutPrefix(f, "--"); ok && name != "" {
			flags["--"+strings.TrimRight(name, ",=")] = true
		}
	}
	return flags, nil
}

// freeAddr returns a loopback address with a port nobody listens on now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
