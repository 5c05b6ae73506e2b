package haproxy

import (
	"net/netip"
	"strings"
	"testing"
)

var frontends = []Frontend{
	{Name: "local-80", Service: netip.MustParseAddrPort("10.96.0.10:80"), Listen: 15001,
		Backends: []netip.AddrPort{netip.MustParseAddrPort("10.1.1.11:8080")}},
	{Name: "remote-80", Service: netip.MustParseAddrPort("10.96.0.11:80"), Listen: 15002,
		Backends: []netip.AddrPort{netip.MustParseAddrPort("10.1.2.11:8080"), netip.MustParseAddrPort("10.1.2.12:8080")}},
}

func TestConfig(t *testing.T) {
	got := Config(frontends, 2)
	for _, want := range []string{
		"nbthread 2\n",
		"mode tcp\n",
		"frontend fe-local-80\n    bind 127.0.0.1:15001\n    default_backend be-local-80\n",
		"backend be-remote-80\n    balance roundrobin\n    server s0 10.1.2.11:8080\n    server s1 10.1.2.12:8080\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	// Run in the foreground, in the pod, as whoever starts it: no daemon,
	// chroot or user switch.
	for _, absent := range []string{"daemon", "chroot", "user "} {
		if strings.Contains(got, absent) {
			t.Errorf("config has %q:\n%s", absent, got)
		}
	}
}

func TestRedirectRules(t *testing.T) {
	want := `*nat
:BENCH-PROXY - [0:0]
-A OUTPUT -p tcp -j BENCH-PROXY
-A BENCH-PROXY -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 15001
-A BENCH-PROXY -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 15002
COMMIT
`
	if got := RedirectRules(frontends); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
