package hbone

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/kmesh-go/kmesh/internal/identity"
)

// rawPeer is the other end of an h2conn under test, driven frame by frame
// with x/net's Framer, as a peer that does exactly what a test says.
type rawPeer struct {
	t    *testing.T
	conn net.Conn
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer
}

// rawClient connects a raw client peer to the server at addr and sends
// the preface and its settings; the connection closes with the test.
func rawClient(t *testing.T, addr string) *rawPeer {
	t.Helper()
	cc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	p := &rawPeer{t: t, conn: cc, fr: http2.NewFramer(cc, cc)}
	p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	p.henc = hpack.NewEncoder(&p.hbuf)
	cc.Write([]byte(clientPreface))
	p.fr.WriteSettings()
	return p
}

// serverWithPeer serves one connection as a server h2conn calling
// onStream, on loopback TCP, and connects a raw client peer to it (preface
// and settings sent). The server's h2conn comes on the channel once it
// runs.
func serverWithPeer(t *testing.T, onStream func(st *stream, method, authority string, h http.Header)) (*rawPeer, <-chan *h2conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	conns := make(chan *h2conn, 1)
	go func() {
		sc, err := l.Accept()
		if err != nil {
			return
		}
		hc := newH2Conn(sc, false, slog.New(slog.DiscardHandler))
		hc.onStream = onStream
		hc.start()
		conns <- hc
	}()
	return rawClient(t, l.Addr().String()), conns
}

// clientWithPeer connects a client h2conn to a raw server peer over
// loopback TCP; the peer has read the preface and sent settings.
func clientWithPeer(t *testing.T, settings ...http2.Setting) (*h2conn, *rawPeer) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	p := &rawPeer{t: t, conn: sc, fr: http2.NewFramer(sc, sc)}
	p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	p.henc = hpack.NewEncoder(&p.hbuf)
	c := newH2Conn(cc, true, slog.New(slog.DiscardHandler))
	if err := c.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.close(); sc.Close() })
	pre := make([]byte, len(clientPreface))
	if _, err := io.ReadFull(sc, pre); err != nil || string(pre) != clientPreface {
		t.Fatalf("preface %q, %v", pre, err)
	}
	if err := p.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	return c, p
}

// next reads the next frame that is not connection bookkeeping
// (SETTINGS, its ack, PING, connection WINDOW_UPDATE).
func (p *rawPeer) next() http2.Frame {
	p.t.Helper()
	for {
		p.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		f, err := p.fr.ReadFrame()
		if err != nil {
			p.t.Fatalf("peer read: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame, *http2.PingFrame:
			continue
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				continue
			}
		}
		return f
	}
}

// quiet asserts the client sends no stream frame for d.
func (p *rawPeer) quiet(d time.Duration) {
	p.t.Helper()
	p.conn.SetReadDeadline(time.Now().Add(d))
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				p.conn.SetReadDeadline(time.Time{})
				return
			}
			p.t.Fatalf("peer read: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame, *http2.PingFrame:
		case *http2.WindowUpdateFrame:
			if f.StreamID != 0 {
				p.t.Fatalf("unexpected %v", f)
			}
		default:
			p.t.Fatalf("want no frame for %v, got %v", d, f)
		}
	}
}

func (p *rawPeer) headers(id uint32, end bool, kv ...string) {
	p.t.Helper()
	p.hbuf.Reset()
	for i := 0; i < len(kv); i += 2 {
		p.henc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.hbuf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		p.t.Fatal(err)
	}
}

// open has the client send a CONNECT and the peer answer 200.
func (p *rawPeer) open(c *h2conn) *stream {
	p.t.Helper()
	s, err := c.openStream("10.0.0.1:80", nil)
	if err != nil {
		p.t.Fatal(err)
	}
	h, ok := p.next().(*http2.MetaHeadersFrame)
	if !ok || h.StreamID != s.id || h.PseudoValue("method") != "CONNECT" || h.PseudoValue("authority") != "10.0.0.1:80" || h.StreamEnded() {
		p.t.Fatalf("want CONNECT 10.0.0.1:80 on stream %d, got %v", s.id, h)
	}
	p.headers(s.id, false, ":status", "200")
	if code, err := s.waitResponse(context.Background()); err != nil || code != 200 {
		p.t.Fatalf("response %d, %v", code, err)
	}
	return s
}

func TestH2_WritesStayWithinThePeersWindows(t *testing.T) {
	c, p := clientWithPeer(t, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 100})
	s := p.open(c)
	msg := make([]byte, 1000)
	rand.Read(msg)
	wrote := make(chan error, 1)
	go func() { _, err := s.Write(msg); wrote <- err }()
	var got []byte
	for len(got) < 100 {
		d := p.next().(*http2.DataFrame)
		got = append(got, d.Data()...)
	}
	if len(got) != 100 {
		t.Fatalf("got %d bytes with a 100-byte window", len(got))
	}
	p.quiet(200 * time.Millisecond)
	p.fr.WriteWindowUpdate(s.id, 900)
	for len(got) < 1000 {
		d := p.next().(*http2.DataFrame)
		got = append(got, d.Data()...)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("bytes differ")
	}
}

func TestH2_ReadGivesTheWindowBack(t *testing.T) {
	c, p := clientWithPeer(t)
	s := p.open(c)
	// 1.5 MiB in 16 KiB frames: past a quarter of the stream window, so
	// reading it must grant it again.
	chunk := make([]byte, 16<<10)
	go func() {
		for range 96 {
			p.fr.WriteData(s.id, false, chunk)
		}
	}()
	if _, err := io.ReadFull(s, make([]byte, 96*len(chunk))); err != nil {
		t.Fatal(err)
	}
	wu, ok := p.next().(*http2.WindowUpdateFrame)
	if !ok || wu.StreamID != s.id || wu.Increment < streamWindow/4 {
		t.Fatalf("want a stream WINDOW_UPDATE of at least %d, got %v", streamWindow/4, wu)
	}
}

func TestH2_DataBeyondTheWindowResetsTheStream(t *testing.T) {
	c, p := clientWithPeer(t)
	s := p.open(c)
	chunk := make([]byte, 1<<20)
	for range 4 {
		p.fr.WriteData(s.id, false, chunk)
	}
	p.fr.WriteData(s.id, false, []byte("x")) // one byte over the 4 MiB window
	rst, ok := p.next().(*http2.RSTStreamFrame)
	if !ok || rst.StreamID != s.id || rst.ErrCode != http2.ErrCodeFlowControl {
		t.Fatalf("want RST_STREAM FLOW_CONTROL_ERROR, got %v", rst)
	}
	var re *ResetError
	if _, err := io.ReadAll(s); !errors.As(err, &re) {
		t.Fatalf("read: %v, want a reset", err)
	}
}

func TestH2_PeerResetEndsTheStream(t *testing.T) {
	c, p := clientWithPeer(t)
	s := p.open(c)
	p.fr.WriteRSTStream(s.id, http2.ErrCodeCancel)
	var re *ResetError
	if _, err := s.Read(make([]byte, 10)); !errors.As(err, &re) || re.Code != http2.ErrCodeCancel {
		t.Fatalf("read: %v, want reset CANCEL", err)
	}
	if _, err := s.Write([]byte("x")); err == nil {
		t.Fatal("write on a reset stream succeeded")
	}
	// No frame of the stream follows, not even our RST_STREAM on close.
	s.reset(http2.ErrCodeCancel)
	p.quiet(200 * time.Millisecond)
	if n := c.active(); n != 0 {
		t.Fatalf("%d streams left", n)
	}
}

func TestH2_HalfCloseBothWays(t *testing.T) {
	c, p := clientWithPeer(t)
	s := p.open(c)
	if _, err := s.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for {
		d := p.next().(*http2.DataFrame)
		got = append(got, d.Data()...)
		if d.StreamEnded() {
			break
		}
	}
	if string(got) != "ping" {
		t.Fatalf("peer got %q", got)
	}
	// Our side ended; the peer's still sends.
	p.fr.WriteData(s.id, false, []byte("po"))
	p.fr.WriteData(s.id, true, []byte("ng"))
	b, err := io.ReadAll(s)
	if err != nil || string(b) != "pong" {
		t.Fatalf("read %q, %v", b, err)
	}
	if n := c.active(); n != 0 {
		t.Fatalf("%d streams left after both ends", n)
	}
	s.reset(http2.ErrCodeCancel) // a clean stream is not reset on close
	p.quiet(200 * time.Millisecond)
}

func TestH2_GoAwayRefusesLaterStreams(t *testing.T) {
	c, p := clientWithPeer(t)
	s1 := p.open(c)
	s3, err := c.openStream("10.0.0.1:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	p.next() // its HEADERS
	p.fr.WriteGoAway(s1.id, http2.ErrCodeNo, nil)
	if _, err := s3.waitResponse(context.Background()); !errors.Is(err, errRefused) {
		t.Fatalf("stream above GOAWAY: %v, want refused", err)
	}
	// The stream below it goes on.
	p.fr.WriteData(s1.id, true, []byte("still here"))
	if b, err := io.ReadAll(s1); err != nil || string(b) != "still here" {
		t.Fatalf("read %q, %v", b, err)
	}
	if c.canTake() {
		t.Fatal("connection takes new streams after GOAWAY")
	}
	if _, err := c.openStream("10.0.0.1:80", nil); !errors.Is(err, errRefused) {
		t.Fatalf("open after GOAWAY: %v", err)
	}
}

func TestH2_ProtocolErrorFailsTheConnection(t *testing.T) {
	c, p := clientWithPeer(t)
	s := p.open(c)
	// A server may not open streams: HEADERS on an even stream.
	p.headers(2, false, ":status", "200")
	ga, ok := p.next().(*http2.GoAwayFrame)
	if !ok || ga.ErrCode != http2.ErrCodeProtocol {
		t.Fatalf("want GOAWAY PROTOCOL_ERROR, got %v", ga)
	}
	if _, err := s.Read(make([]byte, 1)); err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("read on a failed connection: %v", err)
	}
	if c.canTake() {
		t.Fatal("failed connection takes streams")
	}
}

func TestH2_StatusAndOneXX(t *testing.T) {
	c, p := clientWithPeer(t)
	s, err := c.openStream("10.0.0.1:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	p.next()
	p.headers(s.id, false, ":status", "100")
	p.headers(s.id, true, ":status", "401")
	if code, err := s.waitResponse(context.Background()); err != nil || code != 401 {
		t.Fatalf("response %d, %v; want 401", code, err)
	}
}

// A header block in a HEADERS and a CONTINUATION frame that arrive apart,
// after a DATA frame cut in two, is read whole: the reader waits for the
// rest of a frame (and of a header block) before the framer reads it.
func TestH2_FramesSplitAcrossReads(t *testing.T) {
	c, p := clientWithPeer(t)
	s, err := c.openStream("10.0.0.1:80", nil)
	if err != nil {
		t.Fatal(err)
	}
	p.next()
	p.hbuf.Reset()
	p.henc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	p.henc.WriteField(hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("k", 200)})
	block := bytes.Clone(p.hbuf.Bytes())
	var frames bytes.Buffer
	fr := http2.NewFramer(&frames, nil)
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: s.id, BlockFragment: block[:20]})
	fr.WriteContinuation(s.id, true, block[20:])
	fr.WriteData(s.id, false, []byte("kmesh"))
	wire := frames.Bytes()
	prev := 0
	// In the first frame header, in the CONTINUATION's, in the DATA.
	for _, cut := range []int{5, 9 + 20 + 7, len(wire) - 3, len(wire)} {
		if _, err := p.conn.Write(wire[prev:cut]); err != nil {
			t.Fatal(err)
		}
		prev = cut
		time.Sleep(30 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if code, err := s.waitResponse(ctx); err != nil || code != 200 {
		t.Fatalf("response %d, %v; want 200", code, err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(s, got); err != nil || string(got) != "kmesh" {
		t.Fatalf("read %q, %v; want \"kmesh\"", got, err)
	}
}

// TestTunnel_ConcurrentLargeStreams: 16 streams on one connection echo 2
// MiB each at once, 32 MiB each way: past the 16 MiB connection window,
// so it is given back while streams share it.
func TestTunnel_ConcurrentLargeStreams(t *testing.T) {
	ca := newTestCA(t, "cluster.local")
	up, _ := echoUpstream(t)
	tn := startServer(t, ca, nil)
	go func() {
		for range tn.requests {
		}
	}()
	d := &Dialer{Certs: ca}
	defer d.Close()
	target := &Target{Source: clientID, Destination: []identity.Identity{serverID}, Addr: tn.addr, Authority: up.String()}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := d.Dial(context.Background(), target)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			msg := make([]byte, 2<<20)
			rand.Read(msg)
			go func() {
				c.Write(msg)
				c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, msg) {
				errs <- errors.New("echo differs")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if s := d.Stats(); s.Connections != 1 {
		t.Errorf("%d connections for 16 streams, want 1", s.Connections)
	}
}

// TestH2_CopyToASocketKeepsOrder: Copy from a stream to a socket lets the
// connection's reader write to the socket itself; when the socket's
// reader lags, the socket fills, the rest is buffered for the copy, and
// every byte still arrives once and in order, then the peer's END_STREAM
// ends the copy.
func TestH2_CopyToASocketKeepsOrder(t *testing.T) {
	c, p := clientWithPeer(t)
	s := p.open(c)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dst, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	app, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	msg := make([]byte, 3<<20)
	rand.Read(msg)
	copied := make(chan error, 1)
	var n int64
	go func() {
		var err error
		n, err = Copy(dst, s)
		dst.(*net.TCPConn).CloseWrite()
		copied <- err
	}()
	go func() {
		for b := msg; len(b) > 0; {
			k := min(len(b), 16<<10)
			p.fr.WriteData(s.id, false, b[:k])
			b = b[k:]
			// Let the stream's window come back as it is read.
		}
		p.fr.WriteData(s.id, true, nil)
	}()
	time.Sleep(300 * time.Millisecond) // the socket fills meanwhile
	got, err := io.ReadAll(app)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-copied; err != nil {
		t.Fatalf("copy: %v", err)
	}
	if n != int64(len(msg)) || !bytes.Equal(got, msg) {
		t.Fatalf("copied %d bytes, received %d, equal %v", n, len(got), bytes.Equal(got, msg))
	}
}

// TestH2_ServerAnswersNonConnectWith400 and refuses a stream past its
// limit of concurrent streams.
func TestH2_ServerRefusesNonConnectAndExcessStreams(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	p, _ := serverWithPeer(t, func(st *stream, method, authority string, h http.Header) {
		if method != "CONNECT" {
			st.respond(400, true)
			return
		}
		go func() { <-hold; st.reset(http2.ErrCodeCancel) }()
	})
	p.headers(1, true, ":method", "GET", ":scheme", "https", ":path", "/", ":authority", "x")
	h, ok := p.next().(*http2.MetaHeadersFrame)
	if !ok || h.PseudoValue("status") != "400" || !h.StreamEnded() {
		t.Fatalf("want 400 with END_STREAM, got %v", h)
	}
	for id := uint32(3); id < 3+2*maxServerStreams; id += 2 {
		p.headers(id, false, ":method", "CONNECT", ":authority", "10.0.0.1:80")
	}
	p.headers(3+2*maxServerStreams, false, ":method", "CONNECT", ":authority", "10.0.0.1:80")
	rst, ok := p.next().(*http2.RSTStreamFrame)
	if !ok || rst.StreamID != 3+2*maxServerStreams || rst.ErrCode != http2.ErrCodeRefusedStream {
		t.Fatalf("want REFUSED_STREAM on stream %d, got %v", 3+2*maxServerStreams, rst)
	}
}
