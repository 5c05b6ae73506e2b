// Package meshfile writes kmeshd config files (docs/config.md) for the
// benchmark: the small mesh of the data-plane runs and the synthetic
// 10,000-service / 100,000-endpoint mesh of the control-plane runs. Entries
// are written in YAML flow style, one per line, which keeps a 100,000
// workload file near 10 MB.
package meshfile

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// Service is a service whose endpoints are the workloads labelled app=App
// in its namespace ("" is "default").
type Service struct {
	Name      string
	Namespace string
	Address   netip.Addr
	Ports     [][2]uint16 // port, targetPort
	App       string
	// Waypoint, when set, labels the service istio.io/use-waypoint.
	Waypoint string
}

// Workload is a workload labelled app=App. Netns is empty for workloads of
// other nodes, which kmeshd balances to but does not enroll.
type Workload struct {
	Name, Namespace, App, Node, Netns string
	Address                           netip.Addr
	// Gateway, when set, makes the workload an instance of that waypoint.
	Gateway string
}

// Mesh is the content of one config file.
type Mesh struct {
	Services  []Service
	Workloads []Workload
	// Waypoints are Gateways of class kmesh-waypoint, in namespace default.
	Waypoints []string
}

// Write writes m in kmeshd's config format.
func Write(w io.Writer, m Mesh) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	bw.WriteString("services:\n")
	for _, s := range m.Services {
		ports := make([]string, len(s.Ports))
		for i, p := range s.Ports {
			ports[i] = fmt.Sprintf("{port: %d, targetPort: %d}", p[0], p[1])
		}
		labels := ""
		if s.Waypoint != "" {
			labels = ", labels: {istio.io/use-waypoint: " + s.Waypoint + "}"
		}
		fmt.Fprintf(bw, "- {name: %s%s, addresses: [%s], ports: [%s], selector: {app: %s}%s}\n",
			s.Name, namespace(s.Namespace), s.Address, strings.Join(ports, ", "), s.App, labels)
	}
	bw.WriteString("workloads:\n")
	for _, wl := range m.Workloads {
		netns := ""
		if wl.Netns != "" {
			netns = ", netns: " + wl.Netns
		}
		gw := ""
		if wl.Gateway != "" {
			gw = ", gateway.networking.k8s.io/gateway-name: " + wl.Gateway
		}
		fmt.Fprintf(bw, "- {name: %s%s, labels: {app: %s%s}, addresses: [%s], node: %s%s}\n",
			wl.Name, namespace(wl.Namespace), wl.App, gw, wl.Address, wl.Node, netns)
	}
	if len(m.Waypoints) > 0 {
		bw.WriteString("gateways:\n")
	}
	for _, name := range m.Waypoints {
		fmt.Fprintf(bw, "- {apiVersion: gateway.networking.k8s.io/v1, kind: Gateway, metadata: {name: %s}, "+
			"spec: {gatewayClassName: kmesh-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}}\n", name)
	}
	return bw.Flush()
}

func namespace(ns string) string {
	if ns == "" {
		return ""
	}
	return ", namespace: " + ns
}

// WriteFile replaces the file at path atomically (a temporary file renamed
// over it), as docs/config.md asks, and returns its size.
func WriteFile(path string, m Mesh) (int64, error) {
	f, err := os.CreateTemp(filepath.Dir(path), ".mesh-*.yaml")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name()) // after a successful rename there is nothing left to remove
	if err := Write(f, m); err != nil {
		f.Close()
		return 0, fmt.Errorf("write %s: %w", f.Name(), err)
	}
	size, _ := f.Seek(0, io.SeekCurrent)
	if err := f.Close(); err != nil {
		return 0, err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return 0, err
	}
	return size, nil
}

// Synthetic returns a mesh of services services with endpoints endpoints
// spread evenly over them, all on node, none enrolled, in namespaces
// namespaces (service i in SyntheticNamespace(i), with its endpoints).
// Service i is svc-<i> at 10.96.0.0 + i + 1, port 80 to 8080; endpoints get
// addresses from 10.128.0.0/9. It panics beyond 65,000 services or 8
// million endpoints, which those ranges do not hold.
func Synthetic(services, endpoints, namespaces int, node string) Mesh {
	if services < 1 || services > 65000 || endpoints > 1<<23 || namespaces < 1 {
		panic(fmt.Sprintf("synthetic mesh of %d services, %d endpoints, %d namespaces: out of range", services, endpoints, namespaces))
	}
	ns := func(svc int) string { return SyntheticNamespace(svc, namespaces) }
	m := Mesh{Services: make([]Service, services), Workloads: make([]Workload, endpoints)}
	for i := range m.Services {
		m.Services[i] = Service{
			Name:      SyntheticService(i),
			Namespace: ns(i),
			Address:   SyntheticAddress(i),
			Ports:     [][2]uint16{{80, 8080}},
			App:       SyntheticService(i),
		}
	}
	base := netip.MustParseAddr("10.128.0.0").As4()
	for j := range m.Workloads {
		n := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(j+1)
		m.Workloads[j] = Workload{
			Name:      fmt.Sprintf("ep-%07d", j),
			Namespace: ns(j % services),
			App:       SyntheticService(j % services),
			Node:      node,
			Address:   netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}),
		}
	}
	return m
}

// SyntheticNamespace is the namespace of service i of a Synthetic mesh
// with n namespaces.
func SyntheticNamespace(i, n int) string { return fmt.Sprintf("ns-%03d", i%n) }

// SyntheticService is the name of service i of a Synthetic mesh.
func SyntheticService(i int) string { return fmt.Sprintf("svc-%05d", i) }

// SyntheticAddress is the address of service i of a Synthetic mesh.
func SyntheticAddress(i int) netip.Addr {
	n := i + 1
	return netip.AddrFrom4([4]byte{10, 96, byte(n >> 8), byte(n)})
}

// Split divides m into the files of a directory config (docs/config.md):
// each service goes to fileOf(its app) with the workloads of that app, and
// everything else to rest. Waypoints go to rest.
func Split(m Mesh, fileOf func(app string) string, rest string) map[string]*Mesh {
	out := map[string]*Mesh{}
	get := func(name string) *Mesh {
		if out[name] == nil {
			out[name] = &Mesh{}
		}
		return out[name]
	}
	owner := map[string]string{}
	for _, s := range m.Services {
		f := fileOf(s.App)
		if f == "" {
			f = rest
		}
		owner[s.App] = f
		get(f).Services = append(get(f).Services, s)
	}
	for _, w := range m.Workloads {
		f, ok := owner[w.App]
		if !ok {
			f = rest
		}
		get(f).Workloads = append(get(f).Workloads, w)
	}
	get(rest).Waypoints = m.Waypoints
	return out
}
