package xds

import (
	"math/rand/v2"
	"time"
)

const (
	initialBackoff = 100 * time.Millisecond
	// maxBackoff caps the wait between two connection attempts (ztunnel's
	// cap too), so a control plane that comes back is found within it.
	maxBackoff = 15 * time.Second
)

// backoff doubles the wait after each failed attempt, up to maxBackoff,
// and jitters it so that many nodes do not reconnect in step.
type backoff struct{ next time.Duration }

// wait returns how long to wait before the next attempt: a random
// duration in [d/2, d) for the current step d.
func (b *backoff) wait() time.Duration {
	if b.next == 0 {
		b.next = initialBackoff
	}
	d := b.next
	b.next = min(2*b.next, maxBackoff)
	return d/2 + rand.N(d/2)
}

// reset starts over after a stream that worked.
func (b *backoff) reset() { b.next = 0 }
