// Package api holds the JSON documents of kmeshd's admin API, shared by the
// server and kmeshctl. Field names are camelCase, as in ztunnel's config dump.
package api

import (
	"github.com/kmesh-go/kmesh/internal/model"
)

// ConfigDump is the document /config_dump serves: the mesh as the daemon
// holds it, and what this node enrolled.
type ConfigDump struct {
	Node      string     `json:"node"`
	Version   uint64     `json:"version"` // count of applied configs
	Source    string     `json:"source"`  // the config file, or "<embedded default>"
	Services  []Service  `json:"services"`
	Workloads []Workload `json:"workloads"`
	Enrolled  []string   `json:"enrolled"` // network namespaces this node balances
}

// Service is a service of the mesh.
type Service struct {
	Name          string        `json:"name"`
	Namespace     string        `json:"namespace"`
	Addresses     []string      `json:"addresses"`
	Ports         []Port        `json:"ports"`
	LoadBalancing LoadBalancing `json:"loadBalancing"`
	Endpoints     []string      `json:"endpoints"` // workload keys, namespace/name
}

// Port maps a service port to the endpoints' port.
type Port struct {
	Port       uint16 `json:"port"`
	TargetPort uint16 `json:"targetPort"`
	Protocol   string `json:"protocol"`
}

// LoadBalancing is how a service picks endpoints.
type LoadBalancing struct {
	Mode string `json:"mode"`
}

// Workload is a workload of the mesh.
type Workload struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels,omitempty"`
	Addresses []string          `json:"addresses"`
	Node      string            `json:"node"`
	Netns     string            `json:"netns,omitempty"`
	Weight    uint32            `json:"weight"`
}

// FromModel converts the mesh into the dump's services and workloads.
func FromModel(m *model.Mesh) ([]Service, []Workload) {
	services := make([]Service, 0, len(m.Services))
	for _, s := range m.Services {
		out := Service{
			Name:          s.Name,
			Namespace:     s.Namespace,
			Addresses:     make([]string, 0, len(s.Addresses)),
			LoadBalancing: LoadBalancing{Mode: string(s.LBMode)},
			Endpoints:     make([]string, 0, len(s.Endpoints)),
		}
		for _, a := range s.Addresses {
			out.Addresses = append(out.Addresses, a.String())
		}
		for _, p := range s.Ports {
			out.Ports = append(out.Ports, Port{Port: p.Port, TargetPort: p.TargetPort, Protocol: string(p.Protocol)})
		}
		for _, e := range s.Endpoints {
			out.Endpoints = append(out.Endpoints, e.Workload)
		}
		services = append(services, out)
	}
	workloads := make([]Workload, 0, len(m.Workloads))
	for _, w := range m.Workloads {
		out := Workload{Name: w.Name, Namespace: w.Namespace, Labels: w.Labels, Node: w.Node, Netns: w.Netns, Weight: w.Weight, Addresses: make([]string, 0, len(w.Addresses))}
		for _, a := range w.Addresses {
			out.Addresses = append(out.Addresses, a.String())
		}
		workloads = append(workloads, out)
	}
	return services, workloads
}
