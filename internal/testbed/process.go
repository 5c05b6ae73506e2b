package testbed

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopGrace is how long Stop and Close wait after SIGTERM before SIGKILL.
const stopGrace = 3 * time.Second

// Process is a command started by a Bed. Its stdout is read as lines
// (Lines), its stderr collected (Stderr).
type Process struct {
	label string
	cmd   *exec.Cmd

	lines chan string
	qmu   sync.Mutex
	queue []string // lines read but not yet in the channel
	qeof  bool
	qwake chan struct{}

	errMu   sync.Mutex
	stderr  strings.Builder
	errDone chan struct{} // closed at stderr EOF

	done    chan struct{} // closed once the process is reaped
	waitErr error
}

// start runs name with args in the namespace at nsPath ("" for the current
// one) and the cgroup directory cgroup. The child is born in the cgroup
// (clone3 CLONE_INTO_CGROUP), so it is never seen running outside it.
func (b *Bed) start(label, nsPath, cgroup, name string, args []string) (*Process, error) {
	argv := append([]string{name}, args...)
	if nsPath != "" {
		argv = append([]string{"nsenter", "--net=" + nsPath, "--"}, argv...)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, fmt.Errorf("start %s: %w", label, errClosed)
	}
	cg, err := os.Open(cgroup)
	if err != nil {
		return nil, fmt.Errorf("start %s: open cgroup: %w", label, err)
	}
	defer cg.Close()
	// Plain pipes, not io.Writers: exec.Cmd.Wait would otherwise wait for
	// EOF, which a grandchild holding the pipe could delay forever.
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", label, err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("start %s: %w", label, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = outW, errW
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("start %s: %w", label, err)
	}
	p := &Process{
		label:   label,
		cmd:     cmd,
		lines:   make(chan string, 4096),
		qwake:   make(chan struct{}, 1),
		errDone: make(chan struct{}),
		done:    make(chan struct{}),
	}
	b.procs = append(b.procs, p)
	go p.readStdout(outR)
	go p.pump()
	go p.readStderr(errR, b)
	go p.wait()
	return p, nil
}

// PID returns the process id. For commands in a pod or node it is the
// command's own: nsenter execs it.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Lines returns the process's stdout, line by line without the newline,
// closed at EOF. The process never blocks on a slow reader: lines wait in
// memory until read.
func (p *Process) Lines() <-chan string { return p.lines }

// Stderr returns everything the process has written to stderr so far.
func (p *Process) Stderr() string {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.stderr.String()
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("%s: signal %v: %w", p.label, sig, err)
	}
	return nil
}

// Stop sends SIGTERM, waits up to 3s, then sends SIGKILL. It returns the
// exit error unless the process died of one of those signals.
func (p *Process) Stop() error {
	p.terminate()
	var exit *exec.ExitError
	if errors.As(p.waitErr, &exit) {
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() &&
			(ws.Signal() == syscall.SIGTERM || ws.Signal() == syscall.SIGKILL) {
			return nil
		}
	}
	return p.Wait()
}

// Wait waits for the process to exit and returns its exit error, as
// exec.Cmd.Wait does. It may be called any number of times.
func (p *Process) Wait() error {
	<-p.done
	if p.waitErr != nil {
		return fmt.Errorf("%s: %w", p.label, p.waitErr)
	}
	return nil
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

func (p *Process) terminate() {
	// os.Process signals through a pidfd: a PID reused after exit is safe.
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(stopGrace):
	}
	p.cmd.Process.Kill()
	<-p.done
}

func (p *Process) wait() {
	err := p.cmd.Wait()
	// The last words on stderr usually explain an exit; give the reader a
	// moment to get them, unless a grandchild keeps the pipe open.
	select {
	case <-p.errDone:
	case <-time.After(2 * time.Second):
	}
	p.waitErr = err
	close(p.done)
}

func (p *Process) readStdout(r *os.File) {
	defer r.Close()
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			p.qmu.Lock()
			p.queue = append(p.queue, strings.TrimSuffix(line, "\n"))
			p.qmu.Unlock()
			p.wake()
		}
		if err != nil {
			break
		}
	}
	p.qmu.Lock()
	p.qeof = true
	p.qmu.Unlock()
	p.wake()
}

func (p *Process) wake() {
	select {
	case p.qwake <- struct{}{}:
	default:
	}
}

// pump moves lines from the unbounded queue into the channel. If nobody
// reads, it blocks here, never in the child's write.
func (p *Process) pump() {
	for {
		p.qmu.Lock()
		batch, eof := p.queue, p.qeof
		p.queue = nil
		p.qmu.Unlock()
		for _, l := range batch {
			p.lines <- l
		}
		if len(batch) > 0 {
			continue
		}
		if eof {
			close(p.lines)
			return
		}
		<-p.qwake
	}
}

func (p *Process) readStderr(r io.ReadCloser, b *Bed) {
	defer close(p.errDone)
	defer r.Close()
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			p.errMu.Lock()
			p.stderr.WriteString(line)
			p.errMu.Unlock()
			b.logLine(p.label, strings.TrimSuffix(line, "\n"))
		}
		if err != nil {
			return
		}
	}
}
