package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/kmesh-go/kmesh/bench/haproxy"
	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// modeHAProxyMTLS is the reference for what kmesh-mtls's two hops cost:
// the same path, done by a C proxy. HAProxy in the client pod (iptables
// REDIRECT of the remote service, as the haproxy mode) carries the bytes
// over mutual TLS 1.3 to a second HAProxy in the server pod, which
// forwards them to the server over the pod's loopback: six sockets and
// three processes per direction, as the tunnels, without HTTP/2 framing.
// Reported beside the goal, never judged (goals.go).
const modeHAProxyMTLS = "haproxy-mtls"

// haproxyMTLSPort is the server end's first TLS port; one per target port
// in servicePorts' order (HBONE names the target in its CONNECT, a TCP
// proxy needs a port per target). Not 15008, the tunnel's.
const haproxyMTLSPort = 15009

// tlsSuite is the cipher suite the tunnels negotiate (Go, both ends with
// AES-NI, as this machine has): both HAProxys are pinned to it so that
// the crypto per byte is the same.
const tlsSuite = "TLS_AES_128_GCM_SHA256"

// haproxyMTLSThreads is each HAProxy's nbthread, the haproxy mode's (Istio's
// benchmarks give their proxies 2 workers).
const haproxyMTLSThreads = 2

// haproxyMTLS is the mode's two HAProxys while it runs.
type haproxyMTLS struct {
	client, server *testbed.Process
}

// processes are the running HAProxys, for the mesh's CPU.
func (h *haproxyMTLS) processes() []*testbed.Process {
	var out []*testbed.Process
	for _, p := range []*testbed.Process{h.client, h.server} {
		if p != nil {
			out = append(out, p)
		}
	}
	return out
}

// mtlsListeners are the server end's TLS ports on the server pod's
// address, each forwarding to a target port on the pod's loopback.
func mtlsListeners(server netip.Addr) []haproxy.Listener {
	var out []haproxy.Listener
	for i, p := range servicePorts {
		out = append(out, haproxy.Listener{Name: fmt.Sprintf("tls-%d", p[1]),
			Listen: netip.AddrPortFrom(server, haproxyMTLSPort+uint16(i)),
			Target: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p[1])})
	}
	return out
}

// mtlsFrontends are the client end's listeners: the haproxy mode's for the
// cross-node services, on ports of their own, each sent to the server
// end's TLS port of its target port.
func (d *dataplane) mtlsFrontends(server netip.Addr) []haproxy.Frontend {
	var out []haproxy.Frontend
	listen := uint16(16201) // the haproxy modes': 16001…, 16101…
	for _, f := range d.frontends() {
		if f.Service.Addr() != remoteVIP {
			continue
		}
		var backends []netip.AddrPort
		for _, be := range f.Backends {
			for i, p := range servicePorts {
				if p[1] == be.Port() {
					backends = append(backends, netip.AddrPortFrom(server, haproxyMTLSPort+uint16(i)))
				}
			}
		}
		f.Name += "-mtls"
		f.Listen, f.Backends = listen, backends
		out = append(out, f)
		listen++
	}
	return out
}

// startHAProxyMTLS starts the server end in the server pod and the client
// end in the client pod, redirects the client's connections to the remote
// service into it, and waits until a request goes through both.
func (d *dataplane) startHAProxyMTLS(ctx context.Context) error {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return fmt.Errorf("haproxy: %w (make bench installs it)", err)
	}
	m, err := d.haproxyMTLSCerts(ctx)
	if err != nil {
		return err
	}
	var server *testbed.Pod
	for _, t := range d.servers() {
		if t.crossNode {
			server = t.server
		}
	}
	start := func(pod *testbed.Pod, name, config string) (*testbed.Process, error) {
		cfg := filepath.Join(filepath.Dir(m.CA), name+".cfg")
		if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
			return nil, err
		}
		return pod.Start(bin, "-db", "-f", cfg)
	}
	addr := server.Addrs[0]
	if d.haproxyMTLS.server, err = start(server, "server",
		haproxy.ConfigMTLSServer(mtlsListeners(addr), haproxyMTLSThreads, m)); err != nil {
		return err
	}
	fes := d.mtlsFrontends(addr)
	if d.haproxyMTLS.client, err = start(d.client, "client",
		haproxy.ConfigMTLSClient(fes, haproxyMTLSThreads, m)); err != nil {
		return err
	}
	if err := iptablesRestore(ctx, d.client.NetnsPath, haproxy.RedirectRules(fes)); err != nil {
		return err
	}
	target := netip.AddrPortFrom(remoteVIP, 80).String()
	if _, err := runProbe(ctx, d.client, d.tools.self, target, true, 20*time.Second); err != nil {
		return fmt.Errorf("no request through both HAProxys: %w: client: %s; server: %s", err,
			lastLines(d.haproxyMTLS.client.Stderr(), 3), lastLines(d.haproxyMTLS.server.Stderr(), 3))
	}
	return nil
}

// haproxyMTLSCerts writes, once per run, the CA and a workload certificate
// for both ends: the SPIFFE identity both pods have (the mesh file's
// default service account), issued by kmesh-mtls's CA with the key type
// the tunnels' certificates have. The tunnels each hold their own
// certificate of that identity; one shared file costs the same per
// request.
func (d *dataplane) haproxyMTLSCerts(ctx context.Context) (haproxy.MTLS, error) {
	dir := filepath.Join(d.tmp, "haproxy-mtls")
	m := haproxy.MTLS{Cert: filepath.Join(dir, "workload.pem"), CA: filepath.Join(dir, "ca.pem"), Ciphersuite: tlsSuite}
	if _, err := os.Stat(m.Cert); err == nil {
		return m, nil
	}
	if err := d.localCA(); err != nil {
		return m, err
	}
	src, err := identity.NewLocalCA(d.mtls.caCert, d.mtls.caKey, "cluster.local")
	if err != nil {
		return m, err
	}
	if c, ok := src.(*identity.Cache); ok {
		c.SetLogger(slog.New(slog.DiscardHandler)) // not the run's output
	}
	cert, err := src.Certificate(ctx, identity.OfWorkload("cluster.local", "default", "default"))
	if err != nil {
		return m, err
	}
	data, err := haproxy.CertPEM(cert)
	if err != nil {
		return m, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return m, err
	}
	if err := os.WriteFile(m.CA, d.mtls.caCert, 0o644); err != nil {
		return m, err
	}
	return m, os.WriteFile(m.Cert, data, 0o600)
}

// stopHAProxyMTLS removes the redirect, then stops both HAProxys.
func (d *dataplane) stopHAProxyMTLS() error {
	err := iptablesFlush(d.client.NetnsPath)
	for _, p := range d.haproxyMTLS.processes() {
		if e := p.Stop(); err == nil {
			err = e
		}
	}
	d.haproxyMTLS = haproxyMTLS{}
	return err
}
