package kubeproxy

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"
)

func TestRules(t *testing.T) {
	services := []Service{
		{Namespace: "default", Name: "one", PortName: "http", Address: netip.MustParseAddr("10.96.0.10"), Port: 80,
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort("10.1.1.11:8080")}},
		{Namespace: "default", Name: "three", PortName: "http", Address: netip.MustParseAddr("10.96.0.11"), Port: 80,
			Endpoints: []netip.AddrPort{
				netip.MustParseAddrPort("10.1.1.11:8080"),
				netip.MustParseAddrPort("10.1.2.11:8080"),
				netip.MustParseAddrPort("10.1.2.12:8080"),
			}},
		{Namespace: "default", Name: "v6", PortName: "http", Address: netip.MustParseAddr("fd00::10"), Port: 80,
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort("[fd00:1::11]:8080")}},
		{Namespace: "default", Name: "empty", PortName: "http", Address: netip.MustParseAddr("10.96.0.12"), Port: 80},
	}
	got := Rules(services, netip.MustParsePrefix("10.1.0.0/16"))

	if !strings.HasPrefix(got, "*nat\n") || !strings.HasSuffix(got, "COMMIT\n") {
		t.Fatalf("not one nat table:\n%s", got)
	}
	for _, want := range []string{
		"-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
		"-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
		"-d 10.96.0.10/32 -p tcp -m comment --comment \"default/one:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-",
		"! -s 10.1.0.0/16 -d 10.96.0.11/32",
		"--probability 0.33333333333 -j KUBE-SEP-",
		"--probability 0.50000000000 -j KUBE-SEP-",
		"-j DNAT --to-destination 10.1.2.12:8080\n",
		"-s 10.1.1.11/32 -m comment --comment \"default/one:http\" -j KUBE-MARK-MASQ\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	for _, absent := range []string{"fd00", "10.96.0.12"} {
		if strings.Contains(got, absent) {
			t.Errorf("rules mention %s (IPv6 and endpoint-less services are not written):\n%s", absent, got)
		}
	}
	// Exactly the last endpoint of "three" is unconditional.
	if n := strings.Count(got, "--mode random"); n != 2 {
		t.Errorf("%d random picks, want 2", n)
	}

	// Every chain used is declared once, and every declared chain is used.
	declared := map[string]int{}
	for _, m := range regexp.MustCompile(`(?m)^:(\S+) - \[0:0\]$`).FindAllStringSubmatch(got, -1) {
		declared[m[1]]++
	}
	for _, m := range regexp.MustCompile(`-[jA] (KUBE-\S+)`).FindAllStringSubmatch(got, -1) {
		if declared[m[1]] != 1 {
			t.Errorf("chain %s used, declared %d times", m[1], declared[m[1]])
		}
	}
	if len(declared) != 3+2+4 { // fixed chains, two KUBE-SVC, four KUBE-SEP
		t.Errorf("%d chains declared, want 9: %v", len(declared), declared)
	}
	// kube-proxy's names: 16 base32 characters.
	if !regexp.MustCompile(`KUBE-SVC-[A-Z2-7]{16}\b`).MatchString(got) {
		t.Errorf("no kube-proxy style chain name in\n%s", got)
	}
	if Rules(services, netip.MustParsePrefix("10.1.0.0/16")) != got {
		t.Error("rules differ between two calls")
	}
}
