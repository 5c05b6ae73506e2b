// Package haproxy writes the configuration of the benchmark's userspace
// proxy hop: HAProxy in TCP mode inside the client pod, standing in for a
// sidecar or a per-node proxy such as ztunnel, and the iptables REDIRECT
// rules (nat OUTPUT, in the client pod's network namespace) that send the
// pod's connections to service addresses into it, as a sidecar's
// interception rules do.
//
// Each service address and port gets a listener of its own on the pod's
// loopback, so the proxy needs no original-destination lookup.
package haproxy

import (
	"fmt"
	"net/netip"
	"strings"
)

// Frontend is one service address and port and where HAProxy sends it.
type Frontend struct {
	Name     string         // used for HAProxy section names
	Service  netip.AddrPort // what the client connects to
	Listen   uint16         // HAProxy's port on 127.0.0.1
	Backends []netip.AddrPort
}

// Config returns haproxy.cfg for frontends. threads is HAProxy's nbthread
// (Istio's benchmarks give their proxies 2 workers).
func Config(frontends []Frontend, threads int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
    nbthread %d
    maxconn 4000

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
`, threads)
	for _, f := range frontends {
		fmt.Fprintf(&b, "\nfrontend fe-%s\n    bind 127.0.0.1:%d\n    default_backend be-%s\n", f.Name, f.Listen, f.Name)
		fmt.Fprintf(&b, "\nbackend be-%s\n    balance roundrobin\n", f.Name)
		for i, be := range f.Backends {
			fmt.Fprintf(&b, "    server s%d %s\n", i, be)
		}
	}
	return b.String()
}

// ConfigHTTP is Config in HTTP mode: HAProxy parses every request and keeps
// its server connections for reuse, as an L7 proxy (a waypoint) does.
func ConfigHTTP(frontends []Frontend, threads int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
    nbthread %d
    maxconn 4000

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
`, threads)
	for _, f := range frontends {
		fmt.Fprintf(&b, "\nfrontend fe-%s\n    bind 127.0.0.1:%d\n    default_backend be-%s\n", f.Name, f.Listen, f.Name)
		fmt.Fprintf(&b, "\nbackend be-%s\n    balance roundrobin\n", f.Name)
		for i, be := range f.Backends {
			fmt.Fprintf(&b, "    server s%d %s\n", i, be)
		}
	}
	return b.String()
}

// RedirectRules returns the nat table for `iptables-restore --noflush` that
// redirects the pod's connections to each frontend's service address and
// port to its listener. iptables REDIRECT of locally generated packets
// rewrites the destination to 127.0.0.1.
func RedirectRules(frontends []Frontend) string {
	var b strings.Builder
	b.WriteString("*nat\n:BENCH-PROXY - [0:0]\n")
	b.WriteString("-A OUTPUT -p tcp -j BENCH-PROXY\n")
	for _, f := range frontends {
		fmt.Fprintf(&b, "-A BENCH-PROXY -d %s/32 -p tcp -m tcp --dport %d -j REDIRECT --to-ports %d\n",
			f.Service.Addr(), f.Service.Port(), f.Listen)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}
