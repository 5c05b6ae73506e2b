// Command connloop opens and closes TCP connections to one address as fast
// as it can, one after the other, and prints how long each took on
// average: the cost of connect() with everything the kernel does for it
// (the mesh's connect hook, the handshake, the server's SYN checks). Each
// connection is closed with a reset, so no TIME_WAIT piles up.
//
//	connloop --addr 10.1.1.11:8080 --count 5000
//	{"count":5000,"errors":0,"ns_per_connect":41234}
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	addr := flag.String("addr", "", "address to connect to (required)")
	count := flag.Int("count", 1000, "connections")
	flag.Parse()
	if *addr == "" {
		fmt.Fprintln(os.Stderr, "connloop: --addr is required")
		os.Exit(2)
	}
	errs := 0
	var first error
	start := time.Now()
	for range *count {
		c, err := net.Dial("tcp", *addr)
		if err != nil {
			errs++
			if first == nil {
				first = err
			}
			continue
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	elapsed := time.Since(start)
	out := map[string]any{"count": *count, "errors": errs, "ns_per_connect": elapsed.Nanoseconds() / int64(*count)}
	if first != nil {
		out["first_error"] = first.Error()
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
