package main

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

const (
	testVersion = "v0.0.0-test"
	testCommit  = "0123456789abcdef0123456789abcdef01234567"
)

// static holds kmeshd, kmeshctl and kmesh-waypoint built once for all
// tests, as make images builds them.
var static struct {
	once sync.Once
	dir  string
	err  error
}

// buildStatic returns the directory of the static binaries.
func buildStatic(t *testing.T) string {
	t.Helper()
	static.once.Do(func() {
		static.dir, static.err = os.MkdirTemp("", "kmesh-image-test-")
		if static.err == nil {
			static.err = goBuild(static.dir, "kmeshd", "kmeshctl", "kmesh-waypoint")
		}
	})
	if static.err != nil {
		t.Fatal(static.err)
	}
	return static.dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if static.dir != "" {
		os.RemoveAll(static.dir)
	}
	os.Exit(code)
}

func goBuild(dir string, cmds ...string) error {
	args := []string{"build", "-trimpath", "-ldflags", "-s -w -X github.com/kmesh-go/kmesh/internal/version.Version=" + testVersion +
		" -X github.com/kmesh-go/kmesh/internal/version.Commit=" + testCommit, "-o", dir + "/"}
	for _, c := range cmds {
		args = append(args, "./cmd/"+c)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = filepath.Join("..", "..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	return nil
}

func testOptions(t *testing.T, bin string) *options {
	return &options{binDir: bin, outDir: t.TempDir(), repo: "localhost/kmesh", tag: "test", version: testVersion,
		commit: testCommit, arch: "amd64", created: time.Unix(1700000000, 0).UTC()}
}

// files lists the archive's entries with their contents.
func archiveFiles(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, _ := io.ReadAll(tr)
		out[h.Name] = b
	}
}

// rootfs lists the image's files (path -> header) and contents.
func rootfs(t *testing.T, img v1.Image) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v; want one", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	hdrs, data := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hdrs, data
		}
		if err != nil {
			t.Fatal(err)
		}
		p := "/" + strings.TrimSuffix(h.Name, "/")
		hdrs[p] = h
		data[p], _ = io.ReadAll(tr)
	}
}

// imageWant is what an image's archive must hold.
type imageWant struct {
	name, entrypoint, user string
	// files is the exact file list: the binaries and what a process
	// expects; no shell, no package manager, nothing else.
	files []string
	// runs are the binaries' version commands, each with the prefix of
	// what it must print.
	runs []struct {
		args []string
		want string
	}
}

var (
	baseFiles = []string{"/etc", "/etc/group", "/etc/passwd", "/home", "/home/nonroot", "/root", "/tmp", "/usr", "/usr/local",
		"/usr/local/bin"}
	versionLine = testVersion + " (commit " + testCommit
)

func TestImage_KmeshdArchive(t *testing.T) {
	checkImage(t, imageWant{
		name: "kmeshd", entrypoint: "/usr/local/bin/kmeshd", user: "0:0",
		files: append(slices.Clone(baseFiles), "/usr/local/bin/kmeshctl", "/usr/local/bin/kmeshd"),
		runs: []struct {
			args []string
			want string
		}{
			{[]string{"kmeshd", "--version"}, "kmeshd " + versionLine},
			{[]string{"kmeshctl", "version", "--client"}, "client: " + versionLine},
		},
	})
}

// The waypoint's image runs as the unprivileged user and holds only the
// waypoint.
func TestImage_WaypointArchive(t *testing.T) {
	checkImage(t, imageWant{
		name: "kmesh-waypoint", entrypoint: "/usr/local/bin/kmesh-waypoint", user: "65532:65532",
		files: append(slices.Clone(baseFiles), "/usr/local/bin/kmesh-waypoint"),
		runs: []struct {
			args []string
			want string
		}{
			{[]string{"kmesh-waypoint", "--version"}, "kmesh-waypoint " + versionLine},
		},
	})
}

// checkImage builds one image as make images does and checks its archive:
// readable as docker-archive and as OCI layout, entrypoint, user,
// platform, labels, the exact file list, the extracted binaries run, and a
// rebuild gives the same digest.
func checkImage(t *testing.T, w imageWant) {
	bin := buildStatic(t)
	o := testOptions(t, bin)
	ref, digest, err := o.build(w.name)
	if err != nil {
		t.Fatal(err)
	}
	archive := o.archivePath(w.name)
	tagged := "localhost/kmesh/" + w.name + ":test"

	// docker load's format: manifest.json naming config and layers.
	img, err := tarball.ImageFromPath(archive, nil)
	if err != nil {
		t.Fatalf("read as docker-archive: %v", err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("docker-archive image invalid: %v", err)
	}
	// ctr import's and kind's format: an OCI layout with the name annotated.
	files := archiveFiles(t, archive)
	layoutDir := t.TempDir()
	for p, b := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(layoutDir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(layoutDir, p), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := layout.ImageIndexFromPath(layoutDir)
	if err != nil {
		t.Fatalf("read as OCI layout: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != digest ||
		im.Manifests[0].Annotations["io.containerd.image.name"] != tagged {
		t.Fatalf("index.json %+v, want the image %s named %s", im.Manifests, digest, ref)
	}
	ociImg, err := idx.Image(digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(ociImg); err != nil {
		t.Fatalf("OCI layout image invalid: %v", err)
	}
	var dockerManifest []struct{ RepoTags []string }
	if err := json.Unmarshal(files["manifest.json"], &dockerManifest); err != nil || !slices.Equal(dockerManifest[0].RepoTags, []string{tagged}) {
		t.Fatalf("manifest.json RepoTags %+v (%v)", dockerManifest, err)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{w.entrypoint}) || cf.Config.User != w.user ||
		cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("config: entrypoint %v user %q platform %s/%s; want %s as %s on linux/amd64",
			cf.Config.Entrypoint, cf.Config.User, cf.OS, cf.Architecture, w.entrypoint, w.user)
	}
	if cf.Config.Labels["org.opencontainers.image.revision"] != testCommit || cf.Config.Labels["org.opencontainers.image.version"] != testVersion {
		t.Errorf("labels %v", cf.Config.Labels)
	}

	hdrs, data := rootfs(t, img)
	var paths []string
	for p := range hdrs {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	slices.Sort(w.files)
	if !slices.Equal(paths, w.files) {
		t.Errorf("image files %v, want %v", paths, w.files)
	}
	if !strings.Contains(string(data["/etc/passwd"]), "root:x:0:0:") || !strings.Contains(string(data["/etc/passwd"]), "nonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd names no root or nonroot: %q", data["/etc/passwd"])
	}

	// The binaries, extracted, run and say what they are.
	dir := t.TempDir()
	for _, p := range w.files {
		b, ok := strings.CutPrefix(p, "/usr/local/bin/")
		if !ok || b == "" {
			continue
		}
		if hdrs[p].Mode&0o111 == 0 {
			t.Errorf("%s is not executable", b)
		}
		if err := os.WriteFile(filepath.Join(dir, b), data[p], 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range w.runs {
		out, err := exec.Command(filepath.Join(dir, r.args[0]), r.args[1:]...).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), r.want) {
			t.Errorf("%v from the image: %q, %v; want %q", r.args, out, err, r.want)
		}
	}

	// The same inputs give the same image.
	o2 := testOptions(t, bin)
	if _, d2, err := o2.build(w.name); err != nil || d2 != digest {
		t.Errorf("second build: %s, %v; want the same digest %s", d2, err, digest)
	}
}

func TestImage_PushToRegistry(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	o := testOptions(t, buildStatic(t))
	o.repo = strings.TrimPrefix(reg.URL, "http://") + "/kmesh"
	o.push = true
	ref, digest, err := o.build("kmeshd")
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(r)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	if desc.Digest != digest {
		t.Errorf("registry has %s, archive %s", desc.Digest, digest)
	}
}

func TestImage_RefusesDynamicBinaries(t *testing.T) {
	dir := t.TempDir()
	// Any dynamically linked executable of this machine will do.
	sh, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Fatalf("no /bin/sh to stand in for a dynamic binary: %v", err)
	}
	for _, b := range []string{"kmeshd", "kmeshctl"} {
		if err := os.WriteFile(filepath.Join(dir, b), sh, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	_, _, err = testOptions(t, dir).build("kmeshd")
	if err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("a dynamic binary: %v, want a refusal naming CGO_ENABLED=0", err)
	}
	if _, _, err := testOptions(t, dir).build("kmesh-proxy"); err == nil || !strings.Contains(err.Error(), "unknown image") {
		t.Errorf("unknown image: %v", err)
	}
}
