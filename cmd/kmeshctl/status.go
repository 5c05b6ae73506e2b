package main

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kmesh-go/kmesh/internal/admin/api"
)

func newStatusCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show whether kmeshd is ready and what it holds",
		Long: `Shows the kmeshd at --admin-address: its node, whether it is ready (its first
config is in the BPF maps and every policy of the mesh is enforced; if not, why
not), where its config comes from and how many configs it
applied, how many services, workloads and policies it holds, and how many
network namespaces of its node it enrolled in the mesh.`,
		Example: `  # Status of the kmeshd of this node
  kmeshctl status

  # Status of another node's kmeshd
  kmeshctl status --admin-address 192.168.1.12:15000`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := a.client()
			ready := "yes"
			var ae *apiError
			if _, err := c.do(cmd.Context(), http.MethodGet, "/healthz/ready", nil); errors.As(err, &ae) && ae.status == http.StatusServiceUnavailable {
				// kmeshd's own reason: config not applied yet, or
				// policies it does not enforce.
				ready = "no: " + strings.TrimPrefix(ae.msg, "not ready: ")
			} else if err != nil {
				return err
			}
			var d api.ConfigDump
			if err := c.getJSON(cmd.Context(), "/config_dump", nil, &d); err != nil {
				return err
			}
			t := newTable(cmd.OutOrStdout())
			t.row("NODE:", d.Node)
			t.row("ADMIN:", c.addr)
			t.row("READY:", ready)
			t.row("CONFIG:", d.Source)
			t.row("VERSION:", fmt.Sprintf("%d (configs applied)", d.Version))
			t.row("SERVICES:", fmt.Sprint(len(d.Services)))
			t.row("WORKLOADS:", fmt.Sprint(len(d.Workloads)))
			t.row("POLICIES:", fmt.Sprint(len(d.Policies)))
			t.row("ENROLLED:", fmt.Sprintf("%d network namespaces", len(d.Enrolled)))
			return t.flush()
		},
	}
}
