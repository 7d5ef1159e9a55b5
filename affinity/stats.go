package affinity

import (
	"sort"
	"sync"
	"sync/atomic"
)

// Result is the outcome of one routing decision.
type Result uint8

// Decision results. Every selection records exactly one.
const (
	// ResultHit: routed by an existing session.
	ResultHit Result = iota
	// ResultNew: a new session was bound.
	ResultNew
	// ResultRebind: a session moved because its upstream failed or became
	// unavailable (including a retry of the same request).
	ResultRebind
	// ResultRejected: the client's token was invalid; the request was
	// load-balanced and bound afresh.
	ResultRejected

	numResults
)

var resultNames = [numResults]string{"hit", "new", "rebind", "rejected"}

func (r Result) String() string {
	if r < numResults {
		return resultNames[r]
	}
	return "unknown"
}

// Results lists every result, for reporting.
func Results() []Result { return []Result{ResultHit, ResultNew, ResultRebind, ResultRejected} }

// Counters count the decisions one policy kind made for one upstream since
// the process started. They are never reset by a config reload.
type Counters struct {
	results  [numResults]atomic.Uint64
	rejected [numReasons]atomic.Uint64
	last     atomic.Int64 // unix seconds of the last request of a session
	tooLarge atomic.Uint64
	seen     sightings
}

// Saw notes a request of an existing session, identified by the hash h,
// at now (unix seconds): for the time of the last session request and the
// sessions seen in the last minute.
func (c *Counters) Saw(h uint64, now int64) {
	if c == nil {
		return
	}
	if c.last.Load() != now {
		c.last.Store(now)
	}
	c.seen.add(h, now)
}

// LastSession returns when a session's request last reached the upstream
// (unix seconds), 0 if none did.
func (c *Counters) LastSession() int64 {
	if c == nil {
		return 0
	}
	return c.last.Load()
}

// Record counts one decision; reason is the rejection reason when r is
// ResultRejected.
func (c *Counters) Record(r Result, reason Reason) {
	if c == nil || r >= numResults {
		return
	}
	c.results[r].Add(1)
	if r == ResultRejected && reason < numReasons {
		c.rejected[reason].Add(1)
	}
}

// NoteTooLarge counts a backend's cookie left as it came because the
// route token would have taken it past what browsers store.
func (c *Counters) NoteTooLarge() {
	if c != nil {
		c.tooLarge.Add(1)
	}
}

// TooLarge returns how many cookies NoteTooLarge counted.
func (c *Counters) TooLarge() uint64 {
	if c == nil {
		return 0
	}
	return c.tooLarge.Load()
}

// Count returns the count of result r.
func (c *Counters) Count(r Result) uint64 {
	if c == nil || r >= numResults {
		return 0
	}
	return c.results[r].Load()
}

// RejectedBy returns the count of rejections for reason.
func (c *Counters) RejectedBy(reason Reason) uint64 {
	if c == nil || reason >= numReasons {
		return 0
	}
	return c.rejected[reason].Load()
}

type statsKey struct{ policy, addr string }

var stats struct {
	sync.RWMutex
	m        map[statsKey]*Counters
	refs     map[statsKey]int
	addrRefs map[string]int // retains of each address, over every policy
}

// Retain marks the upstreams at addrs as in use by a live config of policy
// kind policy (their pool is cached, or they are its static upstreams).
// While any config retains an address, its counters are kept and the admin
// API and metrics list it; Release gives it back, and an address nobody
// retains is forgotten, so upstreams that come and go (dynamic upstreams,
// reloads) do not pile up.
func Retain(policy string, addrs ...string) {
	stats.Lock()
	defer stats.Unlock()
	if stats.refs == nil {
		stats.refs = make(map[statsKey]int)
		stats.addrRefs = make(map[string]int)
	}
	for _, a := range addrs {
		k := statsKey{policy, a}
		stats.refs[k]++
		stats.addrRefs[a]++
		if stats.m == nil {
			stats.m = make(map[statsKey]*Counters)
		}
		if stats.m[k] == nil {
			stats.m[k] = new(Counters)
		}
	}
}

// Release undoes one Retain of each address. An address no config retains
// any more loses its counters and its name.
func Release(policy string, addrs ...string) {
	stats.Lock()
	defer stats.Unlock()
	for _, a := range addrs {
		k := statsKey{policy, a}
		if stats.refs[k] <= 0 {
			continue
		}
		if stats.refs[k]--; stats.refs[k] == 0 {
			delete(stats.refs, k)
			delete(stats.m, k)
		}
		if stats.addrRefs[a]--; stats.addrRefs[a] == 0 {
			delete(stats.addrRefs, a)
			registry.names.Delete(AddrHash(a))
		}
	}
}

// CountersFor returns the process-wide counters of policy kind policy for
// the upstream at addr, creating them on first use. Policies fetch them
// when their pool changes, not per request. An upstream that has counters
// is known to the admin API.
func CountersFor(policy, addr string) *Counters {
	k := statsKey{policy, addr}
	stats.RLock()
	c := stats.m[k]
	stats.RUnlock()
	if c != nil {
		return c
	}
	stats.Lock()
	defer stats.Unlock()
	if c = stats.m[k]; c == nil {
		if stats.m == nil {
			stats.m = make(map[statsKey]*Counters)
		}
		c = new(Counters)
		stats.m[k] = c
	}
	return c
}

// EachCounters calls fn for every policy kind and upstream with counters,
// ordered by address then policy. It works on a snapshot, so an upstream
// released meanwhile is still reported, with its last counts.
func EachCounters(fn func(policy, addr string, c *Counters)) {
	type entry struct {
		k statsKey
		c *Counters
	}
	stats.RLock()
	entries := make([]entry, 0, len(stats.m))
	for k, c := range stats.m {
		entries = append(entries, entry{k, c})
	}
	stats.RUnlock()
	sort.Slice(entries, func(i, j int) bool {
		a, b := entries[i].k, entries[j].k
		if a.addr != b.addr {
			return a.addr < b.addr
		}
		return a.policy < b.policy
	})
	for _, e := range entries {
		fn(e.k.policy, e.k.addr, e.c)
	}
}

// KnownUpstream reports whether any policy has routed, or been given a pool with,
// the upstream at addr.
func KnownUpstream(addr string) bool {
	stats.RLock()
	defer stats.RUnlock()
	for k := range stats.m {
		if k.addr == addr {
			return true
		}
	}
	return false
}
