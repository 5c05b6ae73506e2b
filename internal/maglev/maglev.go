// Package maglev builds the consistent-hash lookup tables the connect
// programs read for services in Maglev mode (bpf/include/lb.h, km_maglev),
// and hashes client keys the same way the kernel does. A table maps every
// hash of a client key to a backend; when a backend is added or removed,
// only about its share of the entries change (Eisenbud et al., "Maglev: A
// Fast and Reliable Software Network Load Balancer", NSDI 2016, §3.4).
package maglev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math/bits"
	"slices"
)

// DefaultSize is the number of entries of a table: a prime, as the
// permutations need, large enough that 100 backends each own ~164 entries
// (Maglev's paper asks for M much larger than N, 100x), small enough that a
// table takes 64 KiB per service and family.
const DefaultSize = 16381

// Backend is one member of a table, named by something stable (the
// workload key), so a table depends on membership, not on ids.
type Backend struct {
	Name   string
	Weight uint32 // turns per round when filling the table; 0 counts as 1
}

// Build returns the table of size entries: the index into backends owning
// each entry. Backends are ordered by name first, so the result does not
// depend on the order given. size must be a prime larger than the number of
// backends; no backends give an empty table.
func Build(backends []Backend, size int) ([]int, error) {
	if !isPrime(size) {
		return nil, fmt.Errorf("maglev table size %d is not a prime", size)
	}
	if len(backends) == 0 {
		return nil, nil
	}
	if len(backends) >= size {
		return nil, fmt.Errorf("maglev table size %d is too small for %d backends", size, len(backends))
	}
	order := make([]int, len(backends))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return compare(backends[a].Name, backends[b].Name) })
	for i := 1; i < len(order); i++ {
		if backends[order[i]].Name == backends[order[i-1]].Name {
			return nil, fmt.Errorf("maglev: backend %s appears twice", backends[order[i]].Name)
		}
	}

	m := uint64(size)
	offset := make([]uint64, len(order))
	skip := make([]uint64, len(order))
	next := make([]uint64, len(order))
	for i, b := range order {
		offset[i] = hashName(backends[b].Name, 0) % m
		skip[i] = hashName(backends[b].Name, 1)%(m-1) + 1
	}
	table := make([]int, size)
	for i := range table {
		table[i] = -1
	}
	filled := 0
	for filled < size {
		for i, b := range order {
			for range max(backends[b].Weight, 1) {
				c := (offset[i] + next[i]*skip[i]) % m
				for table[c] >= 0 {
					next[i]++
					c = (offset[i] + next[i]*skip[i]) % m
				}
				table[c] = b
				next[i]++
				filled++
				if filled == size {
					return table, nil
				}
			}
		}
	}
	return table, nil
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func hashName(name string, seed byte) uint64 {
	h := fnv.New64a()
	h.Write([]byte{seed})
	h.Write([]byte(name))
	return h.Sum64()
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// ErrKeySize is returned by Hash for a key that is not 16 bytes.
var ErrKeySize = errors.New("client key must be 16 bytes")

// Hash is the kernel's lb_hash of a client key: 16 bytes, an IPv6 address
// or an IPv4-mapped one in network order (the words as the kernel loads
// them on a little-endian host). It is Murmur3's 32-bit hash with the seed
// "Kmes".
func Hash(key [16]byte) uint32 {
	h := uint32(0x4b6d6573)
	for i := 0; i < 16; i += 4 {
		x := binary.LittleEndian.Uint32(key[i:]) * 0xcc9e2d51
		x = bits.RotateLeft32(x, 15) * 0x1b873593
		h ^= x
		h = bits.RotateLeft32(h, 13)*5 + 0xe6546b64
	}
	h ^= 16
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}
