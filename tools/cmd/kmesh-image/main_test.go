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

// static holds kmeshd and kmeshctl built once for all tests, as make images
// builds them.
var static struct {
	once sync.Once
	dir  string
	err  error
}

// buildStatic returns the directory of the static kmeshd and kmeshctl.
func buildStatic(t *testing.T) string {
	t.Helper()
	static.once.Do(func() {
		static.dir, static.err = os.MkdirTemp("", "kmesh-image-test-")
		if static.err == nil {
			static.err = goBuild(static.dir, "kmeshd", "kmeshctl")
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

func TestImage_KmeshdArchive(t *testing.T) {
	bin := buildStatic(t)
	o := testOptions(t, bin)
	ref, digest, err := o.build("kmeshd")
	if err != nil {
		t.Fatal(err)
	}
	archive := o.archivePath("kmeshd")

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
		im.Manifests[0].Annotations["io.containerd.image.name"] != "localhost/kmesh/kmeshd:test" {
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
	if err := json.Unmarshal(files["manifest.json"], &dockerManifest); err != nil || !slices.Equal(dockerManifest[0].RepoTags, []string{"localhost/kmesh/kmeshd:test"}) {
		t.Fatalf("manifest.json RepoTags %+v (%v)", dockerManifest, err)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{"/usr/local/bin/kmeshd"}) || cf.Config.User != "0:0" ||
		cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("config: entrypoint %v user %q platform %s/%s; want /usr/local/bin/kmeshd as 0:0 on linux/amd64",
			cf.Config.Entrypoint, cf.Config.User, cf.OS, cf.Architecture)
	}
	if cf.Config.Labels["org.opencontainers.image.revision"] != testCommit || cf.Config.Labels["org.opencontainers.image.version"] != testVersion {
		t.Errorf("labels %v", cf.Config.Labels)
	}

	// Exactly these files: the two binaries and what a process expects;
	// no shell, no package manager, nothing else.
	hdrs, data := rootfs(t, img)
	var paths []string
	for p := range hdrs {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	want := []string{"/etc", "/etc/group", "/etc/passwd", "/home", "/home/nonroot", "/root", "/tmp", "/usr", "/usr/local",
		"/usr/local/bin", "/usr/local/bin/kmeshctl", "/usr/local/bin/kmeshd"}
	if !slices.Equal(paths, want) {
		t.Errorf("image files %v, want %v", paths, want)
	}
	if !strings.Contains(string(data["/etc/passwd"]), "root:x:0:0:") {
		t.Errorf("/etc/passwd names no root: %q", data["/etc/passwd"])
	}

	// The binaries, extracted, run and say what they are.
	dir := t.TempDir()
	for _, b := range []string{"kmeshd", "kmeshctl"} {
		if hdrs["/usr/local/bin/"+b].Mode&0o111 == 0 {
			t.Errorf("%s is not executable", b)
		}
		if err := os.WriteFile(filepath.Join(dir, b), data["/usr/local/bin/"+b], 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(filepath.Join(dir, "kmeshd"), "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "kmeshd "+testVersion+" (commit "+testCommit) {
		t.Errorf("kmeshd --version from the image: %q, %v", out, err)
	}
	out, err = exec.Command(filepath.Join(dir, "kmeshctl"), "version", "--client").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "client: "+testVersion+" (commit "+testCommit) {
		t.Errorf("kmeshctl version --client from the image: %q, %v", out, err)
	}

	// The same inputs give the same image.
	o2 := testOptions(t, bin)
	if _, d2, err := o2.build("kmeshd"); err != nil || d2 != digest {
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
