package xdstest

import (
	"fmt"
	"net/netip"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"istio.io/istio/pkg/workloadapi"
)

// Port is one service port -> target port mapping.
type Port struct{ Service, Target uint32 }

// Service returns an Address holding a service namespace/name with
// hostname name.namespace.svc.cluster.local, and its resource name
// (namespace/hostname, as istiod names it).
func Service(ns, name string, vips []string, ports ...Port) (string, *workloadapi.Address) {
	s := &workloadapi.Service{Name: name, Namespace: ns, Hostname: Hostname(ns, name)}
	for _, v := range vips {
		s.Addresses = append(s.Addresses, &workloadapi.NetworkAddress{Address: ipBytes(v)})
	}
	for _, p := range ports {
		s.Ports = append(s.Ports, &workloadapi.Port{ServicePort: p.Service, TargetPort: p.Target})
	}
	return ns + "/" + s.Hostname, &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
}

// Hostname is a Kubernetes service's cluster hostname.
func Hostname(ns, name string) string { return name + "." + ns + ".svc.cluster.local" }

// Workload describes a pod for [WorkloadAddress].
type Workload struct {
	Namespace, Name, Node string
	IPs                   []string
	// Services are the services the pod serves, by namespace/name (not
	// hostname: Address makes the hostname, and panics on a name with a
	// dot), with the pod's port mappings.
	Services  map[string][]Port
	Unhealthy bool
	// Policies are the selector policies that apply (namespace/name).
	Policies []string
}

// UID is the workload's uid, as istiod forms it for a pod.
func (w Workload) UID() string { return "Kubernetes//Pod/" + w.Namespace + "/" + w.Name }

// Address returns the workload as an Address and its resource name (the
// uid).
func (w Workload) Address() (string, *workloadapi.Address) {
	pw := &workloadapi.Workload{
		Uid: w.UID(), Name: w.Name, Namespace: w.Namespace, Node: w.Node,
		ServiceAccount: "default", TrustDomain: "cluster.local",
		Services:              map[string]*workloadapi.PortList{},
		AuthorizationPolicies: w.Policies,
	}
	for _, ip := range w.IPs {
		pw.Addresses = append(pw.Addresses, ipBytes(ip))
	}
	if w.Unhealthy {
		pw.Status = workloadapi.WorkloadStatus_UNHEALTHY
	}
	for svc, ports := range w.Services {
		ns, name := splitKey(svc)
		if strings.Contains(name, ".") {
			// A Kubernetes service name has no dot: this is a hostname,
			// which would become a second hostname and name no service.
			panic(fmt.Sprintf("xdstest: workload %s/%s: service %q: want namespace/name, not a hostname", w.Namespace, w.Name, svc))
		}
		pl := &workloadapi.PortList{}
		for _, p := range ports {
			pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: p.Service, TargetPort: p.Target})
		}
		pw.Services[ns+"/"+Hostname(ns, name)] = pl
	}
	return pw.Uid, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: pw}}
}

func splitKey(k string) (string, string) {
	for i := range k {
		if k[i] == '/' {
			return k[:i], k[i+1:]
		}
	}
	return "default", k
}

func ipBytes(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

// EDSCluster is an EDS cluster of the given name.
func EDSCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &core.ConfigSource{ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}},
	}
}

// Endpoint is one endpoint of [LoadAssignment].
type Endpoint struct {
	IP        string
	Port      uint32
	Weight    uint32 // 0: unset
	Unhealthy bool
}

// LoadAssignment lists the endpoints of a cluster.
func LoadAssignment(cluster string, eps ...Endpoint) *endpointv3.ClusterLoadAssignment {
	lle := &endpointv3.LocalityLbEndpoints{}
	for _, e := range eps {
		lbe := &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
				Address: e.IP, PortSpecifier: &core.SocketAddress_PortValue{PortValue: e.Port},
			}}},
		}}}
		if e.Weight != 0 {
			lbe.LoadBalancingWeight = wrapperspb.UInt32(e.Weight)
		}
		if e.Unhealthy {
			lbe.HealthStatus = core.HealthStatus_UNHEALTHY
		}
		lle.LbEndpoints = append(lle.LbEndpoints, lbe)
	}
	return &endpointv3.ClusterLoadAssignment{ClusterName: cluster, Endpoints: []*endpointv3.LocalityLbEndpoints{lle}}
}

// TCPListener is a listener on ip:port that proxies to cluster.
func TCPListener(name, ip string, port uint32, cluster string) *listenerv3.Listener {
	tp, err := anypb.New(&tcpv3.TcpProxy{StatPrefix: name, ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: cluster}})
	if err != nil {
		panic(err)
	}
	return &listenerv3.Listener{
		Name: name,
		Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
			Address: ip, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
		}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tp},
		}}}},
	}
}
