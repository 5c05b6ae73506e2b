package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// modeMTLS is kmesh with a local CA: a cross-node connection is redirected
// by the client node's connect hook to its `kmeshd tunnel`, carried as
// HBONE (HTTP/2 CONNECT over mutual TLS 1.3) to the server pod's 15008,
// where the server node's tunnel dials the server: two userspace hops.
const modeMTLS = "kmesh-mtls"

var tunnelReady = regexp.MustCompile(`msg="tunnel state applied".* pods=[1-9]`)

// mtls is the kmesh-mtls mode's CA and its tunnels while it runs.
type mtls struct {
	caFlags       []string
	caCert, caKey []byte // PEM
	tunnels       []tunnelProc
}

// tunnelProc is one node's `kmeshd tunnel`.
type tunnelProc struct {
	proc *testbed.Process
	node *testbed.Node
}

// startMTLS starts kmeshd with a local CA on both nodes and a tunnel
// beside each, in the bed's own cgroup as kmeshd (their CPU counts as the
// mesh's),
// and waits until a cross-node request goes through the tunnels.
func (d *dataplane) startMTLS(ctx context.Context, extra ...string) error {
	if err := d.localCA(); err != nil {
		return err
	}
	for _, n := range []*testbed.Node{d.nodeA, d.nodeB} {
		state := filepath.Join(d.tmp, n.Name+"-state")
		k, err := startKmeshd(ctx, d.bed, d.tools, n, d.meshFile, append(append([]string{"--state-dir", state}, d.mtls.caFlags...), extra...)...)
		if err != nil {
			return err
		}
		d.running = append(d.running, k)
		args := append([]string{"tunnel", "--node", n.Name, "--bpf-dir", n.BPFDir, "--state-dir", state, "--log-level", "info"}, d.mtls.caFlags...)
		if d.cfg.tunnelMaxProcs > 0 {
			args = append(args, "--max-procs", strconv.Itoa(d.cfg.tunnelMaxProcs))
		}
		if d.cfg.tunnelPprof != "" {
			// -tunnel-pprof 127.0.0.1:16060: node-a's tunnel there, node-b's on the next port.
			ap, err := netip.ParseAddrPort(d.cfg.tunnelPprof)
			if err != nil {
				return fmt.Errorf("-tunnel-pprof: %w", err)
			}
			if n == d.nodeB {
				ap = netip.AddrPortFrom(ap.Addr(), ap.Port()+1)
			}
			args = append(args, "--pprof-address", ap.String())
		}
		proc, err := d.bed.StartRoot(d.tools.kmeshd, args...)
		if err != nil {
			return err
		}
		d.mtls.tunnels = append(d.mtls.tunnels, tunnelProc{proc, n})
		deadline := time.Now().Add(30 * time.Second)
		for !tunnelReady.MatchString(proc.Stderr()) {
			select {
			case <-proc.Done():
				return fmt.Errorf("kmeshd tunnel %s exited: %v: %s", n.Name, proc.Wait(), lastLines(proc.Stderr(), 5))
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("kmeshd tunnel %s not listening after 30s: %s", n.Name, lastLines(proc.Stderr(), 5))
			}
		}
		// A port taken in a pod would send its connections elsewhere.
		if strings.Contains(proc.Stderr(), "cannot listen in pod") {
			return fmt.Errorf("kmeshd tunnel %s: %s", n.Name, lastLines(proc.Stderr(), 5))
		}
	}
	addr := netip.AddrPortFrom(remoteVIP, 80).String()
	if _, err := runProbe(ctx, d.client, d.tools.self, addr, true, 20*time.Second); err != nil {
		return fmt.Errorf("no request through the tunnels: %w: %s", err, lastLines(d.mtls.tunnels[0].proc.Stderr(), 5))
	}
	return nil
}

// localCA writes the mesh's local CA once per run: kmesh-mtls's kmeshds
// and tunnels sign with it, haproxy-mtls's certificates come from it.
func (d *dataplane) localCA() error {
	if d.mtls.caFlags != nil {
		return nil
	}
	cert, key, err := identity.GenerateCA("cluster.local", 24*time.Hour)
	if err != nil {
		return err
	}
	cp, kp := filepath.Join(d.tmp, "ca-cert.pem"), filepath.Join(d.tmp, "ca-key.pem")
	if err := os.WriteFile(cp, cert, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(kp, key, 0o600); err != nil {
		return err
	}
	d.mtls.caCert, d.mtls.caKey = cert, key
	d.mtls.caFlags = []string{"--ca-cert", cp, "--ca-key", kp}
	return nil
}

// stopMTLS stops the tunnels, then the daemons.
func (d *dataplane) stopMTLS() error {
	for _, t := range d.mtls.tunnels {
		t.proc.Stop()
	}
	d.mtls.tunnels = nil
	return d.stopKmeshds()
}
