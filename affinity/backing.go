package affinity

import "time"

// A Backing is a store several processes share behind a SessionTable (the
// Redis store of package store): with one, the table is the process's
// bounded cache of the store's entries. The table keeps entries under the
// backing's keys (Key), so the store, and the messages that keep every
// process's cache current, hold keyed hashes, never a client's address or
// session id.
//
// Its methods bound their own waiting (the store's timeout) and never fail:
// a store that cannot be reached is the cache alone until it can.
type Backing interface {
	// Key returns the stored key of k (a StoredKey; k itself if it is one).
	Key(k ClientKey) ClientKey
	// Load returns the upstream ID stored under the stored key k, and when
	// the entry was first stored (zero if the store does not say).
	Load(k ClientKey) (id uint64, born time.Time, ok bool)
	// Save stores id under k, a new entry or a rebind, first stored at
	// born (zero without a lifetime), before it returns.
	Save(k ClientKey, id uint64, born time.Time)
	// Remove deletes the entry of k.
	Remove(k ClientKey)
	// RemoveID deletes every entry bound to upstream id and returns how
	// many it deleted.
	RemoveID(id uint64) int
	// Clear deletes every entry of the table.
	Clear()
	// Len, Page and CountByID are the table's of the same names, of the
	// store's entries.
	Len() int
	Page(offset, limit int) []Session
	CountByID() map[uint64]int
	// Shared names the table in the store: the tables of one process
	// whose backings name the same one hold the same entries (EachTable
	// passes one of them).
	Shared() string
}

// Back puts b behind t (nil: none); call it before t is used.
func (t *SessionTable) Back(b Backing) { t.backing = b }

// Backing returns the store behind t, or nil.
func (t *SessionTable) Backing() Backing { return t.backing }

// Cache returns the local entry of the stored key k, without asking the
// store or refreshing it: the store checks its cache is current with it.
func (t *SessionTable) Cache(k ClientKey) (id uint64, ok bool) {
	if t == nil || len(t.shards) == 0 || !k.IsValid() {
		return 0, false
	}
	h := t.hash(k)
	s := t.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if ref, _ := s.find(k, h); ref != 0 {
		return s.entry(ref).id, true
	}
	return 0, false
}

// Learn stores id under the stored key k in the local cache alone: what
// another process wrote to the store, or what the store returned.
func (t *SessionTable) Learn(k ClientKey, id uint64, now time.Time) {
	t.put(k, id, now, time.Time{})
}

// Local returns the entries of the table itself (with a Backing, of its
// cache), with their birth times: what the store writes back.
func (t *SessionTable) Local() []Session { return t.page(0, 0) }

// Forget removes the stored key k from the local cache alone.
func (t *SessionTable) Forget(k ClientKey) { t.del(k) }

// ForgetID removes the entries bound to upstream id from the local cache
// alone.
func (t *SessionTable) ForgetID(id uint64) int { return t.deleteID(id) }

// ForgetAll empties the local cache alone.
func (t *SessionTable) ForgetAll() { t.flush() }
