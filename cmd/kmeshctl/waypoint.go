package main

import (
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kmesh-go/kmesh/internal/waypoint"
)

// newWaypointCommand reads a kmesh-waypoint's admin API (--admin-address
// pointed at the waypoint, e.g. 10.1.2.20:15000).
func newWaypointCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "waypoint",
		Short: "Show a kmesh-waypoint's routes, or explain where a request would go",
		Long: `Reads the admin API of a kmesh-waypoint (give its address with --admin-address):
the services it serves, its routes in the order it tries them, faults and
backends, and how it would handle one request.`,
		Example: `  kmeshctl waypoint routes --admin-address 10.1.2.20:15000
  kmeshctl waypoint explain 10.1.1.10 http://10.96.0.20/v2/x --admin-address 10.1.2.20:15000`,
	}
	var format string
	routes := &cobra.Command{
		Use:   "routes",
		Short: "List the waypoint's route matches in the order it tries them, per service port",
		Long: `Lists, for each port of each service the waypoint serves, the route matches in
the order the waypoint tries them (Gateway API precedence), with the rule, its
backends and weights, timeouts and retry policy ("default" is a service with no
route: its requests go to the service itself, with Istio's default retries);
then the fault rules from VirtualServices.`,
		Example: `  kmeshctl waypoint routes --admin-address 10.1.2.20:15000`,
		Args:    cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			return checkFormat(format, formatTable, formatJSON, formatYAML)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			var d waypoint.ConfigDump
			if err := a.client().getJSON(cmd.Context(), "/config_dump", nil, &d); err != nil {
				return err
			}
			if format != formatTable {
				return writeStructured(cmd.OutOrStdout(), format, d)
			}
			return printWaypointRoutes(cmd.OutOrStdout(), &d)
		},
	}
	addOutputFlag(routes, &format, formatTable, formatJSON, formatYAML)

	var method string
	var headers []string
	var exFormat string
	explain := &cobra.Command{
		Use:   "explain <source-ip> <url>",
		Short: "Explain how the waypoint would handle a request: policy, fault, route, backends",
		Long: `Evaluates one request from source-ip to url (the service VIP, or its name, as
host) as the waypoint would, without sending it: the L7 authorization decision
and the policy that made it, the fault that applies, the route and match it
takes, the answer when it is not forwarded (403, 404), and the backends with
their weights, timeout and retry policy.`,
		Example: `  # Which route and backend does GET http://10.96.0.20/v2/x from 10.1.1.10 take?
  kmeshctl waypoint explain 10.1.1.10 http://10.96.0.20/v2/x --admin-address 10.1.2.20:15000

  # With a header and another method
  kmeshctl waypoint explain 10.1.1.10 http://reviews/admin -X DELETE -H x-version:2 --admin-address 10.1.2.20:15000`,
		Args: cobra.ExactArgs(2),
		PreRunE: func(_ *cobra.Command, args []string) error {
			if _, err := netip.ParseAddr(args[0]); err != nil {
				return fmt.Errorf("source %q: want the client's IP address", args[0])
			}
			return checkFormat(exFormat, formatTable, formatJSON, formatYAML)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{"src": {args[0]}, "url": {args[1]}, "method": {method}, "header": headers}
			var e waypoint.Explanation
			if err := a.client().getJSON(cmd.Context(), "/explain", q, &e); err != nil {
				return err
			}
			if exFormat != formatTable {
				return writeStructured(cmd.OutOrStdout(), exFormat, e)
			}
			return printWaypointExplanation(cmd.OutOrStdout(), &e)
		},
	}
	explain.Flags().StringVarP(&method, "method", "X", "GET", "request method")
	explain.Flags().StringArrayVarP(&headers, "header", "H", nil, "request header name:value, repeatable")
	addOutputFlag(explain, &exFormat, formatTable, formatJSON, formatYAML)
	cmd.AddCommand(routes, explain)
	return cmd
}

func printWaypointRoutes(w io.Writer, d *waypoint.ConfigDump) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tORDER\tRULE\tMATCH\tBACKENDS\tTIMEOUT\tRETRY")
	for _, r := range d.Routes {
		svc := r.Service
		if r.ConsumerNamespace != "" {
			svc += " (clients in " + r.ConsumerNamespace + ")" // a GAMMA consumer route
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", svc, r.Order, r.Rule, r.Match, strings.Join(r.Backends, ","),
			dash(r.Timeout), r.Retry)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(d.Faults) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tFAULT FROM\tFAULT")
		for _, f := range d.Faults {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Service, f.Source, f.Fault)
		}
		tw.Flush()
	}
	return nil
}

func printWaypointExplanation(w io.Writer, e *waypoint.Explanation) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "SERVICE\t%s\n", e.Service)
	fmt.Fprintf(tw, "POLICY\t%s %s\n", e.Decision, dash(e.Policy))
	fmt.Fprintf(tw, "FAULT\t%s\n", dash(e.Fault))
	fmt.Fprintf(tw, "ROUTE\t%s %s\n", e.Route, e.Match)
	if e.Status != 0 {
		fmt.Fprintf(tw, "ANSWER\t%d from the waypoint\n", e.Status)
	}
	fmt.Fprintf(tw, "BACKENDS\t%s\n", dash(strings.Join(e.Backends, ", ")))
	fmt.Fprintf(tw, "TIMEOUT\t%s\n", dash(e.Timeout))
	fmt.Fprintf(tw, "RETRY\t%s\n", dash(e.Retry))
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
