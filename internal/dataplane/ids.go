package dataplane

import "fmt"

// idPool hands out small ids that stay stable while their owner exists.
// Ids in use by entries a previous kmeshd left in the maps are reserved
// until the first full state has replaced them.
type idPool struct {
	name  string
	max   uint32 // highest id, 0 = no limit
	next  uint32
	free  []uint32
	taken map[uint32]bool
}

func newIDPool(name string, max uint32) *idPool {
	return &idPool{name: name, max: max, next: 1, taken: map[uint32]bool{}}
}

func (p *idPool) reserve(id uint32) { p.taken[id] = true }

func (p *idPool) get() (uint32, error) {
	for len(p.free) > 0 {
		id := p.free[len(p.free)-1]
		p.free = p.free[:len(p.free)-1]
		if !p.taken[id] {
			p.taken[id] = true
			return id, nil
		}
	}
	for p.taken[p.next] {
		p.next++
	}
	if p.max != 0 && p.next > p.max {
		return 0, fmt.Errorf("no free %s id: all %d are in use", p.name, p.max)
	}
	id := p.next
	p.next++
	p.taken[id] = true
	return id, nil
}

func (p *idPool) put(id uint32) {
	if p.taken[id] {
		delete(p.taken, id)
		p.free = append(p.free, id)
	}
}
