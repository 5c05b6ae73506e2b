package waypoint

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"
)

// ejectFor is how long an endpoint that refused a connection is left out
// of the pick set (passive health checking, as Envoy's outlier detection).
const ejectFor = 10 * time.Second

// health remembers endpoints that failed to connect.
type health struct {
	mu   sync.Mutex
	down map[netip.AddrPort]time.Time
}

func (h *health) fail(a netip.AddrPort) {
	h.mu.Lock()
	h.down[a] = time.Now().Add(ejectFor)
	h.mu.Unlock()
}

func (h *health) ok(a netip.AddrPort) {
	h.mu.Lock()
	delete(h.down, a)
	h.mu.Unlock()
}

func (h *health) healthy(a netip.AddrPort, now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	until, down := h.down[a]
	return !down || now.After(until)
}

// pickEndpoint chooses an endpoint of the backend by weight among the
// healthy ones not tried yet; when all are down or tried it falls back to
// any, as Envoy's panic threshold does. It returns nil when the service has
// no endpoint.
func (p *Proxy) pickEndpoint(be *backend, tried []netip.AddrPort) (*endpoint, netip.AddrPort) {
	eps := be.svc.endpoints
	if len(eps) == 0 {
		return nil, netip.AddrPort{}
	}
	tp := be.port
	if sp := be.svc.ports[be.port]; sp != nil {
		tp = sp.targetPort
	}
	now := time.Now()
	var cand []int
	total := 0
	for pass := 0; pass < 2 && len(cand) == 0; pass++ {
		for i := range eps {
			a := netip.AddrPortFrom(eps[i].addr, tp)
			if pass == 0 && (!p.health.healthy(a, now) || contains(tried, a)) {
				continue
			}
			cand = append(cand, i)
			total += eps[i].weight
		}
	}
	n := rand.IntN(max(total, 1))
	for _, i := range cand {
		if n < eps[i].weight {
			return &eps[i], netip.AddrPortFrom(eps[i].addr, tp)
		}
		n -= eps[i].weight
	}
	i := cand[len(cand)-1]
	return &eps[i], netip.AddrPortFrom(eps[i].addr, tp)
}

func contains(s []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}

// connectError marks a failure to open the upstream connection: retried,
// and the endpoint is ejected for a while.
type connectError struct {
	addr string
	err  error
}

func (e *connectError) Error() string { return fmt.Sprintf("connect to %s: %v", e.addr, e.err) }
func (e *connectError) Unwrap() error { return e.err }

// maxReplay is how much of a request body is kept to send it again on a
// retry; a longer body is not retried (Envoy's buffer limit does the same).
const maxReplay = 64 << 10

// replay records a request body as attempts read it, so a retry can send it
// again.
type replay struct {
	mu       sync.Mutex
	src      io.ReadCloser
	buf      bytes.Buffer
	read     int64
	eof      bool
	overflow bool
}

// attempt returns the body for the next try: what was recorded, then the
// rest of the source.
func (r *replay) attempt() io.ReadCloser { return &attemptBody{r: r} }

// replayable reports whether the whole body can be sent again: it was read
// to the end within the limit, or none of it was read.
func (r *replay) replayable(connectFailed bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return (r.eof && !r.overflow) || (connectFailed && r.read == 0)
}

type attemptBody struct {
	r   *replay
	off int
}

func (b *attemptBody) Read(p []byte) (int, error) {
	r := b.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if b.off < r.buf.Len() {
		n := copy(p, r.buf.Bytes()[b.off:])
		b.off += n
		return n, nil
	}
	if r.eof {
		return 0, io.EOF
	}
	if int64(b.off) < r.read {
		// An earlier attempt read past what was kept: this one cannot
		// send the body whole.
		return 0, io.ErrUnexpectedEOF
	}
	n, err := r.src.Read(p)
	r.read += int64(n)
	if !r.overflow {
		if r.buf.Len()+n <= maxReplay {
			r.buf.Write(p[:n])
		} else {
			r.overflow = true
		}
	}
	b.off += n
	if err == io.EOF {
		r.eof = true
	}
	return n, err
}

// Close leaves the source open: the handler closes it after the last try.
func (b *attemptBody) Close() error { return nil }
