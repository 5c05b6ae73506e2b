package file

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.yaml.in/yaml/v3"

	"github.com/kmesh-go/kmesh/internal/model"
)

// isDir reports whether the source's path is a directory of config files.
func (s *Source) isDir() bool {
	if s.path == "" {
		return false
	}
	fi, err := os.Stat(s.path)
	return err == nil && fi.IsDir()
}

// configName reports whether a directory entry is a config file: *.yaml
// or *.yml, not hidden (editors' swap files, a ConfigMap's ..data).
func configName(name string) bool {
	return !strings.HasPrefix(name, ".") && (strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml"))
}

// listConfigs returns the config file names of the directory, sorted.
func (s *Source) listConfigs() ([]string, error) {
	entries, err := os.ReadDir(s.path)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if configName(e.Name()) && !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// digest is a file's SHA-256: a directory keeps it to skip files whose
// content did not change.
type digest = [sha256.Size]byte

// loadDir reads and parses every file of the directory into a new dir;
// the first bad file is the error.
func (s *Source) loadDir() (*dir, map[string]digest, *model.Mesh, error) {
	names, err := s.listConfigs()
	if err != nil {
		return nil, nil, nil, err
	}
	d := newDir(s.node)
	files := make(map[string]digest, len(names))
	next, stop := readAhead(s.path, names, func(path string, data []byte, root *yaml.Node) (*part, bool, error) {
		return parseAlone(path, s.node, data, root)
	})
	defer stop()
	for i, name := range names {
		f := next(i)
		data, err := f.data, f.err
		if err != nil {
			return nil, nil, nil, err
		}
		full := filepath.Join(s.path, name)
		pt, err := f.pt, f.parseErr
		if !f.parsed {
			pt, err = d.parseDecoded(full, data, f.root, f.decodeErr)
		}
		if err == nil {
			err = d.check(name, full, data, pt)
		}
		if err != nil {
			return nil, nil, nil, err
		}
		d.swap(name, nil, pt)
		files[name] = f.sum
		if i+1 == len(names)/16 {
			d.reserve(len(names) + len(names)/16)
		}
	}
	m, _ := d.whole()
	return d, files, m, nil
}

// runDir is Run for a directory: it watches the directory, and after a
// burst of events settles re-reads the files named in it (every file on
// Reload, on a watch error, and when a hidden entry such as a ConfigMap's
// ..data changes), parsing only those whose content changed.
func (s *Source) runDir(ctx context.Context, apply func(*model.Mesh) error, changes func(*model.Changes) error) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", s.path, err)
	}
	defer w.Close()
	if err := w.Add(s.path); err != nil {
		return fmt.Errorf("watch %s: %w", s.path, err)
	}
	s.syncDir(nil, apply, changes)
	timer := time.NewTimer(0)
	timer.Stop()
	var first time.Time
	dirty := map[string]bool{}
	all := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("watch " + s.path + ": watcher closed")
			}
			name := filepath.Base(ev.Name)
			switch {
			case configName(name):
				dirty[name] = true
			case strings.HasPrefix(name, ".."):
				all = true // a ConfigMap's atomic swap: every file may have changed
			default:
				continue
			}
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			timer.Reset(min(debounce, first.Add(maxDelay).Sub(now)))
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("watch " + s.path + ": watcher closed")
			}
			s.log.Warn("config watch error", "file", s.path, "err", err)
			s.requestReload()
		case <-timer.C:
			first = time.Time{}
			names := slices.Sorted(maps.Keys(dirty))
			if all {
				names = nil
			}
			clear(dirty)
			all = false
			s.syncDir(names, apply, changes)
		case <-s.reload:
			timer.Stop()
			first = time.Time{}
			clear(dirty)
			all = false
			s.syncDir(nil, apply, changes)
		}
	}
}

// syncDir re-reads the named files (nil: every file, and files gone),
// and applies each that changed and is valid, one file at a time. Files
// refused earlier (a name another file held) are tried again after a
// file applies.
func (s *Source) syncDir(names []string, apply func(*model.Mesh) error, changes func(*model.Changes) error) {
	if s.dir == nil {
		d, files, m, err := s.loadDir()
		if err != nil {
			s.reject(err)
			return
		}
		if err := apply(m); err != nil {
			s.log.Error("config apply failed", "file", s.path, "err", err)
			return
		}
		s.mu.Lock()
		s.dir, s.files = d, files
		s.mu.Unlock()
		s.log.Debug("config read", "dir", s.path, "files", len(files), "services", len(m.Services), "workloads", len(m.Workloads))
		return
	}
	if names == nil {
		list, err := s.listConfigs()
		if err != nil {
			s.reject(err)
			return
		}
		seen := map[string]bool{}
		for _, n := range list {
			seen[n] = true
		}
		for n := range s.files {
			if !seen[n] {
				list = append(list, n)
			}
		}
		names = list
	}
	progress := false
	for _, name := range names {
		if s.syncFile(name, apply, changes) {
			progress = true
		}
	}
	for progress && len(s.dirRejected) > 0 {
		progress = false
		for _, name := range slices.Sorted(maps.Keys(s.dirRejected)) {
			if s.syncFile(name, apply, changes) {
				progress = true
			}
		}
	}
}

// syncFile brings one file of the directory in; it reports whether the
// mesh changed.
func (s *Source) syncFile(name string, apply func(*model.Mesh) error, changes func(*model.Changes) error) bool {
	full := filepath.Join(s.path, name)
	data, err := os.ReadFile(full)
	gone := errors.Is(err, fs.ErrNotExist)
	if err != nil && !gone {
		s.reject(err)
		return false
	}
	s.mu.Lock()
	kept, had := s.files[name]
	s.mu.Unlock()
	if gone && !had {
		delete(s.dirRejected, name)
		return false
	}
	sum := sha256.Sum256(data)
	if !gone && had && sum == kept {
		delete(s.dirRejected, name)
		return false
	}
	d := s.dir
	var pt *part
	if !gone {
		pt, err = d.parsePart(full, data)
		if err == nil {
			err = d.check(name, full, data, pt)
		}
		if err != nil {
			if prev, ok := s.dirRejected[name]; ok && prev == sum {
				s.log.Debug("config still rejected", "file", full, "err", err)
				return false
			}
			s.dirRejected[name] = sum
			s.reject(err)
			return false
		}
	}
	delete(s.dirRejected, name)
	old := d.parts[name]
	inc := changes != nil && d.incremental(old, pt)
	ws, ss := d.swap(name, old, pt)
	if inc {
		c, undo := d.changes(ws, ss)
		err = changes(c)
		if err != nil {
			undo()
		}
	} else {
		m, undo := d.whole()
		if err = apply(m); err != nil {
			undo()
		}
	}
	if err != nil {
		d.swap(name, pt, old)
		if old == nil {
			delete(d.parts, name)
		}
		s.log.Error("config apply failed", "file", full, "err", err)
		return false
	}
	if gone {
		delete(d.parts, name)
	}
	s.mu.Lock()
	if gone {
		delete(s.files, name)
	} else {
		s.files[name] = sum
	}
	s.mu.Unlock()
	s.log.Debug("config read", "file", full, "incremental", inc)
	return true
}
