package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
)

// Config says where the control plane is and who this node is.
type Config struct {
	// Address is the control plane's gRPC address, host:port.
	Address string
	// Node is this node's name, sent as NODE_NAME (istiod uses it to
	// find the workloads of the node).
	Node string
	// ClusterID is the cluster of this node, sent as CLUSTER_ID; default
	// "Kubernetes", Istio's default cluster name.
	ClusterID string
	// PodName and PodNamespace name this kmeshd in the node id, as a
	// ztunnel or sidecar pod would; defaults: "kmesh-<Node>" and
	// "kmesh-system".
	PodName      string
	PodNamespace string
	// IP is this node's address in the node id and INSTANCE_IPS; default
	// 127.0.0.1.
	IP netip.Addr
	// RootCertFile is a PEM file of the CAs that sign the control plane's
	// certificate; when set, the connection uses TLS, otherwise plaintext.
	RootCertFile string
	// TokenFile holds a bearer token sent as "authorization: Bearer <token>"
	// on every stream; it is re-read at each connect, so a rotated token is
	// picked up. It requires TLS.
	TokenFile string
}

// DefaultClusterID is Istio's default cluster name.
const DefaultClusterID = "Kubernetes"

func (c *Config) setDefaults() error {
	if c.Address == "" {
		return errors.New("xds: no control plane address")
	}
	if _, _, err := net.SplitHostPort(c.Address); err != nil {
		return fmt.Errorf("xds: address %q: %w", c.Address, err)
	}
	if c.TokenFile != "" && c.RootCertFile == "" {
		return errors.New("xds: a token file needs TLS: set a root certificate file too")
	}
	if c.ClusterID == "" {
		c.ClusterID = DefaultClusterID
	}
	if c.PodName == "" {
		c.PodName = "kmesh-" + c.Node
	}
	if c.PodNamespace == "" {
		c.PodNamespace = "kmesh-system"
	}
	if !c.IP.IsValid() {
		c.IP = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	return nil
}

// node is the xDS node of this kmeshd in a role ("ztunnel" or "sidecar"):
// the id istiod parses (role~ip~pod.namespace~namespace.svc.cluster.local)
// and the metadata ztunnel sends (NAME, NAMESPACE, INSTANCE_IPS,
// NODE_NAME) plus CLUSTER_ID, which ztunnel sends from ISTIO_META_CLUSTER_ID.
func (c *Config) node(role string) *core.Node {
	md, _ := structpb.NewStruct(map[string]any{
		"NAME":         c.PodName,
		"NAMESPACE":    c.PodNamespace,
		"INSTANCE_IPS": c.IP.String(),
		"NODE_NAME":    c.Node,
		"CLUSTER_ID":   c.ClusterID,
	})
	return &core.Node{
		Id:       fmt.Sprintf("%s~%s~%s.%s~%s.svc.cluster.local", role, c.IP, c.PodName, c.PodNamespace, c.PodNamespace),
		Cluster:  c.ClusterID,
		Metadata: md,
	}
}

// dial makes a client connection for one stream. The root certificates
// are read at each connect, so a rotated CA file is picked up too.
func (c *Config) dial() (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageSize))}
	if c.RootCertFile == "" {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		pem, err := os.ReadFile(c.RootCertFile)
		if err != nil {
			return nil, fmt.Errorf("root certificates: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("root certificates: no PEM certificate in %s", c.RootCertFile)
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})))
	}
	if c.TokenFile != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(tokenFile(c.TokenFile)))
	}
	return grpc.NewClient(c.Address, opts...)
}

// maxMessageSize bounds one response; a large mesh's first push is big
// (ztunnel allows 200 MiB).
const maxMessageSize = 200 << 20

// tokenFile reads the bearer token for every stream it authorizes.
type tokenFile string

func (f tokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := os.ReadFile(string(f))
	if err != nil {
		return nil, fmt.Errorf("token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return nil, fmt.Errorf("token: %s is empty", string(f))
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

func (tokenFile) RequireTransportSecurity() bool { return true }
