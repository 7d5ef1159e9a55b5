package affinity

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// tableAddrs returns n distinct upstream addresses.
func tableAddrs(n int) []string {
	a := make([]string, n)
	for i := range a {
		a[i] = fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250+1)
	}
	return a
}

var (
	tableHashesOnce sync.Once
	tableHashesAll  []uint64
)

// tableClientHashes returns the key hashes of n pseudo-random IPv4 clients (the
// same ones on every run).
func tableClientHashes(n int) []uint64 {
	tableHashesOnce.Do(func() {
		r := rand.New(rand.NewPCG(1, 2))
		tableHashesAll = make([]uint64, 1_000_000)
		for i := range tableHashesAll {
			ip := netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, r.Uint32())))
			tableHashesAll[i] = MaskClient(ip, 32, 64).Hash()
		}
	})
	return tableHashesAll[:n]
}

// tableClients is the number of clients of the large tests. They take under
// two seconds each even with -race, so -short does not shrink them.
func tableClients() int { return 1_000_000 }

func tableWithout(addrs []string, i int) []string {
	out := append([]string(nil), addrs[:i]...)
	return append(out, addrs[i+1:]...)
}

func TestHashXXH64MatchesLibrary(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 1000 {
		v, seed := r.Uint64(), r.Uint64()
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], v)
		d := xxhash.NewWithSeed(seed)
		d.Write(b[:])
		if got, want := xxh64Uint64(v, seed), d.Sum64(); got != want {
			t.Fatalf("xxh64Uint64(%#x, %#x) = %#x, want %#x", v, seed, got, want)
		}
		if got, want := xxh64Uint64(v, 0), xxhash.Sum64(b[:]); got != want {
			t.Fatalf("xxh64Uint64(%#x, 0) = %#x, want %#x", v, got, want)
		}
	}
}

// TestHashGolden pins the hashes and the table layout: every process, and
// every version of this code, must route a client alike. If this fails,
// an upgrade would move clients between upstreams.
func TestHashGolden(t *testing.T) {
	if got := AddrHash("10.0.0.1:8080"); got != 0xcb972177068eb685 {
		t.Errorf("AddrHash = %#x", got)
	}
	k := MaskClient(netip.MustParseAddr("192.0.2.77"), 24, 64)
	if got := k.Hash(); got != 0xcea588f70ee5697b {
		t.Errorf("IPv4 key hash = %#x", got)
	}
	k = MaskClient(netip.MustParseAddr("2001:db8::1"), 32, 64)
	if got := k.Hash(); got != 0x44c73b1c141d62b3 {
		t.Errorf("IPv6 key hash = %#x", got)
	}
	tab := NewTable(tableAddrs(7))
	d := xxhash.New()
	for s := range TableSize {
		d.WriteString(tab.Addr(tab.Lookup(uint64(s) << tableShift)))
		d.WriteString(tab.Addr(tab.pos[tab.backup[s]]))
	}
	if got := d.Sum64(); got != 0xd485460274c8a253 {
		t.Errorf("table layout checksum = %#x", got)
	}
}

func TestTableBalance(t *testing.T) {
	const n = 10
	tab := NewTable(tableAddrs(n))
	hs := tableClientHashes(tableClients())
	counts := make([]int, n)
	for _, h := range hs {
		counts[tab.Lookup(h)]++
	}
	mean := float64(len(hs)) / n
	mx, mn := 0, len(hs)
	for _, c := range counts {
		mx, mn = max(mx, c), min(mn, c)
	}
	ratio := float64(mx) / mean
	t.Logf("%d clients over %d upstreams: max/mean = %.4f, min/mean = %.4f", len(hs), n, ratio, float64(mn)/mean)
	if ratio > 1.03 {
		t.Errorf("max/mean = %.4f > 1.03 (counts %v)", ratio, counts)
	}

	// The slot shares themselves, for all pool sizes of the disruption test.
	for _, n := range []int{3, 5, 10, 16, 64} {
		tab := NewTable(tableAddrs(n))
		slots := make([]int, n)
		for _, p := range tab.primary {
			slots[tab.pos[p]]++
		}
		mx := 0
		for _, c := range slots {
			mx = max(mx, c)
		}
		r := float64(mx) / (TableSize / float64(n))
		t.Logf("n=%d: max slot share / mean = %.4f", n, r)
		if r > 1+tableSlack+0.001 {
			t.Errorf("n=%d: slot share max/mean = %.4f", n, r)
		}
	}
}

func TestTableDisruptionRemove(t *testing.T) {
	hs := tableClientHashes(tableClients())
	for _, n := range []int{3, 5, 10, 16, 64} {
		addrs := tableAddrs(n)
		full := NewTable(addrs)
		worst := 0.0
		for _, r := range []int{0, n / 2, n - 1} {
			sub := NewTable(tableWithout(addrs, r))
			moved, orphans := 0, 0
			for _, h := range hs {
				old := full.Addr(full.Lookup(h))
				if old == addrs[r] {
					orphans++
					continue
				}
				if sub.Addr(sub.Lookup(h)) != old {
					moved++
				}
			}
			frac := float64(moved) / float64(len(hs))
			worst = max(worst, frac)
			t.Logf("n=%2d remove #%-2d: removed upstream's clients %.2f%%, others moved %.3f%%",
				n, r, 100*float64(orphans)/float64(len(hs)), 100*frac)
		}
		if worst > 0.02 {
			t.Errorf("n=%d: %.3f%% of clients moved besides the removed upstream's (max 2%%)", n, 100*worst)
		}
	}
}

func TestTableDisruptionAdd(t *testing.T) {
	hs := tableClientHashes(tableClients())
	for _, n := range []int{3, 5, 10, 16, 64} {
		addrs := tableAddrs(n + 1)
		old, grown := NewTable(addrs[:n]), NewTable(addrs)
		toNew, between := 0, 0
		for _, h := range hs {
			a, b := old.Addr(old.Lookup(h)), grown.Addr(grown.Lookup(h))
			switch {
			case b == addrs[n]:
				toNew++
			case a != b:
				between++
			}
		}
		moved := float64(toNew+between) / float64(len(hs))
		ideal := 1 / float64(n+1)
		t.Logf("n=%2d add one: moved %.3f%% (ideal 1/(n+1) = %.3f%%), of which between old upstreams %.3f%%",
			n, 100*moved, 100*ideal, 100*float64(between)/float64(len(hs)))
		if moved > ideal+0.02 || float64(between)/float64(len(hs)) > 0.02 {
			t.Errorf("n=%d: adding one upstream moved %.3f%% of clients", n, 100*moved)
		}
	}
}

func TestTableDeterminism(t *testing.T) {
	addrs := tableAddrs(16)
	shuffled := append([]string(nil), addrs...)
	rand.New(rand.NewPCG(5, 6)).Shuffle(len(shuffled), func(i, j int) {
		shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
	})
	a, b := NewTable(addrs), NewTable(shuffled)
	dead := addrs[3]
	okA := func(i int) bool { return a.Addr(i) != dead }
	okB := func(i int) bool { return b.Addr(i) != dead }
	loadA := func(i int) int { return len(a.Addr(i)) + i%3 }
	loadB := func(i int) int { return loadA(a.IndexOf(AddrHash(b.Addr(i)))) }
	for _, h := range tableClientHashes(200_000) {
		if x, y := a.Addr(a.Lookup(h)), b.Addr(b.Lookup(h)); x != y {
			t.Fatalf("Lookup(%#x): %s vs %s", h, x, y)
		}
		if x, y := a.Addr(a.LookupFunc(h, okA)), b.Addr(b.LookupFunc(h, okB)); x != y {
			t.Fatalf("LookupFunc(%#x): %s vs %s", h, x, y)
		}
		if x, y := a.Addr(a.LookupBounded(h, 1.1, loadA, okA)), b.Addr(b.LookupBounded(h, 1.1, loadB, okB)); x != y {
			t.Fatalf("LookupBounded(%#x): %s vs %s", h, x, y)
		}
	}
}

func TestTableUnavailable(t *testing.T) {
	const n = 10
	addrs := tableAddrs(n)
	tab := NewTable(addrs)
	rebuilt := NewTable(tableWithout(addrs, 4))
	dead := 4
	ok := func(i int) bool { return i != dead }
	hs := tableClientHashes(tableClients())
	got := make([]int, n)
	orphans, sameAsRebuild := 0, 0
	for _, h := range hs {
		p, q := tab.Lookup(h), tab.LookupFunc(h, ok)
		if q == dead || q < 0 {
			t.Fatalf("LookupFunc returned %d", q)
		}
		if p != dead {
			if q != p {
				t.Fatalf("a client of live upstream %d moved to %d", p, q)
			}
			continue
		}
		orphans++
		got[q]++
		if rebuilt.Addr(rebuilt.Lookup(h)) == addrs[q] {
			sameAsRebuild++
		}
	}
	mean := float64(orphans) / (n - 1)
	t.Logf("upstream %d down: its %d clients spread as %v (max/mean %.3f); %.1f%% of them stay put when the pool is rebuilt without it",
		dead, orphans, got, float64(tableMax(got))/mean, 100*float64(sameAsRebuild)/float64(orphans))
	for i, c := range got {
		if i != dead && float64(c) < mean/2 {
			t.Errorf("upstream %d got only %d of %d orphaned clients", i, c, orphans)
		}
	}

	// Several down: still only their clients move, to live upstreams.
	down := map[int]bool{1: true, 2: true, 7: true}
	ok = func(i int) bool { return !down[i] }
	for _, h := range hs[:100_000] {
		p, q := tab.Lookup(h), tab.LookupFunc(h, ok)
		if down[q] || q < 0 || (!down[p] && p != q) {
			t.Fatalf("primary %d, got %d", p, q)
		}
	}

	// One survivor of 64: found by the linear scan when re-hashing misses.
	big := NewTable(tableAddrs(64))
	for _, h := range hs[:10_000] {
		if q := big.LookupFunc(h, func(i int) bool { return i == 37 }); q != 37 {
			t.Fatalf("got %d, want the only acceptable upstream 37", q)
		}
	}
}

func tableMax(s []int) int {
	m := 0
	for _, v := range s {
		m = max(m, v)
	}
	return m
}

func TestTableBoundedLoads(t *testing.T) {
	const n = 10
	tab := NewTable(tableAddrs(n))
	hs := tableClientHashes(100_000)
	for _, c := range []float64{1, 1.1, 1.25, 2} {
		loads := make([]int, n)
		load := func(i int) int { return loads[i] }
		primary := 0
		for k, h := range hs {
			total := k // every key so far is still connected
			bound := int(math.Ceil(c * float64(total+1) / n))
			i := tab.LookupBounded(h, c, load, nil)
			if i < 0 || loads[i] >= bound {
				t.Fatalf("c=%v key %d: got %d with load %d, bound %d", c, k, i, loads[i], bound)
			}
			if i == tab.Lookup(h) {
				primary++
			}
			loads[i]++
		}
		avg := float64(len(hs)) / n
		if mx := tableMax(loads); float64(mx) > math.Ceil(c*avg) {
			t.Errorf("c=%v: max load %d > ceil(c*avg) = %v", c, mx, math.Ceil(c*avg))
		}
		t.Logf("c=%-4v loads %v, %.1f%% of keys on their primary", c, loads, 100*float64(primary)/float64(len(hs)))
	}

	// With connections ending at random and one upstream unavailable.
	r := rand.New(rand.NewPCG(7, 8))
	loads := make([]int, n)
	var conns []int
	load := func(i int) int { return loads[i] }
	ok := func(i int) bool { return i != 2 }
	const c = 1.25
	for k, h := range hs {
		if len(conns) > 0 && r.IntN(3) == 0 {
			j := r.IntN(len(conns))
			loads[conns[j]]--
			conns[j] = conns[len(conns)-1]
			conns = conns[:len(conns)-1]
		}
		total := len(conns)
		bound := int(math.Ceil(c * float64(total+1) / (n - 1)))
		i := tab.LookupBounded(h, c, load, ok)
		if i < 0 || i == 2 || loads[i] >= bound {
			t.Fatalf("key %d: got %d with load %d, bound %d", k, i, loads[i], bound)
		}
		loads[i]++
		conns = append(conns, i)
	}
	if got := tab.LookupBounded(1, c, load, func(int) bool { return false }); got != -1 {
		t.Errorf("all unavailable: got %d, want -1", got)
	}
}

func TestTableEdgeCases(t *testing.T) {
	all := func(int) bool { return true }
	none := func(int) bool { return false }
	load := func(int) int { return 0 }
	for _, tab := range []*Table{nil, {}, NewTable(nil), NewTable([]string{})} {
		if tab.Lookup(1) != -1 || tab.LookupFunc(1, all) != -1 || tab.LookupBounded(1, 1.5, load, all) != -1 {
			t.Errorf("empty table returned an upstream")
		}
		if tab.Len() != 0 || tab.Addr(0) != "" || tab.IndexOf(AddrHash("x")) != -1 || len(tab.Addrs()) != 0 {
			t.Errorf("empty table has upstreams")
		}
	}

	one := NewTable([]string{"only:1"})
	for _, h := range tableClientHashes(1000) {
		if one.Lookup(h) != 0 || one.LookupFunc(h, all) != 0 || one.LookupBounded(h, 1.5, load, nil) != 0 {
			t.Fatalf("single upstream not chosen")
		}
		if one.LookupFunc(h, none) != -1 || one.LookupBounded(h, 1.5, load, none) != -1 {
			t.Fatalf("unavailable single upstream chosen")
		}
	}

	// Duplicates collapse into the first occurrence, whatever the order.
	dup := NewTable([]string{"b:1", "a:1", "b:1", "c:1", "a:1"})
	plain := NewTable([]string{"a:1", "b:1", "c:1"})
	for _, h := range tableClientHashes(50_000) {
		i := dup.Lookup(h)
		if i == 2 || i == 4 {
			t.Fatalf("duplicate index %d returned", i)
		}
		if dup.Addr(i) != plain.Addr(plain.Lookup(h)) {
			t.Fatalf("duplicates changed the mapping")
		}
		if j := dup.LookupFunc(h, func(i int) bool { return dup.Addr(i) != "a:1" }); dup.Addr(j) == "a:1" || j == 2 {
			t.Fatalf("LookupFunc with duplicates returned %d", j)
		}
	}
	if dup.Len() != 5 || dup.IndexOf(AddrHash("a:1")) != 1 || dup.IndexOf(AddrHash("zz")) != -1 {
		t.Errorf("Len/IndexOf wrong on duplicates")
	}

	// All unavailable, and balance factors that disable the bound.
	tab := NewTable(tableAddrs(5))
	for _, h := range tableClientHashes(1000) {
		if tab.LookupFunc(h, none) != -1 || tab.LookupBounded(h, 1.25, load, none) != -1 {
			t.Fatalf("all unavailable: got an upstream")
		}
		for _, c := range []float64{0, 0.5, -1, math.NaN(), math.Inf(1), math.Inf(-1)} {
			full := func(int) int { return math.MaxInt32 }
			if got, want := tab.LookupBounded(h, c, full, nil), tab.Lookup(h); got != want {
				t.Fatalf("c=%v: got %d, want unbounded %d", c, got, want)
			}
		}
		if got, want := tab.LookupBounded(h, 1.5, nil, nil), tab.Lookup(h); got != want {
			t.Fatalf("nil load: got %d, want %d", got, want)
		}
	}

	// Odd addresses are just strings.
	odd := NewTable([]string{"", "\x00", "[::1]:80", "unix//run/x.sock"})
	if i := odd.Lookup(42); i < 0 || i > 3 {
		t.Errorf("odd addresses: got %d", i)
	}
}

func BenchmarkTableLookup(b *testing.B) {
	for _, n := range []int{3, 16} {
		b.Run(fmt.Sprintf("upstreams=%d", n), func(b *testing.B) {
			tab := NewTable(tableAddrs(n))
			hs := tableClientHashes(1 << 16)
			b.ReportAllocs()
			sum := 0
			for i := 0; b.Loop(); i++ {
				sum += tab.Lookup(hs[i&(1<<16-1)])
			}
			_ = sum
		})
	}
}

func BenchmarkTableLookupFunc(b *testing.B) {
	tab := NewTable(tableAddrs(16))
	hs := tableClientHashes(1 << 16)
	ok := func(i int) bool { return i != 5 }
	b.ReportAllocs()
	sum := 0
	for i := 0; b.Loop(); i++ {
		sum += tab.LookupFunc(hs[i&(1<<16-1)], ok)
	}
	_ = sum
}

func BenchmarkTableLookupBounded(b *testing.B) {
	tab := NewTable(tableAddrs(16))
	hs := tableClientHashes(1 << 16)
	loads := make([]int, 16)
	load := func(i int) int { return loads[i] }
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		j := tab.LookupBounded(hs[i&(1<<16-1)], 1.25, load, nil)
		loads[j]++
		if i%64 == 63 {
			clear(loads)
		}
	}
}

func BenchmarkTableBuild(b *testing.B) {
	for _, n := range []int{4, 16, 64, 1000} {
		addrs := tableAddrs(n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				NewTable(addrs)
			}
		})
	}
}

// Small pools compute each slot's primary (Table.direct); it must be the
// table's, slot for slot, capped slots included, or HTTP and layer4, and
// processes of different builds, would disagree.
func TestTableDirectAgrees(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	direct, capped := 0, 0
	for n := 1; n <= directMax+1; n++ {
		for trial := range 8 {
			addrs := make([]string, n)
			for i := range addrs {
				addrs[i] = fmt.Sprintf("10.%d.%d.%d:%d", trial, rng.IntN(256), rng.IntN(256), 1000+rng.IntN(9000))
			}
			tb := NewTable(addrs)
			if n > directMax && tb.small.n != 0 {
				t.Fatalf("%d upstreams: direct, want the table", n)
			}
			if tb.small.n == 0 {
				continue
			}
			direct++
			for _, q := range tb.small.p[:tb.small.n] {
				if q.full < TableSize {
					capped++
					break
				}
			}
			for s := range uint64(TableSize) {
				if got, want := tb.primaryOf(s), int(tb.primary[s]); got != want {
					t.Fatalf("%v: slot %d: computed primary %d, table %d (%+v)", addrs, s, got, want, tb.small)
				}
			}
		}
	}
	if direct == 0 || capped == 0 {
		t.Fatalf("%d pools computed their primaries, %d of them with capped slots: want some of each", direct, capped)
	}
}
