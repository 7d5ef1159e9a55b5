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
// addresses, with cfg's options (nil: the defaults).
func newCore(t *testing.T, policy string, cfg *Config) *Core[string] {
	t.Helper()
	if cfg == nil {
		cfg = &Config{}
	}
	ctx, _ := newCtx(t)
	provisioned(t, ctx, cfg, policy)
	c := new(Core[string])
	c.Init(cfg, Adapter[string]{Policy: policy, Addr: func(u string) string { return u }}, zap.NewNop())
	t.Cleanup(c.Close)
	return c
}

// Hit, the shortcut for a first attempt by the pure hash, gives what the
// general path (affinity.ChooseIP) gives: the same upstream, result, counts
// and remembered upstream, whichever upstreams are available, for IPv4 and
// IPv6 clients under any prefix lengths, hashed from the address or from a
// "host:port" string. Draining an address outside the pool sends every
// selection down the general path.
func TestCoreHashShortcutAgrees(t *testing.T) {
	pool := []string{"10.2.0.1:80", "10.2.0.2:80", "10.2.0.3:80", "10.2.0.4:80", "10.2.0.5:80"}
	for _, opts := range []Config{{}, {IPv4Prefix: 24, IPv6Prefix: 128}, {IPv4Prefix: 32, IPv6Prefix: 48}} {
		t.Run(fmt.Sprintf("ipv4_prefix %d ipv6_prefix %d", opts.IPv4Prefix, opts.IPv6Prefix), func(t *testing.T) {
			label := fmt.Sprintf("test_short_%d_%d", opts.IPv4Prefix, opts.IPv6Prefix)
			sc, gc := opts, opts // each core provisions its own
			short, general := newCore(t, label, &sc), newCore(t, label+"_general", &gc)
			hits := 0
			for mask := range 1 << len(pool) {
				up := Upstreams[string]{Available: func(u string) bool { return mask&(1<<slices.Index(pool, u)) != 0 }}
				for n := range 200 {
					client := netip.AddrFrom4([4]byte{198, 51, byte(n / 20), byte(n % 20)})
					host := client.String() + ":40000"
					if n%2 == 1 {
						// IPv6 clients that differ past /64 and /48.
						client = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(n % 3), 0, byte(n % 5), 15: byte(n)})
						host = "[" + client.String() + "]:40000"
					}
					h := short.HashAddr(client)
					if hh, ok := short.HashHost(host); !ok || hh != h {
						t.Fatalf("client %v: HashHost(%q) = %x, %v; HashAddr %x", client, host, hh, ok, h)
					}
					sv, gv := map[string]any{}, map[string]any{}
					si := short.Hit(pool, h, sv, up.Available)
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
					s, g := affinity.CountersFor(label, a).Count(r), affinity.CountersFor(label+"_general", a).Count(r)
					if s != g {
						t.Errorf("%s, %v: shortcut counted %d, general path %d", a, r, s, g)
					}
				}
			}
		})
	}
}

// A variable holding nil (how caddy-l4's SetVar clears one) is no earlier
// attempt: the shortcut decides as the general path does and keeps the
// upstream.
func TestCoreHitNilAttempts(t *testing.T) {
	pool := []string{"10.4.0.1:80", "10.4.0.2:80", "10.4.0.3:80"}
	short, general := newCore(t, "test_nil_short", nil), newCore(t, "test_nil_general", nil)
	all := func(string) bool { return true }
	client := netip.MustParseAddr("198.51.0.1")
	short.Select(pool, client, nil, Upstreams[string]{Available: all}) // builds the pool's state
	short.Select(pool, client, nil, Upstreams[string]{Available: all}) // and makes it the hot one
	sv, gv := map[string]any{short.VarKey(): nil}, map[string]any{general.VarKey(): nil}
	si := short.Hit(pool, short.HashAddr(client), sv, all)
	gi := general.Select(pool, client, gv, Upstreams[string]{Available: all})
	if si < 0 || si != gi || sv[short.VarKey()] != pool[si] {
		t.Fatalf("Hit chose %d and kept %v; the general path %d", si, sv[short.VarKey()], gi)
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
	kept := newCore(t, "test_kept", nil)
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
