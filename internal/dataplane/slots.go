package dataplane

import "sort"

// weighted is one backend with its weight in a service.
type weighted struct {
	backend uint32
	weight  uint32
}

// expandSlots turns weighted backends into the slot table the kernel picks
// from: backend b fills weight(b)/g slots, g the common divisor of all
// weights, so a random pick follows the weights and the table stays small.
// The order interleaves backends (smooth weighted round robin, as nginx
// does), so round robin spreads a heavy backend's turns over the cycle
// instead of sending it a burst.
func expandSlots(in []weighted) []uint32 {
	if len(in) == 0 {
		return nil
	}
	sort.Slice(in, func(i, j int) bool { return in[i].backend < in[j].backend })
	g := uint32(0)
	for _, w := range in {
		g = gcd(g, w.weight)
	}
	total := int64(0)
	for i := range in {
		in[i].weight /= g
		total += int64(in[i].weight)
	}
	current := make([]int64, len(in))
	out := make([]uint32, 0, total)
	for range total {
		best := 0
		for i := range in {
			current[i] += int64(in[i].weight)
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		out = append(out, in[best].backend)
	}
	return out
}

func gcd(a, b uint32) uint32 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
