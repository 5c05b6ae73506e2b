// Command demo is the README's first command (`sudo make demo`): it builds
// two test-bed nodes from network namespaces, starts a kmeshd on each with
// examples/hello.yaml, and sends requests from the client pod to the hello
// service address, showing which pod answered each. It removes everything
// it made when done, or at Ctrl-C with --keep.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/kmesh-go/kmesh/examples"
	"github.com/kmesh-go/kmesh/internal/source/file"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

func main() {
	keep := flag.Bool("keep", false, "stay up after the requests, until Ctrl-C")
	requests := flag.Int("requests", 9, "requests to send per address family")
	verbose := flag.Bool("verbose", false, "show the logs of kmeshd and the pods")
	flag.Parse()
	if err := run(*keep, *requests, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// podCIDRs gives each node of examples/hello.yaml its pod prefixes.
var podCIDRs = map[string][]netip.Prefix{
	"node-a": {netip.MustParsePrefix("10.1.1.0/24"), netip.MustParsePrefix("fd00:1:1::/64")},
	"node-b": {netip.MustParsePrefix("10.1.2.0/24"), netip.MustParsePrefix("fd00:1:2::/64")},
}

func run(keep bool, requests int, verbose bool) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, cgroups, eBPF): run it with sudo")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	step("building kmeshd and the echo app")
	kmeshd, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshd")
	if err != nil {
		return err
	}
	echo, err := testbed.Build("github.com/kmesh-go/kmesh/internal/testbed/kmesh-echo")
	if err != nil {
		return err
	}
	var logw io.Writer
	if verbose {
		logw = os.Stderr
	}
	bed, err := testbed.New(testbed.Options{Prefix: "kmdemo", Log: logw})
	if err != nil {
		return err
	}
	defer func() {
		step("cleaning up")
		if err := bed.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: cleanup:", err)
		}
	}()

	mesh, err := file.Parse("examples/hello.yaml", examples.Hello, "")
	if err != nil {
		return err
	}
	step("building nodes node-a and node-b, and the pods of examples/hello.yaml")
	nodes := map[string]*testbed.Node{}
	for _, name := range []string{"node-a", "node-b"} {
		if nodes[name], err = bed.AddNode(name, podCIDRs[name]...); err != nil {
			return err
		}
	}
	pods := map[string]*testbed.Pod{}
	config := string(examples.Hello)
	for _, w := range mesh.Workloads {
		p, err := nodes[w.Node].AddPod(w.Name, w.Addresses...)
		if err != nil {
			return err
		}
		pods[w.Name] = p
		// The example names plain /var/run/netns/<pod>; the bed's namespaces
		// carry its run id, so several runs never collide.
		config = strings.ReplaceAll(config, "netns: "+w.Netns+" ", "netns: "+p.NetnsPath+" ")
		config = strings.ReplaceAll(config, "netns: "+w.Netns+"\n", "netns: "+p.NetnsPath+"\n")
		fmt.Printf("  %-8s %-7s %s\n", w.Name, w.Node, addrList(w.Addresses))
	}
	dir, err := os.MkdirTemp("", "kmesh-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := filepath.Join(dir, "hello.yaml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		return err
	}

	for _, w := range mesh.Workloads {
		if w.Labels["app"] != "hello" {
			continue
		}
		if err := serve(pods[w.Name], echo); err != nil {
			return err
		}
	}

	admin := map[string]string{}
	for _, name := range []string{"node-a", "node-b"} {
		step("starting kmeshd on " + name)
		n := nodes[name]
		p, err := bed.StartRoot(kmeshd, "--node", name, "--config", cfg, "--cgroup", n.Cgroup, "--bpf-dir", n.BPFDir, "--admin-address", "127.0.0.1:0",
			"--admin-socket", filepath.Join(dir, name+"-admin.sock"), "--metrics-address", "127.0.0.1:0", "--readiness-address", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer func() {
			p.Stop()
			// Stopping kmeshd leaves its data plane in force; remove it.
			if err := execCommand(kmeshd, "cleanup", "--bpf-dir", n.BPFDir); err != nil {
				fmt.Fprintln(os.Stderr, "demo: kmeshd cleanup:", err)
			}
		}()
		if admin[name], err = waitReady(ctx, p); err != nil {
			return err
		}
		fmt.Printf("  admin API: http://%s/config_dump\n", admin[name])
	}

	svc := mesh.Services[0]
	for _, addr := range svc.Addresses {
		url := fmt.Sprintf("http://%s/", netip.AddrPortFrom(addr, svc.Ports[0].Port))
		step(fmt.Sprintf("client -> %s (%s, %s): %d requests, a new connection each", url, svc.Name, svc.LBMode, requests))
		if err := requestsFrom(pods["client"], echo, url, requests); err != nil {
			return err
		}
	}

	// What node-a's kmeshd holds, as kmeshctl shows it.
	kmeshctl, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshctl")
	if err != nil {
		return err
	}
	for _, args := range [][]string{{"get", "services"}, {"get", "workloads"}, {"explain", "client", "10.96.0.10:80"}} {
		step("kmeshctl " + strings.Join(args, " ") + "   (node-a)")
		out, err := exec.Command(kmeshctl, append([]string{"--admin-address", admin["node-a"]}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("kmeshctl %s: %w: %s", strings.Join(args, " "), err, out)
		}
		os.Stdout.Write(out)
	}

	if keep {
		client, n := pods["client"], nodes["node-a"]
		step("up until Ctrl-C; try it yourself:")
		fmt.Printf("  sudo sh -c 'echo $$ > %s/cgroup.procs && exec nsenter --net=%s curl -s http://10.96.0.10/'\n", n.Cgroup, client.NetnsPath)
		fmt.Printf("  %s --admin-address %s get connections\n", kmeshctl, admin["node-a"])
		fmt.Printf("  curl -s http://%s/config_dump\n", admin["node-a"])
		<-ctx.Done()
	}
	return nil
}

func step(s string) { fmt.Printf("\n==> %s\n", s) }

func addrList(addrs []netip.Addr) string {
	var s []string
	for _, a := range addrs {
		s = append(s, a.String())
	}
	return strings.Join(s, ", ")
}

func serve(p *testbed.Pod, echo string) error {
	proc, err := p.Start(echo, "serve", "--name", p.Name)
	if err != nil {
		return err
	}
	select {
	case line := <-proc.Lines():
		if strings.HasPrefix(line, "listening ") {
			return nil
		}
		return fmt.Errorf("%s: unexpected output %q", p.Name, line)
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s: server not listening after 10s: %s", p.Name, proc.Stderr())
	}
}

var readyLine = regexp.MustCompile(`msg="kmeshd ready".* admin=(\S+)`)

func waitReady(ctx context.Context, p *testbed.Process) (string, error) {
	deadline := time.After(20 * time.Second)
	for {
		if m := readyLine.FindStringSubmatch(p.Stderr()); m != nil {
			return m[1], nil
		}
		select {
		case <-p.Done():
			return "", fmt.Errorf("kmeshd exited: %v\n%s", p.Wait(), p.Stderr())
		case <-deadline:
			return "", fmt.Errorf("kmeshd not ready after 20s:\n%s", p.Stderr())
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// requestsFrom runs the echo client in a pod and prints who answered.
func requestsFrom(p *testbed.Pod, echo, url string, n int) error {
	proc, err := p.Start(echo, "get", "--url", url, "--count", fmt.Sprint(n))
	if err != nil {
		return err
	}
	tally := map[string]int{}
	for line := range proc.Lines() {
		var r struct {
			Seq       int    `json:"seq"`
			Pod       string `json:"pod"`
			Peer      string `json:"peer"`
			ServerSaw string `json:"server_saw"`
			Error     string `json:"error"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return fmt.Errorf("echo client: %q: %w", line, err)
		}
		if r.Error != "" {
			fmt.Printf("  request %2d  failed: %s\n", r.Seq, r.Error)
			tally["(failed)"]++
			continue
		}
		fmt.Printf("  request %2d  answered by %-8s  client's getpeername: %s\n", r.Seq, r.Pod, r.Peer)
		tally[r.Pod]++
	}
	if err := proc.Wait(); err != nil {
		return fmt.Errorf("echo client: %w: %s", err, proc.Stderr())
	}
	var names []string
	for k := range tally {
		names = append(names, k)
	}
	sort.Strings(names)
	var parts []string
	for _, k := range names {
		parts = append(parts, fmt.Sprintf("%s %d", k, tally[k]))
	}
	fmt.Printf("  answers: %s\n", strings.Join(parts, ", "))
	return nil
}
