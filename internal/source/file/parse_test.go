package file

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/kmesh-go/kmesh/examples"
	"github.com/kmesh-go/kmesh/internal/model"
)

// badFiles are files Parse must reject; want is a substring of the error
// that names the file, the line and the field. FuzzParse seeds from them too.
var badFiles = []struct {
	name string
	yaml string
	want string
}{
	{
		name: "yaml syntax error",
		yaml: `services:
- name: hello
  ports: 80: 1
`,
		want: "bad.yaml:3: mapping values are not allowed",
	},
	{
		name: "bad character",
		yaml: "workloads:\n- name: a\n  node: \x01\n",
		want: "bad.yaml:3: control characters are not allowed",
	},
	{
		name: "unknown anchor",
		yaml: "workloads:\n- name: a\n  labels: *common\n",
		want: `bad.yaml:3: unknown anchor "common"`,
	},
	{
		name: "second document",
		yaml: "services: []\n---\nworkloads: []\n",
		want: "bad.yaml:2: a second YAML document is not supported",
	},
	{
		name: "root is a list",
		yaml: "- name: hello\n",
		want: "bad.yaml:1: expected a mapping, got a list",
	},
	{
		name: "unknown top-level field",
		yaml: "services: []\nendpoints: []\n",
		want: `bad.yaml:2: unknown field "endpoints"`,
	},
	{
		name: "unknown field",
		yaml: `services:
- name: hello
  addresses: ["10.96.0.10"]
  ports: [{port: 80}]
  selecter: {app: hello}
`,
		want: `bad.yaml:5: services[0]: unknown field "selecter"`,
	},
	{
		name: "field set twice",
		yaml: `workloads:
- name: a
  node: node-a
  node: node-b
`,
		want: `bad.yaml:4: workloads[0]: field "node" is set twice (first at line 3)`,
	},
	{
		name: "missing name",
		yaml: `services:
- addresses: ["10.96.0.10"]
  ports: [{port: 80}]
`,
		want: "bad.yaml:2: services[0].name: missing",
	},
	{
		name: "name is not a DNS label",
		yaml: `services:
- name: Hello_World
  addresses: ["10.96.0.10"]
  ports: [{port: 80}]
`,
		want: `bad.yaml:2: services[0].name: "Hello_World" is not a DNS label`,
	},
	{
		name: "invalid address",
		yaml: `services:
- name: hello
  addresses:
  - 10.96.0.10
  - 10.96.0.300
  ports: [{port: 80}]
`,
		want: `bad.yaml:5: services[0].addresses[1]: "10.96.0.300" is not an IP address`,
	},
	{
		name: "v4-mapped service address",
		yaml: `services:
- name: hello
  addresses: ["::ffff:10.96.0.10"]
  ports: [{port: 80}]
`,
		want: `bad.yaml:3: services[0].addresses[0]: "::ffff:10.96.0.10" is an IPv4-mapped IPv6 address; write it as 10.96.0.10`,
	},
	{
		name: "address with zone",
		yaml: `services:
- name: hello
  addresses: ["fe80::1%eth0"]
  ports: [{port: 80}]
`,
		want: `bad.yaml:3: services[0].addresses[0]: "fe80::1%eth0" has a zone`,
	},
	{
		name: "address listed twice",
		yaml: `services:
- name: hello
  addresses:
  - fd00:96::10
  - FD00:96:0::10
  ports: [{port: 80}]
`,
		want: "bad.yaml:5: services[0].addresses[1]: fd00:96::10 is listed twice (first at line 4)",
	},
	{
		name: "no addresses",
		yaml: `services:
- name: hello
  addresses: []
  ports: [{port: 80}]
`,
		want: "bad.yaml:3: services[0].addresses: at least one address is required",
	},
	{
		name: "port 0",
		yaml: `services:
- name: hello
  addresses: ["10.96.0.10"]
  ports:
  - port: 0
`,
		want: "bad.yaml:5: services[0].ports[0].port: 0 is out of range 1..65535",
	},
	{
		name: "port 70000",
		yaml: `services:
- name: hello
  addresses: ["10.96.0.10"]
  ports:
  - port: 80
  - port: 70000
`,
		want: "bad.yaml:6: services[0].ports[1].port: 70000 is out of range 1..65535",
	},
	{
		name: "port beyond int64",
		yaml: `services:
- name: hello
  addresses: ["10.96.0.10"]
  ports: [{port: 18446744073709551615}]
`,
		want: "bad.yaml:4: services[0].ports[0].port: 18446744073709551615 is out of range 1..65535",
	},
	{
		name: "port is not an integer",
		yaml: `services:
- name: hello
  addresses: ["10.96.0.10"]
  ports: [{port: 80.5}]
`,
		want: `bad.yaml:4: services[0].ports[0].port: expected an integer, got "80.5"`,
	},
	{
		name: "port listed twice",
		yaml: `services:
- name: hello
  addresses: ["10.96.0.10"]
  ports:
  - port: 80
  - port: 80
    targetPort: 8080
`,
		want: "bad.yaml:6: services[0].ports[1].port: port 80 is listed twice (first at line 5)",
	},
	{
		name: "targetPort out of range",
		yaml: `services:
- name: hello
  addresses: ["10.96.0.10"]
  ports:
  - port: 80
    targetPort: 65536
`,
		want: "bad.yaml:6: services[0].ports[0].targetPort: 65536 is out of range 1..65535",
	},
	{
		name: "unknown load balancing mode",
		yaml: `services:
- name: hello
  addresses: ["10.96.0.10"]
  ports: [{port: 80}]
  loadBalancing:
    mode: least_conn
`,
		want: `bad.yaml:6: services[0].loadBalancing.mode: unknown load balancing mode "least_conn"`,
	},
	{
		name: "unsupported protocol",
		yaml: `services:
- name: hello
  addresses: ["10.96.0.10"]
  ports:
  - port: 53
    protocol: UDP
`,
		want: `bad.yaml:6: services[0].ports[0].protocol: unsupported protocol "UDP"`,
	},
	{
		name: "empty selector value",
		yaml: `services:
- name: hello
  addresses: ["10.96.0.10"]
  ports: [{port: 80}]
  selector:
    app: ""
`,
		want: `bad.yaml:6: services[0].selector: empty value for "app"`,
	},
	{
		name: "duplicate service name",
		yaml: `services:
- name: hello
  addresses: ["10.96.0.10"]
  ports: [{port: 80}]
- name: hello
  namespace: default
  addresses: ["10.96.0.11"]
  ports: [{port: 80}]
`,
		want: "bad.yaml:5: services[1].name: service default/hello is defined twice (first at services[0], line 2)",
	},
	{
		name: "duplicate workload name",
		yaml: `workloads:
- name: hello-1
  node: node-a
- name: hello-1
  node: node-b
`,
		want: "bad.yaml:4: workloads[1].name: workload default/hello-1 is defined twice (first at workloads[0], line 2)",
	},
	{
		name: "address and port used by two services",
		yaml: `services:
- name: hello
  addresses: ["10.96.0.10", "fd00:96::10"]
  ports: [{port: 80}, {port: 443}]
- name: world
  addresses:
  - 10.96.0.11
  - FD00:96::10
  ports: [{port: 443}]
`,
		want: "bad.yaml:8: services[1].addresses[1]: [fd00:96::10]:443 is already used by service default/hello (services[0])",
	},
	{
		name: "weight 0",
		yaml: `workloads:
- name: hello-1
  node: node-a
  weight: 0
`,
		want: "bad.yaml:4: workloads[0].weight: 0 is out of range 1..128",
	},
	{
		name: "weight above MaxWeight",
		yaml: `workloads:
- name: hello-1
  node: node-a
  weight: 129
`,
		want: "bad.yaml:4: workloads[0].weight: 129 is out of range 1..128",
	},
	{
		name: "two IPv4 addresses on one workload",
		yaml: `workloads:
- name: hello-1
  node: node-a
  addresses:
  - 10.1.1.11
  - fd00:1:1::11
  - 10.1.1.12
`,
		want: "bad.yaml:7: workloads[0].addresses[2]: second IPv4 address 10.1.1.12 (first at line 5)",
	},
	{
		name: "workload without node",
		yaml: `workloads:
- name: hello-1
  addresses: ["10.1.1.11"]
`,
		want: "bad.yaml:2: workloads[0].node: missing",
	},
	{
		name: "relative netns",
		yaml: `workloads:
- name: hello-1
  node: node-b
  netns: netns/hello-1
`,
		want: `bad.yaml:4: workloads[0].netns: "netns/hello-1" is not an absolute path`,
	},
	{
		name: "missing netns on this node",
		yaml: `workloads:
- name: hello-1
  node: node-a
  netns: /nonexistent/kmesh-test/netns/hello-1
`,
		want: "bad.yaml:4: workloads[0].netns: missing netns /nonexistent/kmesh-test/netns/hello-1 on this node (node-a)",
	},
}

func TestParse_RejectsBadFiles(t *testing.T) {
	for _, tc := range badFiles {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Parse("bad.yaml", []byte(tc.yaml), "node-a")
			if err == nil {
				t.Fatalf("Parse succeeded with %+v, want error containing %q", m, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse error:\n%v\nwant it to contain:\n%s", err, tc.want)
			}
		})
	}
}

func TestParse_ReportsEveryProblem(t *testing.T) {
	data := `services:
- name: hello
  addresses: ["10.96.0.300"]
  ports: [{port: 0}]
workloads:
- name: hello-1
  node: node-a
  weight: 500
`
	_, err := Parse("bad.yaml", []byte(data), "")
	if err == nil {
		t.Fatal("Parse succeeded, want errors")
	}
	want := `bad.yaml:3: services[0].addresses[0]: "10.96.0.300" is not an IP address
bad.yaml:4: services[0].ports[0].port: 0 is out of range 1..65535
bad.yaml:8: workloads[0].weight: 500 is out of range 1..128`
	if err.Error() != want {
		t.Fatalf("Parse error:\n%v\nwant:\n%s", err, want)
	}
}

func TestParse_NetnsIsCheckedOnlyOnItsNode(t *testing.T) {
	netns := filepath.Join(t.TempDir(), "hello-1")
	if err := os.WriteFile(netns, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	data := `workloads:
- name: hello-1
  node: node-a
  netns: ` + netns + `
- name: hello-2
  node: node-b
  netns: /nonexistent/kmesh-test/netns/hello-2
`
	if _, err := Parse("mesh.yaml", []byte(data), "node-a"); err != nil {
		t.Errorf("on node-a: %v", err)
	}
	if _, err := Parse("mesh.yaml", []byte(data), ""); err != nil {
		t.Errorf("with no node: %v", err)
	}
	_, err := Parse("mesh.yaml", []byte(data), "node-b")
	if want := "mesh.yaml:7: workloads[1].netns: missing netns"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("on node-b: got %v, want an error containing %q", err, want)
	}
}

func TestParse_EmptyFileIsEmptyMesh(t *testing.T) {
	for _, data := range []string{"", "# nothing yet\n", "~\n", "---\n", "services:\nworkloads: []\n"} {
		m, err := Parse("empty.yaml", []byte(data), "node-a")
		if err != nil {
			t.Errorf("Parse(%q): %v", data, err)
			continue
		}
		if len(m.Services) != 0 || len(m.Workloads) != 0 {
			t.Errorf("Parse(%q) = %+v, want an empty mesh", data, m)
		}
	}
}

func TestParse_AppliesDefaults(t *testing.T) {
	data := `services:
- name: hello
  addresses: ["10.96.0.10"]
  ports: [{port: 80}]
  selector: {app: hello}
workloads:
- name: hello-1
  labels: {app: hello}
  node: node-a
- name: hello-2
  namespace: other
  labels: {app: hello}
  node: node-a
`
	m, err := Parse("mesh.yaml", []byte(data), "")
	if err != nil {
		t.Fatal(err)
	}
	want := &model.Mesh{
		Services: []model.Service{{
			Name:      "hello",
			Namespace: "default",
			Addresses: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
			Ports:     []model.ServicePort{{Port: 80, TargetPort: 80, Protocol: model.ProtocolTCP}},
			LBMode:    model.LBRandom,
			// hello-2 matches the selector but is in another namespace.
			Endpoints: []model.Endpoint{{Workload: "default/hello-1"}},
		}},
		Workloads: []model.Workload{
			{Name: "hello-1", Namespace: "default", Labels: map[string]string{"app": "hello"}, Node: "node-a", Weight: 1, ServiceAccount: "default"},
			{Name: "hello-2", Namespace: "other", Labels: map[string]string{"app": "hello"}, Node: "node-a", Weight: 1, ServiceAccount: "default"},
		},
	}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("Parse =\n%+v\nwant\n%+v", m, want)
	}
}

func TestParse_HelloExample(t *testing.T) {
	m, err := Parse("examples/hello.yaml", examples.Hello, "")
	if err != nil {
		t.Fatal(err)
	}
	addrs := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range s {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	hello := map[string]string{"app": "hello"}
	want := &model.Mesh{
		Services: []model.Service{{
			Name:      "hello",
			Namespace: "default",
			Addresses: addrs("10.96.0.10", "fd00:96::10"),
			Ports:     []model.ServicePort{{Port: 80, TargetPort: 8080, Protocol: model.ProtocolTCP}},
			LBMode:    model.LBRandom,
			Endpoints: []model.Endpoint{
				{Workload: "default/hello-1"}, {Workload: "default/hello-2"}, {Workload: "default/hello-3"},
			},
		}},
		Workloads: []model.Workload{
			{Name: "client", Namespace: "default", Labels: map[string]string{"app": "client"},
				Addresses: addrs("10.1.1.10", "fd00:1:1::10"), Node: "node-a", Netns: "/var/run/netns/client", Weight: 1, ServiceAccount: "default"},
			{Name: "hello-1", Namespace: "default", Labels: hello,
				Addresses: addrs("10.1.1.11", "fd00:1:1::11"), Node: "node-a", Netns: "/var/run/netns/hello-1", Weight: 1, ServiceAccount: "default"},
			{Name: "hello-2", Namespace: "default", Labels: hello,
				Addresses: addrs("10.1.2.12", "fd00:1:2::12"), Node: "node-b", Netns: "/var/run/netns/hello-2", Weight: 1, ServiceAccount: "default"},
			{Name: "hello-3", Namespace: "default", Labels: hello,
				Addresses: addrs("10.1.2.13", "fd00:1:2::13"), Node: "node-b", Netns: "/var/run/netns/hello-3", Weight: 1, ServiceAccount: "default"},
		},
	}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("Parse =\n%+v\nwant\n%+v", m, want)
	}
}

func TestParse_AnchorsAreResolved(t *testing.T) {
	data := `workloads:
- name: hello-1
  node: node-a
  labels: &hello {app: hello, tier: web}
- name: hello-2
  node: node-a
  labels: *hello
`
	m, err := Parse("mesh.yaml", []byte(data), "")
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Workloads[1].Labels["tier"]; got != "web" {
		t.Fatalf("hello-2 label tier = %q, want web", got)
	}
}

func TestParse_BoundsAliasExpansion(t *testing.T) {
	// 2,000 aliases of a 500-label mapping: a 100 kB file that names a
	// million labels.
	var b strings.Builder
	b.WriteString("workloads:\n- name: w0\n  node: node-a\n  labels: &many {")
	for i := range 500 {
		fmt.Fprintf(&b, "k%d: v, ", i)
	}
	b.WriteString("}\n")
	for i := 1; i < 2000; i++ {
		fmt.Fprintf(&b, "- {name: w%d, node: node-a, labels: *many}\n", i)
	}
	_, err := Parse("big.yaml", []byte(b.String()), "")
	if want := "big.yaml:4: aliases expand to too many values"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Parse error = %v, want one containing %q", err, want)
	}
}

// TestParse_LabelsShared: the workloads of one app share their labels map,
// however the labels are written, and a bad label set written twice is
// reported twice.
func TestParse_LabelsShared(t *testing.T) {
	const file = "workloads:\n" +
		"- {name: a-1, labels: {app: a, v: \"1\"}, addresses: [10.1.0.1], node: n}\n" +
		"- {name: a-2, labels: {app: a, v: \"1\"}, addresses: [10.1.0.2], node: n}\n" +
		"- {name: a-3, labels: {v: \"1\", app: a}, addresses: [10.1.0.3], node: n}\n" +
		"- {name: b-1, labels: {app: b}, addresses: [10.1.0.4], node: n}\n"
	m, err := Parse("f.yaml", []byte(file), "")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"app": "a", "v": "1"}
	for i := range 3 {
		if got := m.Workloads[i].Labels; !reflect.DeepEqual(got, want) {
			t.Fatalf("workload %d labels %v, want %v", i, got, want)
		}
		if reflect.ValueOf(m.Workloads[i].Labels).UnsafePointer() != reflect.ValueOf(m.Workloads[0].Labels).UnsafePointer() {
			t.Errorf("workload %d has a labels map of its own", i)
		}
	}
	if got := m.Workloads[3].Labels; !reflect.DeepEqual(got, map[string]string{"app": "b"}) {
		t.Errorf("workload 3 labels %v", got)
	}

	const bad = "workloads:\n" +
		"- {name: a-1, labels: {app: [a]}, addresses: [10.1.0.1], node: n}\n" +
		"- {name: a-2, labels: {app: [a]}, addresses: [10.1.0.2], node: n}\n"
	_, err = Parse("f.yaml", []byte(bad), "")
	for _, line := range []string{"f.yaml:2: workloads[0].labels: expected a string", "f.yaml:3: workloads[1].labels: expected a string"} {
		if err == nil || !strings.Contains(err.Error(), line) {
			t.Errorf("error %v, want it to say %q", err, line)
		}
	}
}

// TestParse_RepeatedStringsShared: the workloads of a file hold one copy
// of each namespace, node and service account they repeat, and still each
// their own value.
func TestParse_RepeatedStringsShared(t *testing.T) {
	const file = "workloads:\n" +
		"- {name: a-1, namespace: shop, serviceAccount: cart, addresses: [10.1.0.1], node: node-remote}\n" +
		"- {name: a-2, namespace: shop, serviceAccount: cart, addresses: [10.1.0.2], node: node-remote}\n" +
		"- {name: b-1, namespace: bank, serviceAccount: ledger, addresses: [10.1.0.3], node: node-other}\n"
	m, err := Parse("f.yaml", []byte(file), "")
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := m.Workloads[0], m.Workloads[1], m.Workloads[2]
	for _, f := range []struct{ name, x, y, other, want, wantOther string }{
		{"namespace", a.Namespace, b.Namespace, c.Namespace, "shop", "bank"},
		{"node", a.Node, b.Node, c.Node, "node-remote", "node-other"},
		{"serviceAccount", a.ServiceAccount, b.ServiceAccount, c.ServiceAccount, "cart", "ledger"},
	} {
		if f.x != f.want || f.y != f.want || f.other != f.wantOther {
			t.Errorf("%s: %q, %q, %q; want %q, %q, %q", f.name, f.x, f.y, f.other, f.want, f.want, f.wantOther)
		}
		if unsafe.StringData(f.x) != unsafe.StringData(f.y) {
			t.Errorf("%s: the two workloads of %q hold a copy each", f.name, f.want)
		}
	}
}
