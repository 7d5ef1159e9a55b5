package ipaffinity

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"go.uber.org/zap"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

// newCore returns a provisioned core over upstreams that are their own
// addresses.
func newCore(t *testing.T, policy string) *Core[string] {
	t.Helper()
	ctx, _ := newCtx(t)
	cfg := provisioned(t, ctx, &Config{}, policy)
	c := new(Core[string])
	c.Init(cfg, Adapter[string]{Policy: policy, Addr: func(u string) string { return u }}, zap.NewNop())
	t.Cleanup(c.Close)
	return c
}

// Hit, the shortcut for a first attempt by the pure hash, gives what the
// general path (affinity.ChooseIP) gives: the same upstream, result, counts
// and remembered upstream, whichever upstreams are available. Draining an
// address outside the pool sends every selection down the general path.
func TestCoreHashShortcutAgrees(t *testing.T) {
	pool := []string{"10.2.0.1:80", "10.2.0.2:80", "10.2.0.3:80", "10.2.0.4:80", "10.2.0.5:80"}
	short, general := newCore(t, "test_short"), newCore(t, "test_general")
	hits := 0
	for mask := range 1 << len(pool) {
		up := Upstreams[string]{Available: func(u string) bool { return mask&(1<<slices.Index(pool, u)) != 0 }}
		for n := range 200 {
			client := netip.AddrFrom4([4]byte{198, 51, byte(n / 250), byte(n % 250)})
			sv, gv := map[string]any{}, map[string]any{}
			si := short.Hit(pool, short.HashAddr(client), sv, up.Available)
			if si >= 0 {
				hits++
			} else {
				si = short.Select(pool, client, sv, up)
			}
			affinity.SetDraining("203.0.113.99:80", true)
			gi := general.Select(pool, client, gv, up)
			affinity.SetDraining("203.0.113.99:80", false)
			if si != gi || fmt.Sprint(sv[short.VarKey()]) != fmt.Sprint(gv[general.VarKey()]) {
				t.Fatalf("mask %05b client %v: shortcut %d (kept %v), general path %d (kept %v)",
					mask, client, si, sv[short.VarKey()], gi, gv[general.VarKey()])
			}
		}
	}
	if hits < 1000 {
		t.Errorf("Hit decided %d selections: the shortcut was hardly tried", hits)
	}
	for _, a := range pool {
		for _, r := range affinity.Results() {
			s, g := affinity.CountersFor("test_short", a).Count(r), affinity.CountersFor("test_general", a).Count(r)
			if s != g {
				t.Errorf("%s, %v: shortcut counted %d, general path %d", a, r, s, g)
			}
		}
	}
	// A variable holding nil (how caddy-l4's SetVar clears one) is no
	// earlier attempt: the shortcut still decides.
	all := func(string) bool { return true }
	client := netip.MustParseAddr("198.51.0.1")
	if i := short.Hit(pool, short.HashAddr(client), map[string]any{short.VarKey(): nil}, all); i < 0 {
		t.Error("Hit left a request whose attempts variable holds nil to the general path")
	}
}

// A core whose policy is called once per request (Adapter.Once) keeps
// nothing in the request's variables, on the shortcut and the general
// path alike, and decides as a core that keeps them does on a first
// attempt.
func TestCoreOnceKeepsNothing(t *testing.T) {
	pool := []string{"10.3.0.1:80", "10.3.0.2:80", "10.3.0.3:80"}
	ctx, _ := newCtx(t)
	cfg := provisioned(t, ctx, &Config{}, "test_once")
	once := new(Core[string])
	once.Init(cfg, Adapter[string]{Policy: "test_once", Addr: func(u string) string { return u }, Once: true}, zap.NewNop())
	t.Cleanup(once.Close)
	kept := newCore(t, "test_kept")
	up := Upstreams[string]{Available: func(u string) bool { return u != pool[1] }}
	for n := range 300 {
		client := netip.AddrFrom4([4]byte{192, 0, 2, byte(n)})
		ov, kv := map[string]any{}, map[string]any{}
		oi := once.Hit(pool, once.HashAddr(client), ov, up.Available)
		if oi < 0 {
			oi = once.Select(pool, client, ov, up)
		}
		ki := kept.Select(pool, client, kv, up)
		if oi != ki || len(ov) != 0 || len(kv) != 1 {
			t.Fatalf("client %v: once chose %d and kept %v; the other chose %d and kept %v", client, oi, ov, ki, kv)
		}
	}
	if once.KeylessKey() != "" || kept.KeylessKey() == "" {
		t.Fatalf("keyless keys %q and %q: want none for the core called once", once.KeylessKey(), kept.KeylessKey())
	}
}
