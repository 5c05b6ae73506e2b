package waypoint

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/kmesh-go/kmesh/internal/model"
)

// mirrorBodyLimit is how much of a request body a mirrored copy carries;
// a longer body aborts the copies (Envoy's shadow has a buffer limit too).
const mirrorBodyLimit = 64 << 10

// errBodyUnfinished ends a copy whose original body was not read to its
// end (the request failed before it was sent, or the client went away).
var errBodyUnfinished = errors.New("mirrored request: the original body was not read to its end")

// mirror sends a copy of r to each mirror's backend (routeNS is the
// namespace of the route, where a backendRef without one is) and forgets
// the answers. The copies' bodies are what the original's upstream
// request reads, as it reads it: a streaming gRPC call is mirrored as it
// goes, and no copy makes the original wait. The returned func ends the
// copies' bodies once the request is done.
func (p *Proxy) mirror(s *snapshot, routeNS string, r *http.Request, mirrors []*model.RequestMirror) func() {
	var tees []*teeBody
	for _, m := range mirrors {
		if m.Percent < 100 && !roll(float64(m.Percent)) {
			continue
		}
		be, err := s.backend(routeNS, m.Backend)
		if err != nil {
			continue
		}
		_, addr := p.pickEndpoint(&be, nil)
		if !addr.IsValid() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out := r.Clone(ctx)
		out.RequestURI = ""
		out.URL.Scheme, out.URL.Host = "http", addr.String()
		out.Body, out.ContentLength = http.NoBody, 0
		if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
			t := newTeeBody()
			tees = append(tees, t)
			out.Body, out.ContentLength = t, r.ContentLength
		}
		removeHop(out.Header)
		// Envoy marks mirrored requests by the authority.
		host := r.Host
		if h, port, err := net.SplitHostPort(host); err == nil {
			host = net.JoinHostPort(h+"-shadow", port)
		} else {
			host += "-shadow"
		}
		out.Host = host
		tr := p.h1
		if r.ProtoMajor == 2 {
			tr = p.h2
		}
		go func() {
			defer cancel()
			resp, err := tr.RoundTrip(out)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	if len(tees) == 0 {
		return func() {}
	}
	src := r.Body
	r.Body = &teeSource{ReadCloser: src, tees: tees}
	return func() {
		for _, t := range tees {
			t.end(errBodyUnfinished)
		}
	}
}

// teeSource is the original request's body, copying what is read from it
// into the mirrored copies' bodies.
type teeSource struct {
	io.ReadCloser
	tees []*teeBody
}

func (s *teeSource) Read(b []byte) (int, error) {
	n, err := s.ReadCloser.Read(b)
	for _, t := range s.tees {
		t.write(b[:n])
		if err == io.EOF {
			t.end(io.EOF)
		}
	}
	return n, err
}

// teeBody is a mirrored copy's body: what the original's reader has read
// and the copy has not, up to mirrorBodyLimit. Writing never blocks; a
// copy that falls behind by more than the limit is aborted.
type teeBody struct {
	mu   sync.Mutex
	more *sync.Cond
	buf  []byte
	sent int   // bytes written in all, against the limit
	err  error // io.EOF, or why the copy ends; set once
}

func newTeeBody() *teeBody {
	t := &teeBody{}
	t.more = sync.NewCond(&t.mu)
	return t
}

func (t *teeBody) write(b []byte) {
	if len(b) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err != nil {
		return
	}
	if t.sent += len(b); t.sent > mirrorBodyLimit {
		t.err, t.buf = errors.New("mirrored request: body longer than 64 KiB"), nil
	} else {
		t.buf = append(t.buf, b...)
	}
	t.more.Broadcast()
}

// end ends the body with err, unless it has ended already.
func (t *teeBody) end(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err == nil {
		t.err = err
		t.more.Broadcast()
	}
}

func (t *teeBody) Read(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(t.buf) == 0 && t.err == nil {
		t.more.Wait()
	}
	if len(t.buf) > 0 && (t.err == nil || t.err == io.EOF) {
		n := copy(b, t.buf)
		t.buf = t.buf[n:]
		return n, nil
	}
	return 0, t.err
}

func (t *teeBody) Close() error {
	t.end(errBodyUnfinished)
	return nil
}
