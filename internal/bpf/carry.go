package bpf

import (
	"errors"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// carried are the maps in which one side of a connection being set up
// leaves an entry for the other: km_tunnel_dst, written by sockops when a
// redirected client connects and taken by the tunnel process, through the
// pin, when it accepts; km_tunnel_legs, written at the tunnel's dial into a
// pod and taken at the application's accept. When Open creates one anew
// (its size changed), the old programs write the old map until Commit
// switches them, and the tunnel reads the map the pin named when it opened
// it (it opens the pin again on a miss). So Commit copies the old map's
// entries into the new one before the pin moves, and then what the old
// programs wrote after that copy once they are switched; an entry the new
// map has already wins. What the old programs wrote between the two
// copies, a tunnel that moved to the new map in that instant finds in the
// map it held before (internal/tunnel/pins.go).
var carried = []string{KmeshMapKmTunnelDst, KmeshMapKmTunnelLegs}

// carry copies entries of a replaced map into its successor.
type carry struct {
	name     string
	from, to *ebpf.Map
	seen     map[string]bool // keys the first copy found, by their bytes
	copied   int
}

// carries opens the pinned maps the fresh maps of carried replace, where
// their entries fit the new map.
func (d *Datapath) carries() []*carry {
	var out []*carry
	for _, name := range carried {
		to := d.fresh[name]
		if to == nil {
			continue
		}
		from, err := ebpf.LoadPinnedMap(filepath.Join(d.opts.Dir, name), nil)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				d.log.Warn("map created anew starts empty: the old one cannot be read", "map", name, "err", err)
			}
			continue
		}
		if from.Type() != to.Type() || from.KeySize() != to.KeySize() || from.ValueSize() != to.ValueSize() {
			from.Close()
			continue
		}
		to, err = to.Clone()
		if err != nil {
			from.Close()
			d.log.Warn("map created anew starts empty", "map", name, "err", err)
			continue
		}
		out = append(out, &carry{name: name, from: from, to: to, seen: map[string]bool{}})
	}
	return out
}

// copy puts the old map's entries the new one lacks into it. The second
// call skips what the first found: an entry taken from the new map since
// is not brought back.
func (c *carry) copy(first bool) error {
	k := make([]byte, c.from.KeySize())
	v := make([]byte, c.from.ValueSize())
	it := c.from.Iterate()
	for it.Next(k, v) {
		if first {
			c.seen[string(k)] = true
		} else if c.seen[string(k)] {
			continue
		}
		err := c.to.Update(k, v, ebpf.UpdateNoExist)
		switch {
		case err == nil:
			c.copied++
		case !errors.Is(err, ebpf.ErrKeyExist):
			return err
		}
	}
	return it.Err()
}

func (c *carry) close() {
	c.from.Close()
	c.to.Close()
}
