package main

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kmesh-go/kmesh/internal/admin/api"
)

func newExplainCommand(a *app) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "explain <source-workload> <address:port>",
		Short: "Explain where a connection from a workload to an address goes, and why",
		Long: `Explains what happens when the source workload (namespace/name, or a name in
namespace default) connects to address:port, as the kmeshd at --admin-address
would handle it: whether the source is in the mesh and enrolled by this
kmeshd, which service has that address and port, and for each endpoint of the
service whether a new connection may go there (and its share of them), or why
not: no address of the destination's family, weight 0. POLICY says what the
authorization policies decide for a connection from the source to that
endpoint, and which policy decided (a denied connect() fails with EACCES).
For a service with a routing preference, PRIORITY says which locality rank
the connect picks from and why, and LOCALITY is each endpoint's
region/zone/subzone ("n/a" otherwise). AFFINITY is the source's session
affinity entry, with its time left. TUNNEL says how a connection to the
endpoint is carried: "direct", or (when the mesh has a CA and the endpoint is
a workload of another node that takes HBONE) "HBONE to <peer>:15008, <source
identity> -> <destination identity>": kmeshd tunnel opens mutual TLS to the
peer presenting the source's certificate and accepts only the destination's.
HEALTH shows an endpoint ejected by outlier detection with its time left, else
"n/a" (unhealthy workloads are no endpoints at all).

explain reads kmeshd's model of the mesh; 'kmeshctl dump maps' shows what the
kernel holds.`,
		Example: `  # Where does client's connection to the hello service go?
  kmeshctl explain client 10.96.0.10:80

  # The same over IPv6, for a workload of another namespace, as JSON
  kmeshctl explain shop/frontend '[fd00:96::10]:80' -o json`,
		Args: cobra.ExactArgs(2),
		PreRunE: func(_ *cobra.Command, args []string) error {
			if _, err := netip.ParseAddrPort(args[1]); err != nil {
				return fmt.Errorf("destination %q: want IP:PORT, or [IPv6]:PORT", args[1])
			}
			return checkFormat(format, formatTable, formatJSON, formatYAML)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var e api.Explanation
			q := url.Values{"source": {args[0]}, "destination": {args[1]}}
			if err := a.client().getJSON(cmd.Context(), "/explain", q, &e); err != nil {
				return err
			}
			if format != formatTable {
				return writeStructured(cmd.OutOrStdout(), format, e)
			}
			return printExplanation(cmd.OutOrStdout(), e)
		},
		ValidArgsFunction: func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			d, err := a.configDump(cmd.Context())
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var out []string
			switch len(args) {
			case 0:
				for _, w := range d.Workloads {
					out = append(out, w.Namespace+"/"+w.Name)
				}
			case 1:
				for _, s := range d.Services {
					for _, addr := range s.Addresses {
						for _, p := range s.Ports {
							out = append(out, net.JoinHostPort(addr, strconv.Itoa(int(p.Port))))
						}
					}
				}
			}
			return out, cobra.ShellCompDirectiveNoFileComp
		},
	}
	addOutputFlag(cmd, &format, formatTable, formatJSON, formatYAML)
	return cmd
}

func printExplanation(w io.Writer, e api.Explanation) error {
	src := e.Source.Workload + " (node " + e.Source.Node
	if e.Source.Enrolled {
		src += ", enrolled)"
	} else {
		src += ", not enrolled: " + e.Source.Reason + ")"
	}
	svc := "none"
	if s := e.Service; s != nil {
		svc = fmt.Sprintf("%s/%s, port %d->%d, %s", s.Namespace, s.Name, s.Port, s.TargetPort, s.Mode)
		if s.Workload != "" {
			svc = fmt.Sprintf("none: workload %s's own address, port %d, %s", s.Workload, s.Port, s.Mode)
		}
	}
	t := newTable(w)
	t.row("SOURCE:", src)
	t.row("DESTINATION:", e.Destination)
	t.row("SERVICE:", svc)
	if s := e.Service; s != nil && s.Waypoint != "" {
		t.row("WAYPOINT:", s.Waypoint)
	}
	if s := e.Service; s != nil && s.Priority != "" {
		t.row("PRIORITY:", s.Priority)
	}
	if a := e.Affinity; a != nil {
		t.row("AFFINITY:", a.Workload+", for "+a.ExpiresIn+" more unless the source connects again")
	}
	if tn := e.Tunnel; tn != nil {
		t.row("TUNNEL:", tunnelText(tn))
	}
	t.row("RESULT:", e.Result)
	if err := t.flush(); err != nil {
		return err
	}
	if len(e.Endpoints) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	t = newTable(w, "ENDPOINT", "NODE", "ADDRESS", "WEIGHT", "SHARE", "ELIGIBLE", "HEALTH", "LOCALITY", "POLICY", "TUNNEL")
	for _, ep := range e.Endpoints {
		eligible, share := "yes", fmt.Sprintf("%.0f%%", ep.Share*100)
		if !ep.Eligible {
			eligible, share = "no: "+strings.Join(ep.Reasons, ", "), "0%"
		}
		// Outlier detection is the passive half of health checking.
		health := ep.Health
		if ep.Ejected != "" {
			health = ep.Ejected
		}
		tunnel := "direct"
		if ep.Tunnel != nil {
			tunnel = tunnelText(ep.Tunnel)
		}
		t.row(ep.Workload, ep.Node, ep.Address, strconv.FormatUint(uint64(ep.Weight), 10), share, eligible, health, ep.Locality, ep.Policy, tunnel)
	}
	return t.flush()
}

// tunnelText is one tunnel in a line: the HBONE peer, and the identities
// presented and required.
func tunnelText(tn *api.ExplainTunnel) string {
	return fmt.Sprintf("HBONE to %s, %s -> %s", tn.Peer, tn.SourceIdentity, tn.DestinationIdentity)
}
