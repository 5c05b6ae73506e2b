// Command kmeshd is Kmesh's node daemon: it loads the eBPF data plane and
// keeps its maps equal to the mesh config. See `kmeshd --help`.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/daemon"
	"github.com/kmesh-go/kmesh/internal/version"
)

func main() {
	if err := newCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "kmeshd:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	var (
		cfg      daemon.Config
		logLevel = new(slog.LevelVar) // changed at run time through /logging
		// cleanupOnExit removes the data plane once Run has returned and
		// released the instance lock (kmeshd cleanup refuses a held dir).
		cleanupOnExit bool
	)
	cmd := &cobra.Command{
		Use:   "kmeshd",
		Short: "Kmesh node daemon: kernel service load balancing for the workloads of this node",
		Long: `kmeshd loads Kmesh's eBPF programs into the kernel, attaches them to a cgroup v2,
and keeps their maps equal to the mesh config: services, their endpoints, and
the workloads of this node it enrolls. Connections from enrolled workloads to a
service address go straight to a chosen endpoint, with no proxy on the path.

Stopping kmeshd leaves the data plane pinned and in force; 'kmeshd cleanup'
removes it.`,
		Example: `  # Run on the embedded default config as node-a
  kmeshd --node node-a

  # Run from a file, attached to a cgroup of its own
  kmeshd --node node-a --config mesh.yaml --cgroup /sys/fs/cgroup/kmesh-a

  # Take the mesh from istiod's workload API; enroll one network namespace
  kmeshd --node node-a --xds-address istiod.istio-system:15012 \
    --xds-root-cert /var/run/secrets/istio/root-cert.pem \
    --xds-token-file /var/run/secrets/tokens/istio-token \
    --enroll-netns /var/run/netns/app

  # Take the mesh from istiod and enroll this node's pods from Kubernetes
  kmeshd --node node-a --xds-address 127.0.0.1:15010 --kubeconfig ~/.kube/config

  # Workload certificates from a local CA shared by the nodes of the mesh
  kmeshd --node node-a --config mesh.yaml --ca-cert ca-cert.pem --ca-key ca-key.pem

  # Workload certificates from istiod's CA, impersonating this node's pods
  kmeshd --node node-a --xds-address istiod.istio-system:15012 \
    --xds-root-cert /var/run/secrets/istio/root-cert.pem \
    --xds-token-file /var/run/secrets/tokens/istio-token \
    --ca-address istiod.istio-system.svc:15012`,
		Version:       version.Get().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel}))
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			cfg.LogLevel = logLevel
			err := daemon.Run(ctx, cfg, log)
			if cleanupOnExit {
				dir := cfg.BPFDir
				if dir == "" {
					dir = daemon.DefaultBPFDir(cfg.Node)
				}
				if cerr := daemon.Cleanup(dir); cerr != nil {
					return errors.Join(err, fmt.Errorf("cleanup on exit: %w", cerr))
				}
				log.Info("data plane removed on exit", "bpf_dir", dir)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.ConfigFile, "config", "", "mesh config file (YAML), or a directory of them (every *.yaml, *.yml); reloaded when it changes and on SIGHUP (default: the embedded example)")
	f.StringVar(&cfg.Node, "node", hostname(), "name of this node: workloads with this node are enrolled here")
	f.StringVar(&cfg.Cgroup, "cgroup", "", "cgroup v2 directory to attach the programs to (default: the root of the cgroup v2 hierarchy)")
	f.StringVar(&cfg.BPFDir, "bpf-dir", "", "bpffs directory for this instance's pins (default: /sys/fs/bpf/kmesh/<node>)")
	f.StringVar(&cfg.AdminAddress, "admin-address", "127.0.0.1:15000", "address of the read-only admin API (/healthz/ready, /config_dump, /maps, /logging, ...; see docs/kmeshctl.md); changes are refused here")
	f.StringVar(&cfg.AdminSocket, "admin-socket", "", "Unix socket of the admin API with its changes (/enroll, /unenroll, POST /logging and /accesslog): mode 0600, root peers only; kmeshctl uses it (default: /run/kmesh/<node>/admin.sock)")
	f.StringVar(&cfg.MetricsAddress, "metrics-address", ":15020", "address of the Prometheus metrics (/metrics)")
	f.StringVar(&cfg.ReadinessAddress, "readiness-address", ":15021", "address of the readiness probe (/healthz/ready)")
	// The default is a zero LevelVar: info.
	f.TextVar(logLevel, "log-level", new(slog.LevelVar), "log level: debug, info, warn, error (changed at run time with 'kmeshctl log --level')")
	cfg.Limits = bpf.DefaultLimits
	f.Uint32Var(&cfg.Limits.Services, "max-services", cfg.Limits.Services, "capacity of the service map")
	f.Uint32Var(&cfg.Limits.Frontends, "max-frontends", cfg.Limits.Frontends, "capacity of the frontend map (service address and port pairs)")
	f.Uint32Var(&cfg.Limits.Endpoints, "max-endpoints", cfg.Limits.Endpoints, "capacity of the endpoint slot map (slots per endpoint follow its weight; updates briefly need old and new slots)")
	f.Uint32Var(&cfg.Limits.Backends, "max-backends", cfg.Limits.Backends, "capacity of the backend map (workloads serving a service)")
	f.Uint32Var(&cfg.Limits.Workloads, "max-workloads", cfg.Limits.Workloads, "capacity of the enrollment map (network namespaces of this node)")
	f.Uint32Var(&cfg.Limits.Policies, "max-policies", cfg.Limits.Policies, "capacity of the authorization policy map")
	f.Uint32Var(&cfg.Limits.PolicyMatches, "max-policy-matches", cfg.Limits.PolicyMatches, "capacity of the policy match map (sources, operations and L4 conditions of all policies; a changing policy briefly needs two copies)")
	f.Uint32Var(&cfg.Limits.PolicyValues, "max-policy-values", cfg.Limits.PolicyValues, "capacity of the policy value map (identities and ports the matches test)")
	f.Uint32Var(&cfg.Limits.PolicyIPBlocks, "max-policy-ipblocks", cfg.Limits.PolicyIPBlocks, "capacity of the policy address block trie (blocks the matches test, plus one per match that tests addresses)")
	f.Uint32Var(&cfg.Limits.PolicyRefs, "max-policy-refs", cfg.Limits.PolicyRefs, "capacity of the policy list map (policies per namespace and per workload-selector combination)")
	f.Uint32Var(&cfg.Limits.WorkloadAddresses, "max-workload-addresses", cfg.Limits.WorkloadAddresses, "capacity of the workload address map policies use to know sources and destinations (filled only when the mesh has policies)")
	f.Uint32Var(&cfg.Limits.AffinityClients, "max-affinity-clients", cfg.Limits.AffinityClients, "capacity of the session affinity map ((service, client) pairs of services with sessionAffinity; the least recently used go first)")
	f.StringVar(&cfg.XDS.Address, "xds-address", "", "xDS control plane HOST:PORT; when set, the mesh comes from it instead of --config")
	f.StringVar(&cfg.XDS.Mode, "xds-mode", "workload", "xDS API: workload (Istio ambient's workload API, delta, as a ztunnel) or ads (clusters, endpoints and listeners, as a sidecar)")
	f.StringVar(&cfg.XDS.RootCertFile, "xds-root-cert", "", "PEM CA certificates of the control plane; TLS when set, plaintext otherwise")
	f.StringVar(&cfg.XDS.TokenFile, "xds-token-file", "", "file holding a bearer token for the control plane, re-read at each connect (needs --xds-root-cert)")
	f.StringVar(&cfg.XDS.ClusterID, "cluster-id", "Kubernetes", "cluster of this node, sent to the control plane as CLUSTER_ID")
	f.StringVar(&cfg.Kube.Kubeconfig, "kubeconfig", "", "kubeconfig file: enroll this node's pods labelled istio.io/dataplane-mode=ambient (on the pod or its namespace); with --xds-address, also read Services' sessionAffinity (istiod does not send it); in a pod, the in-cluster config is used without it")
	f.StringArrayVar(&cfg.EnrollNetns, "enroll-netns", nil, "network namespace path to enroll in the mesh whatever the config says (repeatable); for hosts without Kubernetes, as xDS enrolls nothing")
	f.BoolVar(&cfg.Accelerate, "accelerate", false, "move data between enrolled sockets of this node socket to socket (sockops + sk_msg), skipping TCP/IP; receivers that read with splice(2) see no data, so off by default")
	f.BoolVar(&cfg.Telemetry, "telemetry", true, "record every connection of enrolled workloads (istio_tcp_* metrics, access log, /connections)")
	f.BoolVar(&cfg.AccessLog, "access-log", false, "write one access log line per closed connection (switch at run time: kmeshctl accesslog on|off)")
	cfg.Identity.RegisterFlags(f)
	f.StringVar(&cfg.TunnelStateDir, "state-dir", "", "directory where kmeshd writes the HBONE tunnel's state for 'kmeshd tunnel' (default: /run/kmesh/<node>); used when the mesh has a CA")
	f.StringVar(&cfg.AccessLogFile, "access-log-file", "", "file for the access log, JSON lines (default: standard output)")

	f.BoolVar(&cleanupOnExit, "cleanup-on-exit", false, "on SIGTERM or SIGINT, remove this instance's programs, maps and pins (as kmeshd cleanup) before exiting, so connections are no longer balanced; for uninstalling (the Helm chart's cleanupOnStop), never for restarts or upgrades")
	cmd.SetVersionTemplate("kmeshd {{.Version}}\n")
	cmd.AddCommand(newCleanupCommand())
	cmd.AddCommand(newTunnelCommand())
	return cmd
}

func newCleanupCommand() *cobra.Command {
	var node, dir string
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Detach and remove every program, link, map and pin of one kmeshd instance",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				dir = daemon.DefaultBPFDir(node)
			}
			return daemon.Cleanup(dir)
		},
	}
	cmd.Flags().StringVar(&node, "node", hostname(), "node whose default --bpf-dir to clean")
	cmd.Flags().StringVar(&dir, "bpf-dir", "", "bpffs directory of the instance (default: /sys/fs/bpf/kmesh/<node>)")
	return cmd
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
