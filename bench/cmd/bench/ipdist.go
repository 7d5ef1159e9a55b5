package main

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/caddy-affinity/caddy-affinity/affinity"
	"github.com/cespare/xxhash/v2"
)

// distUpstreams is the pool size of the distribution figure.
const distUpstreams = 10

// disruptionSizes are the pool sizes of the disruption figure.
var disruptionSizes = []int{2, 3, 5, 10, 20, 50, 100}

// maxRemovals bounds how many upstreams of a pool are removed in turn (evenly
// spaced) to average the disruption of the Table, which rebuilds per removal.
const maxRemovals = 10

// ipFigures are the in-process IP affinity figures.
type ipFigures struct {
	Clients    int
	Upstreams  int   // pool size of the distribution
	Table      []int // clients per upstream, the plugin's Table
	Slots      []int // slots per upstream of the Table: its share for infinitely many clients
	Rendezvous []int // clients per upstream, Caddy's client_ip_hash
	Disruption []disruption
	Took       time.Duration
}

// disruption is the share of clients that move when one upstream of N is
// removed, averaged over the removals, in percent of all clients. Excess
// counts the moved clients that were not on the removed upstream: ideal
// consistent hashing moves none of them.
type disruption struct {
	N, Removals                  int
	Ideal                        float64
	Table, TableExcess           float64
	Rendezvous, RendezvousExcess float64
	Modulo                       float64
}

// upstreamAddrs returns n dial addresses like a pool of real backends.
func upstreamAddrs(n int) []string {
	a := make([]string, n)
	for i := range a {
		a[i] = fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250+1)
	}
	return a
}

// tableIndex is the upstream of addrs ip_affinity picks for ip.
func tableIndex(addrs []string, ip string) int {
	k := affinity.MaskClient(netip.MustParseAddr(ip), 32, 64)
	return affinity.NewTable(addrs).Lookup(k.Hash())
}

// rendezvous is the upstream of addrs Caddy's client_ip_hash picks for ip:
// the highest xxhash64 of dial address and IP concatenated
// (reverseproxy.hostByHashing in Caddy v2.11.9).
func rendezvous(addrs []string, ip string) int {
	best, _ := rendezvousTop2(addrs, ip, new(xxhash.Digest))
	return best
}

// rendezvousTop2 returns the best and second best upstream for ip. Removing
// the best moves the client to the second; removing any other moves nothing.
func rendezvousTop2(addrs []string, ip string, d *xxhash.Digest) (best, second int) {
	var hb, hs uint64
	best, second = -1, -1
	for i, a := range addrs {
		d.Reset()
		d.WriteString(a)
		d.WriteString(ip)
		h := d.Sum64()
		switch {
		case best < 0 || h > hb:
			second, hs = best, hb
			best, hb = i, h
		case second < 0 || h > hs:
			second, hs = i, h
		}
	}
	return best, second
}

// removals returns up to maxRemovals evenly spaced upstream indices of n.
func removals(n int) []int {
	k := min(n, maxRemovals)
	r := make([]int, k)
	for i := range r {
		r[i] = i * n / k
	}
	return r
}

// without returns addrs without index r.
func without(addrs []string, r int) []string {
	return append(append([]string(nil), addrs[:r]...), addrs[r+1:]...)
}

// parallel runs fn over [0, n) in GOMAXPROCS chunks.
func parallel(n int, fn func(lo, hi int)) {
	w := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	for i := range w {
		lo, hi := i*n/w, (i+1)*n/w
		wg.Go(func() { fn(lo, hi) })
	}
	wg.Wait()
}

// analyseIP computes the distribution of clients random IPv4 clients over
// distUpstreams upstreams and the disruption of removing one upstream, for
// the plugin's Table, Caddy's rendezvous hashing and modulo hashing.
func analyseIP(clients int) ipFigures {
	t0 := time.Now()
	rng := rand.New(rand.NewPCG(1, 2)) // fixed seed: the same clients every run
	ips := make([]string, clients)
	hashes := make([]uint64, clients)
	for i := range ips {
		ip := netip.AddrFrom4([4]byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())})
		ips[i] = ip.String()
		hashes[i] = affinity.MaskClient(ip, 32, 64).Hash()
	}
	f := ipFigures{Clients: clients, Upstreams: distUpstreams}
	for _, n := range disruptionSizes {
		addrs := upstreamAddrs(n)
		rem := removals(n)
		row := disruption{N: n, Removals: len(rem), Ideal: 100 / float64(n)}

		// Rendezvous: one pass finds each client's best and second best.
		best := make([]int32, clients)
		parallel(clients, func(lo, hi int) {
			d := new(xxhash.Digest)
			for i := lo; i < hi; i++ {
				b, _ := rendezvousTop2(addrs, ips[i], d)
				best[i] = int32(b)
			}
		})
		perUp := make([]int, n)
		for _, b := range best {
			perUp[b]++
		}
		for _, r := range rem {
			row.Rendezvous += float64(perUp[r]) // exactly the removed one's clients move
		}

		// Table: rebuild without each removed upstream and compare.
		t := affinity.NewTable(addrs)
		tableUp := make([]int, n)
		before := make([]int32, clients)
		for i, h := range hashes {
			before[i] = int32(t.Lookup(h))
			tableUp[before[i]]++
		}
		var moved, excess, modulo int
		for _, r := range rem {
			rest := without(addrs, r)
			t2 := affinity.NewTable(rest)
			for i, h := range hashes {
				after := t2.Lookup(h)
				if after >= r {
					after++ // back to an index of addrs
				}
				if int32(after) != before[i] {
					moved++
					if before[i] != int32(r) {
						excess++
					}
				}
				m := int(h % uint64(n-1))
				if m >= r {
					m++
				}
				if m != int(h%uint64(n)) {
					modulo++
				}
			}
		}
		total := float64(clients * len(rem))
		row.Rendezvous = 100 * row.Rendezvous / total
		row.Table = 100 * float64(moved) / total
		row.TableExcess = 100 * float64(excess) / total
		row.Modulo = 100 * float64(modulo) / total
		f.Disruption = append(f.Disruption, row)
		if n == distUpstreams {
			f.Table, f.Rendezvous, f.Slots = tableUp, perUp, slotCounts(t, n)
		}
	}
	if f.Table == nil { // distUpstreams not among the sizes
		addrs := upstreamAddrs(distUpstreams)
		t := affinity.NewTable(addrs)
		f.Table, f.Rendezvous = make([]int, distUpstreams), make([]int, distUpstreams)
		f.Slots = slotCounts(t, distUpstreams)
		for i, h := range hashes {
			f.Table[t.Lookup(h)]++
			f.Rendezvous[rendezvous(addrs, ips[i])]++
		}
	}
	f.Took = time.Since(t0)
	return f
}

// slotCounts counts the slots of each of t's n upstreams. A hash's slot is
// its top 16 bits (affinity.TableSize slots), so slot s is looked up with s
// in the top bits.
func slotCounts(t *affinity.Table, n int) []int {
	c := make([]int, n)
	for s := range affinity.TableSize {
		c[t.Lookup(uint64(s)<<48)]++
	}
	return c
}

// memFigures is the measured memory of full session tables.
type memFigures struct {
	Entries        int // distinct keys put into a table of that maximum
	HeldIPv4       int // entries held afterwards: shards fill unevenly and evict
	HeldIPv6       int
	IPv4, IPv6     uint64 // live heap bytes after GC
	PutIPv4        time.Duration
	SessionEntryB  int // the package's own per-entry bound
	LimitBytes     uint64
	EntriesInLimit int // affinity.EntriesForBytes(LimitBytes)
}

// measureSessionMemory fills a session table with 1M distinct clients and
// measures the heap it holds after a GC, for IPv4 and IPv6 (/64) keys.
func measureSessionMemory() memFigures {
	const n = 1_000_000
	m := memFigures{Entries: n, SessionEntryB: affinity.SessionEntryBytes, LimitBytes: 64 << 20}
	m.EntriesInLimit = affinity.EntriesForBytes(m.LimitBytes)
	var took time.Duration
	m.IPv4, m.HeldIPv4, took = tableBytes(n, func(i int) affinity.ClientKey {
		return affinity.MaskClient(netip.AddrFrom4([4]byte{byte(10 + i>>24), byte(i >> 16), byte(i >> 8), byte(i)}), 32, 64)
	})
	m.PutIPv4 = took / n
	m.IPv6, m.HeldIPv6, _ = tableBytes(n, func(i int) affinity.ClientKey {
		// A /64 in a /48 of its own: a table keeps at most
		// max_sessions_per_network entries of one /48.
		a := [16]byte{0x20, 0x01, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}
		return affinity.MaskClient(netip.AddrFrom16(a), 32, 64)
	})
	return m
}

// tableBytes returns the heap held by a table of at most n entries after n
// distinct keys were put, how many entries it holds, and the time the Puts
// took.
func tableBytes(n int, key func(i int) affinity.ClientKey) (bytes uint64, held int, took time.Duration) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	t := affinity.NewSessionTable(n, time.Hour)
	now := time.Now()
	t0 := time.Now()
	for i := range n {
		t.Put(key(i), uint64(i%distUpstreams), now)
	}
	took = time.Since(t0)
	runtime.GC()
	runtime.ReadMemStats(&after)
	held = t.Len()
	runtime.KeepAlive(t)
	return after.HeapAlloc - before.HeapAlloc, held, took
}
