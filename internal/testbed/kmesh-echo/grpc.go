package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// grpcServe serves gRPC's health service; the status of service "flip"
// alternates between SERVING and NOT_SERVING every --flip, so a Watch
// stream carries many messages.
func grpcServe(args []string) error {
	fs := flag.NewFlagSet("grpc-serve", flag.ExitOnError)
	listen := fs.String("listen", "[::]:9090", "address to listen on")
	flip := fs.Duration("flip", 100*time.Millisecond, "period of service flip's status changes")
	fs.Parse(args)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("grpc-serve: %w", err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		serving := true
		for ctx.Err() == nil {
			st := healthpb.HealthCheckResponse_NOT_SERVING
			if serving {
				st = healthpb.HealthCheckResponse_SERVING
			}
			hs.SetServingStatus("flip", st)
			serving = !serving
			time.Sleep(*flip)
		}
	}()
	fmt.Printf("listening %s\n", ln.Addr())
	go func() { <-ctx.Done(); srv.Stop() }()
	return srv.Serve(ln)
}

// grpcCheck calls Check once (unary) and then reads --watch messages of a
// Watch stream of service "flip"; it prints one JSON line.
func grpcCheck(args []string) error {
	fs := flag.NewFlagSet("grpc-check", flag.ExitOnError)
	addr := fs.String("addr", "", "server HOST:PORT (required)")
	watch := fs.Int("watch", 3, "Watch messages to read")
	timeout := fs.Duration("timeout", 10*time.Second, "timeout of the whole exchange")
	fs.Parse(args)
	if *addr == "" {
		return errors.New("grpc-check: --addr is required")
	}
	out := struct {
		Unary    string   `json:"unary"`
		Messages []string `json:"messages"`
		Error    string   `json:"error,omitempty"`
	}{}
	defer func() { json.NewEncoder(os.Stdout).Encode(&out) }()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	cc, err := grpc.NewClient("passthrough:///"+*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		out.Error = err.Error()
		return nil
	}
	defer cc.Close()
	c := healthpb.NewHealthClient(cc)
	r, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		out.Error = "check: " + err.Error()
		return nil
	}
	out.Unary = r.Status.String()
	w, err := c.Watch(ctx, &healthpb.HealthCheckRequest{Service: "flip"})
	if err != nil {
		out.Error = "watch: " + err.Error()
		return nil
	}
	for range *watch {
		m, err := w.Recv()
		if err != nil {
			out.Error = "watch: " + err.Error()
			return nil
		}
		out.Messages = append(out.Messages, m.Status.String())
	}
	return nil
}
