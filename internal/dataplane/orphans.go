package dataplane

import "fmt"

// orphan is an entry the dataplane meant to delete but the kernel refused
// to: an old generation's slot, a replaced policy's match. Nothing reads
// it (the live generation is the other one), but it holds room in its map
// and the id's next generation would meet it, so it is deleted again
// before the next write, which fails while it stays (retry to
// convergence). MapStats counts orphans as entries.
type orphan struct {
	m    Map
	name string
	key  any // a comparable generated key type
}

func (d *Dataplane) deleteOrRemember(m Map, name string, key any) {
	if err := m.Delete(key); err != nil && !isNotExist(err) {
		d.log.Warn("delete failed; retried before the next write", "map", name, "err", err)
		d.orphans[orphan{m, name, key}] = struct{}{}
	}
}

// deleteOrphans deletes the remembered orphans, or says which stays.
func (d *Dataplane) deleteOrphans() error {
	for o := range d.orphans {
		if err := o.m.Delete(o.key); err != nil && !isNotExist(err) {
			return fmt.Errorf("delete %s entry %+v left by a failed write: %w", o.name, o.key, err)
		}
		delete(d.orphans, o)
	}
	return nil
}

// orphanCounts counts the orphans per map name.
func (d *Dataplane) orphanCounts() map[string]int {
	n := map[string]int{}
	for o := range d.orphans {
		n[o.name]++
	}
	return n
}
