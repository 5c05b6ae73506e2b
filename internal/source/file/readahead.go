package file

import (
	"os"
	"path/filepath"
	"runtime"

	"go.yaml.in/yaml/v3"
)

// decodedFile is one config file read and decoded into its YAML tree.
type decodedFile struct {
	data      []byte
	err       error // reading it
	root      *yaml.Node
	decodeErr error // decoding it, for parseDecoded to place
}

// readAhead reads and decodes the files of dir in parallel, a few files
// ahead of the caller, and hands them over in order: next(i) returns file
// i. YAML decoding is most of a first sync from a directory (1,000 files
// at 100,000 endpoints) and each file decodes alone; the files' items are
// still built one after another in name order, as a single reader would
// (a file may name the services of the files before it). Only the window
// of decoded trees is held at once. stop ends the workers early.
func readAhead(dir string, names []string) (next func(int) decodedFile, stop func()) {
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
				if f.data, f.err = os.ReadFile(filepath.Join(dir, name)); f.err == nil {
					f.root, f.decodeErr = decode(f.data)
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
