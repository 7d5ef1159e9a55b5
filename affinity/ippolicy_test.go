package affinity

import (
	"net/netip"
	"testing"
	"time"
)

// Retries: upstreams that failed the request are passed over; once every
// available one has, a new round starts from the hash's choice; and when
// none is available at all, the client's session is kept for later.
func TestChooseIPRetryRounds(t *testing.T) {
	addrs := []string{"10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80"}
	p := newIPPool("test_choose", addrs)
	t.Cleanup(func() { p.Release("test_choose") })
	table := NewSessionTable(100, time.Hour)
	k := MaskClient(netip.MustParseAddr("192.0.2.44"), 32, 64)
	now := time.Now()
	o := &IPOptions{}
	up := []bool{true, true, true}
	avail := func(i int) bool { return up[i] }

	home, _ := ChooseIP(o, table, p, k, now, avail, nil, nil)
	failed := map[int]bool{home: true}
	tried := func(i int) bool { return failed[i] }
	second, res := ChooseIP(o, table, p, k, now, avail, tried, nil)
	if second == home || second < 0 || res != ResultRebind {
		t.Fatalf("retry chose %d (%v), home %d", second, res, home)
	}
	failed[second] = true
	third, _ := ChooseIP(o, table, p, k, now, avail, tried, nil)
	failed[third] = true
	if third == home || third == second || third < 0 {
		t.Fatalf("third attempt chose %d after %d, %d", third, home, second)
	}
	// Every upstream failed once: round again, from the hash's choice,
	// counted as the rebind it is (not as a new session).
	if i, res := ChooseIP(o, table, p, k, now, avail, tried, nil); i != home || res != ResultRebind {
		t.Fatalf("new round began at %d (%v), want the hash's choice %d as a rebind", i, res, home)
	}
	// Nothing available at all: no upstream, and the session is kept.
	table.Put(k, p.Upstreams[second].ID, now)
	up = []bool{false, false, false}
	if i, _ := ChooseIP(o, table, p, k, now, avail, tried, nil); i != -1 {
		t.Fatalf("with every upstream down chose %d", i)
	}
	if id, ok := table.Get(k, now); !ok || id != p.Upstreams[second].ID {
		t.Fatalf("with every upstream down the session was lost: %x, %v", id, ok)
	}
}

func newIPPool(policy string, addrs []string) *IPPool {
	p := NewIPPool(policy, addrs)
	return &p
}
