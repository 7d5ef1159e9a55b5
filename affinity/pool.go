package affinity

import (
	"slices"
	"sync"
	"sync/atomic"
)

// Index finds an upstream's position in a pool from its ID under any key of
// a keyring in O(1). It is built once per pool, not per request.
type Index struct {
	byID []map[uint64]int32 // per key; -1 marks an ID two addresses share
	sign []uint64           // ID of each position under the signing key
}

// NewIndex builds the index of addrs under every key of k.
func (k *Keyring) NewIndex(addrs []string) *Index {
	x := &Index{byID: make([]map[uint64]int32, len(k.keys)), sign: make([]uint64, len(addrs))}
	for key := range k.keys {
		m := make(map[uint64]int32, len(addrs))
		for i, a := range addrs {
			id := k.UpstreamID(key, a)
			if key == 0 {
				x.sign[i] = id
			}
			if j, dup := m[id]; dup && j >= 0 && addrs[j] != a {
				// A 48-bit collision within one pool: refuse to route
				// either rather than send a session to the wrong one.
				m[id] = -1
				continue
			}
			if _, dup := m[id]; !dup {
				m[id] = int32(i)
			}
		}
		x.byID[key] = m
	}
	return x
}

// Lookup returns the position of the upstream with ID id under key.
func (x *Index) Lookup(key int, id uint64) (int, bool) {
	if key < 0 || key >= len(x.byID) {
		return 0, false
	}
	i, ok := x.byID[key][id]
	if !ok || i < 0 {
		return 0, false
	}
	return int(i), true
}

// SigningID is the ID of the upstream at position i under the signing key.
func (x *Index) SigningID(i int) uint64 { return x.sign[i] }

// PoolCache keeps state derived from a pool of upstreams (an index, a hash
// table, counters) and rebuilds it only when the pool changes. U is the
// engine's upstream type. Get is safe for concurrent use. For the very
// slice it has seen (Caddy passes its configured upstreams slice on every
// request) it costs one pointer comparison: O(1) in the size of the pool;
// for the same addresses in a new slice (dynamic upstreams), a comparison
// of the addresses, without a lock or an allocation.
//
// It keeps the last few distinct pools, because a policy may be handed
// several in turn: a fallback policy gets the full pool on first attempts
// and the pool less a failed upstream on retries.
type PoolCache[U comparable, S any] struct {
	// hot is the snapshot whose very slice Get found last: Caddy passes
	// its static upstreams' slice on every request, and one load then
	// finds the state. In a loaded server every structure a selection
	// reaches is likely a cache miss, and the walk over the snapshots
	// is several.
	hot atomic.Pointer[poolSnap[U, S]]

	// Addr returns an upstream's address, its identity.
	Addr func(U) string
	// Build derives the state for a pool from its addresses. The cache
	// keeps it inside the snapshot of the pool, so that the selection
	// reaches it in one load from hot.
	Build func(addrs []string) S
	// Drop, if set, releases a state the cache no longer keeps.
	Drop func(*S)

	snaps  [poolCacheSlots]atomic.Pointer[poolSnap[U, S]]
	next   int  // slot the next new pool replaces; guarded by mu
	closed bool // guarded by mu
	mu     sync.Mutex
}

const poolCacheSlots = 4

type poolSnap[U comparable, S any] struct {
	orig  []U // the caller's slice, for the identity check
	state S
	addrs []string
}

// Hot returns the state for pool if pool is the very slice Get found
// last, else nil: the one load and comparison of Get's common case, small
// enough to inline into a selection's fast path.
func (c *PoolCache[U, S]) Hot(pool []U) *S {
	if h := c.hot.Load(); h != nil && sameSlice(h.orig, pool) {
		return &h.state
	}
	return nil
}

// Get returns the state for pool. Callers that find the state's address
// for a position differing from the upstream there (the slice was changed
// in place, which Caddy does not do) call Refresh.
func (c *PoolCache[U, S]) Get(pool []U) *S {
	if h := c.hot.Load(); h != nil && sameSlice(h.orig, pool) {
		return &h.state
	}
	for i := range c.snaps {
		if s := c.snaps[i].Load(); s != nil && sameSlice(s.orig, pool) {
			c.hot.Store(s)
			return &s.state
		}
	}
	for i := range c.snaps {
		if s := c.snaps[i].Load(); s != nil && c.sameAddrs(s.addrs, pool) {
			return &s.state
		}
	}
	return c.rebuild(pool)
}

// Refresh finds or builds the state for pool by its addresses, ignoring
// the identity of the slice.
func (c *PoolCache[U, S]) Refresh(pool []U) *S { return c.rebuild(pool) }

// sameSlice reports whether a and b are the very same slice.
func sameSlice[U any](a, b []U) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

func (c *PoolCache[U, S]) sameAddrs(addrs []string, pool []U) bool {
	if len(addrs) != len(pool) {
		return false
	}
	for i, u := range pool {
		if c.Addr(u) != addrs[i] {
			return false
		}
	}
	return true
}

func (c *PoolCache[U, S]) rebuild(pool []U) *S {
	c.mu.Lock()
	defer c.mu.Unlock()
	addrs := make([]string, len(pool))
	for i, u := range pool {
		addrs[i] = c.Addr(u)
	}
	for i := range c.snaps {
		if s := c.snaps[i].Load(); s != nil && slices.Equal(s.addrs, addrs) {
			// Same upstreams in another slice (a reload, dynamic
			// upstreams): keep the state, remember the slice.
			n := &poolSnap[U, S]{orig: pool, addrs: s.addrs, state: s.state}
			c.snaps[i].Store(n)
			return &n.state
		}
	}
	n := &poolSnap[U, S]{orig: pool, addrs: addrs, state: c.Build(addrs)}
	if c.closed {
		// A request still in flight after its config was unloaded: serve
		// it, but keep nothing that no Close would ever release.
		c.drop(&n.state)
		return &n.state
	}
	if old := c.snaps[c.next].Swap(n); old != nil {
		// A Get that loaded it just before may still use its state
		// (count a decision on counters no longer listed): harmless.
		c.hot.CompareAndSwap(old, nil)
		c.drop(&old.state)
	}
	c.next = (c.next + 1) % poolCacheSlots
	return &n.state
}

// Close drops every cached state, when the config that owns the cache is
// unloaded.
func (c *PoolCache[U, S]) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.hot.Store(nil)
	for i := range c.snaps {
		if old := c.snaps[i].Swap(nil); old != nil {
			c.drop(&old.state)
		}
	}
}

// drop releases a state the cache no longer keeps.
func (c *PoolCache[U, S]) drop(state *S) {
	if c.Drop != nil {
		c.Drop(state)
	}
}
