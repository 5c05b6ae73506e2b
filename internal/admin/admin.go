// Package admin serves kmeshd's HTTP surfaces, split as ztunnel splits them:
//
//   - the admin API on a local address (--admin-address, 127.0.0.1:15000),
//     read-only: readiness, the config dump, the decoded BPF maps, live
//     connections, the log level and access log switches (GET), and
//     explain. Any local user can reach a TCP port, and a browser can send
//     it a query-only POST, so nothing here changes the daemon;
//   - the control socket (--admin-socket, /run/kmesh/<node>/admin.sock):
//     the same endpoints plus every change (/enroll, /unenroll, POST
//     /logging and /accesslog), on a Unix socket of mode 0600 whose peers
//     must be root (SO_PEERCRED), as ztunnel's CNI socket is;
//   - readiness alone (--readiness-address, :15021), for Kubernetes probes;
//   - Prometheus metrics (--metrics-address, :15020).
//
// It reads the daemon's state through the State interface and never writes
// to the data plane; the only things it changes are the Controls the daemon
// hands it. docs/kmeshctl.md documents every endpoint.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/dataplane"
	"github.com/kmesh-go/kmesh/internal/model"
	"github.com/kmesh-go/kmesh/internal/version"
)

// State is what the daemon shows through the admin API.
type State interface {
	// NotReady says why the daemon is not ready ("" when it is): its first
	// config is not in the maps yet, or the mesh has policies the node
	// cannot enforce (policy never fails open).
	NotReady() string
	ConfigDump() api.ConfigDump
	// Mesh is the mesh last applied, nil before the first; callers must not
	// modify it.
	Mesh() *model.Mesh
	// DumpMaps decodes the BPF maps, one line per entry
	// (dataplane.DumpMaps).
	DumpMaps() ([]string, error)
	// Connections lists the live connections of enrolled workloads.
	Connections() []api.Connection
}

// LBState is what the kernel's balancer decided on its own (outlier
// ejections, session affinity entries); a State that implements it adds
// them to /explain.
type LBState interface {
	Outliers() ([]dataplane.OutlierStat, error)
	Affinity(service string, client netip.Addr) (workload string, left time.Duration, ok bool, err error)
}

// Controls are the daemon's run-time switches the admin API may change.
// A nil field leaves its endpoint out.
type Controls struct {
	// LogLevel is the level of the daemon's log handler.
	LogLevel *slog.LevelVar
	// AccessLog turns the per-connection access log on and off.
	AccessLog *atomic.Bool
	// AccessLogChanged, when set, is called after a switch of AccessLog
	// (the connection telemetry then tells the kernel at once).
	AccessLogChanged func(on bool)
	// Enrollment puts network namespaces in the mesh and takes them out.
	Enrollment Enrollment
	// Certs lists the workload certificates and roots; nil when the mesh
	// has no CA, and /certs answers 404 saying so.
	Certs func() api.Certs
	// TrustDomain is the CA's trust domain, "" when the mesh has none:
	// /explain says which connections the tunnel carries, and as whom.
	TrustDomain string
}

// Enrollment is how a CNI plugin or an operator enrolls a network
// namespace through the admin API, whatever the config source.
type Enrollment interface {
	Enroll(netns string) error
	Unenroll(netns string) error
}

// Handler returns the read-only admin API's handler, for TCP: every change
// is refused with 403 and a pointer to the control socket.
func Handler(st State, c Controls, log *slog.Logger) http.Handler {
	return newMux(&handler{st: st, c: c, log: log})
}

// ControlHandler returns the handler of the control socket: the admin API
// with its changes. Serve it only where the peer is known to be root
// (ListenUnix).
func ControlHandler(st State, c Controls, log *slog.Logger) http.Handler {
	return newMux(&handler{st: st, c: c, log: log, control: true})
}

func newMux(h *handler) http.Handler {
	c := h.c
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", h.ready)
	mux.HandleFunc("GET /config_dump", h.configDump)
	mux.HandleFunc("GET /maps", h.maps)
	mux.HandleFunc("GET /connections", h.connections)
	mux.HandleFunc("GET /explain", h.explain)
	mux.HandleFunc("GET /certs", h.certs)
	mux.HandleFunc("GET /version", h.version)
	if c.LogLevel != nil {
		mux.HandleFunc("/logging", h.logging)
	}
	if c.AccessLog != nil {
		mux.HandleFunc("/accesslog", h.accessLog)
	}
	if c.Enrollment != nil {
		mux.HandleFunc("POST /enroll", h.mutating(h.enroll(c.Enrollment.Enroll, true)))
		mux.HandleFunc("POST /unenroll", h.mutating(h.enroll(c.Enrollment.Unenroll, false)))
	}
	// Go's profiles: heap and CPU of the daemon, for the memory breakdown
	// (issue 12) and for profiling at scale. Read only, like the rest.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /{$}", h.index)
	return mux
}

// ReadinessHandler serves /healthz/ready alone, for the readiness address.
func ReadinessHandler(st State) http.Handler {
	h := &handler{st: st}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", h.ready)
	return mux
}

type handler struct {
	st  State
	c   Controls
	log *slog.Logger
	// control is set on the control socket, the only place changes are
	// served.
	control bool
}

// mutating serves next on the control socket and refuses it elsewhere.
func (h *handler) mutating(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !h.control {
			refuseChange(w)
			return
		}
		next(w, r)
	}
}

// refuseChange answers a change asked over TCP.
func refuseChange(w http.ResponseWriter) {
	http.Error(w, "changes are served on kmeshd's admin socket only (kmeshd --admin-socket, root only; kmeshctl uses it)", http.StatusForbidden)
}

// endpoints is the index the admin address serves at /.
var endpoints = []struct{ path, help string }{
	{"/healthz/ready", "200 once the first config is in the maps and every policy is enforced; 503 with the reason otherwise"},
	{"/config_dump", "the mesh as this kmeshd holds it (JSON)"},
	{"/maps", "the BPF maps, one line per entry"},
	{"/connections", "live connections of enrolled workloads (JSON)"},
	{"/certs", "workload certificates (identity, serial, expiry) and accepted roots (JSON)"},
	{"/logging", "log level; POST ?level=debug|info|warn|error on the admin socket changes it"},
	{"/accesslog", "access log switch; POST ?enabled=true|false on the admin socket changes it"},
	{"/enroll?netns=PATH", "POST, admin socket only: put a network namespace in the mesh (kept across restarts)"},
	{"/unenroll?netns=PATH", "POST, admin socket only: take a namespace enrolled through /enroll out again"},
	{"/explain?source=NS/WORKLOAD&destination=IP:PORT", "what a connect from the workload to the address does, and why (JSON)"},
	{"/version", "this kmeshd's version and commit (JSON)"},
	{"/debug/pprof/", "Go's profiles: heap (in use by the mesh's model, indexes, dataplane records), CPU, goroutines"},
}

func (h *handler) index(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "kmeshd admin API")
	for _, e := range endpoints {
		fmt.Fprintf(w, "  %-50s %s\n", e.path, e.help)
	}
}

func (h *handler) ready(w http.ResponseWriter, r *http.Request) {
	if why := h.st.NotReady(); why != "" {
		http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

func (h *handler) configDump(w http.ResponseWriter, r *http.Request) {
	d := h.st.ConfigDump()
	// Empty lists, not null, so clients may range without checks.
	if d.Services == nil {
		d.Services = []api.Service{}
	}
	if d.Workloads == nil {
		d.Workloads = []api.Workload{}
	}
	if d.Policies == nil {
		d.Policies = []api.Policy{}
	}
	if d.Enrolled == nil {
		d.Enrolled = []string{}
	}
	h.writeJSON(w, d)
}

func (h *handler) version(w http.ResponseWriter, r *http.Request) {
	h.writeJSON(w, api.Version(version.Get()))
}

func (h *handler) maps(w http.ResponseWriter, r *http.Request) {
	lines, err := h.st.DumpMaps()
	if err != nil {
		http.Error(w, "read maps: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}

func (h *handler) connections(w http.ResponseWriter, r *http.Request) {
	conns := h.st.Connections()
	if conns == nil {
		conns = []api.Connection{}
	}
	h.writeJSON(w, conns)
}

// certs lists the workload certificates and the accepted roots.
func (h *handler) certs(w http.ResponseWriter, r *http.Request) {
	if h.c.Certs == nil {
		http.Error(w, "no CA configured: start kmeshd with --ca-cert and --ca-key, or --ca-address", http.StatusNotFound)
		return
	}
	c := h.c.Certs()
	if c.Certificates == nil {
		c.Certificates = []api.Cert{}
	}
	if c.Roots == nil {
		c.Roots = []api.Root{}
	}
	h.writeJSON(w, c)
}

// logging shows the log level (GET) or sets it (POST, PUT: ?level=).
func (h *handler) logging(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		if r.URL.Query().Has("level") {
			http.Error(w, "use POST or PUT to change the level", http.StatusMethodNotAllowed)
			return
		}
	case http.MethodPost, http.MethodPut:
		if !h.control {
			refuseChange(w)
			return
		}
		var level slog.Level
		if err := level.UnmarshalText([]byte(r.URL.Query().Get("level"))); err != nil {
			http.Error(w, fmt.Sprintf("level %q: want debug, info, warn or error", r.URL.Query().Get("level")), http.StatusBadRequest)
			return
		}
		old := h.c.LogLevel.Level()
		h.c.LogLevel.Set(level)
		// Logged at the level that shows either way.
		h.log.Log(r.Context(), max(old, level), "log level changed", "from", levelName(old), "to", levelName(level))
	default:
		w.Header().Set("Allow", "GET, POST, PUT")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	h.writeJSON(w, api.Logging{Level: levelName(h.c.LogLevel.Level())})
}

// levelName is the flag spelling of a level: debug, info, warn, error.
func levelName(l slog.Level) string { return strings.ToLower(l.String()) }

// accessLog shows the access log switch (GET) or flips it (POST, PUT:
// ?enabled=).
func (h *handler) accessLog(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		if r.URL.Query().Has("enabled") {
			http.Error(w, "use POST or PUT to change the access log", http.StatusMethodNotAllowed)
			return
		}
	case http.MethodPost, http.MethodPut:
		if !h.control {
			refuseChange(w)
			return
		}
		on, err := strconv.ParseBool(r.URL.Query().Get("enabled"))
		if err != nil {
			http.Error(w, fmt.Sprintf("enabled %q: want true or false", r.URL.Query().Get("enabled")), http.StatusBadRequest)
			return
		}
		if h.c.AccessLog.Swap(on) != on {
			h.log.Info("access log switched", "enabled", on)
			if h.c.AccessLogChanged != nil {
				h.c.AccessLogChanged(on)
			}
		}
	default:
		w.Header().Set("Allow", "GET, POST, PUT")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	h.writeJSON(w, api.AccessLog{Enabled: h.c.AccessLog.Load()})
}

func (h *handler) explain(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	source, dest := q.Get("source"), q.Get("destination")
	if source == "" || dest == "" {
		http.Error(w, "want ?source=NAMESPACE/WORKLOAD&destination=IP:PORT", http.StatusBadRequest)
		return
	}
	dst, err := netip.ParseAddrPort(dest)
	if err != nil {
		http.Error(w, fmt.Sprintf("destination %q: want IP:PORT ([IPv6]:PORT)", dest), http.StatusBadRequest)
		return
	}
	m := h.st.Mesh()
	if m == nil {
		http.Error(w, "not ready: config not applied yet", http.StatusServiceUnavailable)
		return
	}
	d := h.st.ConfigDump()
	e, err := Explain(m, d.Node, d.Enrolled, d.EnrolledWorkloads, h.c.TrustDomain, source, dst)
	if errors.Is(err, ErrUnknownWorkload) {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if lb, ok := h.st.(LBState); ok && e.Service != nil {
		if err := explainLBState(lb, m, &e, dst.Addr().Unmap().Is4()); err != nil {
			h.log.Warn("explain: balancer state", "err", err)
		}
	}
	h.writeJSON(w, e)
}

func (h *handler) writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		h.log.Debug("write response", "err", err)
	}
}

// explainLBState adds the kernel's ejections and the source's affinity
// entry to an explanation of a connect to a service.
func explainLBState(lb LBState, m *model.Mesh, e *api.Explanation, v4 bool) error {
	key := e.Service.Namespace + "/" + e.Service.Name
	stats, err := lb.Outliers()
	if err != nil {
		return err
	}
	for _, s := range stats {
		if s.Service != key {
			continue
		}
		for _, ej := range s.Ejected {
			for i := range e.Endpoints {
				ep := &e.Endpoints[i]
				if ep.Workload == ej.Workload {
					ep.Ejected = fmt.Sprintf("ejected by outlier detection (%d in a row), back in %s", ej.Times, ej.Left.Round(100*time.Millisecond))
				}
			}
		}
	}
	src := m.Workload(e.Source.Workload)
	if src == nil {
		return nil
	}
	addr, ok := addressOf(src, v4)
	if !ok {
		return nil
	}
	w, left, ok, err := lb.Affinity(key, addr)
	if err != nil || !ok {
		return err
	}
	e.Affinity = &api.ExplainAffinity{Workload: w, ExpiresIn: left.Round(100 * time.Millisecond).String()}
	return nil
}

// Server is one HTTP listener of the daemon.
type Server struct {
	name string
	ln   net.Listener
	srv  *http.Server
}

// Listen binds addr at once, so a port clash fails start-up; Serve serves h
// on it. name (admin, metrics, readiness) goes into errors.
func Listen(name, addr string, h http.Handler) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s address %s: %w", name, addr, err)
	}
	return &Server{name: name, ln: ln, srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}}, nil
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
		return fmt.Errorf("%s server: %w", s.name, err)
	}
	return nil
}

// Close closes the listener of a server that is not serving yet.
func (s *Server) Close() error { return s.ln.Close() }

// Group is servers that serve together.
type Group []*Server

// Serve serves every server until ctx ends or one fails, which stops the
// others.
func (g Group) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(g))
	for _, s := range g {
		go func() {
			err := s.Serve(ctx)
			cancel()
			errc <- err
		}()
	}
	var errs []error
	for range g {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
}

// enroll serves /enroll and /unenroll.
func (h *handler) enroll(do func(string) error, enrolled bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		netns := r.URL.Query().Get("netns")
		if netns == "" {
			http.Error(w, "netns: missing (want ?netns=/var/run/netns/NAME)", http.StatusBadRequest)
			return
		}
		if err := do(netns); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		h.writeJSON(w, api.Enrollment{Netns: netns, Enrolled: enrolled})
	}
}
