// Package ci tests the CI entry point (.ci/run) and the Makefile's test
// targets: that no privileged test can skip in CI.
package ci

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// nobody is the uid the tests drop to when they run as root, so that the
// "not root" path runs for real.
const nobody = 65534

// tree copies the files under test into a directory any uid can read and
// puts a recording stand-in for cmd (make or go) on PATH: the tests check
// what .ci/run and the Makefile would run, not the whole suite.
func tree(t *testing.T, cmd string, files ...string) (dir, record string, env []string) {
	t.Helper()
	// Not t.TempDir: its parent is mode 0700, closed to the dropped uid.
	dir, err := os.MkdirTemp("", "kmesh-ci-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join("..", "..", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "fakebin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	record = filepath.Join(dir, "record")
	if err := os.WriteFile(record, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(record, 0o666); err != nil { // past the umask
		t.Fatal(err)
	}
	script := "#!/bin/sh\necho \"" + cmd + " $* KMESH_REQUIRE_PRIVILEGED=${KMESH_REQUIRE_PRIVILEGED-unset}\" >> " + record + "\n"
	if err := os.WriteFile(filepath.Join(bin, cmd), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	env = []string{"PATH=" + bin + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + dir}
	return dir, record, env
}

// asNonRoot runs c as uid/gid 65534 when the test is root; otherwise the
// test already is not root.
func asNonRoot(c *exec.Cmd) {
	if os.Geteuid() == 0 {
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	}
}

func TestCIRun_RefusesToRunWithoutRoot(t *testing.T) {
	dir, record, env := tree(t, "make", ".ci/run")
	c := exec.Command(filepath.Join(dir, ".ci", "run"))
	c.Env = env
	asNonRoot(c)
	out, err := c.CombinedOutput()
	if err == nil {
		t.Fatalf(".ci/run as a non-root user succeeded; want a failure. Output:\n%s", out)
	}
	if !strings.Contains(string(out), "must run as root") {
		t.Errorf(".ci/run output %q does not say it needs root", out)
	}
	if b, _ := os.ReadFile(record); len(b) != 0 {
		t.Errorf(".ci/run without root still ran: %s", b)
	}
}

func TestCIRun_TurnsPrivilegedSkipsIntoFailures(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("KMESH_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal(".ci/run needs root, and KMESH_REQUIRE_PRIVILEGED=1")
		}
		t.Skip(".ci/run needs root")
	}
	dir, record, env := tree(t, "make", ".ci/run")
	c := exec.Command(filepath.Join(dir, ".ci", "run"))
	c.Env = append(env, "KMESH_REQUIRE_PRIVILEGED=0") // a stray setting must not win
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf(".ci/run as root: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(record)
	if got, want := strings.TrimSpace(string(b)), "make test KMESH_REQUIRE_PRIVILEGED=1"; got != want {
		t.Errorf(".ci/run ran %q, want %q", got, want)
	}
}

// The Makefile's test targets set KMESH_REQUIRE_PRIVILEGED=1 whoever runs
// them: as a non-root user the privileged tests then fail rather than skip.
func TestMakefile_TestTargetsRequirePrivileged(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	dir, record, env := tree(t, "go", "Makefile")
	for _, target := range []string{"test-unit", "test-e2e"} {
		c := exec.Command("make", "-s", "-C", dir, target, "GO="+filepath.Join(dir, "fakebin", "go"))
		c.Env = env
		asNonRoot(c)
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("make %s: %v\n%s", target, err, out)
		}
	}
	b, _ := os.ReadFile(record)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 {
		t.Fatalf("make ran go %d times, want 2: %q", len(lines), b)
	}
	for _, l := range lines {
		if !strings.HasSuffix(l, " KMESH_REQUIRE_PRIVILEGED=1") {
			t.Errorf("as a non-root user, make ran %q; want KMESH_REQUIRE_PRIVILEGED=1", l)
		}
	}
}
