package rawtcp

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// pair is a loopback TCP connection: the dialed end with raw I/O, and the
// accepted end as it is.
func pair(t *testing.T) (*Conn, *net.TCPConn) {
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
	rc, ok := Wrap(c).(*Conn)
	if !ok {
		t.Fatalf("TCP connection not wrapped: %T", Wrap(c))
	}
	t.Cleanup(func() { c.Close(); p.Close() })
	return rc, p.(*net.TCPConn)
}

// broken is what a write or read on a connection the peer reset or closed
// fails with.
func broken(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF)
}

// A write larger than both socket buffers waits in the poller for the
// reader and arrives whole; the half-close reads as EOF on each side.
func TestConn_LargeWriteWaitsAndEOF(t *testing.T) {
	c, peer := pair(t)
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

// WriteSome takes what the socket takes and returns at once when it is
// full.
func TestConn_WriteSomeDoesNotWait(t *testing.T) {
	c, peer := pair(t)
	data := bytes.Repeat([]byte("z"), 64<<20)
	start := time.Now()
	n, err := c.WriteSome(data)
	if err != nil || n == 0 || n == len(data) {
		t.Fatalf("WriteSome of 64 MiB to a peer that reads nothing = %d, %v; want part of it", n, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("WriteSome took %v: it waited", d)
	}
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if m, err := io.CopyN(io.Discard, peer, int64(n)); m != int64(n) {
		t.Fatalf("peer read %d of the %d taken: %v", m, n, err)
	}
}

// Deadlines (the TLS handshake's) and Close still end a waiting read.
func TestConn_DeadlineAndClose(t *testing.T) {
	c, _ := pair(t)
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
func TestConn_WriteToResetPeerFails(t *testing.T) {
	c, peer := pair(t)
	peer.SetLinger(0)
	peer.Close()
	var err error
	for i := 0; i < 200 && err == nil; i++ {
		_, err = c.Write([]byte("request"))
		time.Sleep(5 * time.Millisecond)
	}
	var op *net.OpError
	if !errors.As(err, &op) || !broken(err) {
		t.Fatalf("Write to a reset peer = %v; want a write error (ECONNRESET or EPIPE)", err)
	}
}

// ExpectReply: the request's Write returns once the answer can be read,
// however long the peer takes; a write larger than the socket buffers
// still goes out whole; a peer that closed the idle connection makes the
// write or the read after it fail; a deadline ends the wait.
func TestConn_ExpectReply(t *testing.T) {
	c, peer := pair(t)
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

	c2, peer2 := pair(t)
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

	c3, peer3 := pair(t)
	peer3.Close()
	time.Sleep(20 * time.Millisecond) // the FIN has come and been seen
	c3.ExpectReply()
	_, err := c3.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	if err == nil {
		_, err = c3.Read(b)
	}
	if !broken(err) {
		t.Fatalf("request on a connection the peer closed: %v; want EOF, ECONNRESET or EPIPE", err)
	}

	c4, _ := pair(t)
	c4.SetDeadline(time.Now().Add(30 * time.Millisecond))
	c4.ExpectReply()
	if _, err := c4.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write waiting for a reply past the deadline = %v; want a timeout", err)
	}
}

// ReadLoop sees every message and the EOF after it, also when the data
// and the FIN come in one event (the last read is short and TCP_INQ must
// say a FIN is left), and waits in the poller between messages instead
// of reading again.
func TestConn_ReadLoopSeesDataAndFIN(t *testing.T) {
	for i := range 200 {
		c, peer := pair(t)
		msgs := 1 + i%5
		go func() {
			for j := range msgs {
				peer.Write([]byte{byte('a' + j)})
				if i%2 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			peer.CloseWrite()
		}()
		var got []byte
		buf := make([]byte, 64)
		done := make(chan error, 1)
		go func() {
			done <- c.ReadLoop(func() error {
				for {
					n, err := c.Read(buf)
					got = append(got, buf[:n]...)
					if err != nil {
						return err
					}
				}
			})
		}()
		select {
		case err := <-done:
			if err != io.EOF {
				t.Fatalf("round %d: ReadLoop = %v, want EOF", i, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: ReadLoop still waiting 5 s after the peer's FIN (read %q)", i, got)
		}
		if want := "abcde"[:msgs]; string(got) != want {
			t.Fatalf("round %d: read %q, want %q", i, got, want)
		}
		c.Close()
	}
}

// Close ends a ReadLoop that waits, with the poller's error.
func TestConn_ReadLoopEndsOnClose(t *testing.T) {
	c, _ := pair(t)
	done := make(chan error, 1)
	go func() {
		done <- c.ReadLoop(func() error {
			_, err := c.Read(make([]byte, 8))
			return err
		})
	}()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("ReadLoop after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadLoop still waiting 5 s after Close")
	}
}

// A reset that comes right behind the last data (TCP_INQ does not count
// it, and no later event comes) still ends ReadLoop, within resetCheck.
func TestConn_ReadLoopSeesResetAfterData(t *testing.T) {
	c, peer := pair(t)
	peer.Write([]byte("last words"))
	peer.SetLinger(0)
	peer.Close()
	time.Sleep(20 * time.Millisecond) // both in the queue before the first read
	var got []byte
	buf := make([]byte, 64)
	done := make(chan error, 1)
	go func() {
		done <- c.ReadLoop(func() error {
			for {
				n, err := c.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil {
					return err
				}
			}
		})
	}()
	select {
	case err := <-done:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("ReadLoop = %v, want ECONNRESET", err)
		}
	case <-time.After(resetCheck + 5*time.Second):
		t.Fatalf("ReadLoop still waiting %v after the peer's reset", resetCheck+5*time.Second)
	}
	if string(got) != "last words" {
		t.Fatalf("read %q, want \"last words\"", got)
	}
}

// The reset check borrows the read deadline; the caller's own deadline,
// later than the check, must still end the loop.
func TestConn_ReadLoopKeepsCallerDeadline(t *testing.T) {
	c, peer := pair(t)
	peer.Write([]byte("hello"))
	deadline := time.Now().Add(resetCheck + resetCheck/2)
	c.SetReadDeadline(deadline)
	buf := make([]byte, 64)
	done := make(chan error, 1)
	go func() {
		done <- c.ReadLoop(func() error {
			for {
				if _, err := c.Read(buf); err != nil {
					return err
				}
			}
		})
	}()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("ReadLoop = %v, want a deadline error", err)
		}
		if time.Now().Before(deadline) {
			t.Fatalf("ReadLoop ended before the deadline")
		}
	case <-time.After(resetCheck * 5):
		t.Fatalf("ReadLoop still waiting %v after its deadline", resetCheck*5-time.Until(deadline))
	}
}
