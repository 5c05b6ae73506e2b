package main

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmesh-go/kmesh/internal/admin/api"
)

func newGetCertsCommand(a *app) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:     "certs",
		Aliases: []string{"cert", "certificates"},
		Short:   "List the workload certificates and the accepted roots",
		Long: `Lists the workload certificates of this node, one per SPIFFE identity of its
workloads, as kmeshd tunnel presents them in its HBONE handshakes (kmeshd
asks it; SERVED BY says so, or says that the tunnel did not answer and the
list is kmeshd's own cache, same CA and identities, other serials): how many workloads have it, its state (valid, pending, failed),
serial number, expiry and when it is renewed (between 40 % and 50 % of its
lifetime, jittered); then
the roots a peer's certificate may chain to (several during a root rotation).
-o wide adds the start of validity, the intermediates and the last error.
Needs a CA (kmeshd --ca-cert/--ca-key or --ca-address).`,
		Example: `  kmeshctl get certs
  kmeshctl get certs -o wide
  kmeshctl get certs -o json`,
		Args:    cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error { return checkFormat(format, allFormats...) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			var c api.Certs
			if err := a.client().getJSON(cmd.Context(), "/certs", nil, &c); err != nil {
				return err
			}
			return printCerts(cmd.OutOrStdout(), format, c)
		},
	}
	addOutputFlag(cmd, &format, allFormats...)
	return cmd
}

func printCerts(w io.Writer, format string, c api.Certs) error {
	c.Certificates = slices.Clone(c.Certificates)
	if c.Certificates == nil {
		c.Certificates = []api.Cert{}
	}
	if c.Roots == nil {
		c.Roots = []api.Root{}
	}
	slices.SortFunc(c.Certificates, func(x, y api.Cert) int { return strings.Compare(x.Identity, y.Identity) })
	if format == formatJSON || format == formatYAML {
		return writeStructured(w, format, c)
	}
	stamp := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	if c.ServedBy != "" {
		served := c.ServedBy
		if c.TunnelError != "" {
			served += " (the tunnel did not answer: " + c.TunnelError + ")"
		}
		fmt.Fprintf(w, "SERVED BY: %s\n\n", served)
	}
	header := []string{"IDENTITY", "WORKLOADS", "STATE", "SERIAL", "NOT AFTER", "REFRESH AT"}
	if format == formatWide {
		header = append(header, "NOT BEFORE", "CHAIN", "ERROR")
	}
	t := newTable(w, header...)
	for _, ct := range c.Certificates {
		row := []string{ct.Identity, strconv.Itoa(ct.Workloads), ct.State, ct.Serial, stamp(ct.NotAfter), stamp(ct.RefreshAt)}
		if format == formatWide {
			row = append(row, stamp(ct.NotBefore), strings.Join(ct.Chain, "; "), ct.Error)
		}
		t.row(row...)
	}
	t.row()
	t.row("ROOT SERIAL", "SUBJECT", "NOT AFTER", "SHA256")
	for _, r := range c.Roots {
		t.row(r.Serial, r.Subject, stamp(r.NotAfter), r.SHA256)
	}
	return t.flush()
}
