package affinity

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"
	"unsafe"
)

// sessionT0 is the tests' start time.
var sessionT0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// sessKey returns a distinct IPv4 /32 key for each i.
// sessKey is the key of client i, each client in a /24 of its own, so that
// no test but those of the per-network limit meets it.
func sessKey(i int) ClientKey {
	return MaskClient(netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, uint32(i)<<8+0x0a000001))), 32, 64)
}

func sessAt(sec int) time.Time { return sessionT0.Add(time.Duration(sec) * time.Second) }

func TestSessionGetPut(t *testing.T) {
	st := NewSessionTable(100, time.Minute)
	k := sessKey(1)
	if _, ok := st.Get(k, sessAt(0)); ok {
		t.Fatal("hit in empty table")
	}
	st.Put(k, 42, sessAt(0))
	if id, ok := st.Get(k, sessAt(1)); !ok || id != 42 {
		t.Fatalf("Get = %d, %v", id, ok)
	}
	st.Put(k, 43, sessAt(2))
	if id, ok := st.Get(k, sessAt(3)); !ok || id != 43 || st.Len() != 1 {
		t.Fatalf("after update: %d, %v, len %d", id, ok, st.Len())
	}
	// Keys in the same /24 but masked to /32 are different clients.
	if _, ok := st.Get(sessKey(2), sessAt(3)); ok {
		t.Fatal("hit for another key")
	}
	if !st.Delete(k) || st.Delete(k) || st.Len() != 0 {
		t.Fatal("Delete")
	}
	if _, ok := st.Get(k, sessAt(4)); ok {
		t.Fatal("hit after Delete")
	}

	// The invalid key is never stored.
	st.Put(ClientKey{}, 1, sessAt(5))
	if _, ok := st.Get(ClientKey{}, sessAt(5)); ok || st.Len() != 0 || st.Delete(ClientKey{}) {
		t.Fatal("invalid key stored")
	}
}

func TestSessionExpiry(t *testing.T) {
	st := NewSessionTable(100, 10*time.Second)
	k := sessKey(1)
	st.Put(k, 7, sessAt(0))
	if _, ok := st.Get(k, sessAt(10)); !ok { // idle 10 s: not more than the TTL
		t.Fatal("expired at exactly the TTL")
	}
	if _, ok := st.Get(k, sessAt(20)); !ok { // refreshed at 10
		t.Fatal("Get did not refresh the entry")
	}
	if _, ok := st.Get(k, sessAt(31)); ok {
		t.Fatal("entry idle for 11 s of a 10 s TTL still there")
	}
	if st.Len() != 0 {
		t.Fatalf("expired entry not removed: len %d", st.Len())
	}

	// A sub-second TTL rounds up to a second; no TTL never expires.
	st = NewSessionTable(100, 300*time.Millisecond)
	st.Put(k, 1, sessAt(0))
	if _, ok := st.Get(k, sessAt(1)); !ok {
		t.Fatal("300ms TTL did not round up to 1s")
	}
	if _, ok := st.Get(k, sessAt(3)); ok {
		t.Fatal("300ms TTL: entry survived 2 s idle")
	}
	st = NewSessionTable(100, 0)
	st.Put(k, 1, sessAt(0))
	if _, ok := st.Get(k, sessAt(100*365*24*3600)); !ok {
		t.Fatal("entry without TTL expired")
	}

	// Times out of order (concurrent callers) never move last-seen back.
	st = NewSessionTable(100, 10*time.Second)
	st.Put(k, 1, sessAt(100))
	st.Get(k, sessAt(95))
	if _, ok := st.Get(k, sessAt(110)); !ok {
		t.Fatal("an older time moved last-seen back")
	}

	// Odd times do not break anything.
	for _, now := range []time.Time{{}, time.Unix(0, 0), time.Unix(1<<40, 0), time.Unix(-1<<40, 0)} {
		st.Put(sessKey(9), 9, now)
		st.Get(sessKey(9), now)
	}
}

func TestSessionPutTrimsExpired(t *testing.T) {
	st := NewSessionTable(100, 10*time.Second)
	for i := range 5 {
		st.Put(sessKey(i), uint64(i), sessAt(0))
	}
	st.Put(sessKey(100), 100, sessAt(5))
	st.Put(sessKey(101), 101, sessAt(12)) // the first five are expired now
	if st.Len() != 2 {
		t.Fatalf("len %d, want the 2 unexpired entries (5 expired ones trimmed)", st.Len())
	}
	if _, ok := st.Get(sessKey(100), sessAt(14)); !ok {
		t.Fatal("unexpired entry trimmed")
	}
}

func TestSessionSweep(t *testing.T) {
	st := NewSessionTable(10_000, 10*time.Second)
	for i := range 5000 {
		st.Put(sessKey(i), 1, sessAt(i/1000)) // 1000 each at 0..4 s
	}
	if n := st.Sweep(sessAt(12)); n != 2000 || st.Len() != 3000 {
		t.Fatalf("Sweep removed %d, len %d; want 2000, 3000", n, st.Len())
	}
	if n := st.Sweep(sessAt(100)); n != 3000 || st.Len() != 0 {
		t.Fatalf("Sweep removed %d, len %d", n, st.Len())
	}
	st.Put(sessKey(1), 1, sessAt(100))
	if id, ok := st.Get(sessKey(1), sessAt(101)); !ok || id != 1 {
		t.Fatal("table unusable after sweeping empty")
	}
	if n := NewSessionTable(10, 0).Sweep(sessAt(0)); n != 0 {
		t.Fatal("Sweep without TTL removed entries")
	}
}

func TestSessionLRUBound(t *testing.T) {
	for _, max := range []int{1, 3, 100, 5000, 100_000} {
		st := NewSessionTable(max, time.Hour)
		if st.Max() != max {
			t.Fatalf("Max() = %d, want %d", st.Max(), max)
		}
		n := max + max/2 + 10
		for i := range n {
			st.Put(sessKey(i), uint64(i), sessAt(i/1000))
		}
		if st.Len() > max {
			t.Fatalf("max %d: len %d", max, st.Len())
		}
		if max <= minEntriesPerShard && st.Len() != max {
			t.Fatalf("max %d: len %d", max, st.Len())
		}
		// One shard: exactly the most recent max entries remain.
		if len(st.shards) == 1 {
			for i := range n {
				_, ok := st.Get(sessKey(i), sessAt(n/1000))
				if ok != (i >= n-max) {
					t.Fatalf("max %d: key %d present=%v", max, i, ok)
				}
			}
		}
		t.Logf("max %d: %d shards, %d entries after %d puts", max, len(st.shards), st.Len(), n)
	}
}

func TestSessionEvictionOrder(t *testing.T) {
	st := NewSessionTable(3, time.Hour)
	a, b, c, d, e := sessKey(1), sessKey(2), sessKey(3), sessKey(4), sessKey(5)
	st.Put(a, 1, sessAt(0))
	st.Put(b, 2, sessAt(1))
	st.Put(c, 3, sessAt(2))
	st.Get(a, sessAt(3)) // a is now the most recently used
	st.Put(d, 4, sessAt(4))
	if _, ok := st.Get(b, sessAt(5)); ok {
		t.Fatal("b should have been evicted first")
	}
	st.Put(b, 2, sessAt(5)) // evicts c
	st.Put(e, 5, sessAt(6)) // evicts a (used at 3; d at 4, b at 5)
	var order []uint64
	st.Range(0, 0, func(_ ClientKey, id uint64, _ time.Time) { order = append(order, id) })
	if len(order) != 3 || order[0] != 5 || order[1] != 2 || order[2] != 4 {
		t.Errorf("MRU order %v, want [5 2 4]", order)
	}
	for _, tc := range []struct {
		k    ClientKey
		want bool
	}{{a, false}, {b, true}, {c, false}, {d, true}, {e, true}} {
		if _, ok := st.Get(tc.k, sessAt(7)); ok != tc.want {
			t.Errorf("%v present=%v, want %v", tc.k, ok, tc.want)
		}
	}
}

func TestSessionRange(t *testing.T) {
	st := NewSessionTable(100_000, time.Hour)
	const n = 5000
	for i := range n {
		st.Put(sessKey(i), uint64(i%7), sessAt(i/100))
	}
	if len(st.shards) < 2 {
		t.Fatal("expected a sharded table")
	}
	seen := make(map[ClientKey]bool, n)
	for off := 0; ; off += 37 {
		page := st.Page(off, 37)
		if len(page) == 0 {
			break
		}
		if len(page) > 37 {
			t.Fatalf("page of %d", len(page))
		}
		for _, s := range page {
			if seen[s.Key] {
				t.Fatalf("%v listed twice", s.Key)
			}
			seen[s.Key] = true
			i := int((binary.BigEndian.Uint32(s.Key.Addr().AsSlice()) - 0x0a000001) >> 8)
			if s.ID != uint64(i%7) || !s.LastSeen.Equal(sessAt(i/100)) {
				t.Fatalf("entry %d: %+v", i, s)
			}
		}
	}
	if len(seen) != n {
		t.Fatalf("listed %d of %d entries", len(seen), n)
	}
	if p := st.Page(n, 10); len(p) != 0 {
		t.Fatalf("page past the end: %d entries", len(p))
	}
	if p := st.Page(-5, 3); len(p) != 3 {
		t.Fatalf("negative offset: %d entries", len(p))
	}
	if p := st.Page(n-2, 0); len(p) != 2 {
		t.Fatalf("no limit: %d entries", len(p))
	}
	// fn may use the table.
	st.Range(0, 10, func(k ClientKey, _ uint64, _ time.Time) { st.Delete(k) })
	if st.Len() != n-10 {
		t.Fatalf("deleting from Range: len %d", st.Len())
	}
}

func TestSessionCountAndDeleteID(t *testing.T) {
	st := NewSessionTable(100_000, time.Hour)
	for i := range 3000 {
		st.Put(sessKey(i), uint64(i%3), sessAt(0))
	}
	c := st.CountByID()
	if len(c) != 3 || c[0] != 1000 || c[1] != 1000 || c[2] != 1000 {
		t.Fatalf("CountByID = %v", c)
	}
	if n := st.DeleteID(1); n != 1000 || st.Len() != 2000 {
		t.Fatalf("DeleteID removed %d, len %d", n, st.Len())
	}
	if c := st.CountByID(); c[1] != 0 || c[0] != 1000 {
		t.Fatalf("after DeleteID: %v", c)
	}
	for i := range 3000 {
		id, ok := st.Get(sessKey(i), sessAt(1))
		if ok != (i%3 != 1) || ok && id != uint64(i%3) {
			t.Fatalf("key %d: %d, %v", i, id, ok)
		}
	}
	st.Flush()
	if st.Len() != 0 || len(st.CountByID()) != 0 {
		t.Fatal("Flush left entries")
	}
	st.Put(sessKey(1), 5, sessAt(2))
	if id, ok := st.Get(sessKey(1), sessAt(2)); !ok || id != 5 {
		t.Fatal("table unusable after Flush")
	}
}

// TestSessionModel checks a small table (one shard, exact LRU) against a
// simple model through random operations, exercising index deletion.
func TestSessionModel(t *testing.T) {
	const max, keys, ttl = 50, 120, 20
	st := NewSessionTable(max, ttl*time.Second)
	type ent struct {
		id   uint64
		seen int
		used int // order of last use
	}
	model := map[int]*ent{}
	r := rand.New(rand.NewPCG(9, 10))
	now, clock := 0, 0
	expired := func(e *ent) bool { return now-e.seen > ttl }
	for step := range 200_000 {
		if r.IntN(10) == 0 {
			now++
		}
		i := r.IntN(keys)
		k := sessKey(i)
		clock++
		switch op := r.IntN(10); {
		case op < 5: // Get
			id, ok := st.Get(k, sessAt(now))
			e := model[i]
			if e != nil && expired(e) {
				delete(model, i)
				e = nil
			}
			if ok != (e != nil) || ok && id != e.id {
				t.Fatalf("step %d: Get(%d) = %d, %v; model %+v", step, i, id, ok, e)
			}
			if e != nil {
				e.seen, e.used = now, clock
			}
		case op < 9: // Put
			id := r.Uint64()
			st.Put(k, id, sessAt(now))
			if e := model[i]; e != nil {
				e.id, e.seen, e.used = id, now, clock
				break
			}
			// Trim expired from the LRU end (up to sessionTrim), then
			// evict the least recently used if full.
			for range sessionTrim {
				lru := -1
				for j, e := range model {
					if lru < 0 || e.used < model[lru].used {
						lru = j
					}
				}
				if lru < 0 || !expired(model[lru]) {
					break
				}
				delete(model, lru)
			}
			if len(model) >= max {
				lru := -1
				for j, e := range model {
					if lru < 0 || e.used < model[lru].used {
						lru = j
					}
				}
				delete(model, lru)
			}
			model[i] = &ent{id: id, seen: now, used: clock}
		default: // Delete
			got := st.Delete(k)
			if _, ok := model[i]; got != ok {
				t.Fatalf("step %d: Delete(%d) = %v", step, i, got)
			}
			delete(model, i)
		}
		if st.Len() != len(model) {
			t.Fatalf("step %d: len %d, model %d", step, st.Len(), len(model))
		}
	}
}

func TestSessionConcurrent(t *testing.T) {
	st := NewSessionTable(20_000, 30*time.Second)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 11))
			for i := range 20_000 {
				k := sessKey(r.IntN(30_000))
				now := sessAt(i / 500)
				switch r.IntN(20) {
				case 0:
					st.Delete(k)
				case 1:
					if i%1000 == 0 {
						st.Page(r.IntN(1000), 50)
						st.CountByID()
						st.Sweep(now)
						st.Len()
					}
				case 2:
					if i%5000 == 0 {
						st.DeleteID(uint64(g))
					}
				default:
					if _, ok := st.Get(k, now); !ok {
						st.Put(k, uint64(g), now)
					}
				}
			}
		})
	}
	wg.Wait()
	if st.Len() > 20_000 {
		t.Fatalf("len %d over the bound", st.Len())
	}
	t.Logf("%d entries after the concurrent run", st.Len())
}

func TestSessionEntrySize(t *testing.T) {
	if s := unsafe.Sizeof(sessionEntry{}); s != 40 {
		t.Errorf("sessionEntry is %d bytes, want 40", s)
	}
	if s := unsafe.Sizeof(ClientKey{}); s != 18 {
		t.Errorf("ClientKey is %d bytes, want 18", s)
	}
	if n := EntriesForBytes(64 << 20); n != 1<<20 {
		t.Errorf("EntriesForBytes(64MiB) = %d", n)
	}
	if n := EntriesForBytes(63); n != 0 {
		t.Errorf("EntriesForBytes(63) = %d", n)
	}
	if n := EntriesForBytes(^uint64(0)); n <= 0 {
		t.Errorf("EntriesForBytes(max) = %d", n)
	}
	if st := NewSessionTable(0, 0); st.Max() != DefaultMaxSessions {
		t.Errorf("default Max() = %d", st.Max())
	}
}

func TestSessionNilAndZero(t *testing.T) {
	for _, st := range []*SessionTable{nil, {}} {
		st.Put(sessKey(1), 1, sessAt(0))
		if _, ok := st.Get(sessKey(1), sessAt(0)); ok || st.Delete(sessKey(1)) || st.Len() != 0 || st.Max() != 0 ||
			st.DeleteID(1) != 0 || st.Sweep(sessAt(0)) != 0 || len(st.CountByID()) != 0 || len(st.Page(0, 10)) != 0 {
			t.Errorf("%#v is not empty", st)
		}
		st.Flush()
	}
}

func TestSessionMemoryPerEntry(t *testing.T) {
	// A full table of 1M, and a far larger table holding ~561k entries,
	// where every shard's index has just grown (its worst case).
	for _, tc := range []struct{ max, fill int }{{1_000_000, 1_000_000}, {64 << 20, 32 * 17533}} {
		keys := make([]ClientKey, tc.fill)
		for i := range keys {
			keys[i] = sessKey(i)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		st := NewSessionTable(tc.max, time.Hour)
		for i, k := range keys {
			// IDs name upstreams: a table keeps a count for each.
			st.Put(k, uint64(i%64), sessAt(0))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		held := st.Len()
		per := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(held)
		t.Logf("%d entries (max %d, %d shards): %.1f bytes per entry", held, tc.max, len(st.shards), per)
		if per > SessionEntryBytes {
			t.Errorf("%.1f bytes per entry > %d", per, SessionEntryBytes)
		}
		if held < tc.fill*99/100 {
			t.Errorf("only %d of %d entries held", held, tc.fill)
		}
		runtime.KeepAlive(st)
		runtime.KeepAlive(keys)
	}
}

func BenchmarkSession(b *testing.B) {
	const n = 1 << 16
	keys := make([]ClientKey, 2*n)
	for i := range keys {
		keys[i] = sessKey(i)
	}
	full := func() *SessionTable {
		st := NewSessionTable(n, time.Hour)
		for i, k := range keys[:n] {
			st.Put(k, uint64(i), sessAt(0))
		}
		return st
	}
	b.Run("GetHit", func(b *testing.B) {
		st := full()
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			st.Get(keys[i%n], sessAt(1))
		}
	})
	b.Run("GetMiss", func(b *testing.B) {
		st := full()
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			st.Get(keys[n+i%n], sessAt(1))
		}
	})
	b.Run("PutHit", func(b *testing.B) {
		st := full()
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			st.Put(keys[i%n], 1, sessAt(1))
		}
	})
	b.Run("PutMiss", func(b *testing.B) { // new key, evicting the LRU
		st := full()
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			st.Put(keys[(n+i)%(2*n)], 1, sessAt(1))
		}
	})
	b.Run("GetHitParallel", func(b *testing.B) {
		st := full()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := rand.IntN(n)
			for pb.Next() {
				st.Get(keys[i%n], sessAt(1))
				i++
			}
		})
	})
}

func TestSessionLifetime(t *testing.T) {
	st := NewSessionTable(100, 30*time.Minute)
	st.SetLifetime(time.Hour)
	k := MaskClient(netip.MustParseAddr("192.0.2.9"), 32, 64)
	t0 := time.Unix(1_800_000_000, 0)
	st.Put(k, 1, t0)
	for m := 20; m <= 40; m += 20 {
		if _, ok := st.Get(k, t0.Add(time.Duration(m)*time.Minute)); !ok {
			t.Fatalf("gone after %d minutes, within its lifetime", m)
		}
	}
	st.Put(k, 2, t0.Add(45*time.Minute)) // a rebind keeps the entry's age
	if id, ok := st.Get(k, t0.Add(59*time.Minute)); !ok || id != 2 {
		t.Fatalf("at 59 minutes: %d, %v", id, ok)
	}
	if p := st.Page(0, 1); len(p) != 1 || !p[0].Born.Equal(t0) {
		t.Errorf("born %v, want %v", p, t0)
	}
	if _, ok := st.Get(k, t0.Add(61*time.Minute)); ok {
		t.Fatal("still there past its lifetime of an hour, though in use")
	}
	// Stored again: a new lifetime.
	st.Put(k, 3, t0.Add(62*time.Minute))
	for _, m := range []int{80, 100, 120} {
		if _, ok := st.Get(k, t0.Add(time.Duration(m)*time.Minute)); !ok {
			t.Fatalf("a value stored again at 62 minutes was gone at %d", m)
		}
	}
	if _, ok := st.Get(k, t0.Add(123*time.Minute)); ok {
		t.Fatal("a value stored again at 62 minutes outlived its hour")
	}
	// Without a lifetime entries live while used.
	plain := NewSessionTable(100, 30*time.Minute)
	plain.Put(k, 1, t0)
	for m := 20; m <= 200; m += 20 {
		if _, ok := plain.Get(k, t0.Add(time.Duration(m)*time.Minute)); !ok {
			t.Fatalf("without a lifetime, gone after %d minutes of use", m)
		}
	}
	// A long lifetime still fits the ticks (of more than a second).
	long := NewSessionTable(100, 24*time.Hour)
	long.SetLifetime(90 * 24 * time.Hour)
	long.Put(k, 1, t0)
	for d := 1; d < 90; d++ {
		if _, ok := long.Get(k, t0.Add(time.Duration(d)*24*time.Hour)); !ok {
			t.Fatalf("a 90-day lifetime ended on day %d", d)
		}
	}
	if _, ok := long.Get(k, t0.Add(91*24*time.Hour)); ok {
		t.Fatal("a 90-day lifetime lasted 91 days")
	}
}

// A table with few entries spread over every shard holds slab room for
// about as many entries as it has, not a whole chunk per shard; a large
// one fills whole chunks.
func TestSessionSlabGrowsWithEntries(t *testing.T) {
	room := func(st *SessionTable) (n int) {
		for i := range st.shards {
			for _, c := range st.shards[i].chunks {
				n += len(c)
			}
		}
		return n
	}
	st := NewSessionTable(100_000, time.Hour)
	now := time.Unix(1_800_000_000, 0)
	for i := range 200 {
		st.Put(NamedKey(fmt.Sprint("small-", i)), 1, now)
	}
	if r, limit := room(st), 2*200+len(st.shards)*sessionFirstChunk; r > limit {
		t.Fatalf("200 entries over %d shards hold room for %d, want at most %d", len(st.shards), r, limit)
	}
	for i := range 100_000 {
		st.Put(NamedKey(fmt.Sprint("large-", i)), uint64(i%7+1), now)
	}
	for i := range 200 {
		if _, ok := st.Get(NamedKey(fmt.Sprint("large-", 99_999-i)), now); !ok {
			t.Fatalf("a recent entry of a full table is missing")
		}
	}
	if r := room(st); r > 100_000+len(st.shards)*sessionChunk {
		t.Fatalf("a full table holds room for %d entries", r)
	}
}

// An entry another instance stored with a birth a little ahead of this
// clock is new here, not one that wrapped around its lifetime.
func TestSessionLifetimeBornAhead(t *testing.T) {
	st := NewSessionTable(100, 30*time.Minute)
	st.SetLifetime(time.Hour)
	now := time.Unix(1_800_000_000, 0)
	k := NamedKey("learned elsewhere")
	for _, ahead := range []time.Duration{time.Second, 5 * time.Minute} {
		st.put(k, 1, now, now.Add(ahead))
		if _, ok := st.Get(k, now); !ok {
			t.Fatalf("an entry born %v ahead was dropped as too old", ahead)
		}
		st.Delete(k)
	}
	st.put(k, 1, now, now.Add(-61*time.Minute))
	if _, ok := st.Get(k, now); ok {
		t.Fatal("an entry born 61 minutes ago outlived a lifetime of an hour")
	}
}
