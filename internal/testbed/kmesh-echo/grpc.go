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
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// grpcServe serves gRPC's health service; the status of service "flip"
// alternates between SERVING and NOT_SERVING every --flip, so a Watch
// stream carries many messages.
func grpcServe(args []string) error {
	fs := flag.NewFlagSet("grpc-serve", flag.ExitOnError)
	listen := fs.String("listen", "[::]:9090", "address to listen on")
	flip := fs.Duration("flip", 100*time.Millisecond, "period of service flip's status changes")
	name := fs.String("name", "", "name sent back in the x-pod header of every call, with the call's metadata as x-echo-<key>; each unary call is also printed as a JSON line (method and metadata), as a request log")
	fs.Parse(args)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("grpc-serve: %w", err)
	}
	var opts []grpc.ServerOption
	if *name != "" {
		opts = append(opts, grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			md := metadata.Pairs("x-pod", *name)
			in, _ := metadata.FromIncomingContext(ctx)
			seen := map[string]string{}
			for k, v := range in {
				seen[k] = strings.Join(v, ",")
				if strings.HasPrefix(k, ":") {
					continue // a pseudo-header (:authority): no valid name with a prefix
				}
				md.Append("x-echo-"+k, strings.Join(v, ","))
			}
			grpc.SetHeader(ctx, md)
			line, _ := json.Marshal(struct {
				Call     string            `json:"call"`
				Metadata map[string]string `json:"metadata"`
			}{info.FullMethod, seen})
			os.Stdout.Write(append(line, '\n'))
			return h(ctx, req)
		}))
	}
	srv := grpc.NewServer(opts...)
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
	count := fs.Int("count", 1, "unary calls to make; each answer's headers go to \"answers\"")
	var mds listenFlags
	fs.Var(&mds, "metadata", "request metadata KEY:VALUE, repeatable")
	fs.Parse(args)
	if *addr == "" {
		return errors.New("grpc-check: --addr is required")
	}
	out := struct {
		Unary    string   `json:"unary"`
		Messages []string `json:"messages"`
		Error    string   `json:"error,omitempty"`
		// Answers are the header metadata of each unary call (values
		// joined by ",").
		Answers []map[string]string `json:"answers,omitempty"`
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
	for _, kv := range mds {
		k, v, _ := strings.Cut(kv, ":")
		ctx = metadata.AppendToOutgoingContext(ctx, k, v)
	}
	for range *count {
		var hdr metadata.MD
		r, err := c.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&hdr))
		if err != nil {
			out.Error = "check: " + err.Error()
			return nil
		}
		out.Unary = r.Status.String()
		a := map[string]string{}
		for k, v := range hdr {
			a[k] = strings.Join(v, ",")
		}
		out.Answers = append(out.Answers, a)
	}
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
