package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// image is what one image holds.
type image struct {
	// binaries go to /usr/local/bin; the first is the entrypoint.
	binaries []string
	// user the entrypoint runs as (uid:gid).
	user        string
	description string
}

// images are the images kmesh-image knows. kmeshd runs as root: it loads
// eBPF programs, mounts bpffs, attaches to the root cgroup and enters pod
// network namespaces (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_SYS_PTRACE
// on the host's namespaces), none of which a non-root user keeps across
// exec without file capabilities, which a scratch image has no tools to
// set and the DaemonSet would have to grant anyway. The waypoint is an
// ordinary proxy and runs as the unprivileged user 65532.
var images = map[string]image{
	"kmeshd": {
		binaries:    []string{"kmeshd", "kmeshctl"},
		user:        "0:0",
		description: "Kmesh node daemon (kmeshd) with kmeshctl, for kubectl exec",
	},
	"kmesh-waypoint": {
		binaries:    []string{"kmesh-waypoint"},
		user:        "65532:65532",
		description: "Kmesh waypoint: the L7 proxy of the mesh",
	},
}

func imageNames() []string {
	var names []string
	for n := range images {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

type options struct {
	binDir, outDir string
	repo, tag      string
	version        string
	commit         string
	arch           string
	created        time.Time
	push           bool
}

func (o *options) archivePath(name string) string { return filepath.Join(o.outDir, name+".tar") }

// build assembles the image name, writes its archive and pushes it when
// asked; it returns the image's reference and digest.
func (o *options) build(imageName string) (string, v1.Hash, error) {
	spec, ok := images[imageName]
	if !ok {
		return "", v1.Hash{}, fmt.Errorf("unknown image (known: %v)", imageNames())
	}
	imageRef := o.repo + "/" + imageName + ":" + o.tag
	ref, err := name.NewTag(imageRef)
	if err != nil {
		return "", v1.Hash{}, fmt.Errorf("image name: %w", err)
	}
	img, err := o.assemble(spec)
	if err != nil {
		return "", v1.Hash{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return "", v1.Hash{}, err
	}
	if err := os.MkdirAll(o.outDir, 0o755); err != nil {
		return "", v1.Hash{}, err
	}
	if err := writeArchive(o.archivePath(imageName), imageRef, o.tag, img); err != nil {
		return "", v1.Hash{}, fmt.Errorf("archive: %w", err)
	}
	if o.push {
		if err := remote.Write(ref, img, remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return "", v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
		}
	}
	return imageRef, digest, nil
}

// assemble builds the image: one layer with the binaries and the few files
// a process expects (users, groups, /tmp), on an empty base.
func (o *options) assemble(spec image) (v1.Image, error) {
	layerTar, err := o.rootfs(spec)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
		Created: v1.Time{Time: o.created}, CreatedBy: "kmesh-image", Comment: spec.description,
	}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: o.created}
	cf.OS, cf.Architecture = "linux", o.arch
	cf.Config = v1.Config{
		Entrypoint: []string{"/usr/local/bin/" + spec.binaries[0]},
		User:       spec.user,
		WorkingDir: "/",
		Env:        []string{"PATH=/usr/local/bin"},
		Labels: map[string]string{
			"org.opencontainers.image.title":       spec.binaries[0],
			"org.opencontainers.image.description": spec.description,
			"org.opencontainers.image.version":     o.version,
			"org.opencontainers.image.revision":    o.commit,
			"org.opencontainers.image.licenses":    "Apache-2.0",
		},
	}
	return mutate.ConfigFile(img, cf)
}

// passwd and group name the two users the images run as; with no shell
// in the image, neither can log in.
const (
	passwd = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
	group  = "root:x:0:\nnonroot:x:65532:\n"
)

// rootfs is the image's one layer as an uncompressed tar.
func (o *options) rootfs(spec image) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(path string, mode int64, uid int) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: path + "/", Mode: mode, Uid: uid, Gid: uid, ModTime: o.created, Format: tar.FormatPAX})
	}
	file := func(path string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: path, Mode: mode, Size: int64(len(data)), ModTime: o.created, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []struct {
		path string
		mode int64
		uid  int
	}{{"etc", 0o755, 0}, {"home", 0o755, 0}, {"home/nonroot", 0o700, 65532}, {"root", 0o700, 0},
		{"tmp", 0o1777, 0}, {"usr", 0o755, 0}, {"usr/local", 0o755, 0}, {"usr/local/bin", 0o755, 0}} {
		if err := dir(d.path, d.mode, d.uid); err != nil {
			return nil, err
		}
	}
	if err := file("etc/passwd", 0o644, []byte(passwd)); err != nil {
		return nil, err
	}
	if err := file("etc/group", 0o644, []byte(group)); err != nil {
		return nil, err
	}
	for _, b := range spec.binaries {
		data, err := os.ReadFile(filepath.Join(o.binDir, b))
		if err != nil {
			return nil, fmt.Errorf("binary %s (build it with CGO_ENABLED=0 first): %w", b, err)
		}
		if !isStatic(data) {
			return nil, fmt.Errorf("binary %s is not a static ELF executable: build it with CGO_ENABLED=0; a scratch image has no loader or libc", b)
		}
		if err := file("usr/local/bin/"+b, 0o755, data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// isStatic reports whether an ELF binary has no program interpreter (the
// dynamic loader PT_INTERP names), so it runs without a loader and libc.
func isStatic(data []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}
