package bpf

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// enrollmentsMap is the pin of the network namespaces enrolled through the
// admin API (kmeshctl enroll), keyed by netns cookie. No program reads
// it: it is a pinned map only so those enrollments live exactly as long as
// this instance's data plane, across kmeshd restarts, and go with `kmeshd
// cleanup`. The cookie, not the path, is the key: a cookie names one
// namespace for as long as the kernel runs (and pins do not outlive the
// kernel), while a path such as /proc/PID/ns/net can come to name another.
const enrollmentsMap = "km_enrolled_v2"

// legacyEnrollmentsMap is the earlier layout, keyed by path: read once to
// carry its entries over, then removed.
const legacyEnrollmentsMap = "km_enrolled"

// maxNetnsPath bounds a namespace path kept in km_enrolled_v2's values.
const maxNetnsPath = 256

// Enrollments are the admin API's enrolled namespaces, by cookie, with the
// path each was enrolled by, kept in a pinned map.
type Enrollments struct {
	m   *ebpf.Map
	dir string
}

// OpenEnrollments opens the pinned set of dir, or creates it.
func OpenEnrollments(dir string, max uint32) (*Enrollments, error) {
	path := filepath.Join(dir, enrollmentsMap)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		m, err = ebpf.NewMap(&ebpf.MapSpec{Name: enrollmentsMap, Type: ebpf.Hash, KeySize: 8, ValueSize: maxNetnsPath, MaxEntries: max})
		if err == nil {
			if perr := m.Pin(path); perr != nil {
				m.Close()
				return nil, fmt.Errorf("map %s: pin: %w", enrollmentsMap, perr)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", enrollmentsMap, err)
	}
	if k, v := m.KeySize(), m.ValueSize(); k != 8 || v != maxNetnsPath {
		m.Close()
		return nil, fmt.Errorf("map %s: key size %d, value size %d; want 8, %d", enrollmentsMap, k, v, maxNetnsPath)
	}
	return &Enrollments{m: m, dir: dir}, nil
}

func pathValue(path string) ([maxNetnsPath]byte, error) {
	var v [maxNetnsPath]byte
	if len(path) >= maxNetnsPath {
		return v, fmt.Errorf("netns path %s: longer than %d bytes", path, maxNetnsPath-1)
	}
	copy(v[:], path)
	return v, nil
}

// Add records the namespace of cookie, enrolled by path; a namespace
// enrolled again (by any spelling of any path to it) stays one entry.
func (e *Enrollments) Add(cookie uint64, path string) error {
	v, err := pathValue(path)
	if err != nil {
		return err
	}
	if err := e.m.Put(cookie, v); err != nil {
		return fmt.Errorf("map %s: %w (raise --max-workloads)", enrollmentsMap, err)
	}
	return nil
}

// Remove forgets the namespace of cookie; it is not an error if it was not
// there.
func (e *Enrollments) Remove(cookie uint64) error {
	if err := e.m.Delete(cookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("map %s: %w", enrollmentsMap, err)
	}
	return nil
}

// List returns the recorded namespaces: cookie -> path.
func (e *Enrollments) List() (map[uint64]string, error) {
	out := map[uint64]string{}
	var k uint64
	var v [maxNetnsPath]byte
	it := e.m.Iterate()
	for it.Next(&k, &v) {
		out[k] = string(bytes.TrimRight(v[:], "\x00"))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("map %s: %w", enrollmentsMap, err)
	}
	return out, nil
}

// Legacy returns the paths a kmeshd before km_enrolled_v2 recorded in dir,
// none if there is no such pin.
func (e *Enrollments) Legacy() ([]string, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(e.dir, legacyEnrollmentsMap), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", legacyEnrollmentsMap, err)
	}
	defer m.Close()
	if m.KeySize() != maxNetnsPath {
		return nil, fmt.Errorf("map %s: key size %d, want %d", legacyEnrollmentsMap, m.KeySize(), maxNetnsPath)
	}
	var out []string
	k := make([]byte, maxNetnsPath)
	v := make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, string(bytes.TrimRight(k, "\x00")))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("map %s: %w", legacyEnrollmentsMap, err)
	}
	return out, nil
}

// DropLegacy removes the earlier layout's pin once its entries are carried
// over.
func (e *Enrollments) DropLegacy() error {
	err := os.Remove(filepath.Join(e.dir, legacyEnrollmentsMap))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("map %s: %w", legacyEnrollmentsMap, err)
	}
	return nil
}

// Close releases the handle; the pin stays.
func (e *Enrollments) Close() error { return e.m.Close() }
