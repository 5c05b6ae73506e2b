// Command kmeshctl shows and steers a running kmeshd through its admin API:
// what it holds (services, workloads, policies, connections, BPF maps), why a
// connection goes where it goes, its log level and access log. It talks to
// nothing but the admin API (--admin-address). See docs/kmeshctl.md.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCommand(options{}).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}
