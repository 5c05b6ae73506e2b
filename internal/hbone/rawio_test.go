package hbone

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// rawPair is a loopback TCP connection: the dialed end with raw I/O, and
// the accepted end as it is.
func rawPair(t *testing.T) (*rawConn, *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	rc, ok := withRawIO(c).(*rawConn)
	if !ok {
		t.Fatalf("TCP connection not wrapped: %T", withRawIO(c))
	}
	t.Cleanup(func() { c.Close(); p.Close() })
	return rc, p.(*net.TCPConn)
}

// A write larger than both socket buffers waits in the poller for the
// reader and arrives whole; the half-close reads as EOF on each side.
func TestRawIO_LargeWriteWaitsAndEOF(t *testing.T) {
	c, peer := rawPair(t)
	data := bytes.Repeat([]byte("kmesh-hbone-raw!"), 1<<18) // 4 MiB
	got := make(chan []byte, 1)
	go func() {
		time.Sleep(50 * time.Millisecond) // let the writer fill the buffers
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	if n, err := c.Write(data); err != nil || n != len(data) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(data))
	}
	c.CloseWrite()
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatalf("peer read %d bytes, want the %d written", len(b), len(data))
	}
	go func() { peer.Write([]byte("answer")); peer.CloseWrite() }()
	if b, err := io.ReadAll(c); err != nil || string(b) != "answer" {
		t.Fatalf("ReadAll = %q, %v; want \"answer\"", b, err)
	}
	if n, err := c.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Fatalf("Read after EOF = %d, %v; want 0, EOF", n, err)
	}
}

// Deadlines (the TLS handshake's) and Close still end a waiting read.
func TestRawIO_DeadlineAndClose(t *testing.T) {
	c, _ := rawPair(t)
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := c.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline = %v; want os.ErrDeadlineExceeded", err)
	}
	c.SetReadDeadline(time.Time{})
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
}

// A peer's reset is an error on write, as with net.Conn: the relays reset
// the other side on it.
func TestRawIO_WriteToResetPeerFails(t *testing.T) {
	c, peer := rawPair(t)
	peer.SetLinger(0)
	peer.Close()
	var err error
	for i := 0; i < 200 && err == nil; i++ {
		_, err = c.Write([]byte("request"))
		time.Sleep(5 * time.Millisecond)
	}
	var op *net.OpError
	if !errors.As(err, &op) || isClosed(err) {
		t.Fatalf("Write to a reset peer = %v; want a write error (ECONNRESET or EPIPE)", err)
	}
}
