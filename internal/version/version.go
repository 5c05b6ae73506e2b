// Package version is what a build of Kmesh says it is: the release and the
// commit, stamped at link time (make build and make images pass
// -ldflags "-X github.com/kmesh-go/kmesh/internal/version.Version=...
// -X github.com/kmesh-go/kmesh/internal/version.Commit=..."). A plain
// `go build` in a git checkout falls back to the commit Go records in the
// binary (vcs.revision), so a binary never claims a version it is not.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set with -ldflags -X; see the package doc.
var (
	// Version is the release, from `git describe` ("v0.3.0", "v0.3.0-5-gabc1234").
	Version = ""
	// Commit is the full git commit the binary was built from.
	Commit = ""
)

// Info is one binary's version, as the admin API serves it at /version
// and kmeshctl version prints it.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// Get returns this binary's version.
func Get() Info {
	i := Info{Version: Version, Commit: Commit, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if i.Commit == "" {
		i.Commit = vcsRevision()
	}
	if i.Version == "" {
		i.Version = "devel"
	}
	if i.Commit == "" {
		i.Commit = "unknown"
	}
	return i
}

// String is the one line `kmeshd --version` prints.
func (i Info) String() string {
	return fmt.Sprintf("%s (commit %s, %s, %s)", i.Version, i.Commit, i.GoVersion, i.Platform)
}

// vcsRevision is the commit go build recorded, with "-dirty" when the tree
// had changes.
func vcsRevision() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev == "" {
		return ""
	}
	return rev + dirty
}
