package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmesh-go/kmesh/internal/admin/api"
)

func newGetCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "get",
		Short: "List the services, workloads, policies, connections or certificates kmeshd holds",
		Long: `Lists what the kmeshd at --admin-address holds, as tables sorted by namespace
then name, shaped like 'istioctl ztunnel-config'. -o wide adds columns;
-o json and -o yaml print the admin API's documents.`,
		Example: `  # Services, their addresses, ports and endpoint counts
  kmeshctl get services

  # Workloads with their labels and weights
  kmeshctl get workloads -o wide

  # Everything kmeshd knows about the policies, as YAML
  kmeshctl get policies -o yaml

  # Live connections of this node's workloads
  kmeshctl get connections

  # Workload certificates and the accepted roots
  kmeshctl get certs`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(
		newGetServicesCommand(a),
		newGetWorkloadsCommand(a),
		newGetPoliciesCommand(a),
		newGetConnectionsCommand(a),
		newGetCertsCommand(a),
	)
	return cmd
}

func newGetServicesCommand(a *app) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:     "services",
		Aliases: []string{"service", "svc"},
		Short:   "List the services of the mesh",
		Long: `Lists the services of the mesh as kmeshd holds them: their virtual addresses,
their ports (port->targetPort/protocol), how many endpoints they balance over
and how (random or round_robin). -o wide adds the endpoints' workloads.`,
		Example: `  kmeshctl get services
  kmeshctl get services -o wide
  kmeshctl get svc -o json`,
		Args:    cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error { return checkFormat(format, allFormats...) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := a.configDump(cmd.Context())
			if err != nil {
				return err
			}
			return printServices(cmd.OutOrStdout(), format, d.Services)
		},
	}
	addOutputFlag(cmd, &format, allFormats...)
	return cmd
}

func newGetWorkloadsCommand(a *app) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:     "workloads",
		Aliases: []string{"workload", "wl"},
		Short:   "List the workloads of the mesh",
		Long: `Lists the workloads of the mesh as kmeshd holds them: their addresses, their
node, their network namespace, and whether this kmeshd enrolled them (yes/no
for workloads of its node, - for other nodes', which their own kmeshd
enrolls). -o wide adds weights and labels.`,
		Example: `  kmeshctl get workloads
  kmeshctl get workloads -o wide
  kmeshctl get workloads -o yaml`,
		Args:    cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error { return checkFormat(format, allFormats...) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := a.configDump(cmd.Context())
			if err != nil {
				return err
			}
			return printWorkloads(cmd.OutOrStdout(), format, d)
		},
	}
	addOutputFlag(cmd, &format, allFormats...)
	return cmd
}

func newGetPoliciesCommand(a *app) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:     "policies",
		Aliases: []string{"policy"},
		Short:   "List the authorization policies of the mesh",
		Long: `Lists the authorization policies of the mesh as kmeshd holds them: their
action (allow or deny) and scope (global, namespace or workload_selector).
-o wide adds the number of rules and whether the policy is a dry run.`,
		Example: `  kmeshctl get policies
  kmeshctl get policies -o json`,
		Args:    cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error { return checkFormat(format, allFormats...) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := a.configDump(cmd.Context())
			if err != nil {
				return err
			}
			return printPolicies(cmd.OutOrStdout(), format, d.Policies)
		},
	}
	addOutputFlag(cmd, &format, allFormats...)
	return cmd
}

func newGetConnectionsCommand(a *app) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:     "connections",
		Aliases: []string{"connection", "conn"},
		Short:   "List the live connections of this node's workloads",
		Long: `Lists the live connections of the workloads this kmeshd enrolled: source and
destination workload (or address, outside the mesh), the service the
connection was balanced for, bytes sent and received by the source, age,
state and SECURITY: "none" for a connection the kernel carries directly, or
"mutual_tls: <source principal> -> <destination principal>" for one kmeshd
tunnel carries over HBONE (kmeshd asks the tunnel for those; both identities
are the ones the TLS handshake proved). -o wide adds the addresses, start
times, and for tunnelled connections the direction and HBONE peer
("outbound via 10.1.2.12:15008" on the client's node, "inbound via
<client's address>" on the server's) and each principal in its own column.`,
		Example: `  kmeshctl get connections
  kmeshctl get connections -o wide`,
		Args:    cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error { return checkFormat(format, allFormats...) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			var conns []api.Connection
			if err := a.client().getJSON(cmd.Context(), "/connections", nil, &conns); err != nil {
				return err
			}
			return printConnections(cmd.OutOrStdout(), format, conns, a.now())
		},
	}
	addOutputFlag(cmd, &format, allFormats...)
	return cmd
}

func (a *app) configDump(ctx context.Context) (api.ConfigDump, error) {
	var d api.ConfigDump
	err := a.client().getJSON(ctx, "/config_dump", nil, &d)
	return d, err
}

// byNamespaceName orders items by namespace, then name.
func byNamespaceName[T any](items []T, key func(T) (string, string)) {
	slices.SortStableFunc(items, func(x, y T) int {
		xn, xs := key(x)
		yn, ys := key(y)
		return cmp.Or(cmp.Compare(xn, yn), cmp.Compare(xs, ys))
	})
}

func printServices(w io.Writer, format string, services []api.Service) error {
	services = slices.Clone(services)
	if services == nil {
		services = []api.Service{}
	}
	byNamespaceName(services, func(s api.Service) (string, string) { return s.Namespace, s.Name })
	if format == formatJSON || format == formatYAML {
		return writeStructured(w, format, services)
	}
	header := []string{"NAMESPACE", "NAME", "ADDRESSES", "PORTS", "ENDPOINTS", "MODE"}
	if format == formatWide {
		header = append(header, "WORKLOADS")
	}
	t := newTable(w, header...)
	for _, s := range services {
		var ports []string
		for _, p := range s.Ports {
			ports = append(ports, fmt.Sprintf("%d->%d/%s", p.Port, p.TargetPort, p.Protocol))
		}
		row := []string{s.Namespace, s.Name, strings.Join(s.Addresses, ","), strings.Join(ports, ","),
			strconv.Itoa(len(s.Endpoints)), s.LoadBalancing.Mode}
		if format == formatWide {
			var names []string
			for _, e := range s.Endpoints {
				// Endpoints in the service's namespace go by name alone.
				names = append(names, strings.TrimPrefix(e, s.Namespace+"/"))
			}
			row = append(row, strings.Join(names, ","))
		}
		t.row(row...)
	}
	return t.flush()
}

func printWorkloads(w io.Writer, format string, d api.ConfigDump) error {
	workloads := slices.Clone(d.Workloads)
	if workloads == nil {
		workloads = []api.Workload{}
	}
	byNamespaceName(workloads, func(w api.Workload) (string, string) { return w.Namespace, w.Name })
	if format == formatJSON || format == formatYAML {
		return writeStructured(w, format, workloads)
	}
	header := []string{"NAMESPACE", "NAME", "IP", "NODE", "NETNS", "ENROLLED"}
	if format == formatWide {
		header = append(header, "WEIGHT", "LABELS")
	}
	t := newTable(w, header...)
	for _, wl := range workloads {
		row := []string{wl.Namespace, wl.Name, strings.Join(wl.Addresses, ","), wl.Node, wl.Netns, enrolled(wl, d)}
		if format == formatWide {
			var labels []string
			for _, k := range slices.Sorted(maps.Keys(wl.Labels)) {
				labels = append(labels, k+"="+wl.Labels[k])
			}
			row = append(row, strconv.FormatUint(uint64(wl.Weight), 10), strings.Join(labels, ","))
		}
		t.row(row...)
	}
	return t.flush()
}

// enrolled says whether the kmeshd of dump d enrolled the workload: "-" for
// another node's workload, which that node's kmeshd enrolls.
func enrolled(w api.Workload, d api.ConfigDump) string {
	switch {
	case w.Node != d.Node:
		return "-"
	case w.Netns != "" && slices.Contains(d.Enrolled, w.Netns):
		return "yes"
	default:
		return "no"
	}
}

func printPolicies(w io.Writer, format string, policies []api.Policy) error {
	policies = slices.Clone(policies)
	if policies == nil {
		policies = []api.Policy{}
	}
	byNamespaceName(policies, func(p api.Policy) (string, string) { return p.Namespace, p.Name })
	if format == formatJSON || format == formatYAML {
		return writeStructured(w, format, policies)
	}
	header := []string{"NAMESPACE", "NAME", "ACTION", "SCOPE"}
	if format == formatWide {
		header = append(header, "RULES", "DRY RUN")
	}
	t := newTable(w, header...)
	for _, p := range policies {
		action := p.Action
		if p.NotEnforced != "" {
			action += " (not enforced)"
		}
		row := []string{p.Namespace, p.Name, action, p.Scope}
		if format == formatWide {
			row = append(row, strconv.Itoa(p.Rules), strconv.FormatBool(p.DryRun))
		}
		t.row(row...)
	}
	return t.flush()
}

func printConnections(w io.Writer, format string, conns []api.Connection, now time.Time) error {
	conns = slices.Clone(conns)
	if conns == nil {
		conns = []api.Connection{}
	}
	peer := func(p api.Peer) string { return cmp.Or(p.Workload, p.Address) }
	slices.SortStableFunc(conns, func(x, y api.Connection) int {
		return cmp.Or(cmp.Compare(peer(x.Source), peer(y.Source)), cmp.Compare(peer(x.Destination), peer(y.Destination)),
			x.Start.Compare(y.Start), cmp.Compare(x.Source.Address, y.Source.Address))
	})
	if format == formatJSON || format == formatYAML {
		return writeStructured(w, format, conns)
	}
	var t *table
	if format == formatWide {
		t = newTable(w, "SOURCE", "SOURCE ADDRESS", "DESTINATION", "DESTINATION ADDRESS", "SERVICE", "SENT", "RECEIVED", "START", "STATE",
			"TUNNEL", "SOURCE PRINCIPAL", "DESTINATION PRINCIPAL")
	} else {
		t = newTable(w, "SOURCE", "DESTINATION", "SERVICE", "SENT", "RECEIVED", "AGE", "STATE", "SECURITY")
	}
	for _, c := range conns {
		sent, received := strconv.FormatUint(c.BytesSent, 10), strconv.FormatUint(c.BytesReceived, 10)
		// The kernel's connections are plain text as far as the mesh
		// knows; the tunnel's are mutual TLS between proven identities.
		security, tunnel, srcP, dstP := "none", "", "", ""
		if tn := c.Tunnel; tn != nil {
			security = "mutual_tls: " + tn.SourcePrincipal + " -> " + tn.DestinationPrincipal
			tunnel, srcP, dstP = tn.Direction+" via "+tn.Peer, tn.SourcePrincipal, tn.DestinationPrincipal
		}
		if format == formatWide {
			t.row(c.Source.Workload, c.Source.Address, c.Destination.Workload, c.Destination.Address, c.Service,
				sent, received, c.Start.UTC().Format(time.RFC3339), c.State, tunnel, srcP, dstP)
		} else {
			t.row(peer(c.Source), peer(c.Destination), c.Service, sent, received, age(now.Sub(c.Start)), c.State, security)
		}
	}
	return t.flush()
}

// age is a duration as kubectl shows ages: 45s, 3m12s, 2h5m, 3d4h.
func age(d time.Duration) string {
	d = max(d, 0).Truncate(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}
