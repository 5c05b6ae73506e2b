package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/kmesh-go/kmesh/examples"
	"github.com/kmesh-go/kmesh/internal/model"
)

// embeddedName is the file name in messages about the built-in default
// config, used when the path is "".
const embeddedName = "<embedded default>"

const (
	// debounce lets a burst of events (an editor's write, rename and chmod, a
	// ConfigMap's symlink swap) settle into one re-read. Such bursts take
	// microseconds; a change should reach the maps in tens of
	// milliseconds.
	debounce = 20 * time.Millisecond
	// maxDelay bounds the debounce, so a directory that never goes quiet still
	// gets its config re-read.
	maxDelay = time.Second
)

// Source watches one config file and hands every valid new state to apply.
type Source struct {
	path   string // "" for the embedded default
	name   string // path, or embeddedName
	node   string
	log    *slog.Logger
	reload chan struct{}

	mu   sync.Mutex
	last []byte // content of the last state loaded or applied
	have bool   // whether last is set; an empty file is a valid state

	rejected []byte // content of the last rejected file, to report it once
	onReject func(error)

	// A directory (dirsource.go): its parts and indexes, the digest of
	// each file they hold (a digest, not the bytes: the parts hold what
	// the bytes said), and files refused (digest, to report once).
	dir         *dir
	files       map[string]digest
	dirRejected map[string]digest
}

// New returns a Source for the file at path, or for the embedded default
// config (examples.Hello) if path is "". node is this node's name, for the
// netns check of [Parse]. log should already carry the component attribute;
// nil discards.
func New(path, node string, log *slog.Logger) *Source {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	name := path
	if path == "" {
		name = embeddedName
	}
	return &Source{path: path, name: name, node: node, log: log, reload: make(chan struct{}, 1)}
}

// Load reads and parses the file once; the daemon calls it at start-up and
// exits on error. The result becomes the state Run compares changes with.
func (s *Source) Load() (*model.Mesh, error) {
	if s.isDir() {
		d, files, m, err := s.loadDir()
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.dir, s.files = d, files
		s.mu.Unlock()
		return m, nil
	}
	data, err := s.read()
	if err != nil {
		return nil, err
	}
	m, err := Parse(s.name, data, s.node)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.last, s.have = data, true
	s.mu.Unlock()
	return m, nil
}

// Run watches the file until ctx ends, then returns nil. On every change and
// every Reload it re-reads the file: unchanged content is ignored, a file that
// fails to parse is logged and the previous state kept, and a valid one is
// passed to apply. If apply fails, the next change or Reload tries again.
// The first re-read happens as soon as the watch is set up, so a change made
// after Load is not missed, and Run works without Load. For the embedded
// default there is nothing to watch; only Reload triggers a re-read.
//
// Run returns an error only if the watch cannot be set up.
func (s *Source) Run(ctx context.Context, apply func(*model.Mesh) error) error {
	return s.RunChanges(ctx, apply, nil)
}

// RunChanges is Run that, for a directory, hands a change confined to one
// file's services and workloads to changes as the model changes it makes
// (the file parsed alone, O(what it touches)); apply still gets whole
// meshes: the first state, and changes to policies, L7 objects, or a mesh
// with waypoints or peer authentications. nil changes, or a single file:
// as Run.
func (s *Source) RunChanges(ctx context.Context, apply func(*model.Mesh) error, changes func(*model.Changes) error) error {
	if s.isDir() {
		s.dirRejected = map[string]digest{}
		return s.runDir(ctx, apply, changes)
	}
	var events <-chan fsnotify.Event
	var watchErrs <-chan error
	if s.path != "" {
		w, err := fsnotify.NewWatcher()
		if err != nil {
			return fmt.Errorf("watch %s: %w", s.path, err)
		}
		defer w.Close()
		// The directory, not the file: see the package doc.
		if err := w.Add(filepath.Dir(s.path)); err != nil {
			return fmt.Errorf("watch %s: %w", s.path, err)
		}
		events, watchErrs = w.Events, w.Errors
	}

	s.sync(apply)
	timer := time.NewTimer(0)
	timer.Stop()
	var first time.Time // first event of the burst being debounced; zero if none
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-events:
			if !ok {
				return errors.New("watch " + s.path + ": watcher closed")
			}
			// Any event counts: a ConfigMap swap renames ..data, not the
			// file, and re-reading an unchanged file costs one comparison.
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			timer.Reset(min(debounce, first.Add(maxDelay).Sub(now)))
		case err, ok := <-watchErrs:
			if !ok {
				return errors.New("watch " + s.path + ": watcher closed")
			}
			// Events may have been lost (queue overflow): re-read to be sure.
			s.log.Warn("config watch error", "file", s.path, "err", err)
			s.requestReload()
		case <-timer.C:
			first = time.Time{}
			s.sync(apply)
		case <-s.reload:
			timer.Stop()
			first = time.Time{}
			s.sync(apply)
		}
	}
}

// OnReject sets a function Run calls with each config it rejects (a file
// that cannot be read or parsed; the same bad content once), for the
// daemon's metrics. Call it before Run.
func (s *Source) OnReject(f func(error)) { s.onReject = f }

func (s *Source) reject(err error) {
	s.log.Error("config rejected", "file", s.name, "err", err)
	if s.onReject != nil {
		s.onReject(err)
	}
}

// Reload asks Run to re-read the file now; the daemon calls it on SIGHUP.
// It does not block, and requests made while one is pending merge into it.
func (s *Source) Reload() { s.requestReload() }

func (s *Source) requestReload() {
	select {
	case s.reload <- struct{}{}:
	default:
	}
}

// sync re-reads the file and applies it if it changed and is valid.
func (s *Source) sync(apply func(*model.Mesh) error) {
	data, err := s.read()
	if err != nil {
		s.reject(err)
		return
	}
	s.mu.Lock()
	same := s.have && bytes.Equal(data, s.last)
	s.mu.Unlock()
	if same {
		return
	}
	m, err := Parse(s.name, data, s.node)
	if err != nil {
		// Re-read, since a missing netns may have appeared, but a burst of
		// events on one bad file is reported once.
		if s.rejected != nil && bytes.Equal(data, s.rejected) {
			s.log.Debug("config still rejected", "file", s.name, "err", err)
			return
		}
		s.rejected = data
		s.reject(err)
		return
	}
	s.rejected = nil
	if err := apply(m); err != nil {
		// last stays as it was, so the next change or Reload retries.
		s.log.Error("config apply failed", "file", s.name, "err", err)
		return
	}
	s.mu.Lock()
	s.last, s.have = data, true
	s.mu.Unlock()
	s.log.Debug("config read", "file", s.name, "services", len(m.Services), "workloads", len(m.Workloads))
}

func (s *Source) read() ([]byte, error) {
	if s.path == "" {
		return examples.Hello, nil
	}
	return os.ReadFile(s.path)
}
