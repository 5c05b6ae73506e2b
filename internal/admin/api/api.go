// Package api holds the JSON documents of kmeshd's admin API, shared by the
// server and kmeshctl. Field names are camelCase, as in ztunnel's config dump.
package api

import (
	"time"

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
	Policies  []Policy   `json:"policies"`
	Enrolled  []string   `json:"enrolled"` // network namespaces this node balances
	// EnrolledWorkloads names the workload of each enrolled namespace that
	// this node matched to one (workload namespace/name -> netns path):
	// connect() checks policies as that workload.
	EnrolledWorkloads map[string]string `json:"enrolledWorkloads,omitempty"`
}

// Version is what /version serves: the daemon's release and commit.
type Version struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// Service is a service of the mesh.
type Service struct {
	Name          string        `json:"name"`
	Namespace     string        `json:"namespace"`
	Addresses     []string      `json:"addresses"`
	Ports         []Port        `json:"ports"`
	LoadBalancing LoadBalancing `json:"loadBalancing"`
	Endpoints     []string      `json:"endpoints"` // workload keys, namespace/name
	// Waypoint is the waypoint the control plane assigned; Endpoints are
	// then its instances.
	Waypoint *Waypoint `json:"waypoint,omitempty"`
}

// Waypoint is a service's waypoint as the control plane named it, and why
// it is not resolved ("" when it is: connects go to its instances).
type Waypoint struct {
	Address    string `json:"address"`
	Unresolved string `json:"unresolved,omitempty"`
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
	// Waypoint is the waypoint the control plane gave the workload for
	// traffic to its own address: connections to it are refused by the
	// deny policy kmesh-system/waypoint-not-served-<namespace>.<name>.
	Waypoint string `json:"waypoint,omitempty"`
	// WaypointInstanceOf is the waypoint this workload is an instance of,
	// as the xDS source found it (the workload API carries no labels):
	// kmeshd reaches it over HBONE from every node when the mesh has a CA.
	WaypointInstanceOf string `json:"waypointInstanceOf,omitempty"`
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
		if s.Waypoint != nil {
			out.Waypoint = &Waypoint{Address: s.Waypoint.Address, Unresolved: s.Waypoint.Unresolved}
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
		out := Workload{Name: w.Name, Namespace: w.Namespace, Labels: w.Labels, Node: w.Node, Netns: w.Netns, Weight: w.Weight, Waypoint: w.Waypoint, WaypointInstanceOf: w.WaypointInstanceOf, Addresses: make([]string, 0, len(w.Addresses))}
		for _, a := range w.Addresses {
			out.Addresses = append(out.Addresses, a.String())
		}
		workloads = append(workloads, out)
	}
	return services, workloads
}

// Policy is an authorization policy of the mesh, as `kmeshctl get
// policies` lists it.
type Policy struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Scope     string `json:"scope"`  // global, namespace, workload_selector
	Action    string `json:"action"` // allow, deny, audit
	DryRun    bool   `json:"dryRun,omitempty"`
	Rules     int    `json:"rules"` // number of rules (OR-ed)
	// L7 names the attributes of its rules that only an L7 proxy can
	// check, which the L4 enforcement leaves out (see internal/authz).
	L7 []string `json:"l7,omitempty"`
	// NotEnforced says why the node does not enforce this valid policy
	// (CUSTOM: an external authorizer in a waypoint or gateway applies
	// it); empty for policies in force.
	NotEnforced string `json:"notEnforced,omitempty"`
}

// Connection is one live connection of an enrolled workload, as
// /connections lists them.
type Connection struct {
	Source      Peer `json:"source"`
	Destination Peer `json:"destination"`
	// Service is the service the connection was balanced for
	// (namespace/name); empty for a connection to a workload address.
	Service string `json:"service,omitempty"`
	// BytesSent and BytesReceived are counted from the source's side:
	// sent by the source, received by it.
	BytesSent     uint64    `json:"bytesSent"`
	BytesReceived uint64    `json:"bytesReceived"`
	Start         time.Time `json:"start"`
	State         string    `json:"state"` // the kernel's TCP state, lower case: established, fin_wait1, close_wait, ...
	// Tunnel is set on a connection kmeshd tunnel carries over HBONE
	// (listed by the tunnel); nil for one the kernel carries directly.
	Tunnel *ConnTunnel `json:"tunnel,omitempty"`
}

// ConnTunnel is how a tunnelled connection is carried, as the tunnel
// process holds it.
type ConnTunnel struct {
	// Direction is "outbound" on the client's node (this node's workload
	// connected) and "inbound" on the server's.
	Direction string `json:"direction"`
	// Peer is the other end of the HBONE connection: the destination's
	// ip:15008 (outbound), or the client's tunnel address (inbound).
	Peer string `json:"peer"`
	// SourcePrincipal and DestinationPrincipal are the SPIFFE identities
	// the mutual TLS handshake proved.
	SourcePrincipal      string `json:"sourcePrincipal"`
	DestinationPrincipal string `json:"destinationPrincipal"`
}

// Peer is one end of a connection.
type Peer struct {
	// Workload is the workload's key (namespace/name); empty for an
	// address outside the mesh.
	Workload string `json:"workload,omitempty"`
	Address  string `json:"address"` // ip:port
}

// Logging is the document /logging serves: the daemon's log level.
type Logging struct {
	Level string `json:"level"` // debug, info, warn, error
}

// AccessLog is the document /accesslog serves: whether kmeshd writes a
// line per closed connection.
type AccessLog struct {
	Enabled bool `json:"enabled"`
}

// Explanation is the document /explain serves: what happens when a source
// workload connects to an address and port, and why.
type Explanation struct {
	Source      ExplainSource `json:"source"`
	Destination string        `json:"destination"` // ip:port as asked
	// Service is the service whose address and port the destination is;
	// nil when none is, and the connect passes untouched.
	Service   *ExplainService   `json:"service,omitempty"`
	Endpoints []ExplainEndpoint `json:"endpoints"`
	// Affinity is the source's session affinity entry for the service,
	// when it has a live one.
	Affinity *ExplainAffinity `json:"affinity,omitempty"`
	// Tunnel says how a connect to a workload address (no service) is
	// tunnelled; nil when it goes direct. Endpoints of a service say it
	// each.
	Tunnel *ExplainTunnel `json:"tunnel,omitempty"`
	// Result says in one sentence what the connect does.
	Result string `json:"result"`
}

// ExplainAffinity is where ClientIP session affinity keeps a client.
type ExplainAffinity struct {
	Workload  string `json:"workload"`
	ExpiresIn string `json:"expiresIn"` // unless the client connects again before
}

// ExplainSource is the connecting workload and whether its connects are
// balanced at all.
type ExplainSource struct {
	Workload string `json:"workload"` // namespace/name
	Node     string `json:"node"`
	Netns    string `json:"netns,omitempty"`
	// Enrolled is true when this node's kmeshd balances the workload's
	// connects; Reason says why not otherwise.
	Enrolled bool   `json:"enrolled"`
	Reason   string `json:"reason,omitempty"`
}

// ExplainService is the service matched and the port of it.
type ExplainService struct {
	Name       string `json:"name"`
	Namespace  string `json:"namespace"`
	Port       uint16 `json:"port"`
	TargetPort uint16 `json:"targetPort"`
	Mode       string `json:"mode"` // load balancing mode
	// Priority says which locality priority the connect picks from and
	// why; empty without a routing preference.
	Priority string `json:"priority,omitempty"`
	// Waypoint is the waypoint the service's connections go to (its
	// endpoints are the waypoint's instances); empty without one.
	Waypoint string `json:"waypoint,omitempty"`
	// Workload is set when the destination is a workload's own address
	// that goes through its waypoint (waypoint-for workload or all): the
	// service stands for that workload on every port.
	Workload string `json:"workload,omitempty"`
}

// ExplainEndpoint is one endpoint of the matched service and whether a
// connect to the destination may pick it.
type ExplainEndpoint struct {
	Workload string `json:"workload"` // namespace/name
	Node     string `json:"node,omitempty"`
	// Address is where a connect that picks this endpoint goes (ip:port,
	// of the destination's address family); empty when it has none.
	Address string `json:"address,omitempty"`
	Weight  uint32 `json:"weight"`
	// Share is the fraction of new connections this endpoint gets among
	// the eligible ones (weight over the sum of weights); 0 when not
	// eligible.
	Share    float64  `json:"share"`
	Eligible bool     `json:"eligible"`
	Reasons  []string `json:"reasons,omitempty"` // why not eligible
	Health   string   `json:"health"`
	Locality string   `json:"locality"`
	Policy   string   `json:"policy"`
	// Ejected says how long outlier detection keeps the endpoint out.
	Ejected string `json:"ejected,omitempty"`
	// Tunnel is how a connection to this endpoint is carried when the
	// source's node tunnels it (HBONE); nil when it goes direct.
	Tunnel *ExplainTunnel `json:"tunnel,omitempty"`
}

// ExplainTunnel is an HBONE tunnel a connection takes: kmeshd tunnel on
// the source's node opens mutual TLS to Peer, presenting SourceIdentity's
// certificate and accepting only DestinationIdentity's.
type ExplainTunnel struct {
	Peer                string `json:"peer"` // ip:15008
	SourceIdentity      string `json:"sourceIdentity"`
	DestinationIdentity string `json:"destinationIdentity"`
}

// PoliciesFromModel converts the mesh's policies into the dump's.
func PoliciesFromModel(m *model.Mesh) []Policy {
	out := make([]Policy, 0, len(m.Policies))
	for _, p := range m.Policies {
		var l7 []string
		for _, r := range p.Rules {
			l7 = append(l7, r.L7...)
		}
		out = append(out, Policy{Name: p.Name, Namespace: p.Namespace, Scope: string(p.Scope), Action: string(p.Action), DryRun: p.DryRun, Rules: len(p.Rules), L7: l7})
	}
	for _, p := range m.UnenforcedPolicies {
		out = append(out, Policy{Name: p.Name, Namespace: p.Namespace, Scope: "-", Action: p.Action, NotEnforced: p.Reason})
	}
	return out
}

// Enrollment is the answer of /enroll and /unenroll.
type Enrollment struct {
	Netns    string `json:"netns"`
	Enrolled bool   `json:"enrolled"`
}
