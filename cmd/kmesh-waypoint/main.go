// Command kmesh-waypoint is Kmesh's L7 waypoint: it proxies the HTTP and
// gRPC requests of the services that use it, by the Gateway API routes, Istio
// faults and L7 authorization policies of the mesh config. See
// docs/waypoint.md and `kmesh-waypoint --help`.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kmesh-go/kmesh/internal/hbone"
	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/source/xds"
	"github.com/kmesh-go/kmesh/internal/version"
	"github.com/kmesh-go/kmesh/internal/waypoint"
)

func main() {
	if err := newCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "kmesh-waypoint:", err)
		os.Exit(1)
	}
}

type config struct {
	configPath     string
	kubeconfig     string
	waypointSvc    string
	xds            xds.Config
	gateway        string
	ca             identity.Config
	adminAddress   string
	metricsAddress string
	plaintext      bool
	hboneAddress   string
	serviceAccount string
	accessLog      bool
	maxProcs       int
	logLevel       string
}

func newCommand() *cobra.Command {
	var c config
	cmd := &cobra.Command{
		Use:   "kmesh-waypoint",
		Short: "Kmesh L7 waypoint: HTTP and gRPC routing, retries, timeouts, faults and L7 policy",
		Long: `kmesh-waypoint serves the services labelled istio.io/use-waypoint=<gateway>: their
HTTP/1.1, h2c and gRPC requests are routed by the HTTPRoutes and GRPCRoutes
attached to them (GAMMA), with Istio's faults (VirtualService) and L7
AuthorizationPolicies (targetRefs); TCP ports are forwarded as L4. Run it in the
network namespace of the workload labelled
gateway.networking.k8s.io/gateway-name=<gateway name>.

The config comes from the file given with --config, or else from Kubernetes
(--kubeconfig, or the in-cluster config): Services, Pods, Gateways of class
kmesh-waypoint, HTTPRoutes, GRPCRoutes, VirtualServices and
AuthorizationPolicies. With Kubernetes the waypoint writes its Gateway's
status (the addresses of its Service, Accepted and Programmed), which is what
makes istiod send it as the services' waypoint.`,
		Example: `  kmesh-waypoint --config mesh.yaml --gateway default/waypoint
  kmesh-waypoint --kubeconfig ~/.kube/config --gateway default/waypoint`,
		Version:       version.Get().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return run(ctx, c)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.configPath, "config", "", "mesh config file (the file kmeshd reads); reloaded when it changes. Without it the config comes from Kubernetes")
	f.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file of the API server to read the config from (no --config); default: the in-cluster config")
	f.StringVar(&c.waypointSvc, "waypoint-service", "", "with Kubernetes: the Service (in the Gateway's namespace) whose hostname and cluster IPs this waypoint writes into its Gateway's status.addresses; default: the Gateway's name")
	f.StringVar(&c.xds.Address, "xds-address", "", "with Kubernetes: istiod's xDS HOST:PORT; when set, the services' endpoints and the workloads (addresses, health, tunnel protocol, locality, service accounts) come from istiod's workload API, as kmeshd's do, instead of the Pods")
	f.StringVar(&c.xds.RootCertFile, "xds-root-cert", "", "PEM CA certificates of istiod (--xds-address); TLS when set, plaintext otherwise")
	f.StringVar(&c.xds.TokenFile, "xds-token-file", "", "bearer token for istiod (--xds-address), re-read at each connect; needs --xds-root-cert")
	f.StringVar(&c.gateway, "gateway", "", "the Gateway this waypoint is, NAMESPACE/NAME")
	// The same CA flags as kmeshd (--ca-cert, --ca-key, --trust-domain, ...).
	c.ca.RegisterFlags(f)
	// istiod's CA reads the cluster from a header, as kmeshd sends it.
	f.StringVar(&c.ca.ClusterID, "cluster-id", "Kubernetes", "cluster of this waypoint, sent to istiod's CA (--ca-address), as kmeshd's --cluster-id")
	f.StringVar(&c.adminAddress, "admin-address", "127.0.0.1:15000", "admin API: /config_dump, /explain, /healthz/ready")
	f.StringVar(&c.metricsAddress, "metrics-address", ":15020", "Prometheus /metrics: istio_requests_total, ...")
	f.BoolVar(&c.plaintext, "plaintext", true, "accept plaintext connections on the ports of the services this waypoint serves")
	f.StringVar(&c.hboneAddress, "hbone-address", ":15008", "where HBONE (HTTP/2 CONNECT over mutual TLS) is terminated when a CA is configured")
	f.StringVar(&c.serviceAccount, "service-account", "", "service account of the waypoint's own identity (spiffe://<trust domain>/ns/<gateway namespace>/sa/<this>); default: the Gateway's name, as Istio names a waypoint's account")
	f.BoolVar(&c.accessLog, "access-log", true, "one JSON line per request on stdout")
	f.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	f.IntVar(&c.maxProcs, "max-procs", 2, "CPUs the waypoint's Go scheduler runs on at once (GOMAXPROCS); with two, requests that arrive together are served on two cores (the plaintext connections' reads and writes keep their thread, so none waits for a hand-off); 1 spares a second thread's wake-ups at low rates; 0: Go's default (every CPU, or $GOMAXPROCS)")
	cmd.SetVersionTemplate("kmesh-waypoint {{.Version}}\n")
	cmd.MarkFlagsMutuallyExclusive("config", "kubeconfig")
	cmd.MarkFlagsMutuallyExclusive("config", "xds-address")
	cmd.MarkFlagRequired("gateway")
	return cmd
}

func run(ctx context.Context, c config) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if c.maxProcs < 0 {
		return fmt.Errorf("--max-procs %d: want 0 (Go's default) or more", c.maxProcs)
	}
	if c.maxProcs > 0 {
		runtime.GOMAXPROCS(c.maxProcs)
	}
	gwNamespace, gwName, ok := strings.Cut(c.gateway, "/")
	if !ok || gwNamespace == "" || gwName == "" {
		return fmt.Errorf("--gateway %q: want NAMESPACE/NAME", c.gateway)
	}
	if c.xds.TokenFile != "" && c.xds.RootCertFile == "" {
		return errors.New("--xds-token-file needs --xds-root-cert: a token is only sent over TLS")
	}
	// As kmeshd: istiod's CA takes the xDS root and token by default.
	c.ca.CARootCert = cmp.Or(c.ca.CARootCert, c.xds.RootCertFile)
	c.ca.CATokenFile = cmp.Or(c.ca.CATokenFile, c.xds.TokenFile)
	certs, err := c.ca.NewSource()
	if err != nil {
		return err
	}
	if certs == nil && !c.plaintext {
		return errors.New("--plaintext=false without a CA: the waypoint would take no connection")
	}
	src, err := newSource(ctx, c, gwNamespace, gwName, log)
	if err != nil {
		return err
	}
	mesh, err := src.Load()
	if err != nil {
		return err
	}
	var alog io.Writer
	if c.accessLog {
		alog = os.Stdout
	}
	metrics := waypoint.NewMetrics()
	opts := waypoint.Options{Gateway: c.gateway, Logger: log, Metrics: metrics, AccessLog: alog}
	// The waypoint's own identity: what it proves on 15008 and, as
	// Istio's waypoint, to the endpoints it reaches over HBONE.
	var id identity.Identity
	if certs != nil {
		sa := c.serviceAccount
		if sa == "" {
			sa = gwName
		}
		id = identity.Identity{TrustDomain: certs.TrustDomain(), Namespace: gwNamespace, ServiceAccount: sa}
		if err := id.Validate(); err != nil {
			return fmt.Errorf("--service-account: %w", err)
		}
		up := &hbone.Dialer{Certs: certs, Log: log.With("component", "hbone-upstream")}
		defer up.Close()
		opts.HBONE = &waypoint.UpstreamHBONE{Dialer: up, Identity: id}
	}
	proxy, err := waypoint.New(mesh, opts)
	if err != nil {
		return err
	}
	defer proxy.Close()

	ports := &portListeners{log: log, proxy: proxy, open: map[uint16]bool{}}
	if c.plaintext {
		if err := ports.sync(mesh, c.gateway); err != nil {
			return err
		}
	}
	go func() {
		err := src.Run(ctx, func(m *model.Mesh) error {
			if err := proxy.Update(m); err != nil {
				log.Error("config rejected", "err", err)
				return err
			}
			if c.plaintext {
				return ports.sync(m, c.gateway)
			}
			return nil
		})
		if err != nil {
			log.Error("config watch failed", "err", err)
		}
	}()
	src.Ready(ctx)

	admin := http.NewServeMux()
	admin.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ready") })
	admin.HandleFunc("/config_dump", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, proxy.Dump()) })
	admin.HandleFunc("/explain", func(w http.ResponseWriter, r *http.Request) { explain(w, r, proxy) })
	servers := []*http.Server{{Addr: c.adminAddress, Handler: admin}}
	if c.metricsAddress != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", metrics.Handler())
		servers = append(servers, &http.Server{Addr: c.metricsAddress, Handler: mux})
	}
	errc := make(chan error, len(servers)+1)
	for _, s := range servers {
		ln, err := net.Listen("tcp", s.Addr)
		if err != nil {
			return err
		}
		go func() { errc <- s.Serve(ln) }()
		defer s.Close()
	}
	if certs != nil {
		certs.SetLogger(log)
		certs.Track(id)
		go certs.Run(ctx)
		ln, err := net.Listen("tcp", c.hboneAddress)
		if err != nil {
			return fmt.Errorf("--hbone-address: %w", err)
		}
		srv := &hbone.Server{Certs: certs, Identity: func() identity.Identity { return id },
			Connect: proxy.HBONEConnect, Log: log.With("component", "hbone")}
		go func() { errc <- srv.Serve(ctx, ln) }()
		log.Info("hbone listening", "address", ln.Addr().String(), "identity", id.String())
	}
	log.Info("waypoint ready", "gateway", c.gateway, "admin", c.adminAddress, "max_procs", runtime.GOMAXPROCS(0))
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// explain answers /explain?src=IP&method=GET&url=http://VIP:80/path&header=k:v.
func explain(w http.ResponseWriter, r *http.Request, p *waypoint.Proxy) {
	q := r.URL.Query()
	src, err := netip.ParseAddr(q.Get("src"))
	if err != nil {
		http.Error(w, "src: want the client's IP address", http.StatusBadRequest)
		return
	}
	method := q.Get("method")
	if method == "" {
		method = http.MethodGet
	}
	h := http.Header{}
	for _, kv := range q["header"] {
		k, v, ok := strings.Cut(kv, ":")
		if !ok {
			http.Error(w, fmt.Sprintf("header %q: want name:value", kv), http.StatusBadRequest)
			return
		}
		h.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	ex, err := p.Explain(src, method, q.Get("url"), h)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	writeJSON(w, ex)
}

// portListeners keeps a plaintext listener open on every port of the
// services this waypoint serves.
type portListeners struct {
	mu    sync.Mutex
	log   *slog.Logger
	proxy *waypoint.Proxy
	open  map[uint16]bool
}

func (l *portListeners) sync(m *model.Mesh, gateway string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range m.Services {
		if s.UsesWaypoint() != gateway {
			continue
		}
		for _, p := range s.Ports {
			if l.open[p.Port] {
				continue
			}
			ln, err := net.Listen("tcp", fmt.Sprintf(":%d", p.Port))
			if err != nil {
				return fmt.Errorf("service %s port %d: %w", s.Key(), p.Port, err)
			}
			l.open[p.Port] = true
			go func() {
				if err := l.proxy.ServeListener(ln); err != nil {
					l.log.Error("listener failed", "port", p.Port, "err", err)
				}
			}()
		}
	}
	return nil
}
