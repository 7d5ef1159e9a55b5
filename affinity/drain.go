package affinity

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Draining state is process-wide and keyed by upstream address, so it
// applies to every policy that routes to the address and survives config
// reloads. A draining upstream gets no new sessions; requests of sessions
// already bound to it keep going there until its deadline, if it has one,
// and move on their next request after it (see Evicted).
var drains struct {
	mu  sync.Mutex
	set atomic.Pointer[map[string]time.Time] // address -> deadline (zero: none)
	any atomic.Bool                          // the set is not empty: one load for the request path
}

// SetDraining sets or clears the draining state of addr, without a
// deadline, and reports whether it changed.
func SetDraining(addr string, on bool) bool {
	if on {
		return DrainUntil(addr, time.Time{})
	}
	drains.mu.Lock()
	defer drains.mu.Unlock()
	old := drainSet()
	if _, is := old[addr]; !is {
		return false
	}
	next := make(map[string]time.Time, len(old))
	for a, d := range old {
		next[a] = d
	}
	delete(next, addr)
	drains.set.Store(&next)
	drains.any.Store(len(next) > 0)
	return true
}

// DrainUntil drains addr with deadline (zero: none), replacing the
// deadline of a drain already under way, and reports whether anything
// changed.
func DrainUntil(addr string, deadline time.Time) bool {
	drains.mu.Lock()
	defer drains.mu.Unlock()
	old := drainSet()
	if d, is := old[addr]; is && d.Equal(deadline) {
		return false
	}
	next := make(map[string]time.Time, len(old)+1)
	for a, d := range old {
		next[a] = d
	}
	next[addr] = deadline
	drains.set.Store(&next)
	drains.any.Store(true)
	return true
}

// DrainDeadline returns the deadline of addr's drain; ok is false when it
// drains without one or does not drain.
func DrainDeadline(addr string) (deadline time.Time, ok bool) {
	d, is := drainSet()[addr]
	return d, is && !d.IsZero()
}

// Evicted reports whether sessions bound to addr must move: it drains and
// its deadline has passed.
func Evicted(addr string, now time.Time) bool {
	if !drains.any.Load() {
		return false
	}
	d, ok := DrainDeadline(addr)
	return ok && !now.Before(d)
}

// IsDraining reports whether addr is draining.
func IsDraining(addr string) bool {
	_, ok := drainSet()[addr]
	return ok
}

// AnyDraining reports whether any upstream is draining; the request path
// checks it first so that nothing is filtered when nothing drains.
func AnyDraining() bool { return drains.any.Load() }

// DrainingList returns the draining addresses, sorted.
func DrainingList() []string {
	var out []string
	for a := range drainSet() {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

func drainSet() map[string]time.Time {
	if p := drains.set.Load(); p != nil {
		return *p
	}
	return nil
}
