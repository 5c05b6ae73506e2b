package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/version"
)

func newVersionCommand(a *app) *cobra.Command {
	var clientOnly bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Show the version of kmeshctl and of the kmeshd it talks to",
		Long: `Prints kmeshctl's own version and commit, then those of the kmeshd at
--admin-address (its /version endpoint). When kmeshd cannot be reached the
client's line is still printed and the command fails with the reason.`,
		Example: `  # Client and daemon of this node
  kmeshctl version

  # The client alone, without asking kmeshd
  kmeshctl version --client`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "client: %s\n", version.Get())
			if clientOnly {
				return nil
			}
			var v api.Version
			if err := a.client().getJSON(cmd.Context(), "/version", nil, &v); err != nil {
				return err
			}
			fmt.Fprintf(out, "daemon: %s\n", version.Info(v))
			return nil
		},
	}
	cmd.Flags().BoolVar(&clientOnly, "client", false, "print the client's version only")
	return cmd
}
