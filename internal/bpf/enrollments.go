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
// admin API (kmeshctl enroll). No program reads it: it is a pinned map
// only so those enrollments live exactly as long as this instance's data
// plane, across kmeshd restarts, and go with `kmeshd cleanup`.
const enrollmentsMap = "km_enrolled"

// maxNetnsPath bounds a namespace path in km_enrolled's keys.
const maxNetnsPath = 256

// Enrollments are the admin API's enrolled namespace paths, kept in a
// pinned map.
type Enrollments struct{ m *ebpf.Map }

// OpenEnrollments opens the pinned set of dir, or creates it.
func OpenEnrollments(dir string, max uint32) (*Enrollments, error) {
	path := filepath.Join(dir, enrollmentsMap)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		m, err = ebpf.NewMap(&ebpf.MapSpec{Name: enrollmentsMap, Type: ebpf.Hash, KeySize: maxNetnsPath, ValueSize: 1, MaxEntries: max})
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
	return &Enrollments{m: m}, nil
}

func netnsKey(path string) ([maxNetnsPath]byte, error) {
	var k [maxNetnsPath]byte
	if len(path) >= maxNetnsPath {
		return k, fmt.Errorf("netns path %s: longer than %d bytes", path, maxNetnsPath-1)
	}
	copy(k[:], path)
	return k, nil
}

// Add records path.
func (e *Enrollments) Add(path string) error {
	k, err := netnsKey(path)
	if err != nil {
		return err
	}
	if err := e.m.Put(k, uint8(1)); err != nil {
		return fmt.Errorf("map %s: %w (raise --max-workloads)", enrollmentsMap, err)
	}
	return nil
}

// Remove forgets path; it is not an error if it was not there.
func (e *Enrollments) Remove(path string) error {
	k, err := netnsKey(path)
	if err != nil {
		return err
	}
	if err := e.m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("map %s: %w", enrollmentsMap, err)
	}
	return nil
}

// List returns the recorded paths.
func (e *Enrollments) List() ([]string, error) {
	var out []string
	var k [maxNetnsPath]byte
	var v uint8
	it := e.m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, string(bytes.TrimRight(k[:], "\x00")))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("map %s: %w", enrollmentsMap, err)
	}
	return out, nil
}

// Close releases the handle; the pin stays.
func (e *Enrollments) Close() error { return e.m.Close() }
