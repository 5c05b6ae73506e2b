package dataplane

import "fmt"

// idPool hands out small ids that stay stable while their owner exists.
// Ids in use by entries a previous kmeshd left in the maps are reserved
// until the first full state has replaced them.
type idPool struct {
	name string
	max  uint32 // highest id, 0 = no limit
	next uint32
	free []uint32
	// taken has bit id%64 of word id/64 set for each id in use or
	// reserved: a first sync takes 500,000 backend ids, and a map of
	// them cost a tenth of a second. Ids past maxDenseID (only a
	// previous instance's corrupt entry could hold one) go in far.
	taken []uint64
	far   map[uint32]bool
}

const maxDenseID = 1 << 24

func newIDPool(name string, max uint32) *idPool {
	return &idPool{name: name, max: max, next: 1, far: map[uint32]bool{}}
}

func (p *idPool) isTaken(id uint32) bool {
	if id >= maxDenseID {
		return p.far[id]
	}
	w := int(id / 64)
	return w < len(p.taken) && p.taken[w]&(1<<(id%64)) != 0
}

func (p *idPool) setTaken(id uint32, on bool) {
	if id >= maxDenseID {
		if on {
			p.far[id] = true
		} else {
			delete(p.far, id)
		}
		return
	}
	w := int(id / 64)
	if w >= len(p.taken) {
		if !on {
			return
		}
		p.taken = append(p.taken, make([]uint64, w+1-len(p.taken))...)
	}
	if on {
		p.taken[w] |= 1 << (id % 64)
	} else {
		p.taken[w] &^= 1 << (id % 64)
	}
}

func (p *idPool) reserve(id uint32) { p.setTaken(id, true) }

func (p *idPool) get() (uint32, error) {
	for len(p.free) > 0 {
		id := p.free[len(p.free)-1]
		p.free = p.free[:len(p.free)-1]
		if !p.isTaken(id) {
			p.setTaken(id, true)
			return id, nil
		}
	}
	for p.isTaken(p.next) {
		p.next++
	}
	if p.max != 0 && p.next > p.max {
		return 0, fmt.Errorf("no free %s id: all %d are in use", p.name, p.max)
	}
	id := p.next
	p.next++
	p.setTaken(id, true)
	return id, nil
}

func (p *idPool) put(id uint32) {
	if p.isTaken(id) {
		p.setTaken(id, false)
		p.free = append(p.free, id)
	}
}
