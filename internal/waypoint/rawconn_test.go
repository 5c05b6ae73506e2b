package waypoint

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection, the first
// wrapped as the waypoint wraps its connections.
func tcpPair(t *testing.T) (*rawConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(acc)
			return
		}
		acc <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, ok := <-acc
	if !ok {
		t.Fatal("accept failed")
	}
	rc, ok := newRawConn(c).(*rawConn)
	if !ok {
		t.Fatalf("a TCP connection was not wrapped: %T", newRawConn(c))
	}
	t.Cleanup(func() { rc.Close(); peer.Close() })
	return rc, peer
}

// A write larger than the socket buffers waits for the reader (EAGAIN,
// then the poller) and arrives whole; reads return what came, then EOF.
func TestRawConn_LargeWriteAndEOF(t *testing.T) {
	c, peer := tcpPair(t)
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	got := make(chan []byte, 1)
	go func() {
		time.Sleep(50 * time.Millisecond) // the writer fills the buffers first
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	n, err := c.Write(data)
	if err != nil || n != len(data) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(data))
	}
	c.CloseWrite()
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatalf("peer read %d bytes, not the %d written", len(b), len(data))
	}

	go func() { peer.Write([]byte("answer")); peer.Close() }()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "answer" {
		t.Fatalf("ReadAll = %q, %v; want \"answer\", nil", b, err)
	}
	if n, err := c.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Fatalf("Read after EOF = %d, %v; want 0, EOF", n, err)
	}
}

// Deadlines still end a read that waits, as with net.Conn.
func TestRawConn_ReadDeadline(t *testing.T) {
	c, _ := tcpPair(t)
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	start := time.Now()
	_, err := c.Read(make([]byte, 8))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past the deadline = %v; want a timeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the deadline ended the read after %v", d)
	}
}

// Closing the connection ends a read waiting on it; a write to a peer
// that reset the connection fails with an error the upstream client
// recognizes as a stale connection.
func TestRawConn_CloseAndReset(t *testing.T) {
	c, _ := tcpPair(t)
	done := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 8)); done <- err }()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read on a closed connection = %v; want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a waiting Read")
	}

	c2, peer2 := tcpPair(t)
	peer2.(*net.TCPConn).SetLinger(0) // close with RST
	peer2.Close()
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = c2.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		time.Sleep(5 * time.Millisecond)
	}
	if err == nil || !isStale(err) {
		t.Fatalf("Write to a reset connection = %v; want ECONNRESET or EPIPE", err)
	}
}

// ExpectReply: the request's Write returns once the answer can be read,
// however long the peer takes; a write larger than the socket buffers
// still goes out whole; a peer that closed the idle connection makes the
// write or the read after it fail as stale; a deadline ends the wait.
func TestRawConn_ExpectReply(t *testing.T) {
	c, peer := tcpPair(t)
	go func() {
		b := make([]byte, 5)
		io.ReadFull(peer, b)
		time.Sleep(50 * time.Millisecond)
		peer.Write([]byte("reply"))
	}()
	c.ExpectReply()
	start := time.Now()
	if n, err := c.Write([]byte("hello")); n != 5 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Errorf("Write returned after %v, before the reply was sent", d)
	}
	b := make([]byte, 16)
	if n, err := c.Read(b); err != nil || string(b[:n]) != "reply" {
		t.Fatalf("Read = %q, %v", b[:n], err)
	}
	// The next write is an ordinary one.
	start = time.Now()
	go func() { time.Sleep(2 * time.Second); peer.Write([]byte("x")) }()
	if _, err := c.Write([]byte("more")); err != nil || time.Since(start) > 1500*time.Millisecond {
		t.Fatalf("a later Write waited for a reply (%v, %v)", time.Since(start), err)
	}

	c2, peer2 := tcpPair(t)
	data := bytes.Repeat([]byte("y"), 8<<20)
	got := make(chan int, 1)
	go func() {
		n, _ := io.CopyN(io.Discard, peer2, int64(len(data)))
		peer2.Write([]byte("done"))
		got <- int(n)
	}()
	c2.ExpectReply()
	if n, err := c2.Write(data); n != len(data) || err != nil {
		t.Fatalf("large Write = %d, %v; want %d, nil", n, err, len(data))
	}
	if n := <-got; n != len(data) {
		t.Fatalf("peer read %d bytes of %d", n, len(data))
	}

	c3, peer3 := tcpPair(t)
	peer3.Close()
	time.Sleep(20 * time.Millisecond) // the FIN has come and been seen
	c3.ExpectReply()
	_, err := c3.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	if err == nil {
		_, err = c3.Read(b)
	}
	if err == nil || !isStale(err) {
		t.Fatalf("request on a connection the peer closed: %v; want EOF, ECONNRESET or EPIPE", err)
	}

	c4, _ := tcpPair(t)
	c4.SetDeadline(time.Now().Add(30 * time.Millisecond))
	c4.ExpectReply()
	if _, err := c4.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write waiting for a reply past the deadline = %v; want a timeout", err)
	}
}
