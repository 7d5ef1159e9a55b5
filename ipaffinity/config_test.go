package ipaffinity

import (
	"context"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

// newCtx is a config load's context, cancelled at the end of the test.
func newCtx(t *testing.T) (caddy.Context, context.CancelFunc) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	return ctx, cancel
}

// provisioned provisions c in ctx as the policy kind policy. The caller
// releases the table (Cleanup) when the test needs it released.
func provisioned(t *testing.T, ctx caddy.Context, c *Config, policy string) *Config {
	t.Helper()
	if err := c.Provision(ctx, policy, ""); err != nil {
		t.Fatalf("provision %+v: %v", c, err)
	}
	return c
}

// registered counts how often t is in the registry the admin API reads.
func registered(t *affinity.SessionTable) int {
	n := 0
	affinity.EachTable(func(_ string, tt *affinity.SessionTable) {
		if tt == t {
			n++
		}
	})
	return n
}

func key(ip string) affinity.ClientKey {
	return affinity.MaskClient(netip.MustParseAddr(ip), 32, 64)
}

func TestValidate(t *testing.T) {
	ttl := caddy.Duration(time.Minute)
	for _, tc := range []struct {
		name string
		c    Config
		want string // prefix of the error; "" for valid
	}{
		{"zero", Config{}, ""},
		{"ipv4_prefix 1", Config{IPv4Prefix: 1}, ""},
		{"ipv4_prefix 32", Config{IPv4Prefix: 32}, ""},
		{"ipv4_prefix -1", Config{IPv4Prefix: -1}, "ipv4_prefix:"},
		{"ipv4_prefix 33", Config{IPv4Prefix: 33}, "ipv4_prefix:"},
		{"ipv6_prefix 1", Config{IPv6Prefix: 1}, ""},
		{"ipv6_prefix 128", Config{IPv6Prefix: 128}, ""},
		{"ipv6_prefix -1", Config{IPv6Prefix: -1}, "ipv6_prefix:"},
		{"ipv6_prefix 129", Config{IPv6Prefix: 129}, "ipv6_prefix:"},
		{"balance_factor 1.25", Config{BalanceFactor: 1.25}, ""},
		{"balance_factor 1.0001", Config{BalanceFactor: 1.0001}, ""},
		{"balance_factor 1", Config{BalanceFactor: 1}, "balance_factor:"},
		{"balance_factor 0.5", Config{BalanceFactor: 0.5}, "balance_factor:"},
		{"balance_factor -2", Config{BalanceFactor: -2}, "balance_factor:"},
		{"balance_factor NaN", Config{BalanceFactor: math.NaN()}, "balance_factor:"},
		{"balance_factor +Inf", Config{BalanceFactor: math.Inf(1)}, "balance_factor:"},
		{"balance_factor -Inf", Config{BalanceFactor: math.Inf(-1)}, "balance_factor:"},
		{"persist_timeout", Config{PersistTimeout: ttl}, ""},
		{"persist_timeout negative", Config{PersistTimeout: -1}, "persist_timeout:"},
		{"max_sessions with persist_timeout", Config{PersistTimeout: ttl, MaxSessions: 10}, ""},
		{"max_sessions_bytes with persist_timeout", Config{PersistTimeout: ttl, MaxSessionsBytes: 1 << 20}, ""},
		{"max_sessions negative", Config{PersistTimeout: ttl, MaxSessions: -1}, "max_sessions:"},
		{"max_sessions without persist_timeout", Config{MaxSessions: 10}, "max_sessions:"},
		{"max_sessions_bytes without persist_timeout", Config{MaxSessionsBytes: 1 << 20}, "max_sessions:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Check()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("valid config rejected: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("invalid config accepted")
			case tc.want != "" && !strings.HasPrefix(err.Error(), tc.want):
				t.Fatalf("error %q does not start with %q", err, tc.want)
			}
		})
	}
	if err := (&Config{MaxSessions: 10}).Check(); err == nil || !strings.Contains(err.Error(), "persist_timeout") {
		t.Errorf("max_sessions without persist_timeout: the error %v does not say what to set", err)
	}
}

func TestProvisionDefaults(t *testing.T) {
	ctx, _ := newCtx(t)
	var c Config
	provisioned(t, ctx, &c, "ip_test_defaults")
	t.Cleanup(func() { c.Cleanup() })
	if c.IPv4Prefix != 32 || c.IPv6Prefix != 64 {
		t.Errorf("default prefixes = %d, %d; want 32, 64", c.IPv4Prefix, c.IPv6Prefix)
	}
	o := c.Options()
	if o.IPv4Prefix != 32 || o.IPv6Prefix != 64 || o.BalanceFactor != 0 || o.PersistTimeout != 0 || o.MaxSessions != 0 {
		t.Errorf("options = %+v", *o)
	}
	if c.Sessions() != nil {
		t.Errorf("a session table without persist_timeout")
	}

	// Explicit options are kept as they are.
	c2 := Config{IPv4Prefix: 24, IPv6Prefix: 56, BalanceFactor: 1.5}
	provisioned(t, ctx, &c2, "ip_test_defaults")
	t.Cleanup(func() { c2.Cleanup() })
	if o := c2.Options(); o.IPv4Prefix != 24 || o.IPv6Prefix != 56 || o.BalanceFactor != 1.5 {
		t.Errorf("options = %+v", *o)
	}
}

func TestProvisionSessionBounds(t *testing.T) {
	ttl := caddy.Duration(3*time.Minute + 17*time.Second)
	for _, tc := range []struct {
		name string
		c    Config
		want int
	}{
		{"default", Config{PersistTimeout: ttl}, DefaultMaxSessions},
		{"count", Config{PersistTimeout: ttl, MaxSessions: 5000}, 5000},
		{"size", Config{PersistTimeout: ttl, MaxSessionsBytes: 64 << 20}, affinity.EntriesForBytes(64 << 20)},
		{"SI size", Config{PersistTimeout: ttl, MaxSessionsBytes: 64_000_000}, affinity.EntriesForBytes(64_000_000)},
		{"size overrides count", Config{PersistTimeout: ttl, MaxSessions: 10, MaxSessionsBytes: 1 << 20}, affinity.EntriesForBytes(1 << 20)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, _ := newCtx(t)
			c := tc.c
			provisioned(t, ctx, &c, "ip_test_bounds")
			t.Cleanup(func() { c.Cleanup() })
			if c.Sessions() == nil {
				t.Fatal("no session table with persist_timeout")
			}
			if got := c.Options().MaxSessions; got != tc.want {
				t.Errorf("Options().MaxSessions = %d, want %d", got, tc.want)
			}
			if got := c.Sessions().Max(); got != tc.want {
				t.Errorf("table bound = %d, want %d", got, tc.want)
			}
			if got := c.Options().PersistTimeout; got != time.Duration(ttl) {
				t.Errorf("Options().PersistTimeout = %v", got)
			}
		})
	}
	if affinity.EntriesForBytes(64<<20) != 64<<20/affinity.SessionEntryBytes {
		t.Errorf("EntriesForBytes(64MiB) = %d", affinity.EntriesForBytes(64<<20))
	}
}

// A size too small for one entry must not silently become the default
// bound of 100000 entries: it is either rejected or the smallest table.
func TestProvisionTinySizeIsNotTheDefault(t *testing.T) {
	ctx, _ := newCtx(t)
	c := Config{PersistTimeout: caddy.Duration(time.Minute), MaxSessionsBytes: 32}
	err := c.Provision(ctx, "ip_test_tiny", "")
	t.Cleanup(func() { c.Cleanup() })
	if err != nil {
		if !strings.HasPrefix(err.Error(), "max_sessions") {
			t.Fatalf("error %q does not name max_sessions", err)
		}
		return
	}
	if got := c.Options().MaxSessions; got > 1 {
		t.Fatalf("max_sessions 32B (under one %d-byte entry) gives a table of %d entries", affinity.SessionEntryBytes, got)
	}
}

func TestProvisionInvalidMakesNoTable(t *testing.T) {
	ctx, _ := newCtx(t)
	before := 0
	affinity.EachTable(func(string, *affinity.SessionTable) { before++ })
	c := Config{PersistTimeout: caddy.Duration(time.Minute), IPv4Prefix: 40}
	if err := c.Provision(ctx, "ip_test_invalid", ""); err == nil || !strings.HasPrefix(err.Error(), "ipv4_prefix:") {
		t.Fatalf("Provision = %v, want an ipv4_prefix error", err)
	}
	if c.Sessions() != nil {
		t.Error("an invalid config got a session table")
	}
	after := 0
	affinity.EachTable(func(string, *affinity.SessionTable) { after++ })
	if after != before {
		t.Errorf("an invalid config registered %d tables", after-before)
	}
	if err := c.Cleanup(); err != nil {
		t.Errorf("Cleanup after a failed Provision: %v", err)
	}
}

// TestSessionTableSurvivesReload: a reload provisions the new config while
// the old one is still alive, then cleans up the old one. The table, and
// its entries, must live through that and go when the last user does.
func TestSessionTableSurvivesReload(t *testing.T) {
	const policy = "ip_test_reload"
	opts := Config{PersistTimeout: caddy.Duration(7*time.Minute + 13*time.Second), MaxSessions: 4321}
	now := time.Now()
	k1, k2 := key("192.0.2.10"), key("192.0.2.11")

	ctx1, cancel1 := newCtx(t)
	a := opts
	provisioned(t, ctx1, &a, policy)
	if a.Sessions() == nil {
		t.Fatal("no session table")
	}
	if registered(a.Sessions()) != 1 {
		t.Fatal("the table is not registered for the admin API")
	}
	a.Sessions().Put(k1, 42, now)

	ctx2, _ := newCtx(t)
	b := opts
	provisioned(t, ctx2, &b, policy)
	if b.Sessions() != a.Sessions() {
		t.Fatal("the reloaded config got a new session table")
	}
	if id, ok := b.Sessions().Get(k1, now); !ok || id != 42 {
		t.Fatalf("entry after reload = %d, %v; want 42", id, ok)
	}
	if n := registered(b.Sessions()); n != 1 {
		t.Fatalf("the table is registered %d times", n)
	}

	// The old config goes away.
	if err := a.Cleanup(); err != nil {
		t.Fatal(err)
	}
	cancel1()
	if n := registered(b.Sessions()); n != 1 {
		t.Fatalf("after the old config's cleanup the table is registered %d times", n)
	}
	if id, ok := b.Sessions().Get(k1, now); !ok || id != 42 {
		t.Fatalf("entry after the old config's cleanup = %d, %v; want 42", id, ok)
	}
	b.Sessions().Put(k2, 7, now)
	if id, ok := b.Sessions().Get(k2, now); !ok || id != 7 {
		t.Fatalf("the table no longer stores: %d, %v", id, ok)
	}

	// The last user goes away: the table is unregistered and released.
	table := b.Sessions()
	if err := b.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if n := registered(table); n != 0 {
		t.Fatalf("after the last cleanup the table is still registered (%d)", n)
	}
	ctx3, _ := newCtx(t)
	c := opts
	provisioned(t, ctx3, &c, policy)
	t.Cleanup(func() { c.Cleanup() })
	if c.Sessions() == table {
		t.Fatal("a released table was handed out again")
	}
	if _, ok := c.Sessions().Get(k1, now); ok {
		t.Fatal("a new table has the entries of the released one")
	}
}

// Two policies with the same options in one config each get a table, and
// each gets its own table back on a reload of that config.
func TestSameOptionsOneLoadDifferentTables(t *testing.T) {
	const policy = "ip_test_ordinals"
	opts := Config{PersistTimeout: caddy.Duration(5*time.Minute + 1*time.Second), MaxSessions: 1234}

	ctx1, _ := newCtx(t)
	a1, b1 := opts, opts
	provisioned(t, ctx1, &a1, policy)
	provisioned(t, ctx1, &b1, policy)
	t.Cleanup(func() { a1.Cleanup(); b1.Cleanup() })
	if a1.Sessions() == nil || a1.Sessions() == b1.Sessions() {
		t.Fatal("two policies of one config share a session table")
	}
	if registered(a1.Sessions()) != 1 || registered(b1.Sessions()) != 1 {
		t.Fatal("both tables must be registered once")
	}
	now := time.Now()
	a1.Sessions().Put(key("198.51.100.1"), 1, now)
	if _, ok := b1.Sessions().Get(key("198.51.100.1"), now); ok {
		t.Fatal("an entry of one policy shows in the other's table")
	}

	// The same config loaded again: the same tables, in the same order.
	ctx2, _ := newCtx(t)
	a2, b2 := opts, opts
	provisioned(t, ctx2, &a2, policy)
	provisioned(t, ctx2, &b2, policy)
	t.Cleanup(func() { a2.Cleanup(); b2.Cleanup() })
	if a2.Sessions() != a1.Sessions() || b2.Sessions() != b1.Sessions() {
		t.Fatal("a reload did not give each policy its own table back")
	}

	// Another policy kind with the same options has a table of its own.
	c1 := opts
	provisioned(t, ctx2, &c1, policy+"_other")
	t.Cleanup(func() { c1.Cleanup() })
	if c1.Sessions() == a1.Sessions() || c1.Sessions() == b1.Sessions() {
		t.Fatal("different policy kinds share a session table")
	}
}

// The HTTP app provisions each server with a context of its own, derived
// from the config's (caddyhttp/app.go: ctx.Context = context.WithValue(
// oldContext, ServerCtxKey, srv)). Two ip_affinity policies with the same
// options in two servers of one config are two policies of one load and
// must not share a table.
func TestSameOptionsTwoServersOfOneLoadDifferentTables(t *testing.T) {
	const policy = "ip_test_servers"
	opts := Config{PersistTimeout: caddy.Duration(9*time.Minute + 2*time.Second), MaxSessions: 2345}
	ctx, _ := newCtx(t)
	srv0, srv1 := ctx, ctx
	srv0.Context = context.WithValue(ctx.Context, caddyhttp.ServerCtxKey, &caddyhttp.Server{Listen: []string{":8080"}})
	srv1.Context = context.WithValue(ctx.Context, caddyhttp.ServerCtxKey, &caddyhttp.Server{Listen: []string{":8081"}})
	a, b := opts, opts
	provisioned(t, srv0, &a, policy)
	provisioned(t, srv1, &b, policy)
	t.Cleanup(func() { a.Cleanup(); b.Cleanup() })
	if a.Sessions() == b.Sessions() {
		t.Fatal("policies of two servers of one config share a session table")
	}
}

// The count of policies per config load is dropped when the load is
// cancelled; otherwise every reload keeps the old load's context (and,
// through the HTTP app's per-server context, its whole server) reachable.
func TestOrdinalsForgottenWhenLoadEnds(t *testing.T) {
	ctx, cancel := newCtx(t)
	c := Config{PersistTimeout: caddy.Duration(11*time.Minute + 3*time.Second)}
	provisioned(t, ctx, &c, "ip_test_forget")
	t.Cleanup(func() { c.Cleanup() })
	ordinals.Lock()
	_, during := ordinals.m[any(ctx.GetMetricsRegistry())]
	ordinals.Unlock()
	if !during {
		t.Fatal("no ordinals recorded for the load (test is out of date)")
	}
	cancel()
	// context.AfterFunc runs in a goroutine of its own: wait for it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ordinals.Lock()
		_, after := ordinals.m[any(ctx.GetMetricsRegistry())]
		ordinals.Unlock()
		if !after {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the ordinals of a cancelled config load are never forgotten")
		}
		time.Sleep(time.Millisecond)
	}
}

// option returns a dispenser with its cursor on the option of input.
func option(input string) *caddyfile.Dispenser {
	d := caddyfile.NewTestDispenser(input)
	d.Next()
	return d
}

func TestUnmarshalOption(t *testing.T) {
	for _, tc := range []struct {
		input string
		want  Config
	}{
		{"ipv4_prefix 1", Config{IPv4Prefix: 1}},
		{"ipv4_prefix 24", Config{IPv4Prefix: 24}},
		{"ipv4_prefix 32", Config{IPv4Prefix: 32}},
		{"ipv6_prefix 1", Config{IPv6Prefix: 1}},
		{"ipv6_prefix 56", Config{IPv6Prefix: 56}},
		{"ipv6_prefix 128", Config{IPv6Prefix: 128}},
		{"balance_factor 1.25", Config{BalanceFactor: 1.25}},
		{"balance_factor 2", Config{BalanceFactor: 2}},
		{"balance_factor 100", Config{BalanceFactor: 100}},
		{"persist_timeout 10m", Config{PersistTimeout: caddy.Duration(10 * time.Minute)}},
		{"persist_timeout 7d", Config{PersistTimeout: caddy.Duration(7 * 24 * time.Hour)}},
		{"persist_timeout 0", Config{}},
		{"max_sessions 100000", Config{MaxSessions: 100000}},
		{"max_sessions 100k", Config{MaxSessions: 100000}},
		{"max_sessions 1M", Config{MaxSessions: 1000000}},
		{"max_sessions 1.5k", Config{MaxSessions: 1500}},
		{"max_sessions 64MiB", Config{MaxSessionsBytes: 64 << 20}},
		{"max_sessions 64MB", Config{MaxSessionsBytes: 64_000_000}},
		{"max_sessions 1GiB", Config{MaxSessionsBytes: 1 << 30}},
	} {
		var c Config
		ok, err := c.UnmarshalOption(option(tc.input))
		if !ok || err != nil {
			t.Errorf("%q: UnmarshalOption = %v, %v", tc.input, ok, err)
			continue
		}
		if c != tc.want {
			t.Errorf("%q parsed to %+v, want %+v", tc.input, c, tc.want)
		}
	}

	// Options that are not shared are left to the caller, untouched.
	for _, input := range []string{"source client", "fallback first", "bogus"} {
		var c Config
		d := option(input)
		opt := d.Val()
		ok, err := c.UnmarshalOption(d)
		if ok || err != nil {
			t.Errorf("%q: UnmarshalOption = %v, %v; want false, nil", input, ok, err)
		}
		if d.Val() != opt || c != (Config{}) {
			t.Errorf("%q: UnmarshalOption moved the cursor to %q or set %+v", input, d.Val(), c)
		}
	}
}

func TestUnmarshalOptionErrors(t *testing.T) {
	for _, tc := range []struct {
		input string
		want  string
	}{
		{"ipv4_prefix", "ipv4_prefix: expected a value"},
		{"ipv4_prefix 24 25", "ipv4_prefix: expected one value, got extra '25'"},
		{"ipv4_prefix 0", "ipv4_prefix: expected a whole number from 1 to 32, got '0'"},
		{"ipv4_prefix 33", "ipv4_prefix: expected a whole number from 1 to 32, got '33'"},
		{"ipv4_prefix -8", "ipv4_prefix:"},
		{"ipv4_prefix /24", "ipv4_prefix:"},
		{"ipv6_prefix 0", "ipv6_prefix: expected a whole number from 1 to 128, got '0'"},
		{"ipv6_prefix 129", "ipv6_prefix: expected a whole number from 1 to 128, got '129'"},
		{"ipv6_prefix 64.5", "ipv6_prefix:"},
		{"balance_factor 1", "balance_factor: expected a number greater than 1"},
		{"balance_factor 0.9", "balance_factor:"},
		{"balance_factor -1.5", "balance_factor:"},
		{"balance_factor lots", "balance_factor:"},
		{"balance_factor 101", "balance_factor:"},
		{"persist_timeout", "persist_timeout: expected a value"},
		{"persist_timeout soon", "persist_timeout: invalid duration 'soon'"},
		{"persist_timeout -1m", "persist_timeout: duration must not be negative"},
		{"persist_timeout 1m 2m", "persist_timeout: expected one value, got extra '2m'"},
		{"max_sessions", "max_sessions: expected a value"},
		{"max_sessions 0", "max_sessions: invalid count '0'"},
		{"max_sessions -5", "max_sessions: invalid count '-5'"},
		{"max_sessions 1.5", "max_sessions: invalid count '1.5'"},
		{"max_sessions 1m", "max_sessions: invalid count '1m'"},
		{"max_sessions 100x", "max_sessions: invalid count '100x'"},
		{"max_sessions 3G", "max_sessions: invalid count '3G'"},
		{"max_sessions 0B", "max_sessions: invalid size '0B'"},
		{"max_sessions lotsB", "max_sessions: invalid size 'lotsB'"},
		{"max_sessions 1k 2k", "max_sessions: expected one value"},
	} {
		var c Config
		ok, err := c.UnmarshalOption(option(tc.input))
		if !ok {
			t.Errorf("%q: not recognised as a shared option", tc.input)
			continue
		}
		if err == nil {
			t.Errorf("%q: accepted as %+v", tc.input, c)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "Testfile:1") {
			t.Errorf("%q: error %q does not contain %q and Testfile:1", tc.input, err, tc.want)
		}
	}
}

// balance_factor rewrites the parse error into its own message; the
// rewrite must not hide what is wrong when the value is missing, extra or
// out of range, and NaN (which compares false with every bound) must not
// pass.
func TestUnmarshalOptionBalanceFactorMessages(t *testing.T) {
	for _, tc := range []struct {
		input string
		want  []string
	}{
		{"balance_factor", []string{"balance_factor: expected a value"}},
		{"balance_factor 1.5 2", []string{"balance_factor:", "extra '2'"}},
		{"balance_factor 150", []string{"balance_factor:", "100"}},
		{"balance_factor NaN", []string{"balance_factor:"}},
	} {
		var c Config
		_, err := c.UnmarshalOption(option(tc.input))
		if err == nil {
			t.Errorf("%q: accepted as %+v", tc.input, c)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q does not contain %q", tc.input, err, w)
			}
		}
	}
}
