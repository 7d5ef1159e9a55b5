package affinity

import (
	"fmt"
	"github.com/caddy-affinity/caddy-affinity/internal/testutil"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func TestIndexLookupPerKey(t *testing.T) {
	k := mustKeyring(t, "c", testKey, otherKey)
	addrs := []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}
	x := k.NewIndex(addrs)
	for i, a := range addrs {
		for key := 0; key < k.Len(); key++ {
			got, ok := x.Lookup(key, k.UpstreamID(key, a))
			if !ok || got != i {
				t.Errorf("Lookup(%d, id(%q)) = %d, %v; want %d, true", key, a, got, ok, i)
			}
		}
		// An ID is only looked up under the key it belongs to.
		if got, ok := x.Lookup(0, k.UpstreamID(1, a)); ok {
			t.Errorf("Lookup(0, id under key 1 of %q) = %d, true", a, got)
		}
		if x.SigningID(i) != k.UpstreamID(0, a) {
			t.Errorf("SigningID(%d) is not the ID under key 0", i)
		}
	}
	for _, key := range []int{-1, 2, 100} {
		if _, ok := x.Lookup(key, k.UpstreamID(0, addrs[0])); ok {
			t.Errorf("Lookup with key index %d succeeded", key)
		}
	}
	if _, ok := x.Lookup(0, k.UpstreamID(0, "10.0.0.4:80")); ok {
		t.Error("Lookup of an address outside the pool succeeded")
	}
}

func TestIndexEmptyPool(t *testing.T) {
	x := mustKeyring(t, "c", testKey).NewIndex(nil)
	if _, ok := x.Lookup(0, 0); ok {
		t.Error("Lookup in an empty index succeeded")
	}
}

func TestIndexDuplicateAddresses(t *testing.T) {
	k := mustKeyring(t, "c", testKey, otherKey)
	addrs := []string{"b:80", "a:80", "b:80", "c:80", "a:80"}
	for run := 0; run < 3; run++ {
		x := k.NewIndex(addrs)
		for key := 0; key < 2; key++ {
			// The first position of a repeated address wins, every time.
			for a, want := range map[string]int{"b:80": 0, "a:80": 1, "c:80": 3} {
				if got, ok := x.Lookup(key, k.UpstreamID(key, a)); !ok || got != want {
					t.Fatalf("run %d key %d: Lookup(%q) = %d, %v; want %d", run, key, a, got, ok, want)
				}
			}
		}
		if x.SigningID(0) != x.SigningID(2) || x.SigningID(1) != x.SigningID(4) {
			t.Fatal("repeated addresses have different signing IDs")
		}
	}
}

// TestIndexCollisionMarker checks that Lookup refuses an ID two addresses
// share. Real 48-bit collisions cannot be produced in a test, so the marker
// NewIndex stores for one is planted directly.
func TestIndexCollisionMarker(t *testing.T) {
	x := &Index{byID: []map[uint64]int32{{7: -1, 8: 0}}, sign: []uint64{8}}
	if _, ok := x.Lookup(0, 7); ok {
		t.Error("Lookup of a colliding ID succeeded")
	}
	if i, ok := x.Lookup(0, 8); !ok || i != 0 {
		t.Errorf("Lookup(0, 8) = %d, %v; want 0, true", i, ok)
	}
}

type fakeUp struct{ addr string }

// countingCache is a PoolCache over *fakeUp whose state is the addresses
// joined, and which counts its builds.
func countingCache() (*PoolCache[*fakeUp, string], *atomic.Int64) {
	var builds atomic.Int64
	c := &PoolCache[*fakeUp, string]{
		Addr: func(u *fakeUp) string { return u.addr },
		Build: func(addrs []string) string {
			builds.Add(1)
			return strings.Join(addrs, ",")
		},
	}
	return c, &builds
}

func ups(addrs ...string) []*fakeUp {
	out := make([]*fakeUp, len(addrs))
	for i, a := range addrs {
		out[i] = &fakeUp{a}
	}
	return out
}

func TestPoolCache(t *testing.T) {
	c, builds := countingCache()
	pool := ups("a", "b", "c")

	steps := []struct {
		name       string
		pool       []*fakeUp
		want       string
		wantBuilds int64
	}{
		{"first use builds", pool, "a,b,c", 1},
		{"same slice is cached", pool, "a,b,c", 1},
		{"same pointers in a new slice", append([]*fakeUp(nil), pool...), "a,b,c", 1},
		{"same addresses behind new pointers", ups("a", "b", "c"), "a,b,c", 1},
		{"different addresses rebuild", ups("a", "b", "d"), "a,b,d", 2},
		{"a shorter pool rebuilds", ups("a", "b"), "a,b", 3},
		{"reordered addresses rebuild", ups("b", "a"), "b,a", 4},
		{"empty pool", nil, "", 5},
		{"empty again is cached", []*fakeUp{}, "", 5},
		{"back to the first pool rebuilds", pool, "a,b,c", 6},
	}
	for _, s := range steps {
		if got := *c.Get(s.pool); got != s.want {
			t.Fatalf("%s: Get = %q, want %q", s.name, got, s.want)
		}
		if n := builds.Load(); n != s.wantBuilds {
			t.Fatalf("%s: %d builds, want %d", s.name, n, s.wantBuilds)
		}
	}
}

// TestPoolCacheReusesStateObject checks that a pool rebuilt with the same
// addresses keeps the very same state object (counters, tables), not an
// equal copy.
func TestPoolCacheReusesStateObject(t *testing.T) {
	builds := 0
	c := &PoolCache[*fakeUp, *[]string]{
		Addr:  func(u *fakeUp) string { return u.addr },
		Build: func(addrs []string) *[]string { builds++; return &addrs },
	}
	s1 := *c.Get(ups("x", "y"))
	s2 := *c.Get(ups("x", "y"))
	if s1 != s2 || builds != 1 {
		t.Fatalf("new pointers, same addresses: state %p then %p after %d builds; want the same, 1 build", s1, s2, builds)
	}
	// Get trusts the identity of the caller's slice (O(1)); a slice changed
	// in place is caught by Refresh, which policies call when the state's
	// address at a position is not the upstream there.
	p := ups("x", "y")
	c.Get(p)
	p[1] = &fakeUp{"z"}
	if got := **c.Refresh(p); strings.Join(got, ",") != "x,z" {
		t.Fatalf("after the caller changed its slice: Refresh state %v, want [x z]", got)
	}
	if got := **c.Get(p); strings.Join(got, ",") != "x,z" {
		t.Fatalf("after Refresh: Get state %v, want [x z]", got)
	}
}

func TestPoolCacheConcurrent(t *testing.T) {
	c, builds := countingCache()
	pools := [][]*fakeUp{ups("a", "b"), ups("c"), ups("a", "b", "c", "d")}
	want := []string{"a,b", "c", "a,b,c,d"}
	var wg sync.WaitGroup
	var bad atomic.Int64
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				p := (g + i/50) % len(pools)
				if got := *c.Get(pools[p]); got != want[p] {
					bad.Add(1)
				}
			}
		}(g)
	}
	wg.Wait()
	if n := bad.Load(); n != 0 {
		t.Fatalf("%d Gets returned the state of another pool", n)
	}
	if builds.Load() < 1 {
		t.Fatal("no builds")
	}
	// Once quiet, repeated Gets of one pool do not build again.
	c.Get(pools[0])
	n := builds.Load()
	for i := 0; i < 10; i++ {
		c.Get(pools[0])
	}
	if builds.Load() != n {
		t.Fatalf("repeated Get built again: %d -> %d", n, builds.Load())
	}
}

func TestPoolCacheGetAllocations(t *testing.T) {
	if testutil.RaceEnabled {
		t.Skip("allocation counts require a build without -race")
	}
	c, _ := countingCache()
	pool := ups(func() []string {
		var a []string
		for i := 0; i < 16; i++ {
			a = append(a, fmt.Sprintf("10.0.0.%d:80", i))
		}
		return a
	}()...)
	c.Get(pool)
	if n := testing.AllocsPerRun(100, func() { c.Get(pool) }); n != 0 {
		t.Fatalf("cached Get allocates %.1f times, want 0", n)
	}
}

// A fallback policy is handed the full pool on first attempts and the pool
// less a failed upstream on retries, in turn: both stay cached.
func TestPoolCacheAlternatingPools(t *testing.T) {
	c, builds := countingCache()
	full := ups("a", "b", "c", "d")
	less := []*fakeUp{full[0], full[1], full[3]}
	for i := 0; i < 100; i++ {
		if got := *c.Get(full); got != "a,b,c,d" {
			t.Fatalf("full pool: %q", got)
		}
		// A new slice each time, as a retry filters the pool anew.
		if got := *c.Get(append([]*fakeUp(nil), less...)); got != "a,b,d" {
			t.Fatalf("filtered pool: %q", got)
		}
	}
	if n := builds.Load(); n != 2 {
		t.Fatalf("two pools in turn built %d times, want 2", n)
	}
	// Dynamic upstreams: new objects with the same addresses, no rebuild.
	if got := *c.Get(ups("a", "b", "c", "d")); got != "a,b,c,d" || builds.Load() != 2 {
		t.Fatalf("same addresses in new objects: %q after %d builds", got, builds.Load())
	}
}

func TestPoolCacheDrops(t *testing.T) {
	drops := 0
	c := PoolCache[string, int]{Addr: func(u string) string { return u }, Build: func(a []string) int { return len(a) },
		Drop: func(*int) { drops++ }}
	for i := range poolCacheSlots {
		c.Get(make([]string, i+1))
	}
	if drops != 0 {
		t.Fatalf("%d drops before the cache was full", drops)
	}
	c.Get(make([]string, poolCacheSlots+1))
	if drops != 1 {
		t.Fatalf("%d drops after one eviction, want 1", drops)
	}
	c.Close()
	if drops != 1+poolCacheSlots {
		t.Fatalf("%d drops after Close, want %d", drops, 1+poolCacheSlots)
	}
}

// The slice Get found last answers first, and an evicted state is never
// found through it.
func TestPoolCacheHot(t *testing.T) {
	builds := 0
	c := PoolCache[string, int]{Addr: func(u string) string { return u }, Build: func(a []string) int { builds++; return builds }}
	first := []string{"a", "b"}
	s := c.Get(first)
	if c.Get(first) != s || c.hot.Load() == nil || !sameSlice(c.hot.Load().orig, first) {
		t.Fatal("the slice found last is not kept hot")
	}
	for i := range poolCacheSlots { // evict first's state
		c.Get([]string{string(rune('c' + i))})
	}
	if h := c.hot.Load(); h != nil && sameSlice(h.orig, first) {
		t.Fatal("an evicted state is still hot")
	}
	if got := c.Get(first); *got == *s {
		t.Fatal("an evicted state was returned")
	}
}
