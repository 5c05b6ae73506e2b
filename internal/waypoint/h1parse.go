package waypoint

import (
	"bufio"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// h1parse.go parses and writes HTTP/1.1 message heads without net/http's
// allocations: the head is copied into one string and every method, path,
// header name and value is a piece of it; the request object, its URL and
// its header map are the connection's, reused for each request. It takes
// only the plainest messages (HTTP/1.1, origin-form target without
// escapes, token header names, a single decimal Content-Length, no
// Transfer-Encoding); for anything else it reports false and the caller
// parses with net/http as before, so every unusual case keeps net/http's
// behaviour (and its answer to bad input). classifyHead has already
// refused the smuggling cases (Content-Length with Transfer-Encoding, two
// Transfer-Encodings) before a request gets here.

// h1Request is the connection's request, reused for each request it
// carries: nothing keeps a request past its handler (a mirror clones it).
type h1Request struct {
	base http.Request // the request with the connection's context, zero otherwise
	req  http.Request
	url  url.URL
	hdr  http.Header
	// vals backs hdr's values; a handler that keeps a header past its
	// request copies it (a mirror clones the request).
	vals []string
}

// parseRequestHead fills r.req from head (a whole header block, through
// its empty line). It reports false, with r.req in no defined state, when
// the request is not one it takes.
func (r *h1Request) parseRequestHead(head []byte) bool {
	// Up to 8 names the map is one group (clearing a larger one walks its
	// whole table every request).
	if r.hdr == nil || len(r.hdr) > 8 {
		r.hdr = make(http.Header, 8)
	} else {
		clear(r.hdr)
	}
	s := string(head)
	line, rest, ok := cutLine(s)
	if !ok {
		return false
	}
	sp1 := strings.IndexByte(line, ' ')
	if sp1 <= 0 {
		return false
	}
	sp2 := strings.IndexByte(line[sp1+1:], ' ')
	if sp2 < 0 {
		return false
	}
	method, target, proto := line[:sp1], line[sp1+1:sp1+1+sp2], line[sp1+2+sp2:]
	if proto != "HTTP/1.1" || !validMethod(method) || !plainTarget(target) {
		return false
	}
	r.url = url.URL{}
	if i := strings.IndexByte(target, '?'); i >= 0 {
		r.url.Path, r.url.RawQuery = target[:i], target[i+1:]
	} else {
		r.url.Path = target
	}
	hosts, cls := 0, 0
	host, cl := "", int64(0)
	closeConn := false
	if lines := strings.Count(rest, "\n"); len(r.vals) < lines {
		r.vals = make([]string, lines)
	}
	fields := fieldValues{vals: r.vals}
	for {
		line, rest, ok = cutLine(rest)
		if !ok {
			return false
		}
		if line == "" {
			break
		}
		name, value, ok := headerField(line)
		if !ok {
			return false
		}
		switch name {
		case "Host":
			hosts++
			host = value
			continue // as net/http's server: Host is req.Host, not a header
		case "Content-Length":
			cls++
			v, ok := parseContentLength(value)
			if !ok {
				return false
			}
			cl = v
		case "Transfer-Encoding", "Trailer", "Upgrade", "Expect", "Http2-Settings":
			return false
		case "Connection":
			if httpguts.HeaderValuesContainsToken([]string{value}, "close") {
				closeConn = true
			}
		}
		fields.add(r.hdr, name, value)
	}
	if hosts != 1 || cls > 1 || !httpguts.ValidHostHeader(host) {
		return false
	}
	if _, ok := r.hdr["Pragma"]; ok {
		// net/http's server does this (RFC 7234 §5.4): keep it for the
		// backend seeing the same request.
		if _, ok := r.hdr["Cache-Control"]; !ok && len(r.hdr["Pragma"]) > 0 && r.hdr["Pragma"][0] == "no-cache" {
			r.hdr["Cache-Control"] = []string{"no-cache"}
		}
	}
	r.req = r.base
	q := &r.req
	q.Method, q.URL, q.Proto, q.ProtoMajor, q.ProtoMinor = method, &r.url, proto, 1, 1
	q.Header, q.Host, q.RequestURI, q.ContentLength, q.Close = r.hdr, host, target, cl, closeConn
	q.Body = http.NoBody
	return true
}

// headerField splits a header line into its canonical name and its value;
// ok is false for a line net/http would refuse.
func headerField(line string) (name, value string, ok bool) {
	colon := strings.IndexByte(line, ':')
	if colon <= 0 {
		return "", "", false
	}
	name, value = line[:colon], trimOWS(line[colon+1:])
	if !validToken(name) || !httpguts.ValidHeaderFieldValue(value) {
		return "", "", false
	}
	return canonicalName(name), value, true
}

// fieldValues is one backing array for a head's header values: a header
// seen once (nearly all) takes one slot of it.
type fieldValues struct {
	vals []string
	n    int
}

// newFieldValues sizes the array for the header lines left in rest.
func newFieldValues(rest string) fieldValues {
	return fieldValues{vals: make([]string, strings.Count(rest, "\n"))}
}

// add appends value to name's values in h.
func (f *fieldValues) add(h http.Header, name, value string) {
	if old, ok := h[name]; ok {
		h[name] = append(old, value)
		return
	}
	f.vals[f.n] = value
	h[name] = f.vals[f.n : f.n+1 : f.n+1]
	f.n++
}

// cutLine returns the line at the start of s without its CRLF (or LF) and
// the rest; ok is false when s holds no line end.
func cutLine(s string) (line, rest string, ok bool) {
	i := strings.IndexByte(s, '\n')
	if i < 0 {
		return "", "", false
	}
	line = s[:i]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	if strings.IndexByte(line, '\r') >= 0 {
		return "", "", false // a bare CR: net/http decides
	}
	return line, s[i+1:], true
}

func trimOWS(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !httpguts.IsTokenRune(rune(s[i])) {
			return false
		}
	}
	return true
}

// validMethod takes the methods the fast path serves (CONNECT is
// net/http's).
func validMethod(m string) bool {
	return m != "CONNECT" && validToken(m)
}

// plainTarget reports whether target is an origin-form path (and query)
// that net/url would take apart into Path and RawQuery as they are: the
// path has only characters it neither unescapes nor escapes again (so
// RawPath stays empty), the query no control, space, non-ASCII or '#'.
func plainTarget(t string) bool {
	if t == "" || t[0] != '/' {
		return false
	}
	i := 0
	for ; i < len(t) && t[i] != '?'; i++ {
		c := t[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			switch c {
			case '-', '_', '.', '~', '$', '&', '+', ',', '/', ':', ';', '=', '@':
			default:
				return false
			}
		}
	}
	for ; i < len(t); i++ {
		if c := t[i]; c <= ' ' || c >= 0x7f || c == '#' {
			return false
		}
	}
	return true
}

// parseContentLength takes 1 to 18 decimal digits, nothing else.
func parseContentLength(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var v int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
	}
	return v, true
}

// commonHeaders are the canonical spellings of the headers most requests
// and answers carry: a name found here is not built again.
var commonHeaders = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"Host", "Content-Length", "Content-Type", "Transfer-Encoding", "Trailer", "Upgrade",
		"Expect", "Http2-Settings", "Connection", "Keep-Alive", "Te", "Accept", "Accept-Encoding", "Accept-Language",
		"User-Agent", "Date", "Server", "Cache-Control", "Pragma", "Authorization", "Cookie", "Set-Cookie", "Referer",
		"Origin", "Location", "Etag", "Last-Modified", "Vary", "X-Request-Id", "X-Forwarded-For",
		"X-Forwarded-Proto", "X-Envoy-Attempt-Count", "Grpc-Status", "Grpc-Message", "Content-Encoding",
		"Proxy-Connection", "Proxy-Authorization", "Proxy-Authenticate", "If-None-Match", "If-Modified-Since",
		"Traceparent", "Tracestate", "B3", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Sampled", "X-B3-Parentspanid"} {
		m[k] = k
		m[strings.ToLower(k)] = k
	}
	return m
}()

// canonicalName is http.CanonicalHeaderKey of a valid token name, without
// an allocation for a name already canonical or a common one in lower
// case.
func canonicalName(name string) string {
	if k, ok := commonHeaders[name]; ok {
		return k
	}
	upper := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return http.CanonicalHeaderKey(name)
		}
		upper = c == '-'
	}
	return name
}

// h1Response is a parsed answer head (parseResponseHead).
type h1Response struct {
	status     int
	statusText string // "200 OK"
	header     http.Header
	clen       int64 // -1: none (only for answers without a body)
	close      bool
}

// parseResponseHead parses an HTTP/1.1 answer head whose body is framed by
// Content-Length (or that has none by its status). It reports false for
// everything else (chunked, read to close, HTTP/1.0, odd syntax), which
// http.ReadResponse then parses.
//
// h (nil: a new one) is cleared and becomes r.header; vals (nil or too
// short: a new array) backs the header values.
func parseResponseHead(head []byte, method string, h http.Header, vals []string) (h1Response, bool) {
	var r h1Response
	s := string(head)
	line, rest, ok := cutLine(s)
	if !ok || len(line) < 12 || line[:9] != "HTTP/1.1 " || (len(line) > 12 && line[12] != ' ') {
		return r, false
	}
	code := line[9:12]
	if code[0] < '1' || code[0] > '9' || code[1] < '0' || code[1] > '9' || code[2] < '0' || code[2] > '9' {
		return r, false
	}
	r.status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	r.statusText = line[9:]
	if len(line) == 12 {
		r.statusText = code
	}
	if r.status < 200 || method == http.MethodHead {
		return r, false // interim answers and HEAD's: net/http's rules
	}
	if h == nil {
		h = make(http.Header)
	} else {
		clear(h)
	}
	r.header = h
	r.clen = -1
	fields := fieldValues{vals: vals}
	if lines := strings.Count(rest, "\n"); len(vals) < lines {
		fields = newFieldValues(rest)
	}
	for {
		line, rest, ok = cutLine(rest)
		if !ok {
			return r, false
		}
		if line == "" {
			break
		}
		name, value, ok := headerField(line)
		if !ok {
			return r, false
		}
		switch name {
		case "Content-Length":
			v, ok := parseContentLength(value)
			if !ok || r.clen >= 0 {
				return r, false
			}
			r.clen = v
		case "Transfer-Encoding", "Trailer":
			return r, false
		case "Connection":
			if httpguts.HeaderValuesContainsToken([]string{value}, "close") {
				r.close = true
			}
		}
		fields.add(r.header, name, value)
	}
	if r.close {
		delete(r.header, "Connection") // as net/http: Close says it
	}
	noBody := r.status == http.StatusNoContent || r.status == http.StatusNotModified
	if r.clen < 0 && !noBody {
		return r, false // read to close: net/http
	}
	if noBody {
		r.clen = 0
	}
	return r, true
}

// writeRequestHead writes the head of r as a client sends it upstream:
// r's method, URL and Host, its headers but the hop-by-hop ones (those
// named in Connection, hopHeaders; Te only as "trailers"), then extra
// pairs, and Content-Length bodyLen (also 0 for methods that carry a
// body, as net/http does).
func writeRequestHead(bw *bufio.Writer, r *http.Request, bodyLen int64, extra ...string) {
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(r.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	writeValue(bw, host)
	bw.WriteString("\r\n")
	conn := r.Header["Connection"]
	for k, vv := range r.Header {
		if skipOutgoing(k, conn) {
			continue
		}
		for _, v := range vv {
			writeField(bw, k, v)
		}
	}
	if te := r.Header["Te"]; len(te) > 0 && httpguts.HeaderValuesContainsToken(te, "trailers") {
		bw.WriteString("Te: trailers\r\n") // gRPC needs it end to end
	}
	for i := 0; i+1 < len(extra); i += 2 {
		writeField(bw, extra[i], extra[i+1])
	}
	if bodyLen > 0 || r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), bodyLen, 10)) // no array of its own: it would escape
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
}

// skipOutgoing reports whether header k is not forwarded: the ones the
// head writer writes itself and the connection's own.
func skipOutgoing(k string, conn []string) bool {
	switch k {
	case "Host", "Content-Length", "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	for _, v := range conn {
		for _, t := range strings.Split(v, ",") {
			if http.CanonicalHeaderKey(strings.TrimSpace(t)) == k {
				return true
			}
		}
	}
	return false
}

func writeField(bw *bufio.Writer, k, v string) {
	bw.WriteString(k)
	bw.WriteString(": ")
	writeValue(bw, v)
	bw.WriteString("\r\n")
}

// writeValue writes v with CR and LF as spaces, as net/http does, so a
// value cannot start another header.
func writeValue(bw *bufio.Writer, v string) {
	if strings.IndexByte(v, '\r') < 0 && strings.IndexByte(v, '\n') < 0 {
		bw.WriteString(v)
		return
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		bw.WriteByte(c)
	}
}
