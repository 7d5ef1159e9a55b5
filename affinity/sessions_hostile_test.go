package affinity

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

// probeDistance is the mean distance of the table's entries from their
// home slots: a flood of colliding keys makes it grow with their number.
func probeDistance(t *SessionTable) float64 {
	total, n := 0, 0
	for i := range t.shards {
		s := &t.shards[i]
		size := len(s.index)
		for slot, v := range s.index {
			if v == 0 {
				continue
			}
			home := s.home(uint32(v >> 32))
			total += (slot - home + size) % size
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return float64(total) / float64(n)
}

// Keys chosen offline for their routing hash (which every instance shares)
// do not crowd one shard or one probe run of a session table.
func TestSessionTableResistsHashFlooding(t *testing.T) {
	// Keys whose unseeded hash puts them all in shard 0 of a 32-shard
	// table and, within a shard of one, at the same home slot.
	var sameShard, sameHome []ClientKey
	for i := 0; len(sameShard) < 4096 || len(sameHome) < 600; i++ {
		k := MaskClient(netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, uint32(i)<<8+0x0b000001))), 32, 64)
		h := k.Hash()
		if h>>59 == 0 && len(sameShard) < 4096 {
			sameShard = append(sameShard, k)
		}
		if uint32(h)>>20 == 0 && len(sameHome) < 600 {
			sameHome = append(sameHome, k)
		}
	}
	big := NewSessionTable(1_000_000, time.Hour)
	if len(big.shards) != 32 {
		t.Fatalf("%d shards", len(big.shards))
	}
	for i, k := range sameShard {
		big.Put(k, uint64(i%8), sessAt(0))
	}
	most := 0
	for i := range big.shards {
		most = max(most, int(big.shards[i].n))
	}
	if mean := len(sameShard) / 32; most > 2*mean {
		t.Errorf("the fullest shard holds %d of %d keys (a fair share is %d)", most, len(sameShard), mean)
	}

	small := NewSessionTable(1024, time.Hour)
	for i, k := range sameHome {
		small.Put(k, uint64(i%8), sessAt(0))
	}
	if d := probeDistance(small); d > 4 {
		t.Errorf("%d colliding keys: mean probe distance %.1f slots", len(sameHome), d)
	}
	for _, k := range sameHome {
		if _, ok := small.Get(k, sessAt(1)); !ok {
			t.Fatalf("%v lost", k)
		}
	}
}

// One /48 flooding a table with /64 keys fills at most its limit; every
// other client keeps its entry.
func TestSessionTableNetworkLimit(t *testing.T) {
	const max = 100_000
	st := NewSessionTable(max, time.Hour)
	limit := DefaultNetworkLimit(max)
	others := make([]ClientKey, 20_000)
	for i := range others {
		others[i] = sessKey(i)
		st.Put(others[i], uint64(i%5), sessAt(0))
	}
	flooder := netip.MustParsePrefix("2001:db8:1::/48").Addr().As16()
	stored := 0
	for i := range 65536 {
		a := flooder
		binary.BigEndian.PutUint16(a[6:8], uint16(i))
		if st.Put(MaskClient(netip.AddrFrom16(a), 32, 64), 9, sessAt(1)) {
			stored++
		}
	}
	// Counters the flooder shares with other networks count against it:
	// it may get a little less than its limit, never more.
	if stored > limit || stored < limit*95/100 {
		t.Errorf("one /48 stored %d entries, want its limit %d (or a little less)", stored, limit)
	}
	for i, k := range others {
		if id, ok := st.Get(k, sessAt(2)); !ok || id != uint64(i%5) {
			t.Fatalf("client %v lost its entry to the flood", k)
		}
	}
	if n := st.CountByID()[9]; n != stored {
		t.Errorf("flooder's upstream counts %d entries, want %d", n, stored)
	}
	// The limit is per network: a neighbour /48 and an IPv4 /24 have their own.
	nb := netip.MustParseAddr("2001:db8:2::1")
	if !st.Put(MaskClient(nb, 32, 64), 1, sessAt(3)) {
		t.Error("a neighbouring /48 was refused")
	}
	// Entries that go free make room again.
	var a [16]byte = flooder
	k0 := MaskClient(netip.AddrFrom16(a), 32, 64)
	if !st.Delete(k0) {
		t.Fatal("the flooder's first entry is missing")
	}
	binary.BigEndian.PutUint16(a[6:8], 65535)
	if !st.Put(MaskClient(netip.AddrFrom16(a), 32, 64), 9, sessAt(4)) {
		t.Error("a freed place was not reusable")
	}

	// IPv4: a small table's /24 holds its limit of /32 keys.
	v4 := NewSessionTableLimit(2000, time.Hour, 20)
	n := 0
	for i := range 256 {
		if v4.Put(MaskClient(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 32, 64), 1, sessAt(0)) {
			n++
		}
	}
	if n != 20 {
		t.Errorf("a /24 stored %d entries, want 20", n)
	}
	v4.Flush()
	if !v4.Put(MaskClient(netip.AddrFrom4([4]byte{192, 0, 2, 1}), 32, 64), 1, sessAt(0)) {
		t.Error("a flushed table still counted the network's entries")
	}
}

func TestCheckNetworkLimit(t *testing.T) {
	for _, tc := range []struct {
		max, limit int
		ok         bool
	}{{100_000, 1000, true}, {100_000, 98, true}, {100_000, 97, false}, {1000, 1, true}, {1000, 0, false}, {10_000_000, 9000, false}} {
		if err := CheckNetworkLimit(tc.max, tc.limit); (err == nil) != tc.ok {
			t.Errorf("CheckNetworkLimit(%d, %d) = %v", tc.max, tc.limit, err)
		}
	}
}

// CountByID, kept as the table changes, agrees with a walk of the entries
// through puts, moves, expiry, eviction and deletion.
func TestSessionCountByIDKept(t *testing.T) {
	st := NewSessionTable(3000, 10*time.Second)
	walk := func() map[uint64]int {
		c := map[uint64]int{}
		for _, s := range st.Page(0, 0) {
			c[s.ID]++
		}
		return c
	}
	check := func(step string) {
		t.Helper()
		got, want := st.CountByID(), walk()
		if len(got) != len(want) {
			t.Fatalf("%s: counts %v, entries %v", step, got, want)
		}
		for id, n := range want {
			if got[id] != n {
				t.Fatalf("%s: counts %v, entries %v", step, got, want)
			}
		}
	}
	for i := range 5000 {
		st.Put(sessKey(i), uint64(i%4), sessAt(i/1000))
	}
	check("puts past the bound")
	for i := 4000; i < 4500; i++ {
		st.Put(sessKey(i), 7, sessAt(5))
	}
	check("moves")
	st.DeleteID(2)
	check("DeleteID")
	st.Sweep(sessAt(14))
	check("Sweep")
	for i := 4500; i < 4600; i++ {
		st.Delete(sessKey(i))
	}
	check("Delete")
	st.Get(sessKey(4999), sessAt(100))
	check("Get of an expired entry")
	st.Flush()
	check("Flush")
}

// BenchmarkCountByID counts the sessions per upstream of a full table of a
// million entries over 16 upstreams, as an admin listing or a metrics
// scrape does.
func BenchmarkCountByID(b *testing.B) {
	st := NewSessionTable(1_000_000, time.Hour)
	for i := range 1_000_000 {
		st.Put(sessKey(i), uint64(i%16), sessAt(0))
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if len(st.CountByID()) != 16 {
			b.Fatal("counts lost")
		}
	}
}
