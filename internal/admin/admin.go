// Package admin serves kmeshd's admin API on a local address: readiness and
// the config dump. It reads the daemon's state through the State interface
// and never writes to the data plane.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/kmesh-go/kmesh/internal/admin/api"
)

// State is what the daemon shows through the admin API.
type State interface {
	// Ready reports whether the first config is in the maps.
	Ready() bool
	ConfigDump() api.ConfigDump
}

// Server is the admin HTTP server.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen binds the admin address at once, so a port clash fails start-up.
func Listen(addr string, st State, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, r *http.Request) {
		if !st.Ready() {
			http.Error(w, "not ready: config not applied yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st.ConfigDump()); err != nil {
			log.Debug("write config dump", "err", err)
		}
	})
	return &Server{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}, nil
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until ctx ends.
func (s *Server) Serve(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.srv.Shutdown(shutdown)
	}()
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin server: %w", err)
	}
	return nil
}
