package waypoint

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kmesh-go/kmesh/internal/model"
)

// Envoy's response flags, which Istio's metrics and access logs use.
const (
	flagNone          = "-"
	flagNoRoute       = "NR" // no route matched
	flagNoHealthy     = "UH" // no healthy endpoint
	flagConnectFail   = "UF" // upstream connection failure
	flagTimeout       = "UT" // upstream request timeout
	flagReset         = "UR" // upstream reset
	flagFaultAbort    = "FI" // fault injection abort
	flagFaultDelay    = "DI" // fault injection delay
	flagDownstreamGon = "DC" // downstream went away
)

// request is the state of one request through the proxy, for the
// response, metrics and the access log.
type request struct {
	start    time.Time
	info     *connInfo
	svc      *service
	sp       *servicePort
	route    string
	backend  string
	upstream netip.AddrPort
	ep       *endpoint
	status   int
	flags    []string
	attempts int
	reqBytes int64
	rspBytes int64
	grpc     string // grpc-status of the answer, "" if none
	// requestID backs the X-Request-Id header the waypoint adds (no slice
	// of its own to allocate).
	requestID [1]string
}

func (r *request) flag(f string) { r.flags = append(r.flags, f) }

// reqState is a request's state, its writer and body, in one allocation.
type reqState struct {
	rq   request
	cw   countingWriter
	body countingBody
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.serveHTTP(w, r, new(reqState))
}

// serveHTTP is ServeHTTP with the request's state in st, which it
// overwrites: the fast HTTP/1.1 server passes its connection's, reused for
// each request (nothing keeps it after serveHTTP returns), so a request
// allocates none.
func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request, st *reqState) {
	info, _ := r.Context().Value(connKey{}).(*connInfo)
	if info == nil {
		http.Error(w, "no connection information", http.StatusInternalServerError)
		return
	}
	s := p.snap.Load()
	*st = reqState{rq: request{start: time.Now(), info: info, flags: st.rq.flags[:0]},
		cw: countingWriter{ResponseWriter: w}, body: countingBody{ReadCloser: r.Body}}
	rq, cw, body := &st.rq, &st.cw, &st.body
	r.Body = body
	defer func() {
		rq.reqBytes = body.n
		rq.rspBytes = cw.n
		if rq.status == 0 {
			rq.status = cw.status
		}
		p.record(s, r, rq)
	}()

	sp := p.servicePort(s, info, r)
	if sp == nil {
		rq.status = http.StatusNotFound
		rq.flag(flagNoRoute)
		http.Error(cw, "no service for host "+r.Host, http.StatusNotFound)
		return
	}
	rq.sp, rq.svc = sp, sp.svc

	// Policy first, as Istio's waypoint runs RBAC before anything else.
	a := p.attrs(s, info, r)
	policies := append(s.gatewayPolicies[:len(s.gatewayPolicies):len(s.gatewayPolicies)], sp.svc.policies...)
	if d := authorize(policies, &a); !d.allow {
		rq.status = http.StatusForbidden
		p.log.Debug("request denied", "service", sp.svc.key, "path", r.URL.Path, "principal", a.principal, "policy", d.policy)
		http.Error(cw, "RBAC: access denied", http.StatusForbidden)
		return
	}
	grpc := strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
	if fr := sp.svc.fault(r); fr != nil {
		before := time.Now()
		aborted, code := applyFault(r.Context(), fr.fault, cw, grpc)
		if fr.fault.Delay != nil && time.Since(before) >= fr.fault.Delay.Fixed {
			rq.flag(flagFaultDelay)
		}
		if aborted {
			rq.status = code
			rq.flag(flagFaultAbort)
			return
		}
	}

	be, rl, m := p.routeRequest(sp, principalNamespace(a.principal), r, rq)
	if rq.status != 0 {
		http.Error(cw, http.StatusText(rq.status), rq.status)
		return
	}
	retry := defaultRetry
	var timeouts model.RouteTimeouts
	var respMods []*model.HeaderModifier
	if rl != nil {
		retry, timeouts = rl.retry, rl.timeouts
		filters := rl.filters
		if be != nil {
			filters = append(filters[:len(filters):len(filters)], be.filters...)
		}
		var mirrors []*model.RequestMirror
		for _, f := range filters {
			switch f.Type {
			case model.FilterRequestRedirect:
				rq.status = redirect(cw, r, f.RequestRedirect, m)
				return
			case model.FilterRequestHeaderModifier:
				modifyHeaders(r.Header, f.RequestHeaderModifier)
			case model.FilterResponseHeaderModifier:
				respMods = append(respMods, f.ResponseHeaderModifier)
			case model.FilterURLRewrite:
				if f.URLRewrite.Hostname != "" {
					r.Host = f.URLRewrite.Hostname
				}
				if f.URLRewrite.Path != nil {
					r.URL.Path = rewritePath(r.URL.Path, f.URLRewrite.Path, m)
					r.URL.RawPath = ""
				}
			case model.FilterRequestMirror:
				mirrors = append(mirrors, f.RequestMirror)
			}
		}
		// After every filter: the copy carries the request as it goes
		// upstream, whatever the order of the filters (as Envoy's router
		// mirrors it).
		if len(mirrors) > 0 {
			defer p.mirror(s, rl.route.Namespace, r, mirrors)()
		}
	}
	p.forward(cw, r, rq, be, retry, timeouts, respMods)
}

// servicePort finds the port a request is for: the connection's, or on a
// plaintext port shared by several services, the one the Host names. The
// connection keeps its last answer: under the same config the same Host
// names the same port, and a client mostly sends one Host on a connection.
func (p *Proxy) servicePort(s *snapshot, info *connInfo, r *http.Request) *servicePort {
	if info.sp != nil {
		return info.sp
	}
	if last := info.byHost.Load(); last != nil && last.s == s && last.host == r.Host {
		return last.sp
	}
	sp := s.portByHost(info.port, r.Host)
	info.byHost.Store(&hostPort{s: s, host: r.Host, sp: sp})
	return sp
}

// portByHost is the service port on port that host (a Host header, with or
// without a port) names by one of its service's names or addresses.
func (s *snapshot) portByHost(port uint16, host string) *servicePort {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	ip, ipErr := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	for _, sp := range s.byPort[port] {
		for _, h := range sp.svc.hosts {
			if strings.EqualFold(h, host) {
				return sp
			}
		}
		if ipErr == nil && slices.Contains(sp.svc.m.Addresses, ip) {
			return sp
		}
	}
	return nil
}

// routeRequest picks the rule and backend; on failure it sets rq.status.
func (p *Proxy) routeRequest(sp *servicePort, clientNS string, r *http.Request, rq *request) (*backend, *rule, *match) {
	routes, routed := sp.routesFor(clientNS)
	if !routed {
		rq.route = "default"
		rq.backend = sp.self.name
		return sp.self, nil, nil
	}
	e := matchRoute(routes, r)
	if e == nil {
		rq.status = http.StatusNotFound
		rq.flag(flagNoRoute)
		return nil, nil, nil
	}
	rq.route = e.rule.name
	for _, f := range e.rule.filters {
		if f.Type == model.FilterRequestRedirect {
			return nil, e.rule, e.match // a redirect needs no backend
		}
	}
	be := e.rule.pick()
	if be == nil {
		// No backend (all weights 0, or a backendRef that does not
		// resolve): Gateway API says 500.
		rq.status = http.StatusInternalServerError
		return nil, nil, nil
	}
	rq.backend = be.name
	return be, e.rule, e.match
}

// attrs collects what policies see of a request (r nil for TCP).
func (p *Proxy) attrs(s *snapshot, info *connInfo, r *http.Request) attrs {
	a := attrs{principal: info.peer.Principal, srcIP: info.peer.Addr.Addr().Unmap(), dst: info.dst}
	if a.principal == "" {
		// Plaintext: the client is known by its address, as kmeshd knows
		// it before mutual TLS.
		if w := s.byAddr[a.srcIP]; w != nil {
			a.principal = s.principals[w]
		}
	}
	if r != nil {
		a.host, a.method, a.path, a.header = r.Host, r.Method, r.URL.Path, r.Header
		if !a.dst.IsValid() && info.sp != nil {
			a.dst = netip.AddrPortFrom(info.sp.svc.m.Addresses[0], info.sp.port)
		}
	}
	return a
}

// hopHeaders are the connection's own headers, never forwarded.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func removeHop(h http.Header) {
	for _, v := range h["Connection"] {
		for _, k := range strings.Split(v, ",") {
			h.Del(strings.TrimSpace(k))
		}
	}
	te := h.Get("Te")
	for _, k := range hopHeaders {
		h.Del(k)
	}
	if strings.Contains(te, "trailers") {
		h.Set("Te", "trailers") // gRPC needs it end to end
	}
}

// forward sends the request to an endpoint of be, trying again as retry
// says, and writes the answer.
func (p *Proxy) forward(w *countingWriter, r *http.Request, rq *request, be *backend, retry retryPolicy,
	timeouts model.RouteTimeouts, respMods []*model.HeaderModifier) {
	ctx := r.Context()
	if timeouts.Request > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeouts.Request)
		defer cancel()
	}
	if r.Header.Get("X-Request-Id") == "" {
		rq.requestID[0] = newRequestID()
		r.Header["X-Request-Id"] = rq.requestID[:]
	}
	// The pooled HTTP/1.1 client writes the request from r itself, leaving
	// out the hop-by-hop headers; the other transports get a copy without
	// them.
	fast := r.ProtoMajor == 1 && p.h1c.fits(r)
	out := r
	var tr http.RoundTripper = p.h1
	if fast {
		tr = p.h1c
	} else {
		out = r.Clone(ctx)
		out.RequestURI = ""
		out.URL.Scheme = "http"
		out.Close = false
		removeHop(out.Header)
		if r.ProtoMajor == 2 {
			tr = p.h2
		}
	}
	var rp *replay
	var fastBody *bytes.Buffer // the pooled client's body, read once for every attempt
	var fastErr error
	empty := r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0
	if fast && !empty {
		fastBody, fastErr = readBody(r.Body, r.ContentLength)
		if fastBody != nil {
			defer bodyPool.Put(fastBody)
		}
	} else if !empty {
		rp = &replay{src: r.Body}
	}
	var tried []netip.AddrPort
	for attempt := 0; ; attempt++ {
		rq.attempts = attempt + 1
		ep, addr := p.pickEndpoint(be, tried)
		if ep == nil {
			rq.status = http.StatusServiceUnavailable
			rq.flag(flagNoHealthy)
			http.Error(w, "no healthy upstream", http.StatusServiceUnavailable)
			return
		}
		tried = append(tried, addr)
		rq.ep, rq.upstream = ep, addr
		actx, cancel := ctx, context.CancelFunc(func() {})
		if timeouts.BackendRequest > 0 {
			actx, cancel = context.WithTimeout(ctx, timeouts.BackendRequest)
		}
		var body io.ReadCloser = http.NoBody
		if rp != nil {
			body = rp.attempt()
		}
		if attempt > 0 {
			out.Header.Set("X-Envoy-Attempt-Count", strconv.Itoa(attempt+1))
		}
		var resp *http.Response
		var err error
		if fast {
			if err = fastErr; err == nil {
				resp, err = p.h1c.do(actx, out, addr, fastBody, rq.info.pin)
			}
		} else {
			req := out.WithContext(actx)
			req.URL.Host = addr.String()
			req.Body = body
			resp, err = tr.RoundTrip(req)
		}
		status, retriable, flag, connectFailed := p.classify(resp, err, ctx, actx, retry)
		if connectFailed {
			p.health.fail(addr)
		} else if err == nil {
			p.health.ok(addr)
		}
		if retriable && attempt < retry.attempts && (rp == nil || rp.replayable(connectFailed)) && ctx.Err() == nil {
			if resp != nil {
				io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
				resp.Body.Close()
			}
			cancel()
			t := time.NewTimer(retry.backoff + rand.N(retry.backoff/2+1))
			select {
			case <-t.C:
				continue
			case <-ctx.Done():
				t.Stop()
			}
			rq.status = http.StatusGatewayTimeout
			rq.flag(flagTimeout)
			http.Error(w, "upstream request timeout", http.StatusGatewayTimeout)
			return
		}
		if err != nil {
			cancel()
			rq.status = status
			rq.flag(flag)
			msg := "upstream connect error or disconnect/reset before headers"
			if status == http.StatusGatewayTimeout {
				msg = "upstream request timeout"
			}
			if r.Context().Err() != nil {
				rq.flag(flagDownstreamGon)
				return
			}
			http.Error(w, msg, status)
			return
		}
		p.writeResponse(w, resp, rq, respMods)
		cancel()
		return
	}
}

// classify decides what an attempt's outcome means: the status to answer,
// whether it may be retried, and Envoy's flag.
func (p *Proxy) classify(resp *http.Response, err error, ctx, actx context.Context, rp retryPolicy) (status int, retriable bool, flag string, connectFailed bool) {
	if err != nil {
		var ce *connectError
		switch {
		case ctx.Err() != nil:
			return http.StatusGatewayTimeout, false, flagTimeout, false
		case actx.Err() != nil: // the per-try timeout
			return http.StatusGatewayTimeout, containsInt(rp.codes, 504), flagTimeout, false
		case errors.As(err, &ce):
			return http.StatusServiceUnavailable, true, flagConnectFail, true
		case strings.Contains(err.Error(), "REFUSED_STREAM"):
			return http.StatusServiceUnavailable, true, flagReset, false
		}
		return http.StatusServiceUnavailable, false, flagReset, false
	}
	if containsInt(rp.codes, resp.StatusCode) {
		return resp.StatusCode, true, flagNone, false
	}
	// gRPC trailers-only answers carry the status in the headers.
	switch resp.Header.Get("Grpc-Status") {
	case "14", "1": // UNAVAILABLE, CANCELLED
		return resp.StatusCode, true, flagNone, false
	}
	return resp.StatusCode, false, flagNone, false
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// writeResponse copies the upstream answer, streaming (each read is
// flushed, for gRPC and server-sent streams), then its trailers.
func (p *Proxy) writeResponse(w *countingWriter, resp *http.Response, rq *request, mods []*model.HeaderModifier) {
	defer resp.Body.Close()
	h := w.Header()
	for k, v := range resp.Header {
		h[k] = v
	}
	removeHop(h)
	h.Del("Te")
	for _, m := range mods {
		modifyHeaders(h, m)
	}
	for k := range resp.Trailer {
		h.Add("Trailer", k)
	}
	rq.status = resp.StatusCode
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	stream := resp.ContentLength < 0 || resp.ProtoMajor == 2
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				rq.flag(flagDownstreamGon)
				return
			}
			if stream {
				rc.Flush()
			}
		}
		if err != nil {
			if err != io.EOF {
				rq.flag(flagReset)
				// Abort the downstream stream, so the client sees a reset,
				// not a complete body.
				panic(http.ErrAbortHandler)
			}
			break
		}
	}
	for k, v := range resp.Trailer {
		h[http.TrailerPrefix+k] = v
	}
	rq.grpc = resp.Trailer.Get("Grpc-Status")
	if rq.grpc == "" {
		rq.grpc = resp.Header.Get("Grpc-Status")
	}
}

// bufPool holds the copy buffers of responses, so a request allocates none.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// countingWriter counts the response body and keeps the status.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *countingWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingBody counts the request body.
type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}
