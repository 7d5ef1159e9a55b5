package affinity

import (
	"math"
	"math/bits"
	"sync/atomic"
)

// sightings estimates how many distinct sessions reached an upstream in
// the last minute (linear counting over two 30-second windows of 4096
// bits each), so that an operator can tell when a drained upstream of a
// token policy, which keeps no table, is free. Adding costs one atomic OR
// and the memory is fixed: a client cannot grow it.
type sightings struct {
	epoch [2]atomic.Int64 // the window each half holds (unix seconds / sightWindow)
	bits  [2][sightWords]atomic.Uint64
}

const (
	sightWindow = 30 // seconds
	sightWords  = 64 // 4096 bits a window
	sightBits   = sightWords * 64
)

// add notes session h (any well-mixed hash of it) at now (unix seconds).
func (s *sightings) add(h uint64, now int64) {
	w := now / sightWindow
	half := w & 1
	if old := s.epoch[half].Load(); old != w && s.epoch[half].CompareAndSwap(old, w) {
		// The half held a window two ago: start it afresh. A racing add
		// may lose its bit; this is an estimate.
		for i := range s.bits[half] {
			s.bits[half][i].Store(0)
		}
	}
	s.bits[half][(h>>6)%sightWords].Or(1 << (h & 63))
}

// union ORs into u the windows of the last minute at now.
func (s *sightings) union(u *[sightWords]uint64, now int64) {
	w := now / sightWindow
	for half := range 2 {
		if e := s.epoch[half].Load(); e == w || e == w-1 {
			for i := range u {
				u[i] |= s.bits[half][i].Load()
			}
		}
	}
}

// estimate is the linear-counting estimate of the distinct sessions set in
// u: within a few percent up to about ten thousand.
func estimate(u *[sightWords]uint64) int {
	set := 0
	for _, w := range u {
		set += bits.OnesCount64(w)
	}
	zero := sightBits - set
	if zero == 0 {
		zero = 1 // saturated: report the most it can tell
	}
	return int(math.Round(-sightBits * math.Log(float64(zero)/sightBits)))
}

// SessionsSeen estimates the distinct sessions that reached the upstreams
// of cs in the last minute at now (unix seconds), each counted once
// whichever policy saw it.
func SessionsSeen(now int64, cs ...*Counters) int {
	var u [sightWords]uint64
	for _, c := range cs {
		if c != nil {
			c.seen.union(&u, now)
		}
	}
	return estimate(&u)
}
