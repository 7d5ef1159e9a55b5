package ipaffinity

import (
	"fmt"
	"net/netip"
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
	c.Init(cfg, policy, func(u string) string { return u }, zap.NewNop(), false)
	t.Cleanup(c.Close)
	return c
}

// Select's shortcut for a first attempt by the pure hash gives what the
// general path (affinity.ChooseIP) gives: the same upstream, result, counts
// and remembered upstream, whichever upstreams are available. Draining an
// address outside the pool sends every selection down the general path.
func TestCoreHashShortcutAgrees(t *testing.T) {
	pool := []string{"10.2.0.1:80", "10.2.0.2:80", "10.2.0.3:80", "10.2.0.4:80", "10.2.0.5:80"}
	short, general := newCore(t, "test_short"), newCore(t, "test_general")
	for mask := range 1 << len(pool) {
		up := Upstreams{Available: func(i int) bool { return mask&(1<<i) != 0 }}
		for n := range 200 {
			client := netip.AddrFrom4([4]byte{198, 51, byte(n / 250), byte(n % 250)})
			sv, gv := map[string]any{}, map[string]any{}
			si := short.Select(pool, client, sv, up)
			affinity.SetDraining("203.0.113.99:80", true)
			gi := general.Select(pool, client, gv, up)
			affinity.SetDraining("203.0.113.99:80", false)
			if si != gi || fmt.Sprint(sv[short.VarKey()]) != fmt.Sprint(gv[general.VarKey()]) {
				t.Fatalf("mask %05b client %v: shortcut %d (kept %v), general path %d (kept %v)",
					mask, client, si, sv[short.VarKey()], gi, gv[general.VarKey()])
			}
		}
	}
	for _, a := range pool {
		for _, r := range affinity.Results() {
			s, g := affinity.CountersFor("test_short", a).Count(r), affinity.CountersFor("test_general", a).Count(r)
			if s != g {
				t.Errorf("%s, %v: shortcut counted %d, general path %d", a, r, s, g)
			}
		}
	}
}
