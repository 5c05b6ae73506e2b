package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// probeResult is the line `kmesh-bench probe` prints when it got through.
type probeResult struct {
	UnixNano int64  `json:"unix_ns"` // when the first connection was established
	Attempts int    `json:"attempts"`
	Error    string `json:"error,omitempty"`
}

// probeMain is `kmesh-bench probe --addr HOST:PORT [--http]`: it prints
// "probing", then connects again and again until a connection succeeds
// (with --http: and answers GET / with 200), and prints a probeResult. The
// benchmark runs it in a pod to time when the pod's first connection to a
// service gets through, and to wait for listeners.
func probeMain(args []string) int {
	fs := flag.NewFlagSet("probe", flag.ExitOnError)
	addr := fs.String("addr", "", "address to connect to, host:port")
	httpGet := fs.Bool("http", false, "also send GET / and want 200")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	fs.Parse(args)
	fmt.Println("probing")
	enc := json.NewEncoder(os.Stdout)
	deadline := time.Now().Add(*timeout)
	for n := 1; ; n++ {
		at, err := probeOnce(*addr, *httpGet)
		if err == nil {
			enc.Encode(probeResult{UnixNano: at.UnixNano(), Attempts: n})
			return 0
		}
		if time.Now().After(deadline) {
			enc.Encode(probeResult{Attempts: n, Error: err.Error()})
			return 1
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// probeOnce connects once and returns when the connection was established.
func probeOnce(addr string, httpGet bool) (time.Time, error) {
	conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return time.Time{}, err
	}
	at := time.Now()
	defer conn.Close()
	if !httpGet {
		return at, nil
	}
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr); err != nil {
		return time.Time{}, err
	}
	status, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return time.Time{}, err
	}
	if !strings.Contains(status, " 200 ") {
		return time.Time{}, fmt.Errorf("status %q", strings.TrimSpace(status))
	}
	return at, nil
}
