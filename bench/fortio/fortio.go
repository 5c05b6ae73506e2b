// Package fortio describes the load tests of the benchmark as fortio
// command lines and reads fortio's JSON results.
//
// The method is Istio's (istio.io "Performance and Scalability"): http/1.1,
// a 1 KB payload each way (fortio POSTs -payload-size random bytes and its
// server echoes them), a fixed request rate over 1, 16 and 64 connections.
// Latencies are read from fortio's histogram, whose buckets are set by
// Resolution.
package fortio

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Version is the fortio release the benchmark installs; newer ones do not
// build with this Go toolchain.
const Version = "v1.66.5"

// Resolution is the histogram resolution passed as -r. Istio's runner
// passes 1 µs; fortio's buckets then jump from 1 ms to 2 ms, so a p99 near
// 1.5 ms is interpolated over a 1 ms wide bucket. 10 µs keeps buckets under
// 20% of the value from 100 µs to 10 ms (fortio's default is 1 ms).
const Resolution = 10 * time.Microsecond

// Ports the fortio server listens on in the server pods.
const (
	HTTPPort = 8080
	TCPPort  = 8078 // fortio's TCP echo
)

// Kind is the protocol of a test.
type Kind string

const (
	HTTP Kind = "http" // http/1.1 requests with an echoed payload
	TCP  Kind = "tcp"  // fortio's TCP echo: write a small message, read it back
)

// Test is one load test point.
type Test struct {
	Name        string  // short id used in results, such as "lat-c16"
	Kind        Kind    // HTTP or TCP
	QPS         float64 // requests per second over all connections; 0 = as fast as possible
	Connections int
	KeepAlive   bool          // reuse connections (HTTP only; TCP always reuses)
	Payload     int           // bytes POSTed and echoed (HTTP only; 0 = GET)
	Duration    time.Duration // measured time, after one warm-up call per connection
}

// Describe says in a few words what the test measures, for tables.
func (t Test) Describe() string {
	rate := "max rate"
	if t.QPS > 0 {
		rate = strconv.FormatFloat(t.QPS, 'f', -1, 64) + " qps"
	}
	s := fmt.Sprintf("%s, %s, %d conn", t.Kind, rate, t.Connections)
	if t.Kind == HTTP && !t.KeepAlive {
		s += ", new connection per request"
	}
	return s
}

// Args returns the arguments of `fortio load` for the test against target
// (host:port), writing its JSON result to jsonPath.
func (t Test) Args(target, jsonPath string) []string {
	args := []string{"load",
		"-qps", strconv.FormatFloat(t.QPS, 'f', -1, 64),
		"-c", strconv.Itoa(t.Connections),
		"-t", t.Duration.String(),
		"-r", strconv.FormatFloat(Resolution.Seconds(), 'f', -1, 64),
		"-p", "50,90,99",
		"-json", jsonPath,
		"-httpbufferkb", "128", // as Istio's runner; no -jitter, no -uniform, as there
		"-quiet",
		"-loglevel", "warning",
	}
	switch t.Kind {
	case TCP:
		return append(args, "tcp://"+target)
	default:
		if t.Payload > 0 {
			args = append(args, "-payload-size", strconv.Itoa(t.Payload))
		}
		if !t.KeepAlive {
			args = append(args, "-keepalive=false")
		}
		return append(args, "http://"+target+"/")
	}
}

// ServerArgs returns the arguments of `fortio server` for a server pod:
// HTTP echo on HTTPPort, TCP echo on TCPPort, nothing else.
func ServerArgs() []string {
	return []string{"server",
		"-http-port", strconv.Itoa(HTTPPort),
		"-tcp-port", strconv.Itoa(TCPPort),
		"-grpc-port", "disabled",
		"-redirect-port", "disabled",
		"-udp-port", "disabled",
		"-loglevel", "warning",
	}
}

// Result is what one fortio run measured.
type Result struct {
	Count     int     // calls measured
	Errors    int     // calls that failed (non-200, or a TCP error)
	ActualQPS float64 // calls per second achieved
	Elapsed   time.Duration
	Avg       time.Duration
	P50       time.Duration
	P90       time.Duration
	P99       time.Duration
	Max       time.Duration
}

// report is the part of fortio's JSON output the benchmark reads.
type report struct {
	ActualQPS         float64
	ActualDuration    int64 // nanoseconds
	RetCodes          map[string]int
	DurationHistogram struct {
		Count       int
		Avg, Max    float64 // seconds
		Percentiles []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
}

// Parse reads the JSON fortio writes with -json.
func Parse(data []byte) (Result, error) {
	var r report
	if err := json.Unmarshal(data, &r); err != nil {
		return Result{}, fmt.Errorf("fortio result: %w", err)
	}
	h := r.DurationHistogram
	if h.Count == 0 {
		return Result{}, errors.New("fortio result: no calls")
	}
	res := Result{
		Count:     h.Count,
		ActualQPS: r.ActualQPS,
		Elapsed:   time.Duration(r.ActualDuration),
		Avg:       seconds(h.Avg),
		Max:       seconds(h.Max),
	}
	ok := 0
	for code, n := range r.RetCodes {
		if code == "200" || code == "OK" {
			ok += n
		}
	}
	res.Errors = h.Count - ok
	found := 0
	for _, p := range h.Percentiles {
		switch p.Percentile {
		case 50:
			res.P50, found = seconds(p.Value), found+1
		case 90:
			res.P90, found = seconds(p.Value), found+1
		case 99:
			res.P99, found = seconds(p.Value), found+1
		}
	}
	if found != 3 {
		return Result{}, errors.New("fortio result: want percentiles 50, 90 and 99 (-p 50,90,99)")
	}
	return res, nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
