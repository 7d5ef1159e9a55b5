package affinity

import (
	"slices"
	"sync"
	"sync/atomic"
)

// Draining state is process-wide and keyed by upstream address, so it
// applies to every policy that routes to the address and survives config
// reloads. A draining upstream gets no new sessions; requests of sessions
// already bound to it keep going there.
var drains struct {
	mu  sync.Mutex
	set atomic.Pointer[map[string]struct{}]
	any atomic.Bool // the set is not empty: one load for the request path
}

// SetDraining sets or clears the draining state of addr and reports whether
// it changed.
func SetDraining(addr string, on bool) bool {
	drains.mu.Lock()
	defer drains.mu.Unlock()
	old := drainSet()
	if _, is := old[addr]; is == on {
		return false
	}
	next := make(map[string]struct{}, len(old)+1)
	for a := range old {
		next[a] = struct{}{}
	}
	if on {
		next[addr] = struct{}{}
	} else {
		delete(next, addr)
	}
	drains.set.Store(&next)
	drains.any.Store(len(next) > 0)
	return true
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

func drainSet() map[string]struct{} {
	if p := drains.set.Load(); p != nil {
		return *p
	}
	return nil
}
