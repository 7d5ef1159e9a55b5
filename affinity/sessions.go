package affinity

import (
	"hash/maphash"
	"math"
	"sync"
	"time"
)

// SessionEntryBytes bounds the memory a SessionTable uses per entry once it
// holds many (tens of thousands or more): 40 bytes of entry plus 8 bytes
// per index slot, 4/3 slot per entry in a full table and at most 2 just
// after the index grew, plus under one 40 KiB slab chunk per shard: about
// 51 bytes full and 57 at worst, rounded up. TestSessionMemoryPerEntry
// measures it. EntriesForBytes divides by it.
const SessionEntryBytes = 64

// DefaultMaxSessions is the bound NewSessionTable uses when given none.
const DefaultMaxSessions = 100_000

// EntriesForBytes returns how many session entries fit in n bytes, for a
// limit written as a size ("max_sessions 64MiB"): n / SessionEntryBytes.
func EntriesForBytes(n uint64) int {
	e := n / SessionEntryBytes
	if e > math.MaxInt {
		return math.MaxInt
	}
	return int(e)
}

// SessionTable maps client keys to upstream IDs with a last-seen time, like
// an HAProxy stick table with an expire: a persistence table for clients
// that must return to their upstream even when the pool changes. It is
// safe for concurrent use. Create it with NewSessionTable; a nil or zero
// SessionTable stores nothing.
//
// Entries idle for longer than the TTL are dropped lazily (by Get, by Put
// trimming the least recently used end, and by Sweep). The table holds at
// most its maximum number of entries, evicting the least recently used.
// Large tables are split into up to 32 shards by key hash, each with its
// own lock, LRU list and share of the maximum, so eviction order is exact
// within a shard and approximate across them. Times have one-second
// resolution; the caller passes the current time so the table has no
// hidden clock.
//
// Shards and index slots come from a hash seeded per table (hash/maphash),
// not from ClientKey.Hash, which is unseeded so that instances route alike:
// keys chosen offline to collide cannot pile into one shard or probe run.
// And no network (an IPv4 /24, an IPv6 /48) holds more than the table's
// per-network limit, so one network's many addresses cannot evict everyone
// else's sessions.
type SessionTable struct {
	shards []sessionShard
	shift  uint   // shard of hash h: h >> shift (64 with one shard)
	ttl    uint32 // whole seconds; 0 means entries never expire
	seed   maphash.Seed
	nets   networkCounts
	// backing is the shared store the table caches, or nil.
	backing Backing
	// life bounds an entry's age since it was first stored, in seconds (0:
	// none); entries keep their birth in lifeUnit-second ticks.
	life, lifeUnit uint32
}

// A Session is one entry of a SessionTable.
type Session struct {
	Key      ClientKey
	ID       uint64
	LastSeen time.Time
	// Born is when the entry was first stored, with a lifetime (see
	// SetLifetime); zero without one.
	Born time.Time
}

const (
	// A table has up to maxSessionShards shards, each of at least
	// minEntriesPerShard entries, so a small table is one exact LRU.
	maxSessionShards   = 32
	minEntriesPerShard = 1024
	// maxEntriesPerShard keeps entry refs and index sizes in 32 bits.
	maxEntriesPerShard = 1 << 30
	// sessionChunk entries make one slab chunk (40 KiB): the slab grows
	// without copying, wasting less than a chunk per shard. The first chunk
	// starts at sessionFirstChunk entries and doubles.
	sessionChunk      = 1024
	sessionFirstChunk = 16
	// sessionTrim bounds the expired entries a Put removes, so a burst of
	// expiries does not stall one request.
	sessionTrim = 8
	// sessionEpoch is the origin of the 32-bit entry timestamps
	// (2000-01-01T00:00:00Z); they are valid until 2136.
	sessionEpoch = 946684800
)

// NewSessionTable returns a table of at most maxEntries entries
// (DefaultMaxSessions if maxEntries <= 0) that expire after ttl idle
// (rounded up to whole seconds; never if ttl <= 0), with the default
// per-network limit (DefaultNetworkLimit). Memory is allocated as entries
// are added, but for the per-network counts (at most 512 KiB).
func NewSessionTable(maxEntries int, ttl time.Duration) *SessionTable {
	return NewSessionTableLimit(maxEntries, ttl, 0)
}

// NewSessionTableLimit is NewSessionTable with at most perNetwork entries
// for the clients of one network (DefaultNetworkLimit if perNetwork <= 0;
// see CheckNetworkLimit for the range).
func NewSessionTableLimit(maxEntries int, ttl time.Duration, perNetwork int) *SessionTable {
	if maxEntries <= 0 {
		maxEntries = DefaultMaxSessions
	}
	n := maxSessionShards
	for n > 1 && maxEntries/n < minEntriesPerShard {
		n /= 2
	}
	t := &SessionTable{shards: make([]sessionShard, n), shift: 64, seed: maphash.MakeSeed()}
	if perNetwork <= 0 {
		perNetwork = DefaultNetworkLimit(maxEntries)
	}
	t.nets.init(maxEntries, perNetwork)
	for n > 1 {
		t.shift--
		n >>= 1
	}
	base, rem := maxEntries/len(t.shards), maxEntries%len(t.shards)
	for i := range t.shards {
		m := base
		if i < rem {
			m++
		}
		t.shards[i].max = uint32(min(m, maxEntriesPerShard))
		t.shards[i].t = t
	}
	if ttl > 0 {
		sec := ttl / time.Second
		if ttl%time.Second != 0 {
			sec++
		}
		t.ttl = uint32(min(sec, math.MaxUint32))
	}
	return t
}

// hash is the table's own hash of k: seeded, unlike k.Hash.
func (t *SessionTable) hash(k ClientKey) uint64 { return maphash.Comparable(t.seed, k) }

func (t *SessionTable) shard(h uint64) *sessionShard {
	return &t.shards[h>>t.shift]
}

// sessionClock converts now to entry time: seconds since sessionEpoch,
// clamped to 32 bits.
func sessionClock(now time.Time) uint32 {
	s := now.Unix() - sessionEpoch
	if s < 0 {
		return 0
	}
	return uint32(min(s, math.MaxUint32))
}

func (t *SessionTable) expired(seen, now uint32) bool {
	return t.ttl > 0 && now > seen && now-seen > t.ttl
}

// SetLifetime bounds each entry's age since it was first stored (a rebind
// keeps it) to d, to within the table's tick (a second, or more for very
// long timeouts: the ticks of 16 bits cover twice the lifetime plus the
// idle timeout). Call it before the table is used; it needs an idle
// timeout, past which an entry is gone anyway.
func (t *SessionTable) SetLifetime(d time.Duration) {
	if t == nil || d <= 0 {
		return
	}
	life := min(uint64((d+time.Second-1)/time.Second), math.MaxUint32/4)
	span := 2 * (life + uint64(t.ttl))
	t.life, t.lifeUnit = uint32(life), uint32(max(1, (span+65535)/65536))
}

// Lifetime returns the bound SetLifetime set, 0 if none.
func (t *SessionTable) Lifetime() time.Duration {
	if t == nil {
		return 0
	}
	return time.Duration(t.life) * time.Second
}

func (t *SessionTable) tick(sec uint32) uint16 { return uint16(sec / t.lifeUnit) }

// tooOld reports whether an entry born at tick born has outlived the
// lifetime at sec.
func (t *SessionTable) tooOld(born uint16, sec uint32) bool {
	if t.life == 0 {
		return false
	}
	age := t.tick(sec) - born
	if age >= 1<<15 {
		// Born ahead of this clock (by another instance whose clock runs
		// ahead, or across a second's boundary): new, not wrapped around.
		// Ages that count stay under half the ticks' span.
		return false
	}
	return uint32(age)*t.lifeUnit > t.life
}

// bornAt is the time of the tick born, seen from sec.
func (t *SessionTable) bornAt(born uint16, sec uint32) time.Time {
	if t.life == 0 {
		return time.Time{}
	}
	return sessionTime((sec/t.lifeUnit - uint32(t.tick(sec)-born)) * t.lifeUnit)
}

// bornTick is the tick of the time born (now if zero).
func (t *SessionTable) bornTick(born time.Time, sec uint32) uint16 {
	if t.life == 0 {
		return 0
	}
	if born.IsZero() {
		return t.tick(sec)
	}
	return t.tick(sessionClock(born))
}

// Get returns the upstream ID stored for k and refreshes the entry's last
// seen time to now. An entry idle for longer than the TTL is removed and
// reported absent. The invalid key is never stored.
//
// With a Backing, a key the table does not hold is looked up in the store
// and kept.
func (t *SessionTable) Get(k ClientKey, now time.Time) (id uint64, ok bool) {
	if t == nil || len(t.shards) == 0 || !k.IsValid() {
		return 0, false
	}
	if t.backing == nil {
		return t.get(k, now)
	}
	k = t.backing.Key(k)
	if id, ok = t.get(k, now); ok {
		return id, true
	}
	id, born, ok := t.backing.Load(k)
	if ok && t.life > 0 && !born.IsZero() && t.tooOld(t.bornTick(born, 0), sessionClock(now)) {
		return 0, false
	}
	if ok {
		t.put(k, id, now, born)
	}
	return id, ok
}

func (t *SessionTable) get(k ClientKey, now time.Time) (id uint64, ok bool) {
	h := t.hash(k)
	s := t.shard(h)
	sec := sessionClock(now)
	s.mu.Lock()
	defer s.mu.Unlock()
	ref, slot := s.find(k, h)
	if ref == 0 {
		return 0, false
	}
	e := s.entry(ref)
	if t.expired(e.seen, sec) || t.tooOld(e.born, sec) {
		s.remove(ref, slot)
		return 0, false
	}
	e.seen = max(e.seen, sec)
	s.toFront(ref)
	return e.id, true
}

// Put stores id for k, seen at now, and reports whether k has an entry
// now. A new entry first takes the place of expired entries at the least
// recently used end, then of the least recently used entry if the table is
// full. A new key of a network that holds its limit of entries is not
// stored, and neither is the invalid key.
//
// With a Backing, a new entry or a changed upstream is written to the store
// before Put returns; one the table refuses is not.
func (t *SessionTable) Put(k ClientKey, id uint64, now time.Time) bool {
	if t == nil || len(t.shards) == 0 || !k.IsValid() {
		return false
	}
	if t.backing == nil {
		ok, _, _ := t.put(k, id, now, time.Time{})
		return ok
	}
	k = t.backing.Key(k)
	ok, changed, born := t.put(k, id, now, time.Time{})
	if changed {
		t.backing.Save(k, id, born)
	}
	return ok
}

// put stores id for k, first stored at born (now if zero) if it is new,
// and reports whether k has an entry now, whether it is new or was bound to
// another upstream, and when it was first stored (zero without a
// lifetime).
func (t *SessionTable) put(k ClientKey, id uint64, now, born time.Time) (ok, changed bool, bornAt time.Time) {
	h := t.hash(k)
	s := t.shard(h)
	sec := sessionClock(now)
	s.mu.Lock()
	defer s.mu.Unlock()
	if ref, _ := s.find(k, h); ref != 0 {
		e := s.entry(ref)
		if e.id != id {
			s.countID(e.id, -1)
			s.countID(id, 1)
			changed = true
		}
		if t.tooOld(e.born, sec) {
			// Stored again after its lifetime: a new entry.
			e.born, changed = t.bornTick(born, sec), true
		}
		e.id, e.seen = id, max(e.seen, sec)
		s.toFront(ref)
		return true, changed, t.bornAt(e.born, sec)
	}
	for range sessionTrim {
		if s.tail == 0 || !t.expired(s.entry(s.tail).seen, sec) {
			break
		}
		s.removeTail()
	}
	if !t.nets.add(t.networkHash(k)) {
		return false, false, time.Time{}
	}
	if s.n >= s.max {
		s.removeTail()
	}
	ref := s.alloc()
	e := sessionEntry{id: id, seen: sec, key: k, born: t.bornTick(born, sec)}
	*s.entry(ref) = e
	s.insert(ref, uint32(h))
	s.pushFront(ref)
	s.n++
	s.countID(id, 1)
	return true, true, t.bornAt(e.born, sec)
}

// Delete removes the entry of k and reports whether there was one.
// With a Backing, it is deleted from the store too.
func (t *SessionTable) Delete(k ClientKey) bool {
	if t == nil || len(t.shards) == 0 || !k.IsValid() {
		return false
	}
	if t.backing == nil {
		return t.del(k)
	}
	k = t.backing.Key(k)
	t.backing.Remove(k)
	return t.del(k)
}

func (t *SessionTable) del(k ClientKey) bool {
	if len(t.shards) == 0 || !k.IsValid() {
		return false
	}
	h := t.hash(k)
	s := t.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	ref, slot := s.find(k, h)
	if ref == 0 {
		return false
	}
	s.remove(ref, slot)
	return true
}

// DeleteID removes every entry bound to the upstream id (to flush an
// upstream's sessions) and returns how many it removed. It takes time
// proportional to the table's size. With a Backing, it deletes them from
// the store and returns how many the store held.
func (t *SessionTable) DeleteID(id uint64) (removed int) {
	if t == nil {
		return 0
	}
	if t.backing != nil {
		defer func() { removed = t.backing.RemoveID(id) }()
	}
	return t.deleteID(id)
}

func (t *SessionTable) deleteID(id uint64) (removed int) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for ref := s.head; ref != 0; {
			e := s.entry(ref)
			next := e.next
			if e.id == id {
				s.removeRef(ref)
				removed++
			}
			ref = next
		}
		s.mu.Unlock()
	}
	return removed
}

// Sweep removes the entries that have been idle for longer than the TTL at
// now and returns how many it removed. Get and Put drop expired entries on
// their own; Sweep keeps Len, Range and CountByID exact and returns the
// memory of a table that has gone quiet, e.g. when called periodically or
// before an admin listing.
func (t *SessionTable) Sweep(now time.Time) int {
	if t == nil || t.ttl == 0 {
		return 0
	}
	sec := sessionClock(now)
	removed := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		// The LRU order is the last-seen order, up to callers passing
		// slightly out-of-order times, so the expired entries are the tail.
		for s.tail != 0 && t.expired(s.entry(s.tail).seen, sec) {
			s.removeTail()
			removed++
		}
		if s.n == 0 {
			s.reset()
		}
		s.mu.Unlock()
	}
	return removed
}

// Len returns the number of entries, including expired ones not yet
// dropped; with a Backing, of the store.
func (t *SessionTable) Len() int {
	if t == nil {
		return 0
	}
	if t.backing != nil {
		return t.backing.Len()
	}
	return t.Cached()
}

// Cached returns the number of entries in the table itself: with a
// Backing, of its local cache.
func (t *SessionTable) Cached() int {
	if t == nil {
		return 0
	}
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		n += int(s.n)
		s.mu.Unlock()
	}
	return n
}

// Max returns the most entries the table holds.
func (t *SessionTable) Max() int {
	if t == nil {
		return 0
	}
	n := 0
	for i := range t.shards {
		n += int(t.shards[i].max)
	}
	return n
}

// Flush removes every entry and releases the table's memory; with a
// Backing, every entry of the store too.
func (t *SessionTable) Flush() {
	if t == nil {
		return
	}
	if t.backing != nil {
		t.backing.Clear()
	}
	t.flush()
}

func (t *SessionTable) flush() {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for ref := s.head; ref != 0; ref = s.entry(ref).next {
			t.nets.remove(t.networkHash(s.entry(ref).key))
		}
		s.reset()
		s.mu.Unlock()
	}
}

// Range calls fn for the entries at positions [offset, offset+limit) of
// the table (all from offset if limit <= 0), for a paged admin listing
// such as GET /affinity/sessions?offset=&limit=. Entries are ordered shard
// by shard, most recently used first within a shard; the order is stable
// while the table is not used. Expired entries not yet dropped are
// included (call Sweep first to leave them out). fn runs without any lock
// held and may use the table. With a Backing, Range covers the local cache
// (Page lists the store).
func (t *SessionTable) Range(offset, limit int, fn func(k ClientKey, id uint64, lastSeen time.Time)) {
	for _, p := range t.page(offset, limit) {
		fn(p.Key, p.ID, p.LastSeen)
	}
}

// page collects the entries at [offset, offset+limit) of the table itself.
func (t *SessionTable) page(offset, limit int) []Session {
	if t == nil {
		return nil
	}
	offset = max(offset, 0)
	var page []Session
	for i := range t.shards {
		if limit > 0 && len(page) >= limit {
			break
		}
		s := &t.shards[i]
		s.mu.Lock()
		if offset >= int(s.n) {
			offset -= int(s.n)
			s.mu.Unlock()
			continue
		}
		for ref := s.head; ref != 0; {
			e := s.entry(ref)
			ref = e.next
			if offset > 0 {
				offset--
				continue
			}
			if limit > 0 && len(page) >= limit {
				break
			}
			page = append(page, Session{Key: e.key, ID: e.id, LastSeen: sessionTime(e.seen), Born: t.bornAt(e.born, e.seen)})
		}
		s.mu.Unlock()
	}
	return page
}

// Page returns the entries Range would pass to fn, with their birth
// times; with a Backing, the store's, in its order.
func (t *SessionTable) Page(offset, limit int) []Session {
	if t != nil && t.backing != nil {
		return t.backing.Page(offset, limit)
	}
	return t.page(offset, limit)
}

// CountByID returns the number of entries per upstream ID, expired ones not
// yet dropped included. The table keeps these counts as it changes, so this
// takes time proportional to the number of upstreams, not of entries.
//
// With a Backing, it counts the store's entries, which takes time
// proportional to the store's size.
func (t *SessionTable) CountByID() map[uint64]int {
	if t != nil && t.backing != nil {
		return t.backing.CountByID()
	}
	counts := make(map[uint64]int)
	if t == nil {
		return counts
	}
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for id, n := range s.byID {
			counts[id] += int(n)
		}
		s.mu.Unlock()
	}
	return counts
}

func sessionTime(sec uint32) time.Time {
	return time.Unix(sessionEpoch+int64(sec), 0)
}

// sessionEntry is one slab entry: 40 bytes. prev and next link the LRU
// list (next also links the free list); refs are slab index + 1 so that 0
// means none.
type sessionEntry struct {
	id         uint64
	prev, next uint32
	seen       uint32 // sessionClock of the last Get or Put
	key        ClientKey
	born       uint16 // the lifetime's tick of the first Put (with a lifetime)
}

// sessionShard is an LRU list over a slab of entries, indexed by an
// open-addressing hash table with linear probing.
type sessionShard struct {
	t      *SessionTable
	mu     sync.Mutex
	byID   map[uint64]uint32 // entries per upstream ID
	max    uint32            // most entries
	n      uint32            // entries in the list
	used   uint32            // slab entries handed out (high-water mark)
	free   uint32            // free list head
	head   uint32            // most recently used
	tail   uint32            // least recently used
	chunks [][]sessionEntry
	// index holds hash<<32 | ref per occupied slot, 0 when empty. Keeping
	// the low 32 bits of the key hash lets probes skip other keys and lets
	// deletion find home slots without touching the slab. Its size need
	// not be a power of two (fastrange maps hashes to slots), so it grows
	// by half and a full shard's index is 4/3 of its maximum.
	index []uint64
	_     [64]byte // keep shards' locks on separate cache lines
}

func (s *sessionShard) entry(ref uint32) *sessionEntry {
	i := ref - 1
	return &s.chunks[i/sessionChunk][i%sessionChunk]
}

func (s *sessionShard) home(h32 uint32) int {
	return int(uint64(h32) * uint64(len(s.index)) >> 32)
}

// find returns the ref of k's entry (0 if absent) and its index slot.
func (s *sessionShard) find(k ClientKey, h uint64) (ref uint32, slot int) {
	if len(s.index) == 0 {
		return 0, -1
	}
	h32 := uint32(h)
	for i := s.home(h32); ; {
		v := s.index[i]
		if v == 0 {
			return 0, -1
		}
		if uint32(v>>32) == h32 && s.entry(uint32(v)).key == k {
			return uint32(v), i
		}
		if i++; i == len(s.index) {
			i = 0
		}
	}
}

// insert adds ref, whose key hash has low bits h32, to the index, growing
// it to keep the load at most 3/4.
func (s *sessionShard) insert(ref, h32 uint32) {
	if 4*(uint64(s.n)+1) > 3*uint64(len(s.index)) {
		s.grow()
	}
	for i := s.home(h32); ; {
		if s.index[i] == 0 {
			s.index[i] = uint64(h32)<<32 | uint64(ref)
			return
		}
		if i++; i == len(s.index) {
			i = 0
		}
	}
}

// grow enlarges the index by half (not double, to bound the memory of a
// table that has just grown), but to no more than a full shard needs.
func (s *sessionShard) grow() {
	full := int(uint64(s.max)*4/3) + 2
	size := min(max(len(s.index)*3/2, 16), full)
	old := s.index
	s.index = make([]uint64, size)
	for _, v := range old {
		if v == 0 {
			continue
		}
		for i := s.home(uint32(v >> 32)); ; {
			if s.index[i] == 0 {
				s.index[i] = v
				break
			}
			if i++; i == len(s.index) {
				i = 0
			}
		}
	}
}

// unindex empties slot by backward-shift deletion: later entries of the
// probe run move back when their home allows, so no tombstones pile up.
func (s *sessionShard) unindex(slot int) {
	size := len(s.index)
	dist := func(from, to int) int {
		if to >= from {
			return to - from
		}
		return to + size - from
	}
	i := slot
	for j := i + 1; ; j++ {
		if j == size {
			j = 0
		}
		v := s.index[j]
		if v == 0 {
			break
		}
		if h := s.home(uint32(v >> 32)); dist(h, i) <= dist(h, j) {
			s.index[i] = v
			i = j
		}
	}
	s.index[i] = 0
}

func (s *sessionShard) alloc() uint32 {
	if s.free != 0 {
		ref := s.free
		s.free = s.entry(ref).next
		return ref
	}
	switch n := int(s.used); {
	case n < sessionChunk && (len(s.chunks) == 0 || n == len(s.chunks[0])):
		// The first chunk grows by doubling, so that a table holding a few
		// sessions spread over every shard does not cost a whole chunk per
		// shard. No entry pointer is held across alloc.
		size := min(max(2*n, sessionFirstChunk), sessionChunk, int(s.max))
		first := make([]sessionEntry, size)
		if n > 0 {
			copy(first, s.chunks[0])
			s.chunks[0] = first
		} else {
			s.chunks = append(s.chunks, first)
		}
	case n >= sessionChunk && n%sessionChunk == 0:
		size := min(sessionChunk, int(s.max)-n)
		s.chunks = append(s.chunks, make([]sessionEntry, size))
	}
	s.used++
	return s.used
}

func (s *sessionShard) pushFront(ref uint32) {
	e := s.entry(ref)
	e.prev, e.next = 0, s.head
	if s.head != 0 {
		s.entry(s.head).prev = ref
	} else {
		s.tail = ref
	}
	s.head = ref
}

func (s *sessionShard) unlink(ref uint32) {
	e := s.entry(ref)
	if e.prev != 0 {
		s.entry(e.prev).next = e.next
	} else {
		s.head = e.next
	}
	if e.next != 0 {
		s.entry(e.next).prev = e.prev
	} else {
		s.tail = e.prev
	}
	e.prev, e.next = 0, 0
}

func (s *sessionShard) toFront(ref uint32) {
	if s.head != ref {
		s.unlink(ref)
		s.pushFront(ref)
	}
}

// remove drops the entry ref stored at index slot (-1 if not indexed).
func (s *sessionShard) remove(ref uint32, slot int) {
	if slot >= 0 {
		s.unindex(slot)
	}
	s.unlink(ref)
	e := s.entry(ref)
	s.countID(e.id, -1)
	s.t.nets.remove(s.t.networkHash(e.key))
	*e = sessionEntry{next: s.free}
	s.free = ref
	s.n--
}

// countID adds d to the entries of upstream id.
func (s *sessionShard) countID(id uint64, d int) {
	if s.byID == nil {
		s.byID = make(map[uint64]uint32)
	}
	n := int(s.byID[id]) + d
	if n <= 0 {
		delete(s.byID, id)
		return
	}
	s.byID[id] = uint32(n)
}

// removeRef drops the entry ref, finding its index slot from its key.
func (s *sessionShard) removeRef(ref uint32) {
	k := s.entry(ref).key
	r, slot := s.find(k, s.t.hash(k))
	if r != ref {
		slot = -1 // cannot happen; drop it from the list all the same
	}
	s.remove(ref, slot)
}

func (s *sessionShard) removeTail() {
	if s.tail != 0 {
		s.removeRef(s.tail)
	}
}

// reset empties the shard. Its entries' network counts must have been
// taken back (every entry removed), or be reset with the whole table's.
func (s *sessionShard) reset() {
	s.n, s.used, s.free, s.head, s.tail = 0, 0, 0, 0, 0
	s.chunks, s.index, s.byID = nil, nil, nil
}
