package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// Output formats of -o.
const (
	formatTable = "table"
	formatWide  = "wide"
	formatJSON  = "json"
	formatYAML  = "yaml"
)

var allFormats = []string{formatTable, formatWide, formatJSON, formatYAML}

// addOutputFlag adds -o/--output to cmd, with completion, accepting formats.
func addOutputFlag(cmd *cobra.Command, p *string, formats ...string) {
	cmd.Flags().StringVarP(p, "output", "o", formatTable, "output format: "+strings.Join(formats, ", "))
	cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(formats, cobra.ShellCompDirectiveNoFileComp))
}

func checkFormat(f string, formats ...string) error {
	if !slices.Contains(formats, f) {
		return fmt.Errorf("unknown output format %q: want one of %s", f, strings.Join(formats, ", "))
	}
	return nil
}

// writeStructured writes v as indented JSON or as YAML. The YAML has the
// JSON's camelCase keys in the JSON's order: it is the JSON document,
// re-rendered in block style.
func writeStructured(w io.Writer, format string, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	if format == formatJSON {
		_, err := w.Write(buf.Bytes())
		return err
	}
	// JSON is YAML: parse it into nodes, which keep the key order, and drop
	// the flow style and quotes the JSON syntax gave them.
	var doc yaml.Node
	if err := yaml.Unmarshal(buf.Bytes(), &doc); err != nil {
		return err
	}
	blockStyle(&doc)
	enc2 := yaml.NewEncoder(w)
	enc2.SetIndent(2)
	if err := enc2.Encode(&doc); err != nil {
		return err
	}
	return enc2.Close()
}

func blockStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// table writes rows under a header, aligned by text/tabwriter as istioctl
// aligns its tables.
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }
