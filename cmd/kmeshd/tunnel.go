package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kmesh-go/kmesh/internal/daemon"
	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/metrics"
	"github.com/kmesh-go/kmesh/internal/tunnel"
)

func newTunnelCommand() *cobra.Command {
	var (
		cfg         tunnel.Config
		ids         identity.Config
		logLevel    = new(slog.LevelVar)
		pprofAddr   string
		metricsAddr string
		accessLog   bool
		maxProcs    int
	)
	cmd := &cobra.Command{
		Use:   "tunnel",
		Short: "Run the HBONE tunnel of this node: mutual TLS between nodes, apart from kmeshd",
		Long: `kmeshd tunnel carries the connections kmeshd's connect hook redirects to it
(those to a workload of another node that takes HBONE) over HTTP/2 CONNECT and
mutual TLS 1.3 to the destination pod's port 15008, and terminates HBONE for
this node's enrolled workloads. It listens inside each enrolled pod's network
namespace: 127.0.0.1:15001 (and [::1]:15001) for redirected connections,
[::]:15008 for HBONE from other nodes.

It is a process of its own so that restarting or killing kmeshd cuts no
tunnelled connection. It follows the state kmeshd writes to --state-dir and
keeps the last copy it read while kmeshd is away; it needs kmeshd's data plane
loaded (--bpf-dir) and the mesh's CA (the --ca-* flags kmeshd takes).

Upgrade: start the new tunnel with the same --state-dir while the old one
runs. The new one takes the old one's listening sockets over (the hand-off
socket tunnel-handoff.sock in --state-dir) and carries every new connection;
the old one stops accepting and drains: its connections go on until they
end or --drain-timeout, then it resets what is left, and it exits on SIGTERM
once drained. SIGTERM to a tunnel no other took over from resets every
connection it carries and exits at once.`,
		Example:       `  kmeshd tunnel --node node-a --ca-cert ca.pem --ca-key ca-key.pem`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel})).With("node", cfg.Node, "component", "tunnel")
			if cfg.BPFDir == "" {
				cfg.BPFDir = daemon.DefaultBPFDir(cfg.Node)
			}
			if cfg.StateDir == "" {
				cfg.StateDir = tunnel.DefaultStateDir(cfg.Node)
			}
			certs, err := ids.NewSource()
			if err != nil {
				return err
			}
			if certs == nil {
				return fmt.Errorf("no CA: give --ca-cert and --ca-key (or --ca-address)")
			}
			certs.SetLogger(log)
			cfg.Certs = certs
			cfg.Log = log
			if metricsAddr != "" {
				cfg.Metrics = metrics.New(metrics.Sources{}, log)
			}
			if accessLog {
				cfg.AccessLog = slog.New(slog.NewJSONHandler(os.Stdout, nil))
			}
			t, err := tunnel.New(cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			go certs.Run(ctx)
			if metricsAddr != "" {
				addr, err := serveMetrics(ctx, metricsAddr, cfg.Metrics, t.Ready)
				if err != nil {
					return err
				}
				log.Info("metrics served", "metrics", addr)
			}
			if pprofAddr != "" {
				addr, err := servePprof(ctx, pprofAddr)
				if err != nil {
					return err
				}
				log.Info("profiles served", "pprof", addr)
			}
			if maxProcs > 0 {
				runtime.GOMAXPROCS(maxProcs)
			}
			log.Info("tunnel starting", "pid", os.Getpid(), "max_procs", runtime.GOMAXPROCS(0), "socket", tunnel.SocketPath(cfg.StateDir), "state_dir", cfg.StateDir, "bpf_dir", cfg.BPFDir, "trust_domain", certs.TrustDomain())
			return t.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Node, "node", hostname(), "name of this node, as kmeshd's --node")
	f.StringVar(&cfg.StateDir, "state-dir", "", "directory where kmeshd writes the tunnel's state (default: /run/kmesh/<node>)")
	f.StringVar(&cfg.BPFDir, "bpf-dir", "", "kmeshd's bpffs directory (default: /sys/fs/bpf/kmesh/<node>)")
	f.TextVar(logLevel, "log-level", new(slog.LevelVar), "log level: debug, info, warn, error")
	f.StringVar(&metricsAddr, "metrics-address", "", "serve Istio's istio_tcp_* metrics of the tunnelled connections (with source_principal, destination_principal, connection_security_policy=mutual_tls) at /metrics on this address; empty: off")
	f.BoolVar(&accessLog, "access-log", false, "write one JSON line per tunnelled connection that ended to standard output, with both identities")
	f.IntVar(&maxProcs, "max-procs", 1, "CPUs the tunnel's Go scheduler runs on at once (GOMAXPROCS); with one, a request's wake-ups hand no work to another thread, which at moderate rates costs as much CPU as the request's own I/O; raise it for a node whose tunnel needs more than one core; 0: Go's default (every CPU, or $GOMAXPROCS)")
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", tunnel.DefaultDrainTimeout, "after a new tunnel took the listeners over, how long this one carries its connections before it resets what is left (set the pod's terminationGracePeriodSeconds above it)")
	f.StringVar(&pprofAddr, "pprof-address", "", "serve Go's profiles (/debug/pprof/) on this address, for profiling the data path; empty: off")
	ids.RegisterFlags(f)
	// istiod's CA reads the cluster from a header, as kmeshd sends it.
	f.StringVar(&ids.ClusterID, "cluster-id", "Kubernetes", "cluster of this node, sent to istiod's CA (--ca-address), as kmeshd's --cluster-id")
	return cmd
}
