package affinity

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var runID atomic.Int64

// uniq makes a counters key unique to this run, since counters are
// process-wide and never reset (go test -count=N reruns in one process).
func uniq(s string) string { return fmt.Sprintf("%s-run%d", s, runID.Add(1)) }

// clearDraining undoes a test's draining state; the set is process-wide.
func clearDraining(t *testing.T, addrs ...string) {
	t.Cleanup(func() {
		for _, a := range addrs {
			SetDraining(a, false)
		}
	})
}

func TestDraining(t *testing.T) {
	a, b, c := "drain-test-a:80", "drain-test-b:80", "drain-test-c:80"
	clearDraining(t, a, b, c)
	// Other tests may leave other addresses draining; AnyDraining can
	// only be checked when none do.
	others := len(DrainingList()) > 0

	steps := []struct {
		addr        string
		on, changed bool
		list        []string
	}{
		{b, true, true, []string{b}},
		{b, true, false, []string{b}},
		{a, true, true, []string{a, b}},
		{c, false, false, []string{a, b}},
		{c, true, true, []string{a, b, c}},
		{b, false, true, []string{a, c}},
		{b, false, false, []string{a, c}},
		{a, false, true, []string{c}},
		{c, false, true, nil},
	}
	for i, s := range steps {
		if got := SetDraining(s.addr, s.on); got != s.changed {
			t.Fatalf("step %d: SetDraining(%s, %v) = %v, want %v", i, s.addr, s.on, got, s.changed)
		}
		var got []string
		for _, x := range DrainingList() {
			if strings.HasPrefix(x, "drain-test-") {
				got = append(got, x)
			}
		}
		if !slices.Equal(got, s.list) {
			t.Fatalf("step %d: DrainingList = %v, want %v", i, got, s.list)
		}
		if !others && AnyDraining() != (len(s.list) > 0) {
			t.Fatalf("step %d: AnyDraining = %v with %v draining", i, AnyDraining(), s.list)
		}
		for _, x := range []string{a, b, c} {
			if IsDraining(x) != slices.Contains(s.list, x) {
				t.Fatalf("step %d: IsDraining(%s) = %v", i, x, IsDraining(x))
			}
		}
	}
}

func TestDrainingListIsACopy(t *testing.T) {
	a := "drain-copy:80"
	clearDraining(t, a)
	SetDraining(a, true)
	l := DrainingList()
	l[0] = "changed"
	if !IsDraining(a) || IsDraining("changed") {
		t.Fatal("changing DrainingList's result changed the draining set")
	}
}

func TestDrainingConcurrent(t *testing.T) {
	var addrs []string
	for i := 0; i < 16; i++ {
		addrs = append(addrs, "drain-conc-"+string(rune('a'+i))+":80")
	}
	clearDraining(t, addrs...)
	var wg sync.WaitGroup
	for _, a := range addrs {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				SetDraining(a, i%2 == 0)
			}
			SetDraining(a, true)
		}()
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				_ = IsDraining(a)
				_ = AnyDraining()
				_ = DrainingList()
			}
		}()
	}
	wg.Wait()
	var got []string
	for _, x := range DrainingList() {
		if strings.HasPrefix(x, "drain-conc-") {
			got = append(got, x)
		}
	}
	if !slices.Equal(got, addrs) {
		t.Fatalf("DrainingList = %v, want %v", got, addrs)
	}
}

func TestCountersRecord(t *testing.T) {
	var c Counters
	c.Record(ResultHit, ReasonNone)
	c.Record(ResultHit, ReasonNone)
	c.Record(ResultNew, ReasonNone)
	c.Record(ResultRebind, ReasonNone)
	c.Record(ResultRejected, ReasonSignature)
	c.Record(ResultRejected, ReasonSignature)
	c.Record(ResultRejected, ReasonExpired)
	c.Record(ResultRejected, ReasonUnknownUpstream)
	// A reason only counts with a rejection.
	c.Record(ResultNew, ReasonIdle)
	// Out of range: ignored, no panic.
	c.Record(numResults, ReasonMalformed)
	c.Record(ResultRejected, numReasons)

	// The out-of-range reason still counts as a rejection, under no reason.
	want := map[Result]uint64{ResultHit: 2, ResultNew: 2, ResultRebind: 1, ResultRejected: 5}
	for _, r := range Results() {
		if got := c.Count(r); got != want[r] {
			t.Errorf("Count(%v) = %d, want %d", r, got, want[r])
		}
	}
	wantRej := map[Reason]uint64{ReasonSignature: 2, ReasonExpired: 1, ReasonUnknownUpstream: 1}
	for _, r := range Reasons() {
		if got := c.RejectedBy(r); got != wantRej[r] {
			t.Errorf("RejectedBy(%v) = %d, want %d", r, got, wantRej[r])
		}
	}
	if c.Count(numResults) != 0 || c.Count(255) != 0 || c.RejectedBy(numReasons) != 0 {
		t.Error("out-of-range Count or RejectedBy is not zero")
	}
	var nilC *Counters
	nilC.Record(ResultHit, ReasonNone) // must not panic
}

func TestCountersConcurrent(t *testing.T) {
	addr := uniq("counters-conc:80")
	c := CountersFor("test_concurrent", addr)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				CountersFor("test_concurrent", addr).Record(ResultRejected, ReasonIdle)
			}
		}()
	}
	wg.Wait()
	if c.Count(ResultRejected) != 8000 || c.RejectedBy(ReasonIdle) != 8000 {
		t.Fatalf("after 8000 concurrent records: %d rejected, %d idle", c.Count(ResultRejected), c.RejectedBy(ReasonIdle))
	}
}

func TestCountersFor(t *testing.T) {
	addrA, addrB := uniq("counters-a:80"), uniq("counters-b:80")
	a := CountersFor("test_policy_x", addrA)
	if CountersFor("test_policy_x", addrA) != a {
		t.Fatal("CountersFor returned new counters for the same policy and address")
	}
	if CountersFor("test_policy_y", addrA) == a || CountersFor("test_policy_x", addrB) == a {
		t.Fatal("CountersFor shares counters across policies or addresses")
	}
	a.Record(ResultHit, ReasonNone)
	if CountersFor("test_policy_x", addrA).Count(ResultHit) != 1 {
		t.Fatal("counts are not kept")
	}
}

func TestEachCountersOrderAndKnown(t *testing.T) {
	prefix := uniq("each-order") + "-"
	if KnownUpstream(prefix + "a:80") {
		t.Fatal("address known before any counters exist")
	}
	// Created out of order on purpose.
	for _, k := range [][2]string{
		{"zeta", prefix + "b:80"},
		{"alpha", prefix + "b:80"},
		{"mid", prefix + "a:80"},
		{"alpha", prefix + "c:80"},
		{"beta", prefix + "a:80"},
	} {
		CountersFor(k[0], k[1]).Record(ResultNew, ReasonNone)
	}
	var got []string
	EachCounters(func(policy, addr string, c *Counters) {
		if c == nil {
			t.Errorf("nil counters for %s %s", policy, addr)
			return
		}
		if strings.HasPrefix(addr, prefix) {
			got = append(got, addr+" "+policy)
			if c.Count(ResultNew) != 1 {
				t.Errorf("%s %s: Count(new) = %d, want 1", addr, policy, c.Count(ResultNew))
			}
		}
	})
	want := []string{
		prefix + "a:80 beta", prefix + "a:80 mid",
		prefix + "b:80 alpha", prefix + "b:80 zeta",
		prefix + "c:80 alpha",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("EachCounters order:\n got %q\nwant %q", got, want)
	}
	for _, a := range []string{"a", "b", "c"} {
		if !KnownUpstream(prefix + a + ":80") {
			t.Errorf("KnownUpstream(%s) = false", a)
		}
	}
	if KnownUpstream(prefix + "d:80") {
		t.Error("Known of an address without counters")
	}
}

// TestEachCountersMayCreate checks that fn may create counters (the admin
// API might look up another policy's counters) without deadlocking.
func TestEachCountersMayCreate(t *testing.T) {
	CountersFor("test_each_create", "each-create:80")
	EachCounters(func(policy, addr string, _ *Counters) {
		if addr == "each-create:80" {
			CountersFor("test_each_create_2", addr)
		}
	})
	if !KnownUpstream("each-create:80") {
		t.Fatal("address unknown")
	}
}

func TestResultNames(t *testing.T) {
	want := []string{"hit", "new", "rebind", "rejected"}
	rs := Results()
	if len(rs) != len(want) {
		t.Fatalf("Results() = %v", rs)
	}
	for i, r := range rs {
		if r.String() != want[i] {
			t.Errorf("Result %d = %q, want %q", i, r.String(), want[i])
		}
	}
	if Result(99).String() != "unknown" {
		t.Errorf("Result(99).String() = %q", Result(99).String())
	}
}

// Addresses live while some config retains them, and are forgotten after,
// so upstreams that come and go do not pile up in the admin API and metrics.
func TestRetainRelease(t *testing.T) {
	const policy, a = "test_retain", "retain-a:80"
	Retain(policy, a)
	Retain(policy, a) // a reload: the new config retains before the old releases
	CountersFor(policy, a).Record(ResultHit, ReasonNone)
	Release(policy, a)
	if !KnownUpstream(a) || CountersFor(policy, a).Count(ResultHit) != 1 {
		t.Fatalf("released once of twice: known %v, hits %d", KnownUpstream(a), CountersFor(policy, a).Count(ResultHit))
	}
	Release(policy, a)
	if KnownUpstream(a) {
		t.Fatalf("an address no config retains is still known")
	}
	listed := false
	EachCounters(func(p, addr string, _ *Counters) { listed = listed || addr == a })
	if listed {
		t.Fatalf("an address no config retains is still listed")
	}
	Release(policy, a) // more releases than retains are ignored
}

func TestPoolCacheDropsEvictedAndClosed(t *testing.T) {
	var dropped []string
	c := &PoolCache[*fakeUp, string]{
		Addr:  func(u *fakeUp) string { return u.addr },
		Build: func(addrs []string) string { return strings.Join(addrs, ",") },
		Drop:  func(s *string) { dropped = append(dropped, *s) },
	}
	for i := 0; i < poolCacheSlots+2; i++ {
		c.Get(ups(fmt.Sprintf("p%d", i)))
	}
	if len(dropped) != 2 || dropped[0] != "p0" || dropped[1] != "p1" {
		t.Fatalf("evicted %v, want the two oldest [p0 p1]", dropped)
	}
	c.Close()
	if len(dropped) != poolCacheSlots+2 {
		t.Fatalf("Close dropped %d states in all, want %d", len(dropped), poolCacheSlots+2)
	}
	// A request still in flight after Close gets a state, which is not
	// kept: nothing would ever drop it.
	if got := *c.Get(ups("late")); got != "late" {
		t.Fatalf("after Close, Get = %q", got)
	}
	if len(dropped) != poolCacheSlots+3 || dropped[len(dropped)-1] != "late" {
		t.Fatalf("a state built after Close was kept: dropped %v", dropped)
	}
}

// A metrics scrape or an admin listing may run while a reload releases
// upstreams: it must never see a nil Counters (the collector runs in a
// goroutine of its own, where a panic ends the process).
func TestEachCountersDuringRelease(t *testing.T) {
	const policy = "test_concurrent_release"
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 2000 {
			a := fmt.Sprintf("churn-%d:80", i%7)
			Retain(policy, a)
			Release(policy, a)
		}
	}()
	for {
		EachCounters(func(_, _ string, c *Counters) {
			if c == nil {
				t.Fatal("EachCounters passed a nil Counters")
			}
			c.Count(ResultHit)
		})
		select {
		case <-done:
			return
		default:
		}
	}
}

func TestUpstreamNamesForgotten(t *testing.T) {
	const a = "names-a:80"
	Retain("test_names_1", a)
	Retain("test_names_2", a) // another policy kind with the same upstream
	id := NameUpstream(a)
	Release("test_names_1", a)
	if UpstreamName(id) != a {
		t.Fatalf("forgotten while another config still retains it")
	}
	Release("test_names_2", a)
	if n := UpstreamName(id); n != "" {
		t.Fatalf("still named %q after every config released it", n)
	}
	if (*Counters)(nil).Count(ResultHit) != 0 || (*Counters)(nil).RejectedBy(ReasonSignature) != 0 {
		t.Fatal("nil Counters must read as zero")
	}
}

func TestVarKeyUnique(t *testing.T) {
	a, b := VarKey("ip_affinity"), VarKey("ip_affinity")
	if a == b || !strings.HasPrefix(a, "caddy_affinity.ip_affinity#") {
		t.Fatalf("VarKey gave %q and %q: want distinct caddy_affinity.ip_affinity#N names", a, b)
	}
}

// A drain's deadline: bound sessions stay until it passes, then every one
// moves, strict ones too; draining again without a deadline or undraining
// ends that.
func TestDrainDeadline(t *testing.T) {
	const addr = "192.0.2.77:8080"
	t.Cleanup(func() { SetDraining(addr, false) })
	now := time.Unix(1_800_000_000, 0)
	if !DrainUntil(addr, now.Add(time.Minute)) || DrainUntil(addr, now.Add(time.Minute)) {
		t.Fatal("DrainUntil reports no change, or a change for the same deadline")
	}
	if !IsDraining(addr) || Evicted(addr, now) || !Evicted(addr, now.Add(time.Minute)) {
		t.Fatal("before the deadline: not evicted; at it: evicted")
	}
	for _, tc := range []struct {
		avail, failed bool
		f             Failure
		evicted       bool
		want          Outcome
	}{
		{true, false, Rebind, false, Keep}, {true, true, Rebind, false, Move}, {false, false, Rebind, false, Move},
		{true, true, Strict, false, Keep}, {false, false, Strict, false, Refuse},
		{true, false, Temporary, false, Keep}, {false, false, Temporary, false, Detour}, {true, true, Temporary, false, Detour},
		{true, false, Rebind, true, Move}, {true, false, Strict, true, Move}, {false, false, Strict, true, Move}, {false, false, Temporary, true, Move},
	} {
		if got := OnBound(tc.avail, tc.failed, tc.f, tc.evicted); got != tc.want {
			t.Errorf("OnBound(available %v, failed %v, %v, evicted %v) = %v, want %v", tc.avail, tc.failed, tc.f, tc.evicted, got, tc.want)
		}
	}
	if !SetDraining(addr, true) || Evicted(addr, now.Add(time.Hour)) {
		t.Fatal("a drain without a deadline evicts")
	}
	if _, ok := DrainDeadline(addr); ok {
		t.Fatal("a deadline after draining without one")
	}
	DrainUntil(addr, now)
	SetDraining(addr, false)
	if Evicted(addr, now.Add(time.Hour)) || IsDraining(addr) {
		t.Fatal("undrained, still evicted")
	}
}
