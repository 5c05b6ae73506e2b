package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// result is one output line of get.
type result struct {
	Seq       int    `json:"seq"`
	Pod       string `json:"pod"`            // X-Pod of the answer
	Peer      string `json:"peer"`           // getpeername(2) on the client socket
	Local     string `json:"local"`          // the client socket's own address
	ServerSaw string `json:"server_saw"`     // X-Remote-Addr of the answer
	Conn      int    `json:"conn"`           // which connection carried the request
	Status    int    `json:"status"`         // HTTP status, 0 if none came
	Path      string `json:"path"`           // X-Path: the path the server saw
	Millis    int64  `json:"ms"`             // duration of the request
	Body      string `json:"body,omitempty"` // the answer's body, with --print-body
	Error     string `json:"error"`
	At        int64  `json:"at"` // start of the request, Unix nanoseconds
	// Headers are the answer's headers (values joined by ","), with
	// --print-headers.
	Headers map[string]string `json:"headers,omitempty"`
}

// conn is a dialed connection with its number.
type conn struct {
	*net.TCPConn
	id int
}

func get(args []string) error {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	url := fs.String("url", "", "URL to GET (required)")
	count := fs.Int("count", 1, "number of requests; 0 means until SIGTERM or SIGINT")
	interval := fs.Duration("interval", 0, "pause between requests")
	keepalive := fs.Bool("keepalive", false, "reuse connections (default: a new connection per request)")
	timeout := fs.Duration("timeout", 5*time.Second, "timeout of each request, connecting included")
	var headers listenFlags
	fs.Var(&headers, "header", "request header NAME:VALUE, repeatable")
	method := fs.String("method", http.MethodGet, "request method")
	printBody := fs.Bool("print-body", false, "print each answer's body")
	printHeaders := fs.Bool("print-headers", false, "print each answer's headers")
	host := fs.String("host", "", "Host header (default: the URL's host)")
	noRedirect := fs.Bool("no-redirect", false, "report a redirect instead of following it")
	v4Mapped := fs.Bool("v4-mapped", false, "connect IPv4 addresses from an AF_INET6 socket, as ::ffff:a.b.c.d (as dual-stack programs do)")
	bindFrom := fs.String("bind-from", "", "bind connection n to this address plus n-1: many clients from one pod (the addresses must be the pod's)")
	fs.Parse(args)
	if *url == "" {
		return errors.New("get: --url is required")
	}
	var base netip.Addr
	if *bindFrom != "" {
		var err error
		if base, err = netip.ParseAddr(*bindFrom); err != nil {
			return fmt.Errorf("get: --bind-from: %w", err)
		}
	}

	// Not passed to requests: a signal ends the loop but lets the request in
	// flight finish.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var dialed atomic.Int64
	dialer := &net.Dialer{Timeout: *timeout}
	client := &http.Client{
		Timeout: *timeout,
		Transport: &http.Transport{
			DisableKeepAlives: !*keepalive,
			// Requests are sequential; without this cap the transport may dial a
			// second connection when the next request starts before the first
			// connection is back in the idle pool (seen on a loaded machine).
			MaxConnsPerHost: 1,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				dial := dialer.DialContext
				if *v4Mapped {
					dial = dialV4Mapped
				}
				if base.IsValid() {
					src := addrPlus(base, uint32(dialed.Load()))
					d := &net.Dialer{Timeout: *timeout, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
					dial = d.DialContext
				}
				c, err := dial(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &conn{TCPConn: c.(*net.TCPConn), id: int(dialed.Add(1))}, nil
			},
		},
	}
	if *noRedirect {
		client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	opts := requestOpts{method: *method, url: *url, host: *host, headers: headers, printBody: *printBody, printHeaders: *printHeaders}
	out := json.NewEncoder(os.Stdout)
	for seq := 1; *count == 0 || seq <= *count; seq++ {
		if seq > 1 && *interval > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(*interval):
			}
		}
		if ctx.Err() != nil {
			break
		}
		if err := out.Encode(request(client, opts, seq)); err != nil {
			return fmt.Errorf("get: %w", err)
		}
	}
	return nil
}

// addrPlus is a plus n, carried in the last four bytes.
func addrPlus(a netip.Addr, n uint32) netip.Addr {
	b := a.As16()
	v := binary.BigEndian.Uint32(b[12:]) + n
	binary.BigEndian.PutUint32(b[12:], v)
	out := netip.AddrFrom16(b)
	if a.Is4() {
		out = out.Unmap()
	}
	return out
}

// requestOpts is what get sends and prints of each request.
type requestOpts struct {
	method, url, host       string
	headers                 []string
	printBody, printHeaders bool
}

func request(client *http.Client, o requestOpts, seq int) (res result) {
	res = result{Seq: seq, At: time.Now().UnixNano()}
	defer func() { res.Millis = (time.Now().UnixNano() - res.At) / 1e6 }()
	trace := &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			c, ok := info.Conn.(*conn)
			if !ok {
				return
			}
			res.Conn = c.id
			res.Local = c.LocalAddr().String()
			if peer, err := peerName(c.TCPConn); err == nil {
				res.Peer = peer.String()
			} else {
				res.Peer = "error: " + err.Error()
			}
		},
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), o.method, o.url, nil)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	if o.host != "" {
		req.Host = o.host
	}
	for _, h := range o.headers {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Add(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer resp.Body.Close()
	res.Status = resp.StatusCode
	res.Path = resp.Header.Get("X-Path")
	if o.printHeaders {
		res.Headers = map[string]string{}
		for k, v := range resp.Header {
			res.Headers[k] = strings.Join(v, ",")
		}
	}
	// Read to the end, so a kept-alive connection can carry the next request.
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		res.Error = "read body: " + err.Error()
		return res
	}
	if o.printBody {
		res.Body = string(body)
	}
	if resp.StatusCode != http.StatusOK {
		res.Error = resp.Status
		return res
	}
	res.Pod = resp.Header.Get("X-Pod")
	res.ServerSaw = resp.Header.Get("X-Remote-Addr")
	return res
}

// peerName asks the kernel for the socket's peer now, as an application
// calling getpeername(2) would, rather than reading RemoteAddr, which Go
// recorded at connect time. Kmesh's getpeername hooks are meant to answer the
// address the application dialed, not the endpoint it was sent to.
func peerName(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var sa unix.Sockaddr
	var serr error
	if err := raw.Control(func(fd uintptr) { sa, serr = unix.Getpeername(int(fd)) }); err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("getpeername: %w", serr)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), nil
	case *unix.SockaddrInet6:
		// Not unmapped: a dual-stack socket's peer is ::ffff:a.b.c.d.
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("getpeername: unexpected %T", sa)
}

// dialV4Mapped connects to an IPv4 address from an AF_INET6 socket, which
// Go's dialer never does: the kernel then sees connect6 with ::ffff:a.b.c.d.
func dialV4Mapped(ctx context.Context, _, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return nil, fmt.Errorf("v4-mapped dial: %q is not an IPv4 address and port", addr)
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("v4-mapped dial: socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "tcp6")
	defer f.Close()
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: netip.AddrFrom16(ap.Addr().As16()).As16()}
	if err := unix.Connect(fd, sa); err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp6", Err: os.NewSyscallError("connect", err)}
	}
	return net.FileConn(f)
}
