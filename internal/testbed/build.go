package testbed

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"sync"
)

var builds struct {
	mu   sync.Mutex
	dir  string
	bins map[string]*build
}

type build struct {
	once sync.Once
	n    int // a directory per package, so binaries keep their names
	path string
	err  error
}

// Build compiles a main package of this module, such as "./cmd/kmeshd"
// (relative to the module root) or
// "github.com/kmesh-go/kmesh/internal/testbed/kmesh-echo", and returns the
// path of the binary. Each package is built once per process; binaries go to
// a temporary directory that Sweep removes once this process is gone. The
// module root is the first directory holding go.mod above the current one.
func Build(pkg string) (string, error) { return BuildTags(pkg, "") }

// BuildTags is Build with Go build tags (comma-separated), for variants of
// a binary such as the upgrade-test build of kmeshd.
func BuildTags(pkg, tags string) (string, error) {
	builds.mu.Lock()
	if builds.bins == nil {
		builds.bins = map[string]*build{}
	}
	key := pkg + " " + tags
	bl, ok := builds.bins[key]
	if !ok {
		bl = &build{n: len(builds.bins)}
		builds.bins[key] = bl
	}
	builds.mu.Unlock()

	bl.once.Do(func() { bl.path, bl.err = goBuild(pkg, tags, bl.n) })
	return bl.path, bl.err
}

func goBuild(pkg, tags string, n int) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	dir, err := buildDir()
	if err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	out := filepath.Join(dir, strconv.Itoa(n), path.Base(pkg))
	cmd := exec.Command("go", "build", "-tags", tags, "-o", out, pkg)
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %w\n%s", pkg, err, msg)
	}
	return out, nil
}

func buildDir() (string, error) {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir == "" {
		dir, err := os.MkdirTemp("", buildDirPrefix+strconv.Itoa(os.Getpid())+"-")
		if err != nil {
			return "", err
		}
		builds.dir = dir
	}
	return builds.dir, nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the current directory")
		}
		dir = parent
	}
}
