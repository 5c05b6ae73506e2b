package testbed

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestProcess_LinesDeliversEveryLine(t *testing.T) {
	bed := NewT(t)
	const n = 100_000
	p, err := bed.StartRoot("seq", strconv.Itoa(n))
	if err != nil {
		t.Fatal(err)
	}
	// Nobody reads until the process is done: it must not block on a full
	// pipe or channel.
	select {
	case <-p.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("seq blocked: not done after 20s")
	}
	i := 0
	for line := range p.Lines() {
		i++
		if line != strconv.Itoa(i) {
			t.Fatalf("line %d = %q", i, line)
		}
	}
	if i != n {
		t.Errorf("got %d lines, want %d", i, n)
	}
}

func TestProcess_StopAndExitStatus(t *testing.T) {
	bed := NewT(t)

	p, err := bed.StartRoot("sleep", "100")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(); err != nil {
		t.Errorf("stop after SIGTERM: %v", err)
	}

	p, err = bed.StartRoot("sh", "-c", "echo oops >&2; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("wait: got %v, want exit status 3", err)
	}
	if err := p.Stop(); err == nil {
		t.Error("stop of a failed process: got nil, want its exit error")
	}
	if got := p.Stderr(); got != "oops\n" {
		t.Errorf("stderr = %q, want %q", got, "oops\n")
	}

	p, err = bed.StartRoot("sleep", "100")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(); err == nil {
		t.Error("wait after SIGKILL: got nil, want an error")
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
