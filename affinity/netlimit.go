package affinity

import (
	"fmt"
	"hash/maphash"
	"sync/atomic"
)

// Networks, for the per-network limit of a session table: the clients of
// one IPv4 /24 or one IPv6 /48 (a site, as RFC 6177 assigns them) count
// together, however long the prefix the table's keys are masked to.
const (
	networkBitsV4 = 24
	networkBitsV6 = 48
)

// DefaultNetworkLimit is the per-network limit of a table of maxEntries
// entries when none is configured: 1 % of the table, and at least 512, so
// that a whole IPv4 /24 of /32 keys always fits, with room for the counters
// it shares. A network that fills it holds a hundredth of the table, so a
// hundred networks under one owner are needed to evict every other client,
// while a /48 behind a 100,000-entry table keeps a thousand sessions.
func DefaultNetworkLimit(maxEntries int) int {
	return max(maxEntries/100, 512)
}

// Network limits are counted in a fixed sketch (two rows of counters, a
// network's count the lesser of its two): its width grows with the table
// divided by the limit, so a network is refused only for its own entries,
// not for other networks' that share its counters, and is bounded.
const (
	minNetworkWidth = 1 << 10
	maxNetworkWidth = 1 << 16
	// networkSlack: the counters a network shares hold, on average, at
	// most 1/networkSlack of the limit from other networks.
	networkSlack = 64
)

// CheckNetworkLimit reports whether perNetwork is a valid per-network limit
// for a table of maxEntries entries: positive, and at least maxEntries /
// (the sketch's widest row / networkSlack), below which the shared counters
// would refuse innocent networks.
func CheckNetworkLimit(maxEntries, perNetwork int) error {
	if perNetwork <= 0 {
		return fmt.Errorf("must be positive, got %d", perNetwork)
	}
	if least := MinNetworkLimit(maxEntries); perNetwork < least {
		return fmt.Errorf("%d is below the least a table of %d entries keeps per network (%d)", perNetwork, maxEntries, least)
	}
	return nil
}

// MinNetworkLimit is the least per-network limit a table of maxEntries
// entries takes.
func MinNetworkLimit(maxEntries int) int {
	return max(1, (maxEntries*networkSlack+maxNetworkWidth-1)/maxNetworkWidth)
}

// networkCounts is a count-min sketch of entries per network.
type networkCounts struct {
	limit uint32
	mask  uint32
	rows  [2][]atomic.Uint32
}

func (c *networkCounts) init(maxEntries, limit int) {
	w := minNetworkWidth
	for w < maxNetworkWidth && w < maxEntries/limit*networkSlack {
		w <<= 1
	}
	c.limit, c.mask = uint32(min(limit, 1<<31)), uint32(w-1)
	for i := range c.rows {
		c.rows[i] = make([]atomic.Uint32, w)
	}
}

// add counts one more entry of the network with hash h, unless the network
// holds its limit already.
func (c *networkCounts) add(h uint64) bool {
	if c.rows[0] == nil {
		return true
	}
	a, b := &c.rows[0][uint32(h)&c.mask], &c.rows[1][uint32(h>>32)&c.mask]
	if min(a.Load(), b.Load()) >= c.limit {
		return false
	}
	a.Add(1)
	b.Add(1)
	return true
}

// remove counts one entry fewer of the network with hash h.
func (c *networkCounts) remove(h uint64) {
	if c.rows[0] == nil {
		return
	}
	c.rows[0][uint32(h)&c.mask].Add(^uint32(0))
	c.rows[1][uint32(h>>32)&c.mask].Add(^uint32(0))
}

// networkHash is the table's seeded hash of the network of k.
func (t *SessionTable) networkHash(k ClientKey) uint64 {
	var b [8]byte
	switch {
	case k.network(&b):
	case k.fam == famStored && k.bits == 1:
		// The store's tag of the client's network.
		copy(b[:4], k.addr[:4])
		b[4] = famStored
	default:
		// A chosen key has no network: each is its own, never limited.
		copy(b[:], k.addr[:8])
	}
	return maphash.Comparable(t.seed, b)
}
