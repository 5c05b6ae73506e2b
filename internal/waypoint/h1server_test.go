package waypoint

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// h1Bed is a waypoint in front of one backend that answers with the path
// and the request body's length; /slow waits until the request is
// cancelled and reports that on cancelled.
type h1Bed struct {
	*bed
	cancelled chan struct{}
}

func newH1Bed(t *testing.T) *h1Bed {
	b := &h1Bed{bed: newBed(t), cancelled: make(chan struct{}, 1)}
	b.workload("v1", 8080, map[string]string{"app": "v1"}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Saw-Path", r.URL.Path)
		w.Header().Set("X-Body-Len", fmt.Sprint(n))
		if r.URL.Path == "/slow" {
			select {
			case <-r.Context().Done():
				b.cancelled <- struct{}{}
			case <-time.After(10 * time.Second):
			}
			return
		}
		if r.URL.Path == "/pause" {
			time.Sleep(200 * time.Millisecond)
		}
		if r.URL.Path == "/big" {
			io.WriteString(w, strings.Repeat("b", 10000))
			return
		}
		io.WriteString(w, "ok")
	}))
	b.service("web", "10.96.0.1", 8080, "v1", true)
	b.start()
	return b
}

// dial returns a raw connection the waypoint serves as addressed to the
// service, over real loopback TCP.
func (b *h1Bed) dial(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	b.proxy.ServeConn(s, netip.MustParseAddrPort("10.96.0.1:80"), Peer{Addr: netip.MustParseAddrPort("127.0.0.1:40000")})
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func readResp(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, string(body)
}

// wantClosed asserts the waypoint closed the connection.
func wantClosed(t *testing.T, br *bufio.Reader) {
	t.Helper()
	if b, err := br.ReadByte(); err == nil {
		t.Fatalf("connection still open: read %q", b)
	}
}

func TestH1Server_Pipelining(t *testing.T) {
	b := newH1Bed(t)
	c, br := b.dial(t)
	// Three requests in one write, one with a body: answered in order.
	io.WriteString(c, "GET /one HTTP/1.1\r\nHost: web\r\n\r\n"+
		"POST /two HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello"+
		"GET /three HTTP/1.1\r\nHost: web\r\n\r\n")
	for _, want := range []struct{ path, blen string }{{"/one", "0"}, {"/two", "5"}, {"/three", "0"}} {
		resp, body := readResp(t, br, "GET")
		if resp.StatusCode != 200 || body != "ok" || resp.Header.Get("X-Saw-Path") != want.path ||
			resp.Header.Get("X-Body-Len") != want.blen {
			t.Fatalf("%s: %d %q %v", want.path, resp.StatusCode, body, resp.Header)
		}
	}
}

// TestH1Server_PipelinedWhileServing: a request that arrives while the one
// before it is being served is answered as soon as that one is, not when
// some timer next looks at the connection.
func TestH1Server_PipelinedWhileServing(t *testing.T) {
	b := newH1Bed(t)
	c, br := b.dial(t)
	io.WriteString(c, "GET /pause HTTP/1.1\r\nHost: web\r\n\r\n")
	time.Sleep(100 * time.Millisecond) // read and being served (200 ms)
	io.WriteString(c, "GET /next HTTP/1.1\r\nHost: web\r\n\r\n")
	if resp, _ := readResp(t, br, "GET"); resp.Header.Get("X-Saw-Path") != "/pause" {
		t.Fatalf("first answer for %q", resp.Header.Get("X-Saw-Path"))
	}
	start := time.Now()
	resp, _ := readResp(t, br, "GET")
	if resp.Header.Get("X-Saw-Path") != "/next" {
		t.Fatalf("second answer for %q", resp.Header.Get("X-Saw-Path"))
	}
	if d := time.Since(start); d > 300*time.Millisecond {
		t.Fatalf("the pipelined request was answered %v after the first", d)
	}
}

// TestH1Server_HalfCloseGetsAnswer: a client that shuts down its sending
// side after its request gets the answer, and then the connection closes
// (not left open until the idle timeout).
func TestH1Server_HalfCloseGetsAnswer(t *testing.T) {
	for _, pause := range []time.Duration{0, 20 * time.Millisecond} {
		t.Run(pause.String(), func(t *testing.T) {
			b := newH1Bed(t)
			c, br := b.dial(t)
			io.WriteString(c, "GET /one HTTP/1.1\r\nHost: web\r\n\r\n")
			time.Sleep(pause) // 0: the FIN comes with the request
			c.(*net.TCPConn).CloseWrite()
			if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("answer %d %q", resp.StatusCode, body)
			}
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if b, err := br.ReadByte(); err != io.EOF {
				t.Fatalf("after the answer: read %q, %v; want the connection closed", b, err)
			}
		})
	}
}

func TestH1Server_ChunkedRequestBody(t *testing.T) {
	b := newH1Bed(t)
	c, br := b.dial(t)
	io.WriteString(c, "POST /up HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"+
		"GET /after HTTP/1.1\r\nHost: web\r\n\r\n")
	resp, _ := readResp(t, br, "POST")
	if resp.StatusCode != 200 || resp.Header.Get("X-Body-Len") != "11" {
		t.Fatalf("chunked POST: %d, backend read %s bytes, want 200 and 11", resp.StatusCode, resp.Header.Get("X-Body-Len"))
	}
	if resp, _ := readResp(t, br, "GET"); resp.Header.Get("X-Saw-Path") != "/after" {
		t.Fatalf("request after the chunked body: %v", resp.Header)
	}
}

func TestH1Server_RejectsSmuggling(t *testing.T) {
	for name, req := range map[string]string{
		"CL and TE":            "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"TE and CL":            "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
		"two TE":               "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"two different CL":     "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
		"bad request line":     "GARBAGE\r\n\r\n",
		"header without colon": "GET / HTTP/1.1\r\nHost: web\r\nNoColon\r\n\r\n",
		"space in header name": "GET / HTTP/1.1\r\nHost: web\r\nBad Name: x\r\n\r\n",
		"bad content length":   "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: -1\r\n\r\n",
		"control in value":     "GET / HTTP/1.1\r\nHost: web\r\nX: a\x00b\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			b := newH1Bed(t)
			c, br := b.dial(t)
			io.WriteString(c, req+"GET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n")
			resp, _ := readResp(t, br, "POST")
			if resp.StatusCode != 400 {
				t.Fatalf("status %d, want 400", resp.StatusCode)
			}
			wantClosed(t, br)
		})
	}
}

func TestH1Server_ExpectContinue(t *testing.T) {
	b := newH1Bed(t)
	c, br := b.dial(t)
	io.WriteString(c, "POST /e HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	// The body is sent only after the interim answer, as curl does.
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
		t.Fatalf("first line %q (%v), want 100 Continue", line, err)
	}
	if line, _ := br.ReadString('\n'); line != "\r\n" {
		t.Fatalf("after 100 Continue: %q", line)
	}
	io.WriteString(c, "hello")
	resp, _ := readResp(t, br, "POST")
	if resp.StatusCode != 200 || resp.Header.Get("X-Body-Len") != "5" {
		t.Fatalf("after 100-continue: %d body %s", resp.StatusCode, resp.Header.Get("X-Body-Len"))
	}
}

func TestH1Server_Framing(t *testing.T) {
	b := newH1Bed(t)
	c, br := b.dial(t)
	// The waypoint's own short answer (no route: the service answers only
	// for its own host here, so a 403 from policy is not needed) and a
	// backend's long one keep the connection; HEAD has no body.
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: web\r\n\r\nGET /big HTTP/1.1\r\nHost: web\r\n\r\nHEAD /big HTTP/1.1\r\nHost: web\r\n\r\n")
	resp, body := readResp(t, br, "GET")
	if resp.ContentLength != 2 || body != "ok" || resp.Header.Get("Date") == "" {
		t.Fatalf("short answer: length %d body %q date %q", resp.ContentLength, body, resp.Header.Get("Date"))
	}
	resp, body = readResp(t, br, "GET")
	if len(body) != 10000 {
		t.Fatalf("long answer: %d bytes", len(body))
	}
	resp, body = readResp(t, br, "HEAD")
	if resp.StatusCode != 200 || body != "" {
		t.Fatalf("HEAD: %d %q", resp.StatusCode, body)
	}
	// Connection: close is honoured and announced.
	io.WriteString(c, "GET /last HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
	resp, _ = readResp(t, br, "GET")
	if !resp.Close {
		t.Fatal("answer to Connection: close does not announce close")
	}
	wantClosed(t, br)
}

func TestH1Server_FallsBackToNetHTTP(t *testing.T) {
	b := newH1Bed(t)
	for name, req := range map[string]string{
		"HTTP/1.0":         "GET /old HTTP/1.0\r\nHost: web\r\n\r\n",
		"huge header":      "GET /old HTTP/1.1\r\nHost: web\r\nX-Big: " + strings.Repeat("a", 20000) + "\r\n\r\n",
		"obsolete folding": "GET /old HTTP/1.1\r\nHost: web\r\nX-Folded: a\r\n b\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			c, br := b.dial(t)
			io.WriteString(c, req)
			resp, _ := readResp(t, br, "GET")
			// net/http serves them as it did before the fast path.
			if resp.StatusCode != 200 || resp.Header.Get("X-Saw-Path") != "/old" {
				t.Fatalf("status %d path %q, want 200 from the backend", resp.StatusCode, resp.Header.Get("X-Saw-Path"))
			}
		})
	}
}

func TestH1Server_ClientGoneCancelsRequest(t *testing.T) {
	b := newH1Bed(t)
	c, br := b.dial(t)
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: web\r\n\r\n")
	time.Sleep(200 * time.Millisecond) // past h1Watch: the connection is watched
	c.Close()
	select {
	case <-b.cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the backend's request was not cancelled when the client went away")
	}
	_ = br
}

func TestClassifyHead(t *testing.T) {
	for _, tc := range []struct {
		head string
		want headKind
	}{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", headFast},
		{"GET / HTTP/1.1\nHost: a\n\n", headFast},
		{"PRI * HTTP/2.0\r\n\r\n", headFallback},
		{"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nHTTP2-Settings: x\r\n\r\n", headFallback},
		{"GET / HTTP/1.1\r\nHost: a\r\nupgrade: websocket\r\n\r\n", headFallback},
		{"CONNECT a:1 HTTP/1.1\r\nHost: a\r\n\r\n", headFallback},
		{"GET / HTTP/1.1\r\n\r\n", headFallback},
		{"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", headFallback},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", headFallback},
		{"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: Chunked\r\n\r\n", headFast},
		{"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n", headBad},
		{"GET /\r\n\r\n", headBad},
	} {
		if got := classifyHead([]byte(tc.head)); got != tc.want {
			t.Errorf("%q: %d, want %d", tc.head, got, tc.want)
		}
	}
	if headEnd([]byte("GET / HTTP/1.1\r\nHost: a\r\n")) != -1 || headEnd([]byte("GET / HTTP/1.1\r\n\r\nxx")) != 18 {
		t.Error("headEnd")
	}
}

// TestH1Server_BodiesByContentLength: bodies framed by Content-Length, one
// the pooled client carries (under maxReplay) and one net/http's transport
// streams, each followed on the connection by another request, arrive
// whole and the next request after them.
func TestH1Server_BodiesByContentLength(t *testing.T) {
	b := newH1Bed(t)
	c, br := b.dial(t)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	for _, n := range []int{1, 1024, maxReplay, maxReplay + 1, 3 << 20} {
		go io.WriteString(c, fmt.Sprintf("PUT /b%d HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n%s"+
			"GET /after HTTP/1.1\r\nHost: web\r\n\r\n", n, n, strings.Repeat("z", n)))
		resp, _ := readResp(t, br, "PUT")
		if resp.StatusCode != 200 || resp.Header.Get("X-Body-Len") != fmt.Sprint(n) || resp.Header.Get("X-Saw-Path") != fmt.Sprintf("/b%d", n) {
			t.Fatalf("%d-byte body: status %d, backend saw %s bytes on %s", n, resp.StatusCode, resp.Header.Get("X-Body-Len"), resp.Header.Get("X-Saw-Path"))
		}
		resp, _ = readResp(t, br, "GET")
		if resp.Header.Get("X-Saw-Path") != "/after" || resp.Header.Get("X-Body-Len") != "0" {
			t.Fatalf("after the %d-byte body: path %q body %s", n, resp.Header.Get("X-Saw-Path"), resp.Header.Get("X-Body-Len"))
		}
	}
}

// TestH1Server_ShortBodyNeverForwardedWhole: a client that ends its
// connection short of its Content-Length gets no answer from the backend
// for a request it did not finish.
func TestH1Server_ShortBodyNeverForwardedWhole(t *testing.T) {
	b := newH1Bed(t)
	c, br := b.dial(t)
	io.WriteString(c, "POST /short HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\n\r\nabc")
	c.(*net.TCPConn).CloseWrite()
	resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
	if err == nil && resp.StatusCode == 200 {
		t.Fatalf("a 3-of-10-byte body was answered 200 (backend saw %s bytes)", resp.Header.Get("X-Body-Len"))
	}
}
