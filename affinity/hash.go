package affinity

import (
	"math"
	"math/bits"
	"slices"
	"strings"

	"github.com/cespare/xxhash/v2"
)

// TableSize is the number of slots of a Table. A power of two, so a key's
// slot is the top bits of its hash; 65536 slots keep the table at 256 KiB
// and give every upstream of a pool of 64 about a thousand slots.
const TableSize = 1 << tableBits

const (
	tableBits  = 16
	tableShift = 64 - tableBits // slot of hash h: h >> tableShift
)

// MaxUpstreams is the largest number of distinct addresses a Table routes
// to: a slot holds a 16-bit position and there are no more slots than that.
// Larger pools use the MaxUpstreams addresses with the smallest AddrHash.
const MaxUpstreams = TableSize

// tableSlack is how far above the mean (TableSize/n) an upstream's slot
// count may grow. Pure rendezvous placement moves nobody but the removed
// upstream's clients, but its counts are binomial (±3 % for 64 upstreams);
// capping them at 1 % above the mean bounds the imbalance while moving only
// the few slots that overflow: 0.2 % of keys on removing one of 64
// upstreams, against 0.5 % for Maglev with 65537 slots (TestTableDisruption*).
const tableSlack = 0.01

// rehashAttempts is how many re-hashed slots a lookup tries after a key's
// primary and backup before it falls back to a linear scan. Each attempt
// succeeds with the acceptable upstreams' share of slots, so 16 attempts
// almost always find one while half the pool is acceptable.
const rehashAttempts = 16

// Fixed seed of the per-attempt re-hash. Any constant works; it must never
// change, or processes running different versions would disagree.
const rehashSeed = 0x6166666e74790001 // "affnty", 1

// AddrHash is the identity of the upstream dialed at addr in a Table: the
// 64-bit xxHash (seed 0) of the address string. It depends on the address
// alone, so every process and both the HTTP and layer4 proxies agree on it,
// whatever order the upstreams are listed in. It is stable across versions
// and may be used as the upstream ID of a SessionTable.
func AddrHash(addr string) uint64 { return xxhash.Sum64String(addr) }

// Table maps client key hashes to upstreams by consistent hashing with O(1)
// lookups. Build it with NewTable when the pool changes and share it: it is
// immutable and safe for concurrent use. The zero value and nil have no
// upstreams.
//
// Each slot belongs to the upstream with the highest rendezvous score
// xxh64(slot, seed=AddrHash(addr)), unless that upstream already holds 1 %
// more than its fair share of slots, in which case the slot goes to the best
// scoring upstream with room (slots are placed in index order). Removing an
// upstream therefore hands its slots to their next-best upstreams and moves
// almost nothing else; adding one takes about 1/(n+1) of the slots. Each
// slot also records a backup, its best upstream other than the primary,
// which is where the slot would most likely go if the primary were removed:
// clients that fail over to it stay there when the pool is later rebuilt
// without the failed upstream.
type Table struct {
	// Small pools compute a slot's primary instead of reading it: in a
	// busy server the 128 KiB of primaries are out of cache, and one miss
	// costs more than a few scores computed in registers. It comes first
	// and inline, so that such a lookup reads one place.
	small smallPool

	primary []uint16 // slot -> position in ids
	backup  []uint16 // slot -> best other position; == primary with one upstream
	ids     []uint64 // position -> AddrHash, ascending
	pos     []int    // position -> index in the caller's list (first occurrence)
	addrs   []string // the caller's list, as given
}

// smallPool is what computing a slot's primary needs of a pool of up to
// directMax upstreams, a position's together: a lookup reads them all.
type smallPool struct {
	n int32 // positions; 0 for a larger pool
	p [directMax]struct {
		seed uint64 // score seed term
		// full is the first slot at which the position had reached its
		// cap: fill gives slot s to the best scorer among the positions
		// not yet full at s, which is what best computes.
		full int32
		pos  int32 // index in the caller's list
	}
}

// Pools of up to directMax upstreams compute primaries (see Table.small):
// eight scores cost about as much as one miss to memory.
const directMax = 8

// NewTable builds the table for the upstreams dialed at addrs. Lookups
// return indices into addrs. The result depends only on the set of
// addresses, not their order: duplicates are collapsed into their first
// occurrence, whose index lookups return. Building costs TableSize × n
// hash evaluations (15 ms for 64 upstreams, 150 ms for 1000 on one server
// core), so build once per pool, e.g. with a PoolCache.
func NewTable(addrs []string) *Table {
	t := &Table{addrs: slices.Clone(addrs)}

	type upstream struct {
		id   uint64
		addr string
		idx  int
	}
	seen := make(map[string]struct{}, len(addrs))
	ups := make([]upstream, 0, len(addrs))
	for i, a := range addrs {
		if _, dup := seen[a]; dup {
			continue
		}
		seen[a] = struct{}{}
		ups = append(ups, upstream{id: AddrHash(a), addr: a, idx: i})
	}
	// Sort by identity so the result does not depend on list order; the
	// address breaks (astronomically unlikely) ties between equal hashes.
	slices.SortFunc(ups, func(a, b upstream) int {
		if a.id != b.id {
			if a.id < b.id {
				return -1
			}
			return 1
		}
		return strings.Compare(a.addr, b.addr)
	})
	if len(ups) > MaxUpstreams {
		ups = ups[:MaxUpstreams]
	}
	n := len(ups)
	if n == 0 {
		return t
	}
	t.ids = make([]uint64, n)
	t.pos = make([]int, n)
	for i, u := range ups {
		t.ids[i], t.pos[i] = u.id, u.idx
	}
	t.primary = make([]uint16, TableSize)
	t.backup = make([]uint16, TableSize)
	t.fill()
	return t
}

// scoreSeeds returns each position's score seed term (the xxh64 seed part).
func (t *Table) scoreSeeds() []uint64 {
	seeds := make([]uint64, len(t.ids))
	for i, id := range t.ids {
		seeds[i] = id + xxhPrime5 + 8
	}
	return seeds
}

// primaryOf returns slot s's primary position.
func (t *Table) primaryOf(s uint64) int {
	if t.small.n == 0 {
		return int(t.primary[s])
	}
	return t.small.best(s)
}

// best returns the position that fill gave slot s: the best scorer among
// the positions not yet full at s; ties go to the lower position. Some
// position always has room (see fill).
func (sp *smallPool) best(s uint64) int {
	k := xxhRound(0, s)
	b, bs := -1, uint64(0)
	for i := range sp.p[:sp.n] {
		if q := &sp.p[i]; int32(s) < q.full {
			if sc := xxhScore(q.seed, k); b < 0 || sc > bs {
				b, bs = i, sc
			}
		}
	}
	return b
}

// fill assigns every slot its primary and backup.
func (t *Table) fill() {
	n := len(t.ids)
	// Hoist the per-upstream part of the score (the xxh64 seed term).
	seeds := t.scoreSeeds()
	limit := int(math.Ceil(TableSize * (1 + tableSlack) / float64(n)))
	count := make([]int, n)
	full := make([]int32, n)
	for i := range full {
		full[i] = TableSize
	}
	for s := range TableSize {
		k := xxhRound(0, uint64(s))
		// Top two scores; ties go to the lower position (strict >).
		best, second := 0, -1
		bestScore, secondScore := xxhScore(seeds[0], k), uint64(0)
		for i := 1; i < n; i++ {
			sc := xxhScore(seeds[i], k)
			if sc > bestScore {
				second, secondScore = best, bestScore
				best, bestScore = i, sc
			} else if second < 0 || sc > secondScore {
				second, secondScore = i, sc
			}
		}
		p := best
		if count[p] >= limit {
			// Overflow: the best-scoring upstream with room. limit*n >=
			// TableSize, so one always exists.
			p = -1
			var ps uint64
			for i := range n {
				if count[i] < limit {
					if sc := xxhScore(seeds[i], k); p < 0 || sc > ps {
						p, ps = i, sc
					}
				}
			}
		}
		if count[p]++; count[p] == limit {
			full[p] = int32(s + 1)
		}
		b := best
		if p == best {
			b = second
		}
		if b < 0 {
			b = p
		}
		t.primary[s], t.backup[s] = uint16(p), uint16(b)
	}
	if n <= directMax {
		t.small.n = int32(n)
		for i := range n {
			q := &t.small.p[i]
			q.seed, q.full, q.pos = seeds[i], full[i], int32(t.pos[i])
		}
	}
}

// Len is the number of addresses the table was built from, duplicates
// included: lookups return indices below Len.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	return len(t.addrs)
}

// Addr returns the address at index i of the list the table was built from,
// or "" if i is out of range.
func (t *Table) Addr(i int) string {
	if t == nil || i < 0 || i >= len(t.addrs) {
		return ""
	}
	return t.addrs[i]
}

// Addrs returns a copy of the list the table was built from.
func (t *Table) Addrs() []string {
	if t == nil {
		return nil
	}
	return slices.Clone(t.addrs)
}

// IndexOf returns the index of the upstream whose AddrHash is id (the first
// occurrence of its address), or -1 if the table has no such upstream.
func (t *Table) IndexOf(id uint64) int {
	if t == nil {
		return -1
	}
	if p, ok := slices.BinarySearch(t.ids, id); ok {
		return t.pos[p]
	}
	return -1
}

// Lookup returns the index of the upstream for a key with hash h, or -1 if
// the table is empty.
func (t *Table) Lookup(h uint64) int {
	if t == nil {
		return -1
	}
	if t.small.n > 0 {
		return int(t.small.p[t.small.best(h>>tableShift)].pos)
	}
	if len(t.ids) == 0 {
		return -1
	}
	return t.pos[t.primary[h>>tableShift]]
}

// LookupFunc returns the index of the upstream for a key with hash h among
// the upstreams for which ok returns true, or -1 if there is none. ok(i)
// reports whether the upstream at index i may take the key now (healthy,
// not draining, not full); nil accepts all.
//
// The key keeps its primary upstream while that is acceptable. Otherwise
// the same deterministic sequence is walked for every key: the slot's
// backup, then the primaries of up to 16 re-hashed slots, then a linear
// scan of the pool from a key-dependent start. So when an upstream becomes
// unacceptable only its own keys move, spread over the others in
// proportion to their slots, and they return when it recovers.
func (t *Table) LookupFunc(h uint64, ok func(i int) bool) int {
	if t == nil || len(t.ids) == 0 {
		return -1
	}
	if ok == nil {
		return t.pos[t.primaryOf(h>>tableShift)]
	}
	return t.walk(h, func(p int) bool { return ok(t.pos[p]) })
}

// LookupBounded is LookupFunc with bounded loads (consistent hashing with
// bounded loads, Mirrokni et al.; HAProxy's hash-balance-factor, Envoy's
// hash_balance_factor): an upstream acceptable to ok takes the key only
// while load(i) < ceil(c × (L+1) / n), where L is the sum of the loads of
// the n acceptable upstreams. A key whose upstream is full walks the same
// sequence as LookupFunc. Since some acceptable upstream is always below
// the bound, the result is -1 only if no upstream is acceptable.
//
// c is the balance factor, e.g. 1.25 for HAProxy's hash-balance-factor 125;
// c < 1, NaN, +Inf or a nil load disable the bound. ok and load are called
// once per upstream to find n and L, so this lookup is O(n), and again
// along the walk; loads that change meanwhile only blur the bound.
func (t *Table) LookupBounded(h uint64, c float64, load func(i int) int, ok func(i int) bool) int {
	if t == nil || len(t.ids) == 0 {
		return -1
	}
	if load == nil || !(c >= 1) || math.IsInf(c, 1) {
		return t.LookupFunc(h, ok)
	}
	var n, total int
	for _, i := range t.pos {
		if ok == nil || ok(i) {
			n++
			total += load(i)
		}
	}
	if n == 0 {
		return -1
	}
	bound := math.Ceil(c * float64(total+1) / float64(n))
	return t.walk(h, func(p int) bool {
		i := t.pos[p]
		return (ok == nil || ok(i)) && float64(load(i)) < bound
	})
}

// walk returns the index of the first acceptable upstream in h's sequence.
func (t *Table) walk(h uint64, accept func(p int) bool) int {
	s := h >> tableShift
	p := t.primaryOf(s)
	if accept(p) {
		return t.pos[p]
	}
	if b := int(t.backup[s]); b != p && accept(b) {
		return t.pos[b]
	}
	n := len(t.ids)
	if n == 1 {
		return -1
	}
	for a := range uint64(rehashAttempts) {
		q := int(t.primary[xxh64Uint64(h, rehashSeed+a)>>tableShift])
		if q != p && accept(q) {
			return t.pos[q]
		}
	}
	start, _ := bits.Mul64(h, uint64(n))
	for j := range n {
		q := (int(start) + j) % n
		if accept(q) {
			return t.pos[q]
		}
	}
	return -1
}

// xxHash64 constants.
const (
	xxhPrime1 uint64 = 11400714785074694791
	xxhPrime2 uint64 = 14029467366897019727
	xxhPrime3 uint64 = 1609587929392839161
	xxhPrime4 uint64 = 9650029242287828579
	xxhPrime5 uint64 = 2870177450012600261
)

func xxhRound(acc, input uint64) uint64 {
	acc += input * xxhPrime2
	acc = bits.RotateLeft64(acc, 31)
	return acc * xxhPrime1
}

// xxhScore finishes xxh64 of one 8-byte word: seedTerm is seed+prime5+8 and
// k is xxhRound(0, word). Split so the table build hoists both halves.
func xxhScore(seedTerm, k uint64) uint64 {
	h := seedTerm ^ k
	h = bits.RotateLeft64(h, 27)*xxhPrime1 + xxhPrime4
	h ^= h >> 33
	h *= xxhPrime2
	h ^= h >> 29
	h *= xxhPrime3
	h ^= h >> 32
	return h
}

// xxh64Uint64 is xxHash64 of v's 8 little-endian bytes with the given seed,
// inlined because the library has no allocation-free seeded one-shot.
func xxh64Uint64(v, seed uint64) uint64 {
	return xxhScore(seed+xxhPrime5+8, xxhRound(0, v))
}
