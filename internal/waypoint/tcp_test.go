package waypoint

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/model"
)

// TestProxy_TCPPortIsL4WithL4Policy: a service port with appProtocol tcp
// is forwarded as L4 (the bytes go both ways to an endpoint, whatever
// they are) after the L4 part of the policies, as Istio evaluates them
// on TCP: a DENY naming the client's principal closes the connection
// before any byte reaches the endpoint; a DENY that names only a path
// (an attribute TCP does not have) denies every connection, more than
// asked, never less; an ALLOW that names a method never matches, so
// the connection is denied; an ALLOW on the client's principal and the
// port lets it through.
func TestProxy_TCPPortIsL4WithL4Policy(t *testing.T) {
	b := newBed(t)
	addr := nextWorkloadAddr()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(addr, 9000).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan struct{}, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					io.WriteString(c, "hello "+line)
				}
			}()
		}
	}()
	b.mesh.Workloads = append(b.mesh.Workloads, model.Workload{Name: "echo", Namespace: "default", Labels: map[string]string{"app": "echo"},
		Addresses: []netip.Addr{addr}, Weight: 1, Node: "n"})
	b.mesh.Services = append(b.mesh.Services, model.Service{Name: "echo", Namespace: "default", LBMode: model.LBRandom,
		Addresses: []netip.Addr{netip.MustParseAddr("10.96.0.9")},
		Ports:     []model.ServicePort{{Port: 9000, TargetPort: 9000, Protocol: model.ProtocolTCP, AppProtocol: "tcp"}},
		Labels:    map[string]string{model.LabelUseWaypoint: "waypoint"},
		Endpoints: []model.Endpoint{{Workload: "default/echo"}}})
	b.start()
	dst := netip.MustParseAddrPort("10.96.0.9:9000")
	const client = "cluster.local/ns/default/sa/client"
	// talk sends a line over a new connection from client and returns the
	// answer, "" when the waypoint closed the connection.
	talk := func(t *testing.T) string {
		t.Helper()
		c, s := net.Pipe()
		defer c.Close()
		b.proxy.ServeConn(s, dst, Peer{Addr: netip.MustParseAddrPort("10.1.1.10:40000"), Principal: client})
		c.SetDeadline(time.Now().Add(5 * time.Second))
		go io.WriteString(c, "world\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil && err != io.EOF && !strings.Contains(err.Error(), "closed pipe") {
			t.Fatalf("reading the answer: %v", err)
		}
		return line
	}
	policy := func(action model.PolicyAction, r model.L7Rule) {
		t.Helper()
		b.mesh.WaypointPolicies = []model.L7Policy{{Name: "p", Namespace: "default", Action: action,
			TargetRefs: []model.ParentRef{{Kind: "Service", Name: "echo"}}, Rules: []model.L7Rule{r}}}
		if err := b.proxy.Update(b.mesh); err != nil {
			t.Fatal(err)
		}
	}
	drain := func() int {
		n := 0
		for {
			select {
			case <-accepted:
				n++
			case <-time.After(100 * time.Millisecond):
				return n
			}
		}
	}
	if got := talk(t); got != "hello world\n" {
		t.Fatalf("no policy: answer %q, want the endpoint's %q", got, "hello world\n")
	}
	drain()
	cases := []struct {
		name   string
		action model.PolicyAction
		rule   model.L7Rule
		passes bool
	}{
		{"deny the client's principal", model.ActionDeny, model.L7Rule{From: []model.L7Source{{Principals: []string{client}}}}, false},
		{"deny another principal", model.ActionDeny, model.L7Rule{From: []model.L7Source{{Principals: []string{"cluster.local/ns/default/sa/other"}}}}, true},
		{"deny a path denies all TCP", model.ActionDeny, model.L7Rule{To: []model.L7Operation{{Paths: []string{"/admin*"}}}}, false},
		{"deny another port", model.ActionDeny, model.L7Rule{To: []model.L7Operation{{Ports: []string{"9001"}, Paths: []string{"/admin*"}}}}, true},
		{"deny on a request header denies all TCP", model.ActionDeny,
			model.L7Rule{When: []model.L7Condition{{Key: "request.headers[x-user]", Values: []string{"bob"}}}}, false},
		{"allow a method never matches", model.ActionAllow, model.L7Rule{To: []model.L7Operation{{Methods: []string{"GET"}}}}, false},
		{"allow the client and the port", model.ActionAllow,
			model.L7Rule{From: []model.L7Source{{Principals: []string{client}}}, To: []model.L7Operation{{Ports: []string{"9000"}}}}, true},
		{"allow another namespace", model.ActionAllow, model.L7Rule{From: []model.L7Source{{Namespaces: []string{"other"}}}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			policy(tc.action, tc.rule)
			got := talk(t)
			n := drain()
			if tc.passes && (got != "hello world\n" || n != 1) {
				t.Fatalf("answer %q, %d connections to the endpoint; want the endpoint's answer over one", got, n)
			}
			if !tc.passes && (got != "" || n != 0) {
				t.Fatalf("answer %q, %d connections to the endpoint; want the connection closed before the endpoint", got, n)
			}
		})
	}
}
