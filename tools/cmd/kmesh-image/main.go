// Command kmesh-image assembles Kmesh's container images without a Docker
// daemon: one image per daemon from static binaries on an empty base
// (FROM scratch), written as one archive per image that `docker load`,
// `ctr import`, `podman load` and `kind load image-archive` accept, and
// optionally pushed to a registry. `make images` runs it; docs/install.md
// says how to use the result.
//
//	kmesh-image -bin bin/static -out bin/images -repo localhost/kmesh -tag v0.1.0 \
//	    -version v0.1.0 -commit 0123abc kmeshd kmesh-waypoint
//
// The archive holds the same image twice over, sharing its blobs: an OCI
// image layout (oci-layout, index.json, blobs/sha256/...) for OCI readers
// and a docker-archive manifest.json naming those blobs for `docker load`
// before Docker 25. Images are reproducible: file times and the creation
// time are the -created time (make passes the commit's time).
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"
)

func main() {
	var (
		o       options
		created = flag.Int64("created", 0, "creation time of the images and their files, Unix seconds (default: $SOURCE_DATE_EPOCH, else 0)")
	)
	flag.StringVar(&o.binDir, "bin", "bin/static", "directory of the static binaries to put in the images")
	flag.StringVar(&o.outDir, "out", "bin/images", "directory to write NAME.tar archives to")
	flag.StringVar(&o.repo, "repo", "localhost/kmesh", "repository prefix of the image names (REGISTRY= in make)")
	flag.StringVar(&o.tag, "tag", "latest", "tag of the images")
	flag.StringVar(&o.version, "version", "", "version label of the images (org.opencontainers.image.version)")
	flag.StringVar(&o.commit, "commit", "", "commit label of the images (org.opencontainers.image.revision)")
	flag.StringVar(&o.arch, "arch", "amd64", "architecture the binaries were built for (GOARCH)")
	flag.BoolVar(&o.push, "push", false, "also push each image to its repository (credentials from ~/.docker/config.json)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: kmesh-image [flags] IMAGE...\n\nIMAGE is one of: %s\n\n", strings.Join(imageNames(), ", "))
		flag.PrintDefaults()
	}
	flag.Parse()
	o.created = time.Unix(*created, 0).UTC()
	if *created == 0 {
		if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
			var sec int64
			if _, err := fmt.Sscan(s, &sec); err != nil {
				fmt.Fprintf(os.Stderr, "kmesh-image: SOURCE_DATE_EPOCH=%q: not a number of seconds\n", s)
				os.Exit(2)
			}
			o.created = time.Unix(sec, 0).UTC()
		}
	}
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	for _, name := range flag.Args() {
		ref, digest, err := o.build(name)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kmesh-image: %s: %v\n", name, err)
			os.Exit(1)
		}
		log.Info("image written", "image", ref, "digest", digest, "archive", o.archivePath(name), "pushed", o.push)
	}
}
