package waypoint

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// accessLog writes one JSON line per request.
type accessLog struct {
	mu sync.Mutex
	w  io.Writer
}

// AccessLogEntry is one line of the access log (Envoy's fields, by Istio's
// JSON access log names).
type AccessLogEntry struct {
	StartTime        string `json:"start_time"`
	Method           string `json:"method"`
	Path             string `json:"path"`
	Protocol         string `json:"protocol"`
	ResponseCode     int    `json:"response_code"`
	ResponseFlags    string `json:"response_flags"`
	BytesReceived    int64  `json:"bytes_received"`
	BytesSent        int64  `json:"bytes_sent"`
	DurationMs       int64  `json:"duration"`
	Authority        string `json:"authority"`
	RequestID        string `json:"request_id"`
	DownstreamPeer   string `json:"downstream_remote_address"`
	SourcePrincipal  string `json:"downstream_peer_principal,omitempty"`
	Destination      string `json:"downstream_local_address"`
	Route            string `json:"route_name"`
	Backend          string `json:"upstream_cluster"`
	UpstreamHost     string `json:"upstream_host"`
	Attempts         int    `json:"attempts"`
	GRPCStatus       string `json:"grpc_status,omitempty"`
	UpstreamWorkload string `json:"upstream_workload,omitempty"`
}

func (l *accessLog) write(e *AccessLogEntry) {
	b, err := json.Marshal(e)
	if err != nil {
		return
	}
	b = append(b, '\n')
	l.mu.Lock()
	l.w.Write(b)
	l.mu.Unlock()
}

// record reports a finished request to the metrics and the access log.
func (p *Proxy) record(s *snapshot, r *http.Request, rq *request) {
	if p.opts.Metrics == nil && p.alog == nil {
		return
	}
	d := time.Since(rq.start)
	if m := p.opts.Metrics; m != nil {
		se := p.series(m, s, r, rq)
		se.requests.Inc()
		se.duration.Observe(float64(d.Microseconds()) / 1000)
		se.req.Observe(float64(rq.reqBytes))
		se.resp.Observe(float64(rq.rspBytes))
	}
	if p.alog != nil {
		e := &AccessLogEntry{
			StartTime: rq.start.UTC().Format(time.RFC3339Nano), Method: r.Method, Path: r.URL.RequestURI(),
			Protocol: r.Proto, ResponseCode: rq.status, ResponseFlags: "-", BytesReceived: rq.reqBytes,
			BytesSent: rq.rspBytes, DurationMs: d.Milliseconds(), Authority: r.Host,
			RequestID: r.Header.Get("X-Request-Id"), DownstreamPeer: rq.info.peer.Addr.String(),
			SourcePrincipal: rq.info.peer.Principal, Destination: rq.info.dst.String(), Route: rq.route,
			Backend: rq.backend, Attempts: rq.attempts, GRPCStatus: rq.grpc,
		}
		if len(rq.flags) > 0 {
			e.ResponseFlags = strings.Join(rq.flags, ",")
		}
		if rq.upstream.IsValid() {
			e.UpstreamHost = rq.upstream.String()
		}
		if rq.ep != nil {
			e.UpstreamWorkload = rq.ep.workload
		}
		p.alog.write(e)
	}
}

// newRequestID returns a random UUID (version 4) for x-request-id.
func newRequestID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var u [36]byte // one allocation: the string
	hex.Encode(u[0:8], b[0:4])
	hex.Encode(u[9:13], b[4:6])
	hex.Encode(u[14:18], b[6:8])
	hex.Encode(u[19:23], b[8:10])
	hex.Encode(u[24:], b[10:])
	u[8], u[13], u[18], u[23] = '-', '-', '-', '-'
	return string(u[:])
}
