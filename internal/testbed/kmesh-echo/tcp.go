package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// tcpServe serves each connection in one of three modes: reply (read to
// EOF, answer --reply bytes, close: both directions carry a known number of
// bytes), echo (send back everything read, close at EOF) or reset (read to
// EOF, then abort the connection with an RST).
func tcpServe(args []string) error {
	fs := flag.NewFlagSet("tcp-serve", flag.ExitOnError)
	listen := fs.String("listen", "[::]:9000", "address to listen on")
	reply := fs.Int("reply", 1000, "bytes to answer each connection with (mode reply)")
	mode := fs.String("mode", "reply", "reply, echo, echo-splice, reset or hold")
	readAfter := fs.String("read-after", "", "mode hold: read nothing until this file exists, then read to EOF and print what was received")
	deferAccept := fs.Bool("defer-accept", false, "TCP_DEFER_ACCEPT: a connection is accepted (and established on this side) when its first data or FIN arrives, not at the handshake")
	fs.Parse(args)
	var lc net.ListenConfig
	if *deferAccept {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT, 60)
			})
			return errors.Join(err, serr)
		}
	}
	ln, err := lc.Listen(context.Background(), "tcp", *listen)
	if err != nil {
		return fmt.Errorf("tcp-serve: %w", err)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	payload := make([]byte, *reply)
	for {
		c, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("tcp-serve: %w", err)
		}
		go func() {
			defer c.Close()
			switch *mode {
			case "echo":
				// A plain read/write loop: io.Copy between sockets would
				// splice(2), a different kernel path (see echo-splice).
				io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
				return
			case "echo-splice":
				io.Copy(c, c)
				return
			case "reset":
				io.Copy(io.Discard, c)
				c.(*net.TCPConn).SetLinger(0) // close sends RST
				return
			case "hold":
				hold(c, *readAfter)
				return
			}
			if _, err := io.Copy(io.Discard, c); err != nil {
				return
			}
			c.Write(payload)
		}()
	}
}

// hold is a receiver that stops reading: it accepts, reads nothing until
// the file readAfter exists, then reads to EOF with a plain read loop (not
// splice) and prints how much it got and its SHA-256.
func hold(c net.Conn, readAfter string) {
	for {
		if _, err := os.Stat(readAfter); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	h := sha256.New()
	n, err := io.Copy(h, struct{ io.Reader }{c})
	r := sendResult{Received: n, ReceivedHash: hex.EncodeToString(h.Sum(nil))}
	if err != nil {
		r.Error = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(r)
}

// sendResult is one output line of tcp-send.
type sendResult struct {
	Seq          int    `json:"seq"`
	Local        string `json:"local"`
	Sent         int64  `json:"sent"`
	Received     int64  `json:"received"`
	SentHash     string `json:"sent_sha256,omitempty"`     // with --random
	ReceivedHash string `json:"received_sha256,omitempty"` // with --random
	Error        string `json:"error"`
	// With --fill: what the non-blocking writes took before the first
	// error, and that error.
	Filled    int64  `json:"filled,omitempty"`
	FillError string `json:"fill_error,omitempty"`
}

func tcpSend(args []string) error {
	fs := flag.NewFlagSet("tcp-send", flag.ExitOnError)
	addr := fs.String("addr", "", "address to connect to (required)")
	n := fs.Int("bytes", 1000, "bytes to send on each connection")
	count := fs.Int("count", 1, "connections, one after the other")
	hold := fs.Duration("hold", 0, "time to keep each connection open before sending")
	writeFirst := fs.Bool("write-first", false, "with --hold: send the bytes first, then hold before shutting the write side (a connection that moved data and stays open)")
	random := fs.Bool("random", false, "send random bytes, and report the SHA-256 of what was sent and received")
	parallel := fs.Bool("parallel", false, "open the --count connections at once, not one after the other")
	localPort := fs.Int("local-port", 0, "bind connection N (from 1) to this local port + N - 1 (default: any)")
	waitFor := fs.String("wait-for", "", "once connected, say \"holding\" and send only when this file exists")
	fill := fs.Int64("fill", 0, "first write random bytes without blocking until a write fails (EAGAIN once the buffers are full) or this many are written, say how many (a line with \"filled\"), then send --bytes blocking; the hashes cover both")
	fs.Parse(args)
	if *addr == "" {
		return errors.New("tcp-send: --addr is required")
	}
	payload := make([]byte, *n)
	if *random {
		rand.Read(payload)
	}
	var mu sync.Mutex
	out := json.NewEncoder(os.Stdout)
	one := func(seq int) error {
		r := sendResult{Seq: seq}
		o := sendOpts{hold: *hold, writeFirst: *writeFirst, hash: *random, waitFor: *waitFor, fill: *fill, mu: &mu}
		if *localPort != 0 {
			o.localPort = *localPort + seq - 1
		}
		if err := sendOne(*addr, payload, o, &r); err != nil {
			r.Error = err.Error()
		}
		mu.Lock()
		defer mu.Unlock()
		return out.Encode(r)
	}
	if !*parallel {
		for seq := 1; seq <= *count; seq++ {
			if err := one(seq); err != nil {
				return err
			}
		}
		return nil
	}
	errs := make(chan error, *count)
	for seq := 1; seq <= *count; seq++ {
		go func() { errs <- one(seq) }()
	}
	var err error
	for range *count {
		err = errors.Join(err, <-errs)
	}
	return err
}

// sendOpts are tcp-send's options for one connection.
type sendOpts struct {
	hold       time.Duration
	writeFirst bool
	hash       bool
	localPort  int
	waitFor    string
	fill       int64
	mu         *sync.Mutex // stdout
}

func (o sendOpts) holding(r *sendResult) {
	o.mu.Lock()
	defer o.mu.Unlock()
	fmt.Printf("{\"seq\":%d,\"local\":%q,\"holding\":true}\n", r.Seq, r.Local)
}

func sendOne(addr string, payload []byte, o sendOpts, r *sendResult) error {
	d := net.Dialer{Timeout: 5 * time.Second}
	if o.localPort != 0 {
		d.LocalAddr = &net.TCPAddr{Port: o.localPort}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	r.Local = c.LocalAddr().String()
	hold, writeFirst := o.hold, o.writeFirst
	// Say so before holding, so a test can look at the open connection.
	if hold > 0 && !writeFirst {
		o.holding(r)
		time.Sleep(hold)
	}
	if o.waitFor != "" {
		o.holding(r)
		for {
			if _, err := os.Stat(o.waitFor); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// Read while writing: an echoing peer would otherwise fill both
	// directions' buffers and stall.
	received := sha256.New()
	done := make(chan error, 1)
	go func() {
		var err error
		r.Received, err = io.Copy(received, c)
		done <- err
	}()
	sent := sha256.New()
	if o.fill > 0 {
		if err := fillNonBlocking(c.(*net.TCPConn), o.fill, sent, r); err != nil {
			return err
		}
		o.mu.Lock()
		fmt.Printf("{\"seq\":%d,\"filled\":%d,\"fill_error\":%q}\n", r.Seq, r.Filled, r.FillError)
		o.mu.Unlock()
	}
	w, err := c.Write(payload)
	sent.Write(payload[:w])
	r.Sent = r.Filled + int64(w)
	if err == nil && hold > 0 && writeFirst {
		o.holding(r)
		time.Sleep(hold)
	}
	if err == nil {
		err = c.(*net.TCPConn).CloseWrite()
	}
	if err != nil {
		c.Close()
		<-done
		return err
	}
	err = <-done
	if o.hash {
		r.SentHash = hex.EncodeToString(sent.Sum(nil))
		r.ReceivedHash = hex.EncodeToString(received.Sum(nil))
	}
	return err
}

// fillNonBlocking writes random bytes straight to the socket (Go's sockets
// are non-blocking: a write the kernel cannot take fails with EAGAIN
// instead of waiting) until a write fails or max bytes are written, and
// records them in r and h.
func fillNonBlocking(c *net.TCPConn, max int64, h io.Writer, r *sendResult) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	chunk := make([]byte, 64<<10)
	for r.Filled < max {
		rand.Read(chunk)
		b := chunk[:min(int64(len(chunk)), max-r.Filled)]
		var n int
		var werr error
		if err := raw.Write(func(fd uintptr) bool {
			n, werr = syscall.Write(int(fd), b)
			return true // one attempt: no waiting for room
		}); err != nil {
			return err
		}
		if n > 0 {
			h.Write(b[:n])
			r.Filled += int64(n)
		}
		if werr != nil {
			r.FillError = werr.Error()
			return nil
		}
	}
	return nil
}
