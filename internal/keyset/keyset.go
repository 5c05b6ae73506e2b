// Package keyset maps keys to small sets of names where nearly every key
// has one name: the xDS source's claims (which resources claim a workload
// key, a host, an address) and the model's services of each workload. The
// one name is kept as a plain string, the rare second and later ones in a
// side map, in arrival order. A map of one-element slices cost a slice
// header and an allocation more per key: ~2.8 MB per 100,000 keys.
package keyset

import "slices"

// Map maps each key to its names, every name once, in arrival order. The
// zero Map is not usable; make one with New.
type Map[K comparable] struct {
	one  map[K]string
	more map[K][]string
}

// New returns an empty Map.
func New[K comparable]() Map[K] {
	return Map[K]{one: map[K]string{}, more: map[K][]string{}}
}

// WithCapacity returns an empty Map with room for n keys of one name.
func WithCapacity[K comparable](n int) Map[K] {
	return Map[K]{one: make(map[K]string, n), more: map[K][]string{}}
}

// Mark adds (on) or removes name from the names of key. Removing the first
// name makes the next one, in arrival order, the first.
func (c Map[K]) Mark(key K, name string, on bool) {
	first, ok := c.one[key]
	rest := c.more[key]
	switch {
	case on && !ok:
		c.one[key] = name
	case on:
		if first != name && !slices.Contains(rest, name) {
			c.more[key] = append(rest, name)
		}
	case !ok:
	case first == name && len(rest) == 0:
		delete(c.one, key)
	case first == name:
		c.one[key] = rest[0]
		c.setMore(key, slices.Delete(rest, 0, 1))
	default:
		if i := slices.Index(rest, name); i >= 0 {
			c.setMore(key, slices.Delete(rest, i, i+1))
		}
	}
}

// First makes name the one name of key, which has none: a bulk fill from
// keys known to be new (the xDS change index's workloads of a first
// state, in key order) takes one map operation per key instead of Mark's
// three.
func (c Map[K]) First(key K, name string) { c.one[key] = name }

func (c Map[K]) setMore(key K, rest []string) {
	if len(rest) == 0 {
		delete(c.more, key)
	} else {
		c.more[key] = rest
	}
}

// Count is the number of names of key.
func (c Map[K]) Count(key K) int {
	if _, ok := c.one[key]; !ok {
		return 0
	}
	return 1 + len(c.more[key])
}

// Only returns the name of key when it has exactly one.
func (c Map[K]) Only(key K) (string, bool) {
	name, ok := c.one[key]
	return name, ok && len(c.more[key]) == 0
}

// Names returns a new slice of the names of key, first to last.
func (c Map[K]) Names(key K) []string {
	first, ok := c.one[key]
	if !ok {
		return nil
	}
	return append([]string{first}, c.more[key]...)
}

// Len is the number of keys with a name.
func (c Map[K]) Len() int { return len(c.one) }
