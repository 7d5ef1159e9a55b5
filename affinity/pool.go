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
// engine's upstream type. Get is safe for concurrent use and, for the very
// slice it has seen (Caddy passes its configured upstreams slice on every
// request), costs one pointer comparison: O(1) in the size of the pool.
type PoolCache[U comparable, S any] struct {
	// Addr returns an upstream's address, its identity.
	Addr func(U) string
	// Build derives the state for a pool from its addresses.
	Build func(addrs []string) S

	cur atomic.Pointer[poolSnap[U, S]]
	mu  sync.Mutex
}

type poolSnap[U comparable, S any] struct {
	orig  []U // the caller's slice, for the identity check
	ups   []U // a copy, to detect changes made in place
	addrs []string
	state S
}

// Get returns the state for pool. Callers that find the state's address
// for a position differing from the upstream there (the slice was changed
// in place, which Caddy does not do) call Refresh.
func (c *PoolCache[U, S]) Get(pool []U) S {
	if s := c.cur.Load(); s != nil && len(s.orig) == len(pool) && (len(pool) == 0 || &s.orig[0] == &pool[0]) {
		return s.state
	}
	return c.rebuild(pool)
}

// Refresh compares pool with the cached one element by element and
// rebuilds the state if they differ.
func (c *PoolCache[U, S]) Refresh(pool []U) S { return c.rebuild(pool) }

func (c *PoolCache[U, S]) rebuild(pool []U) S {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.cur.Load()
	if s != nil && slices.Equal(s.ups, pool) {
		if len(pool) > 0 && &s.orig[0] != &pool[0] {
			// The same upstreams in another slice: remember this one for
			// the identity check.
			c.cur.Store(&poolSnap[U, S]{orig: pool, ups: s.ups, addrs: s.addrs, state: s.state})
		}
		return s.state
	}
	addrs := make([]string, len(pool))
	for i, u := range pool {
		addrs[i] = c.Addr(u)
	}
	ups := append([]U(nil), pool...)
	if s != nil && slices.Equal(s.addrs, addrs) {
		// Same upstreams behind new objects (a reload, dynamic upstreams):
		// keep the derived state.
		c.cur.Store(&poolSnap[U, S]{orig: pool, ups: ups, addrs: s.addrs, state: s.state})
		return s.state
	}
	n := &poolSnap[U, S]{orig: pool, ups: ups, addrs: addrs, state: c.Build(addrs)}
	c.cur.Store(n)
	return n.state
}
