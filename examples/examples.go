// Package examples holds example mesh configs. hello.yaml is also kmeshd's
// built-in default, used when no --config file is given, so a fresh node has
// something to show and the docs' example is always one that parses.
package examples

import _ "embed"

// Hello is hello.yaml: one service, hello, balancing over three workloads on
// two nodes, and a client workload to call it from.
//
//go:embed hello.yaml
var Hello []byte
