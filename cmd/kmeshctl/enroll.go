package main

import (
	"fmt"
	"net/url"

	"github.com/spf13/cobra"

	"github.com/kmesh-go/kmesh/internal/admin/api"
)

func newEnrollCommand(a *app, enroll bool) *cobra.Command {
	var netns string
	use, short, long, example := "enroll", "Put a network namespace in the mesh",
		`Enrolls a network namespace in kmeshd's mesh through its admin API, whatever
kmeshd's config source: its TCP connections to service addresses are balanced
from now on. This is how a CNI plugin or an operator enrolls workloads on hosts
without Kubernetes. The enrollment is kept across kmeshd restarts, until
'kmeshctl unenroll' or 'kmeshd cleanup'. It goes through kmeshd's admin socket
(--admin-socket), so it needs root.`,
		`  # Enroll a namespace made with ip netns add
  kmeshctl enroll --netns /var/run/netns/web-1`
	if !enroll {
		use, short, long, example = "unenroll", "Take a network namespace enrolled with 'kmeshctl enroll' out of the mesh",
			`Takes a network namespace that 'kmeshctl enroll' put in the mesh out again.
A namespace that another source enrolls (the config file, --enroll-netns,
Kubernetes) stays enrolled.`,
			`  kmeshctl unenroll --netns /var/run/netns/web-1`
	}
	cmd := &cobra.Command{
		Use:     use + " --netns PATH",
		Short:   short,
		Long:    long,
		Example: example,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if netns == "" {
				return fmt.Errorf("--netns is required")
			}
			var e api.Enrollment
			if err := a.controlClient().postJSON(cmd.Context(), "/"+use, url.Values{"netns": {netns}}, &e); err != nil {
				return err
			}
			state := "enrolled"
			if !e.Enrolled {
				state = "unenrolled"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", state, e.Netns)
			return nil
		},
	}
	cmd.Flags().StringVar(&netns, "netns", "", "path of the network namespace, e.g. /var/run/netns/NAME or /proc/PID/ns/net")
	return cmd
}
