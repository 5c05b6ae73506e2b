package file

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"runtime"

	"go.yaml.in/yaml/v3"
)

// decodedFile is one config file read and decoded into its YAML tree,
// and its items parsed when they could be alone.
type decodedFile struct {
	data      []byte
	sum       digest // of data, made here rather than on the caller's one core
	err       error  // reading it
	root      *yaml.Node
	decodeErr error // decoding it, for parseDecoded to place
	parsed    bool  // pt and parseErr are the file's parse; root is dropped
	pt        *part
	parseErr  error
}

// readAhead reads, decodes and parses the files of dir in parallel, a few
// files ahead of the caller, and hands them over in name order, as a
// single reader would: next(i) returns file i. Decoding and parsing are
// most of a first sync from a directory (1,000 files at 100,000
// endpoints) and each file's are its own, except routes, which may name
// the services of the files before it: parse (parseAlone) declines a file
// with routes, and the caller parses it in order. Only the window of
// decoded files is held at once. stop ends the workers early.
func readAhead(dir string, names []string, parse func(path string, data []byte, root *yaml.Node) (*part, bool, error)) (next func(int) decodedFile, stop func()) {
	window := 2 * runtime.GOMAXPROCS(0)
	out := make([]chan decodedFile, len(names))
	for i := range out {
		out[i] = make(chan decodedFile, 1)
	}
	slots := make(chan struct{}, window)
	done := make(chan struct{})
	go func() {
		for i, name := range names {
			select {
			case slots <- struct{}{}:
			case <-done:
				return
			}
			go func() {
				var f decodedFile
				path := filepath.Join(dir, name)
				a := arenas.Get().(*nodeArena)
				if f.data, f.err = os.ReadFile(path); f.err == nil {
					f.sum = sha256.Sum256(f.data)
					f.root, f.decodeErr = decode(f.data, a)
				}
				if f.err == nil && f.decodeErr == nil {
					if f.pt, f.parsed, f.parseErr = parse(path, f.data, f.root); f.parsed {
						f.root = nil
					}
				}
				if f.root == nil {
					release(a, f.pt) // else the caller parses the tree
				}
				out[i] <- f
			}()
		}
	}()
	next = func(i int) decodedFile {
		f := <-out[i]
		<-slots
		return f
	}
	return next, func() { close(done) }
}
