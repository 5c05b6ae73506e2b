package waypoint

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// TestParseRequestHead_AsNetHTTP checks the fast parser against net/http's:
// a request it takes comes out as http.ReadRequest (and the server's Host
// handling) makes it; the ones it refuses are left to net/http.
func TestParseRequestHead_AsNetHTTP(t *testing.T) {
	for _, tc := range []struct {
		head string
		fast bool
	}{
		{"GET / HTTP/1.1\r\nHost: web\r\n\r\n", true},
		{"GET /a/b?x=1&y=%20z HTTP/1.1\r\nHost: web:80\r\nUser-Agent: fortio\r\nAccept: */*\r\n\r\n", true},
		{"POST /echo HTTP/1.1\r\nhost: web\r\ncontent-length: 1024\r\nx-custom-thing: a\r\nX-Custom-Thing: b\r\n\r\n", true},
		{"GET / HTTP/1.1\nHost: web\nX-Lf-Only:  spaced \t\n\n", true},
		{"DELETE /x HTTP/1.1\r\nHost: web\r\nConnection: keep-alive, close\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nHost: web\r\nPragma: no-cache\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nHost: web\r\nX-Empty:\r\n\r\n", true},
		{"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: web\r\n\r\n", false}, // non-ASCII path
		{"GET /a%2Fb HTTP/1.1\r\nHost: web\r\n\r\n", false},       // escapes: net/url
		{"GET /a!b HTTP/1.1\r\nHost: web\r\n\r\n", false},         // RawPath differs
		{"GET http://web/ HTTP/1.1\r\nHost: web\r\n\r\n", false},  // absolute form
		{"OPTIONS * HTTP/1.1\r\nHost: web\r\n\r\n", false},        // asterisk form
		{"GET / HTTP/1.0\r\nHost: web\r\n\r\n", false},            // HTTP/1.0
		{"GET / HTTP/1.1\r\n\r\n", false},                         // no Host
		{"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", false},   // two Hosts
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", false},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", false},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 \r\nTransfer-Encoding: chunked\r\n\r\n", false},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", false},
		{"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", false},
		{"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", false},
		{"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", false},
		{"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", false},
	} {
		var r h1Request
		got := r.parseRequestHead([]byte(tc.head))
		if got != tc.fast {
			t.Errorf("%q: fast %v, want %v", tc.head, got, tc.fast)
			continue
		}
		if !got {
			continue
		}
		want, err := http.ReadRequest(bufio.NewReader(strings.NewReader(tc.head)))
		if err != nil {
			t.Errorf("%q: taken by the fast parser, refused by net/http: %v", tc.head, err)
			continue
		}
		delete(want.Header, "Host")
		q := &r.req
		if q.Method != want.Method || q.RequestURI != want.RequestURI || q.Host != want.Host ||
			q.Proto != want.Proto || q.ContentLength != want.ContentLength || q.Close != want.Close ||
			*q.URL != *want.URL || !reflect.DeepEqual(q.Header, want.Header) {
			t.Errorf("%q:\n fast    %s %s %q %q len %d close %v url %#v header %v\n net/http %s %s %q %q len %d close %v url %#v header %v",
				tc.head, q.Method, q.RequestURI, q.Host, q.Proto, q.ContentLength, q.Close, *q.URL, q.Header,
				want.Method, want.RequestURI, want.Host, want.Proto, want.ContentLength, want.Close, *want.URL, want.Header)
		}
		if q.URL.RequestURI() != want.URL.RequestURI() {
			t.Errorf("%q: RequestURI() %q, net/http %q", tc.head, q.URL.RequestURI(), want.URL.RequestURI())
		}
	}
}

// TestParseRequestHead_ReusesNothingOld: a request parsed after another
// on the same connection carries none of the first one's headers.
func TestParseRequestHead_ReusesNothingOld(t *testing.T) {
	var r h1Request
	if !r.parseRequestHead([]byte("POST /one?q=1 HTTP/1.1\r\nHost: a\r\nX-First: 1\r\nContent-Length: 3\r\n\r\n")) {
		t.Fatal("first request not taken")
	}
	r.req.Header.Set("X-Added-By-Handler", "1")
	if !r.parseRequestHead([]byte("GET /two HTTP/1.1\r\nHost: b\r\n\r\n")) {
		t.Fatal("second request not taken")
	}
	q := &r.req
	if len(q.Header) != 0 || q.URL.RawQuery != "" || q.URL.Path != "/two" || q.ContentLength != 0 || q.Host != "b" || q.Body != http.NoBody {
		t.Fatalf("second request: header %v url %#v length %d host %q", q.Header, *q.URL, q.ContentLength, q.Host)
	}
}

func TestParseResponseHead(t *testing.T) {
	for _, tc := range []struct {
		head, method string
		fast         bool
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n", "GET", true},
		{"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", "GET", true},
		{"HTTP/1.1 204 No Content\r\nX-A: 1\r\nX-A: 2\r\n\r\n", "POST", true},
		{"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n", "GET", true},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD", false},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", false},
		{"HTTP/1.1 200 OK\r\n\r\n", "GET", false}, // read to close
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "GET", false},
		{"HTTP/1.1 100 Continue\r\n\r\n", "GET", false},
		{"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", "GET", false},
		{"HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\n", "GET", false},
		{"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 5\r\n\r\n", "GET", false},
	} {
		r, got := parseResponseHead([]byte(tc.head), tc.method, nil, nil)
		if got != tc.fast {
			t.Errorf("%q: fast %v, want %v", tc.head, got, tc.fast)
			continue
		}
		if !got {
			continue
		}
		want, err := http.ReadResponse(bufio.NewReader(strings.NewReader(tc.head)), &http.Request{Method: tc.method})
		if err != nil {
			t.Errorf("%q: net/http: %v", tc.head, err)
			continue
		}
		if r.status != want.StatusCode || r.statusText != want.Status || r.clen != want.ContentLength ||
			r.close != want.Close || !reflect.DeepEqual(r.header, want.Header) {
			t.Errorf("%q: fast %d %q len %d close %v %v; net/http %d %q len %d close %v %v", tc.head,
				r.status, r.statusText, r.clen, r.close, r.header, want.StatusCode, want.Status, want.ContentLength, want.Close, want.Header)
		}
	}
}

func TestWriteRequestHead_DropsHopHeaders(t *testing.T) {
	var r h1Request
	if !r.parseRequestHead([]byte("POST /p?q=1 HTTP/1.1\r\nHost: web\r\nConnection: close, X-Private\r\nX-Private: 1\r\n" +
		"Keep-Alive: 5\r\nTe: trailers, deflate\r\nContent-Length: 3\r\nX-Kept: yes\r\n\r\n")) {
		t.Fatal("not taken")
	}
	r.req.Header.Set("X-Injected", "a\r\nX-Smuggled: 1")
	var b bytes.Buffer
	bw := bufio.NewWriter(&b)
	writeRequestHead(bw, &r.req, 3)
	bw.WriteString("abc")
	bw.Flush()
	out, err := http.ReadRequest(bufio.NewReader(&b))
	if err != nil {
		t.Fatalf("written head does not parse: %v\n%s", err, b.String())
	}
	body, _ := io.ReadAll(out.Body)
	for _, k := range []string{"Connection", "X-Private", "Keep-Alive", "X-Smuggled"} {
		if _, ok := out.Header[k]; ok {
			t.Errorf("%s forwarded", k)
		}
	}
	if out.Header.Get("Te") != "trailers" || out.Header.Get("X-Kept") != "yes" || out.Host != "web" ||
		out.RequestURI != "/p?q=1" || string(body) != "abc" || out.Header.Get("X-Injected") != "a  X-Smuggled: 1" {
		t.Errorf("forwarded: %s %q host %q header %v body %q", out.Method, out.RequestURI, out.Host, out.Header, body)
	}
}
