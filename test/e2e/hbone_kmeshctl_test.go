//go:build e2e

package e2e

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// TestHBONE_KmeshctlShowsTheTunnel: what a user checks with kmeshctl about
// tunnelled connections. explain names the tunnel, its peer and both
// identities; get connections lists a kept-alive tunnelled connection on
// both nodes with its principals (and no connection to the tunnel's
// loopback listener, nor the tunnel's dial into the application); get
// certs lists the certificate the tunnel presents, not kmeshd's own.
func TestHBONE_KmeshctlShowsTheTunnel(t *testing.T) {
	m := newMesh(t)
	cfg := authzConfig(m, "")
	h := startHBONE(m, map[string]string{"node-a": cfg, "node-b": cfg})
	ctl, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshctl")
	if err != nil {
		t.Fatal(err)
	}
	kmeshctl := func(node string, args ...string) string {
		t.Helper()
		k := h.kmeshd[node]
		out, err := execOutput(ctl, append(args, "--admin-address", k.admin, "--admin-socket", k.socket)...)
		if err != nil {
			t.Fatalf("kmeshctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	const (
		client = "spiffe://cluster.local/ns/default/sa/client"
		hello  = "spiffe://cluster.local/ns/default/sa/hello"
	)

	// explain: hello-2 (node-b) through the tunnel, hello-1 (node-a) direct.
	out := kmeshctl("node-a", "explain", "client", "10.1.2.12:8080")
	if !regexp.MustCompile(`(?m)^TUNNEL:\s+HBONE to 10\.1\.2\.12:15008, ` + regexp.QuoteMeta(client+" -> "+hello) + `$`).MatchString(out) {
		t.Fatalf("explain client 10.1.2.12:8080 names no tunnel:\n%s", out)
	}
	out = kmeshctl("node-a", "explain", "client", "10.96.0.10:80")
	for _, want := range []string{
		`(?m)^default/hello-1 +node-a +10\.1\.1\.11:8080 .* direct$`,
		`(?m)^default/hello-2 +node-b +10\.1\.2\.12:8080 .* HBONE to 10\.1\.2\.12:15008, ` + regexp.QuoteMeta(client+" -> "+hello) + `$`,
		`(?m)^RESULT: .*; 2 of them through the HBONE tunnel`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("explain client 10.96.0.10:80: no line matching %s:\n%s", want, out)
		}
	}

	// get connections, while a kept-alive connection to hello-2 is open.
	ka := h.startTraffic("keep-alive", "--url", "http://10.1.2.12:8080/", "--keepalive", "--interval", "100ms")
	defer ka.stop(t)
	for node, want := range map[string]api.ConnTunnel{
		"node-a": {Direction: "outbound", Peer: "10.1.2.12:15008", SourcePrincipal: client, DestinationPrincipal: hello},
		"node-b": {Direction: "inbound", SourcePrincipal: client, DestinationPrincipal: hello},
	} {
		var found *api.Connection
		var conns []api.Connection
		for deadline := time.Now().Add(10 * time.Second); found == nil && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if err := json.Unmarshal([]byte(kmeshctl(node, "get", "connections", "-o", "json")), &conns); err != nil {
				t.Fatal(err)
			}
			for i, c := range conns {
				if c.Tunnel != nil && c.BytesSent > 0 && c.BytesReceived > 0 {
					found = &conns[i]
				}
			}
		}
		if found == nil {
			t.Fatalf("%s: no tunnelled connection with bytes listed: %+v", node, conns)
		}
		tn := *found.Tunnel
		if node == "node-b" {
			want.Peer = tn.Peer // the client tunnel's address and port
			if !strings.HasPrefix(tn.Peer, "10.1.1.10:") {
				t.Errorf("node-b: peer %s, want the client pod's address 10.1.1.10", tn.Peer)
			}
		}
		if tn != want || found.Source.Workload != "default/client" || found.Destination.Workload != "default/hello-2" ||
			found.Destination.Address != "10.1.2.12:8080" || found.State != "established" {
			t.Errorf("%s: tunnelled connection %+v tunnel %+v, want client -> hello-2 (10.1.2.12:8080) %+v", node, found, tn, want)
		}
		for _, c := range conns {
			if c.Tunnel == nil && (strings.HasSuffix(c.Destination.Address, ":15001") || c.Destination.Workload == "default/hello-2") {
				t.Errorf("%s: the kernel lists a leg of the tunnelled connection: %+v", node, c)
			}
		}
		table := kmeshctl(node, "get", "connections")
		if !regexp.MustCompile(`(?m)^default/client +default/hello-2 .* established +mutual_tls: ` + regexp.QuoteMeta(client+" -> "+hello) + `$`).MatchString(table) {
			t.Errorf("%s: get connections shows no mutual_tls row:\n%s", node, table)
		}
	}

	// get certs: the serial the tunnel issued for hello on node-b, which
	// kmeshd's own cache does not have.
	var certs api.Certs
	if err := json.Unmarshal([]byte(kmeshctl("node-b", "get", "certs", "-o", "json")), &certs); err != nil {
		t.Fatal(err)
	}
	issued := regexp.MustCompile(`msg="certificate issued".* identity=` + regexp.QuoteMeta(hello) + ` serial=(\S+)`)
	tunnelSerials := issued.FindAllStringSubmatch(h.tunnels["node-b"].Stderr(), -1)
	kmeshdSerials := issued.FindAllStringSubmatch(h.kmeshd["node-b"].proc.Stderr(), -1)
	if certs.ServedBy != "kmeshd tunnel" || len(tunnelSerials) == 0 || len(kmeshdSerials) == 0 {
		t.Fatalf("get certs served by %q (%s); tunnel issued %v, kmeshd %v", certs.ServedBy, certs.TunnelError, tunnelSerials, kmeshdSerials)
	}
	var listed string
	for _, c := range certs.Certificates {
		if c.Identity == hello {
			listed = c.Serial
		}
	}
	if last := tunnelSerials[len(tunnelSerials)-1][1]; listed != last || listed == kmeshdSerials[len(kmeshdSerials)-1][1] {
		t.Fatalf("get certs lists serial %q for %s; the tunnel serves %s, kmeshd's own cache has %s", listed, hello, last, kmeshdSerials[len(kmeshdSerials)-1][1])
	}
	if out := kmeshctl("node-b", "get", "certs"); !strings.HasPrefix(out, "SERVED BY: kmeshd tunnel\n") {
		t.Errorf("get certs table:\n%s", out)
	}
}
