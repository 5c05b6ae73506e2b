package file

import (
	"sync"

	"go.yaml.in/yaml/v3"
)

// nodeArena holds the nodes fastDecode makes of a file, and the slices of
// their children. The tree of a file is garbage once the file is parsed,
// and at 100,000 endpoints the trees of a first sync are ~300 MB of fresh
// heap (most of what the sync allocates): a reader of many files reuses
// one arena for file after file instead (arenas, release).
type nodeArena struct {
	nodes         [][]yaml.Node  // chunks; nodes[:chunk] are full
	ptrs          [][]*yaml.Node // chunks of Content slices; likewise
	chunk, next   int            // nodes[chunk][next] is the next free node
	pchunk, pnext int            // ptrs[pchunk][pnext] is the next free pointer
	stack         []*yaml.Node   // fastParser.stack, kept for its capacity
	// keys are the mapping keys read so far (name, namespace, labels,
	// ...): every item repeats them, so a scalar that is one reuses it.
	keys map[string]string
}

// maxKeys bounds keys, against a file of made-up keys.
const maxKeys = 1024

// text returns b as a string, a key read before if it is one.
func (a *nodeArena) text(b []byte) string {
	if k, ok := a.keys[string(b)]; ok {
		return k
	}
	return string(b)
}

// key notes that k is a mapping key.
func (a *nodeArena) key(k string) {
	if _, ok := a.keys[k]; ok || len(a.keys) >= maxKeys {
		return
	}
	if a.keys == nil {
		a.keys = map[string]string{}
	}
	a.keys[k] = k
}

const (
	arenaNodes = 256  // nodes per chunk
	arenaPtrs  = 1024 // pointers per chunk; a longer Content gets its own slice
)

// node returns a node to fill in.
func (a *nodeArena) node() *yaml.Node {
	if a.chunk == len(a.nodes) {
		a.nodes = append(a.nodes, make([]yaml.Node, arenaNodes))
	}
	n := &a.nodes[a.chunk][a.next]
	if a.next++; a.next == arenaNodes {
		a.chunk, a.next = a.chunk+1, 0
	}
	return n
}

// content returns a copy of children for a node's Content (nil if empty),
// of exactly their length, so that nothing appended to it reaches the
// next node's.
func (a *nodeArena) content(children []*yaml.Node) []*yaml.Node {
	n := len(children)
	if n == 0 {
		return nil
	}
	if n > arenaPtrs {
		return append([]*yaml.Node(nil), children...)
	}
	if a.pchunk < len(a.ptrs) && a.pnext+n > arenaPtrs {
		a.pchunk, a.pnext = a.pchunk+1, 0
	}
	if a.pchunk == len(a.ptrs) {
		a.ptrs = append(a.ptrs, make([]*yaml.Node, arenaPtrs))
	}
	out := a.ptrs[a.pchunk][a.pnext : a.pnext+n : a.pnext+n]
	copy(out, children)
	a.pnext += n
	return out
}

// reset makes the arena's memory free for the next file: every node and
// Content slice it handed out must be unreachable.
func (a *nodeArena) reset() { a.chunk, a.next, a.pchunk, a.pnext = 0, 0, 0, 0 }

var arenas = sync.Pool{New: func() any { return new(nodeArena) }}

// release puts a back for the next file once the tree decoded into it is
// no longer needed: when pt, parsed from that tree, keeps no node of it.
// Services and workloads keep lines, not nodes (TestParsedItems_KeepNoNodes);
// policies and L7 objects keep their name's node for messages.
func release(a *nodeArena, pt *part) {
	if pt != nil && len(pt.policies)+len(pt.peerAuths)+len(pt.gateways)+len(pt.routes)+len(pt.vss) > 0 {
		return // the garbage collector frees it with the part
	}
	a.reset()
	arenas.Put(a)
}
