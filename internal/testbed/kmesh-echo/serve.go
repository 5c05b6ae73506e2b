package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// listenFlags collects repeated --listen flags.
type listenFlags []string

func (l *listenFlags) String() string     { return strings.Join(*l, ",") }
func (l *listenFlags) Set(s string) error { *l = append(*l, s); return nil }

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	name := fs.String("name", "", "name to answer with (required)")
	var listen listenFlags
	fs.Var(&listen, "listen", "address to listen on, repeatable (default [::]:8080, both IPv4 and IPv6)")
	fs.Parse(args)
	if *name == "" {
		return errors.New("serve: --name is required")
	}
	if len(listen) == 0 {
		listen = listenFlags{"[::]:8080"}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv := &http.Server{Handler: echoHandler(*name), ReadHeaderTimeout: 10 * time.Second}
	// h2c too, for the waypoint's HTTP/2 tests.
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	errc := make(chan error, len(listen))
	for _, addr := range listen {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		// Tests wait for this line: from here on, connections are accepted.
		fmt.Printf("listening %s\n", ln.Addr())
		go func() { errc <- srv.Serve(ln) }()
	}
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		fmt.Fprintln(os.Stderr, "kmesh-echo: shutdown:", err)
	}
	return nil
}

// echoHandler answers every request with the server's name and the two ends
// of the connection as the server sees them. Three paths misbehave on
// purpose, for the waypoint's tests: /status/N answers N, /delay/D answers
// after D, /fail-once/KEY answers 503 the first time a KEY is asked.
func echoHandler(name string) http.Handler {
	var mu sync.Mutex
	failed := map[string]bool{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Path", r.URL.Path)
		code := http.StatusOK
		switch {
		case strings.HasPrefix(r.URL.Path, "/status/"):
			if n, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/")); err == nil && n >= 200 && n <= 599 {
				code = n
			}
		case strings.HasPrefix(r.URL.Path, "/delay/"):
			if d, err := time.ParseDuration(strings.TrimPrefix(r.URL.Path, "/delay/")); err == nil {
				select {
				case <-time.After(d):
				case <-r.Context().Done():
				}
			}
		case strings.HasPrefix(r.URL.Path, "/fail-once/"):
			mu.Lock()
			first := !failed[r.URL.Path]
			failed[r.URL.Path] = true
			mu.Unlock()
			if first {
				code = http.StatusServiceUnavailable
			}
		}
		// Asked for, the request's headers come back as X-Echo-<Name>
		// (values joined by ","), Host as X-Echo-Host: what the waypoint's
		// header filters did is then visible to the client.
		if r.Header.Get("X-Echo-Request-Headers") != "" {
			for k, v := range r.Header {
				h.Set("X-Echo-"+k, strings.Join(v, ","))
			}
			h.Set("X-Echo-Host", r.Host)
		}
		h.Set("X-Pod", name)
		if local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			h.Set("X-Local-Addr", local.String())
		}
		h.Set("X-Remote-Addr", r.RemoteAddr)
		h.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(code)
		fmt.Fprintf(w, "%s\n", name)
	})
}
