package main

import (
	"net/http"

	"github.com/spf13/cobra"
)

func newDumpCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dump",
		Short: "Print kmeshd's raw state: BPF maps or config",
		Long: `Prints what kmeshd holds, undigested: the decoded entries of its BPF maps, or
its config dump (the JSON document 'get' renders as tables).`,
		Example: `  # Every entry of the service maps, one per line
  kmeshctl dump maps

  # The config dump
  kmeshctl dump config`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "maps",
		Short: "Print the entries of kmeshd's BPF maps, one per line",
		Long: `Prints every entry of the BPF maps the connect-time load balancer reads,
decoded, one per line and sorted:

  frontend ADDRESS:PORT/PROTO service=ID target_port=PORT   a service address and port
  service ID mode=MODE gen=G slots_v4=N slots_v6=N          a service: how many endpoint slots per family
  endpoint service=ID family=v4|v6 gen=G slot=S backend=ID  one slot of a service's endpoint table
  backend ID v4=ADDRESS v6=ADDRESS                          a workload serving a service

This is what the kernel uses; 'kmeshctl get services' shows what kmeshd meant
to write.`,
		Example: `  kmeshctl dump maps
  kmeshctl dump maps | grep '^frontend'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			body, err := a.client().do(cmd.Context(), http.MethodGet, "/maps", nil)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(body)
			return err
		},
	}, &cobra.Command{
		Use:   "config",
		Short: "Print kmeshd's config dump (JSON)",
		Long: `Prints kmeshd's config dump: one JSON document with its node, config source
and version, the services, workloads and policies of the mesh, and the network
namespaces it enrolled.`,
		Example: `  kmeshctl dump config
  kmeshctl dump config | jq '.services[].name'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			body, err := a.client().do(cmd.Context(), http.MethodGet, "/config_dump", nil)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(body)
			return err
		},
	})
	return cmd
}
