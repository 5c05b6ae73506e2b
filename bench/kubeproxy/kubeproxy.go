// Package kubeproxy writes the iptables rules kube-proxy's iptables mode
// would install for a set of services, as input for `iptables-restore
// --noflush`. The benchmark loads them into a test-bed node's network
// namespace to measure the per-packet NAT alternative to Kmesh.
//
// The shape follows kube-proxy (pkg/proxy/iptables/proxier.go): nat
// PREROUTING and OUTPUT jump to KUBE-SERVICES, which matches each service
// address and port and jumps to a KUBE-SVC-<hash> chain; that chain picks an
// endpoint with `-m statistic --mode random` (probability 1/n, 1/(n-1), ...,
// the last one unconditional) and jumps to its KUBE-SEP-<hash> chain, which
// DNATs. Hairpin traffic (an endpoint calling its own service) and sources
// outside the cluster CIDR are marked for masquerade in POSTROUTING.
// Chain names are kube-proxy's: the prefix and the first 16 characters of
// the base32 SHA-256 of the service port name, protocol (and endpoint).
//
// Only IPv4 TCP is written, which is what the benchmark measures.
package kubeproxy

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strings"
)

// Service is one service port and its endpoints.
type Service struct {
	Namespace, Name, PortName string
	Address                   netip.Addr // cluster IP
	Port                      uint16
	Endpoints                 []netip.AddrPort
}

func (s Service) portName() string { return s.Namespace + "/" + s.Name + ":" + s.PortName }

// masqMark is kube-proxy's default --iptables-masquerade-bit 14.
const masqMark = "0x4000"

// Rules returns the nat table for services, for `iptables-restore
// --noflush`. clusterCIDR is the pod network (kube-proxy's --cluster-cidr).
func Rules(services []Service, clusterCIDR netip.Prefix) string {
	var chains, rules strings.Builder
	chain := func(name string) { fmt.Fprintf(&chains, ":%s - [0:0]\n", name) }
	rule := func(format string, args ...any) { fmt.Fprintf(&rules, format+"\n", args...) }

	for _, c := range []string{"KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"} {
		chain(c)
	}
	rule(`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	rule(`-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	rule(`-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`)
	rule(`-A KUBE-MARK-MASQ -j MARK --or-mark %s`, masqMark)
	rule(`-A KUBE-POSTROUTING -m mark ! --mark %s/%s -j RETURN`, masqMark, masqMark)
	rule(`-A KUBE-POSTROUTING -j MARK --xor-mark %s`, masqMark)
	rule(`-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`)

	for _, s := range services {
		if !s.Address.Is4() || len(s.Endpoints) == 0 {
			continue // kube-proxy REJECTs in the filter table; not modelled
		}
		name := s.portName()
		svc := "KUBE-SVC-" + hash(name+"tcp")
		chain(svc)
		rule(`-A KUBE-SERVICES -d %s/32 -p tcp -m comment --comment "%s cluster IP" -m tcp --dport %d -j %s`,
			s.Address, name, s.Port, svc)
		rule(`-A %s ! -s %s -d %s/32 -p tcp -m comment --comment "%s cluster IP" -m tcp --dport %d -j KUBE-MARK-MASQ`,
			svc, clusterCIDR, s.Address, name, s.Port)
		n := len(s.Endpoints)
		for i, ep := range s.Endpoints {
			sep := "KUBE-SEP-" + hash(name+"tcp"+ep.String())
			chain(sep)
			if left := n - i; left > 1 {
				rule(`-A %s -m comment --comment "%s -> %s" -m statistic --mode random --probability %.11f -j %s`,
					svc, name, ep, 1/float64(left), sep)
			} else {
				rule(`-A %s -m comment --comment "%s -> %s" -j %s`, svc, name, ep, sep)
			}
			rule(`-A %s -s %s/32 -m comment --comment "%s" -j KUBE-MARK-MASQ`, sep, ep.Addr(), name)
			rule(`-A %s -p tcp -m comment --comment "%s" -m tcp -j DNAT --to-destination %s`, sep, name, ep)
		}
	}
	return "*nat\n" + chains.String() + rules.String() + "COMMIT\n"
}

// FlushArgs are the iptables invocations that remove every rule and chain
// of the nat table again. With iptables-nft this also drops the table's
// hooks, so connection tracking stops for the namespace.
func FlushArgs() [][]string {
	return [][]string{{"-w", "-t", "nat", "-F"}, {"-w", "-t", "nat", "-X"}}
}

// hash is kube-proxy's portProtoHash: base32 of SHA-256, 16 characters.
func hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}
