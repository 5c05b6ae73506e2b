package hbone

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/benchcpu"
	"github.com/kmesh-go/kmesh/internal/identity"
)

// benchTunnel is a server on loopback in front of an echo upstream, and a
// dialer to it.
func benchTunnel(b *testing.B) (*Dialer, *Target) {
	ca := newTestCA(b, "cluster.local")
	up, _ := echoUpstream(b)
	tn := startServer(b, ca, nil)
	go func() { // startServer reports each request; nobody reads them here
		for range tn.requests {
		}
	}()
	d := &Dialer{Certs: ca}
	b.Cleanup(func() { d.Close() })
	return d, &Target{Source: clientID, Destination: []identity.Identity{serverID}, Addr: tn.addr, Authority: up.String()}
}

// BenchmarkTunnel_RoundTrip1K: 1 KiB each way on one kept stream, as a
// kept-alive HTTP request and its answer.
func BenchmarkTunnel_RoundTrip1K(b *testing.B) {
	d, t := benchTunnel(b)
	c, err := d.Dial(context.Background(), t)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg, got := make([]byte, 1024), make([]byte, 1024)
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTunnel_StreamPerRequest: a new stream on the pooled connection
// per 1 KiB round trip, as a connection per request.
func BenchmarkTunnel_StreamPerRequest(b *testing.B) {
	d, t := benchTunnel(b)
	msg, got := make([]byte, 1024), make([]byte, 1024)
	b.ReportAllocs()
	defer reportCPU(b)()
	var dial, rt, cl time.Duration
	for b.Loop() {
		t0 := time.Now()
		c, err := d.Dial(context.Background(), t)
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		c.Close()
		dial, rt, cl = dial+t1.Sub(t0), rt+t2.Sub(t1), cl+time.Since(t2)
	}
	b.ReportMetric(float64(dial.Microseconds())/float64(b.N), "dial-µs/op")
	b.ReportMetric(float64(rt.Microseconds())/float64(b.N), "rt-µs/op")
	b.ReportMetric(float64(cl.Microseconds())/float64(b.N), "close-µs/op")
}

// reportCPU reports the process's CPU time (user + system, both ends of
// the tunnel and the upstream) per op: on a loaded machine wall time
// mostly measures the wait for a CPU, CPU time what the tunnel costs.
func reportCPU(b *testing.B) func() {
	start := benchcpu.Used()
	return func() {
		b.ReportMetric(float64((benchcpu.Used()-start).Microseconds())/float64(b.N), "cpu-µs/op")
	}
}

// BenchmarkTunnel_Paced1K: 1 KiB each way on one kept stream, one round
// trip per millisecond, as the benchmark's 1000 qps on one connection:
// between requests every goroutine sleeps, so each request pays the
// wake-ups that back-to-back round trips hide.
func BenchmarkTunnel_Paced1K(b *testing.B) {
	d, t := benchTunnel(b)
	c, err := d.Dial(context.Background(), t)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg, got := make([]byte, 1024), make([]byte, 1024)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	var rt time.Duration
	defer reportCPU(b)()
	for b.Loop() {
		<-tick.C
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			b.Fatal(err)
		}
		rt += time.Since(t0)
	}
	b.ReportMetric(float64(rt.Microseconds())/float64(b.N), "rt-µs/op")
}

// BenchmarkTunnel_Burst16: 16 kept streams on one connection send their
// 1 KiB at the same moment and read the 1 KiB answer, then all sleep 2 ms,
// as fortio's 16 connections at 1000 qps do (each paced alone, all
// started together): the frames of a burst queue behind each other.
func BenchmarkTunnel_Burst16(b *testing.B) {
	const streams = 16
	d, t := benchTunnel(b)
	var conns []*Conn
	for range streams {
		c, err := d.Dial(context.Background(), t)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	start := make([]chan struct{}, streams)
	done := make(chan error, streams)
	for i, c := range conns {
		start[i] = make(chan struct{})
		go func() {
			msg, got := make([]byte, 1024), make([]byte, 1024)
			for range start[i] {
				_, err := c.Write(msg)
				if err == nil {
					_, err = io.ReadFull(c, got)
				}
				done <- err
			}
		}()
	}
	defer func() {
		for _, s := range start {
			close(s)
		}
	}()
	var rt time.Duration
	defer reportCPU(b)()
	for n := 0; n < b.N; n += streams {
		time.Sleep(2 * time.Millisecond)
		t0 := time.Now()
		for _, s := range start {
			s <- struct{}{}
		}
		for range streams {
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		}
		rt += time.Since(t0)
	}
	b.ReportMetric(float64(rt.Microseconds())/float64(b.N)*streams, "burst-µs")
}
