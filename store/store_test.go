package store

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-affinity/caddy-affinity/affinity"
	"github.com/caddy-affinity/caddy-affinity/internal/testutil"
)

func ipKey(s string) affinity.ClientKey {
	return affinity.MaskClient(netip.MustParseAddr(s), 32, 64)
}

// redisTable opens a table named name in srv; timeout tells pools apart,
// so two tables of different timeouts are two instances, each with its own
// connections and events.
func redisTable(t *testing.T, srv *testutil.RedisServer, name string, timeout time.Duration) *affinity.SessionTable {
	t.Helper()
	return redisTableOf(t, srv, name, timeout, 1000)
}

func redisTableOf(t *testing.T, srv *testutil.RedisServer, name string, timeout time.Duration, size int) *affinity.SessionTable {
	t.Helper()
	st := affinity.NewSessionTable(size, time.Hour)
	tb, err := Open(&Config{Redis: &Redis{Address: srv.Addr, Timeout: caddy.Duration(timeout)}}, name, time.Hour, st)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tb.Close(); err != nil {
			t.Error(err)
		}
	})
	return st
}

// The store contract: what every policy relies on of its session table,
// whichever store holds it.
func TestStoreContract(t *testing.T) {
	stores := map[string]func(t *testing.T) *affinity.SessionTable{
		"memory": func(*testing.T) *affinity.SessionTable { return affinity.NewSessionTable(1000, time.Hour) },
		"redis": func(t *testing.T) *affinity.SessionTable {
			return redisTable(t, testutil.StartRedis(t), "contract", time.Second)
		},
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			st := open(t)
			now := time.Now()
			a, b, c := ipKey("192.0.2.1"), ipKey("2001:db8::1"), affinity.NamedKey("session-id")
			if _, ok := st.Get(a, now); ok {
				t.Fatal("Get of a new key found an entry")
			}
			for i, k := range []affinity.ClientKey{a, b, c} {
				if !st.Put(k, uint64(i+1), now) {
					t.Fatalf("Put %v refused", k)
				}
			}
			for i, k := range []affinity.ClientKey{a, b, c} {
				if id, ok := st.Get(k, now); !ok || id != uint64(i+1) {
					t.Errorf("Get %v = %d, %v; want %d", k, id, ok, i+1)
				}
			}
			st.Put(a, 7, now) // a rebind
			if id, _ := st.Get(a, now); id != 7 {
				t.Errorf("after a rebind Get = %d, want 7", id)
			}
			if n := st.Len(); n != 3 {
				t.Errorf("Len = %d, want 3", n)
			}
			if got := st.CountByID(); got[7] != 1 || got[2] != 1 || got[3] != 1 || len(got) != 3 {
				t.Errorf("CountByID = %v", got)
			}
			page := st.Page(0, 10)
			if len(page) != 3 {
				t.Fatalf("Page = %v, want 3 entries", page)
			}
			ids := map[uint64]bool{}
			for _, s := range page {
				ids[s.ID] = true
				if s.LastSeen.IsZero() || s.LastSeen.After(time.Now().Add(time.Second)) {
					t.Errorf("entry last seen %v", s.LastSeen)
				}
			}
			if !ids[7] || !ids[2] || !ids[3] {
				t.Errorf("Page ids = %v", ids)
			}
			if p := st.Page(1, 1); len(p) != 1 {
				t.Errorf("Page(1, 1) = %v, want one entry", p)
			}
			if !st.Delete(b) {
				t.Error("Delete of an entry reported none")
			}
			if _, ok := st.Get(b, now); ok {
				t.Error("Get after Delete found the entry")
			}
			if n := st.DeleteID(7); n != 1 {
				t.Errorf("DeleteID(7) = %d, want 1", n)
			}
			if _, ok := st.Get(a, now); ok {
				t.Error("Get after DeleteID found the entry")
			}
			st.Put(a, 1, now)
			st.Flush()
			for _, k := range []affinity.ClientKey{a, c} {
				if _, ok := st.Get(k, now); ok {
					t.Errorf("Get %v after Flush found an entry", k)
				}
			}
			if n := st.Len(); n != 0 {
				t.Errorf("Len after Flush = %d", n)
			}
		})
	}
}

// Two instances on one Redis: what one writes the other finds, a rebind
// reaches the other's cached copy by an event, a cached entry costs no
// round trip, and the store never holds a client's address or session id.
func TestRedisFleet(t *testing.T) {
	srv := testutil.StartRedis(t)
	a := redisTable(t, srv, "fleet", time.Second)
	b := redisTable(t, srv, "fleet", 2*time.Second) // another pool: another instance
	now := time.Now()
	ip, sess := ipKey("198.51.100.7"), affinity.NamedKey("JSESSIONID-value-1234")
	a.Put(ip, 11, now)
	a.Put(sess, 12, now)
	if id, ok := b.Get(ip, now); !ok || id != 11 {
		t.Fatalf("the other instance found %d, %v; want 11", id, ok)
	}
	if id, ok := b.Get(sess, now); !ok || id != 12 {
		t.Fatalf("the other instance found %d, %v; want 12", id, ok)
	}

	// Cached now: further requests make no round trip.
	before := srv.CommandCalls()["get"]
	for range 100 {
		b.Get(ip, now)
		a.Get(ip, now)
	}
	if after := srv.CommandCalls()["get"]; after != before {
		t.Errorf("200 requests of cached entries made %d GETs, want 0", after-before)
	}

	// A rebind on a reaches b's cached copy without b asking, within 1s
	// (the bound), each of several times.
	sk := b.Backing().Key(ip)
	slowest := time.Duration(0)
	for i := range 20 {
		id := uint64(21 + i%2) // 21, 22, 21, ...: each Put a real rebind
		start := time.Now()
		a.Put(ip, id, now)
		for {
			if got, _ := b.Cache(sk); got == id {
				break
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("rebind %d never reached the other instance's cache", i)
			}
			time.Sleep(time.Millisecond)
		}
		slowest = max(slowest, time.Since(start))
	}
	t.Logf("20 rebinds reached the other instance's cache, the slowest in %v", slowest.Round(time.Microsecond))
	if slowest >= time.Second {
		t.Errorf("a rebind took %v to reach the other instance's cache; the bound is 1s", slowest)
	}

	// A deletion too.
	a.Delete(sess)
	sk = b.Backing().Key(sess)
	for start := time.Now(); ; time.Sleep(time.Millisecond) {
		if _, ok := b.Cache(sk); !ok {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("the deletion never reached the other instance's cache")
		}
	}

	// Names and values are keyed hashes and IDs, nothing of the client.
	keys, err := srv.Do("KEYS", "*")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(keys, "198.51.100.7") || strings.Contains(keys, "c6336407") || !strings.Contains(keys, DefaultKeyPrefix+"t:fleet:") {
		t.Errorf("store keys:\n%s", keys)
	}
	if n := srv.Keys(DefaultKeyPrefix + "t:fleet:"); n != 1 {
		t.Errorf("store holds %d entries, want 1", n)
	}
	// The entry expires after the idle timeout.
	name := strings.Split(keys, "\n")
	for _, n := range name {
		if strings.HasPrefix(n, DefaultKeyPrefix+"t:") {
			ttl, err := srv.Do("PTTL", n)
			if err != nil {
				t.Fatal(err)
			}
			if ms := atoi(ttl); ms <= 0 || ms > int(time.Hour/time.Millisecond) {
				t.Errorf("entry expires in %s ms, want within an hour", ttl)
			}
		}
	}
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// Redis down: nothing fails, cached entries still route, changes are kept;
// back: the instance finds it by itself and writes back what it missed.
func TestRedisOutage(t *testing.T) {
	srv := testutil.StartRedis(t)
	st := redisTable(t, srv, "outage", 200*time.Millisecond)
	other := redisTable(t, srv, "outage", 300*time.Millisecond)
	now := time.Now()
	a, b := ipKey("203.0.113.1"), ipKey("203.0.113.2")
	st.Put(a, 1, now)
	srv.Stop()
	if id, ok := st.Get(a, now); !ok || id != 1 {
		t.Errorf("with Redis down a cached entry gave %d, %v", id, ok)
	}
	st.Put(b, 2, now) // a new session while down
	st.Put(a, 3, now) // and a rebind
	if _, ok := st.Get(ipKey("203.0.113.9"), now); ok {
		t.Error("an unknown key found an entry")
	}
	srv.Restart() // empty: it keeps nothing on disk
	tb := st.Backing().(*Table)
	for start := time.Now(); !tb.c.ready(); time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			t.Fatal("the store never came back")
		}
	}
	// The write-back runs right after the store is found back.
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		if srv.Keys(DefaultKeyPrefix+"t:outage:") == 2 {
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("the store holds %d entries after the outage, want 2", srv.Keys(DefaultKeyPrefix+"t:outage:"))
		}
	}
	// The other instance, back too, reads them.
	ot := other.Backing().(*Table)
	for start := time.Now(); !ot.c.ready(); time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			t.Fatal("the other instance never found the store back")
		}
	}
	other.ForgetAll()
	if id, ok := other.Get(a, now); !ok || id != 3 {
		t.Errorf("the other instance found %d, %v for the rebound session; want 3", id, ok)
	}
	if id, ok := other.Get(b, now); !ok || id != 2 {
		t.Errorf("the other instance found %d, %v for the new session; want 2", id, ok)
	}
}

// Stored keys keep the network of an IP client, so the per-network limit
// holds in the cache; named keys have none.
func TestStoredKeyNetwork(t *testing.T) {
	k := newKeyer([]byte("test key"))
	x, y, z := k.key(ipKey("192.0.2.1")), k.key(ipKey("192.0.2.200")), k.key(ipKey("192.0.3.1"))
	if !x.Stored() || x == y {
		t.Fatalf("stored keys %v %v", x, y)
	}
	if x.String()[len("stored:"):len("stored:")+10] != y.String()[len("stored:"):len("stored:")+10] {
		t.Errorf("one /24, two network tags: %v %v", x, y)
	}
	if x.String()[:17] == z.String()[:17] {
		t.Errorf("two /24s, one network tag: %v %v", x, z)
	}
	if k.key(x) != x {
		t.Error("a stored key is stored under another")
	}
	n := k.key(affinity.NamedKey("v"))
	if !strings.HasPrefix(n.String(), "stored:00") || !strings.HasPrefix(x.String(), "stored:01") {
		t.Errorf("network flags: named %v, IP %v", n, x)
	}
	if k2 := newKeyer([]byte("other key")); k2.key(ipKey("192.0.2.1")) == x {
		t.Error("two keys make the same stored key")
	}
	back, err := affinity.ParseClientKey(x.String())
	if err != nil || back != x {
		t.Errorf("ParseClientKey(%v) = %v, %v", x, back, err)
	}
	// A table caching stored keys limits a network as it would its
	// addresses.
	st := affinity.NewSessionTableLimit(100_000, time.Hour, 100)
	stored := 0
	for i := range 2000 {
		ip := netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)})
		if st.Put(k.key(affinity.MaskClient(ip, 32, 64)), 1, time.Now()) {
			stored++
		}
	}
	// Eight /24s (the last one partly) of 100 each.
	if stored > 800 || stored < 700 {
		t.Errorf("stored %d keys of eight /24s at a limit of 100 each, want 800", stored)
	}
}

// What Redis needs per session, for sizing maxmemory: 100,000 entries
// written as the store writes them.
func TestRedisMemoryPerEntry(t *testing.T) {
	srv := testutil.StartRedis(t)
	const n = 100_000
	st := redisTableOf(t, srv, "ip", time.Second, 2*n) // room in every shard
	tb := st.Backing().(*Table)
	used := func() int {
		out, err := srv.Do("INFO", "memory")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), "used_memory:"); ok {
				return atoi(v)
			}
		}
		t.Fatal("INFO memory has no used_memory")
		return 0
	}
	before := used()
	now := time.Now()
	for i := range n {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		st.Learn(tb.Key(affinity.MaskClient(ip, 32, 64)), uint64(i%7+1)<<40|uint64(i), now)
	}
	tb.sync(time.Time{})
	if got := srv.Keys(DefaultKeyPrefix + "t:ip:"); got != n {
		t.Fatalf("Redis holds %d entries, want %d", got, n)
	}
	per := float64(used()-before) / n
	t.Logf("Redis %s: %.0f bytes per session entry (%d entries)", srvVersion(t, srv), per, n)
	if per <= 0 || per > 512 {
		t.Errorf("%.0f bytes per entry: the layout of entries changed; update the README's sizing", per)
	}
}

func srvVersion(t *testing.T, srv *testutil.RedisServer) string {
	out, err := srv.Do("INFO", "server")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "redis_version:"); ok {
			return v
		}
	}
	return "?"
}

// A table with a lifetime (learn mode's max_lifetime) keeps each entry's
// birth in the store, so an instance that loads the entry later ends it at
// the same moment as the one that stored it; a rebind keeps the age.
func TestStoreLifetime(t *testing.T) {
	srv := testutil.StartRedis(t)
	one := redisTable(t, srv, "life", time.Second)
	two := redisTable(t, srv, "life", 2*time.Second)
	for _, st := range []*affinity.SessionTable{one, two} {
		st.SetLifetime(time.Hour)
	}
	t0 := time.Now()
	k := affinity.NamedKey("a learned value")
	one.Put(k, 1, t0)
	one.Put(k, 2, t0.Add(30*time.Minute)) // a rebind
	if id, ok := two.Get(k, t0.Add(59*time.Minute)); !ok || id != 2 {
		t.Fatalf("the other instance within the lifetime: %d, %v; want 2", id, ok)
	}
	if p := two.Page(0, 10); len(p) != 1 || p[0].Born.Unix() != t0.Unix() {
		t.Errorf("the store lists %v, want one entry born at %v", p, t0.Truncate(time.Second))
	}
	two.Forget(two.Backing().Key(k))
	if _, ok := two.Get(k, t0.Add(61*time.Minute)); ok {
		t.Fatal("the other instance loaded an entry past its lifetime")
	}
}

// An entry used on every request is written to the store at most once a
// quarter of the idle timeout (in the refresh's batches, never per
// request), and stays there past the idle timeout while it is used; an
// entry no longer used expires there.
func TestRefreshThrottled(t *testing.T) {
	srv := testutil.StartRedis(t)
	const ttl = 4 * time.Second // the shortest whose quarter is the refresh period (at least 1s)
	st := affinity.NewSessionTable(1000, ttl)
	tb, err := Open(&Config{Redis: &Redis{Address: srv.Addr, Timeout: caddy.Duration(time.Second)}}, "throttle", ttl, st)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tb.Close(); err != nil {
			t.Error(err)
		}
	})
	used, idle := affinity.NamedKey("a session in use"), affinity.NamedKey("a session left")
	usedName, idleName := tb.redisName(tb.Key(used)), tb.redisName(tb.Key(idle))
	start := time.Now()
	st.Put(used, 1, start)
	st.Put(idle, 2, start)
	writes := func() int {
		c := srv.CommandCalls()
		return c["set"] + c["expire"] + c["pexpire"] + c["getex"]
	}
	before, gets, refreshes := writes(), srv.CommandCalls()["get"], tb.c.stats.ops[opRefresh].Load()

	// Requests of one session, every few milliseconds, for two idle
	// timeouts (the unused entry, refreshed in the first two passes at
	// most, has expired by then).
	requests := 0
	for time.Since(start) < 2*ttl {
		if id, ok := st.Get(used, time.Now()); !ok || id != 1 {
			t.Fatalf("after %v the entry in use is %d, %v", time.Since(start), id, ok)
		}
		requests++
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	passes := int(elapsed/(ttl/4)) + 1 // refresh periods begun
	// Each pass writes the entry with one SET (NX) and one EXPIRE; the
	// idle entry is in the first pass only.
	if w := writes() - before; w > 2*passes+2 || w < 2 {
		t.Errorf("%d requests over %v made %d writes; want at most %d (one SET and one EXPIRE a quarter of %v)", requests, elapsed.Round(time.Millisecond), w, 2*passes+2, ttl)
	}
	if g := srv.CommandCalls()["get"] - gets; g != 0 {
		t.Errorf("%d requests of a cached entry made %d GETs", requests, g)
	}
	if r := tb.c.stats.ops[opRefresh].Load() - refreshes; r > uint64(passes) || r < 1 {
		t.Errorf("%d refresh round trips over %v; want 1 to %d", r, elapsed.Round(time.Millisecond), passes)
	}

	// Past the idle timeout: the entry in use is still in Redis, the other
	// one expired there.
	if pttl, err := srv.Do("PTTL", usedName); err != nil || atoi(pttl) <= 0 {
		t.Errorf("the entry in use, %v after it was stored (idle timeout %v): PTTL %q, %v; want it still there", elapsed.Round(time.Millisecond), ttl, pttl, err)
	}
	if pttl, err := srv.Do("PTTL", idleName); err != nil || pttl != "-2" {
		t.Errorf("the entry left unused for %v: PTTL %q, %v; want it expired (-2)", elapsed.Round(time.Millisecond), pttl, err)
	}
	t.Logf("%d requests of one session over %v: %d writes to Redis, %d refresh round trips", requests, elapsed.Round(time.Millisecond),
		writes()-before, tb.c.stats.ops[opRefresh].Load()-refreshes)
}

// A server with a password (given as a placeholder), a database other than
// 0 and a key prefix of its own: the entries, the HMAC key and what another
// instance reads are all in that database under that prefix, nothing in
// database 0 or under the default prefix.
func TestRedisPasswordDBPrefix(t *testing.T) {
	const password, db, prefix = "s3cret-for-the-test", 5, "myapp:"
	srv := testutil.StartRedisWith(t, testutil.RedisOptions{Password: password})
	t.Setenv("AFFINITY_TEST_REDIS_PASSWORD", password)
	open := func(timeout time.Duration) (*affinity.SessionTable, *Table) {
		st := affinity.NewSessionTable(1000, time.Hour)
		tb, err := Open(&Config{Redis: &Redis{Address: srv.Addr, Password: "{env.AFFINITY_TEST_REDIS_PASSWORD}",
			DB: db, KeyPrefix: prefix, Timeout: caddy.Duration(timeout)}}, "pw", time.Hour, st)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := tb.Close(); err != nil {
				t.Error(err)
			}
		})
		return st, tb
	}
	one, tb := open(time.Second)
	two, _ := open(2 * time.Second) // another pool: another instance
	if !tb.c.ready() {
		t.Fatal("the store with the password is not ready")
	}
	now := time.Now()
	keys := []affinity.ClientKey{ipKey("192.0.2.10"), affinity.NamedKey("a session id")}
	for i, k := range keys {
		one.Put(k, uint64(i+1), now)
	}
	if n := srv.KeysDB(db, prefix+"t:pw:"); n != 2 {
		t.Errorf("database %d holds %d entries under %q, want 2", db, n, prefix+"t:pw:")
	}
	if v, err := srv.DoDB(db, "EXISTS", prefix+"hmac-key"); err != nil || v != "1" {
		t.Errorf("the HMAC key %q in database %d: %q, %v", prefix+"hmac-key", db, v, err)
	}
	if n := srv.KeysDB(0, ""); n != 0 {
		t.Errorf("database 0 holds %d keys, want none", n)
	}
	if n := srv.KeysDB(db, DefaultKeyPrefix); n != 0 {
		t.Errorf("database %d holds %d keys under the default prefix", db, n)
	}
	for i, k := range keys {
		if id, ok := two.Get(k, now); !ok || id != uint64(i+1) {
			t.Errorf("the other instance read %d, %v for %v; want %d", id, ok, k, i+1)
		}
	}
	// Without the password the server refuses: the names above were
	// written by an authenticated client.
	if _, err := (&testutil.RedisServer{Addr: srv.Addr}).DoDB(0, "DBSIZE"); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Errorf("DBSIZE without the password: %v, want NOAUTH", err)
	}
}

// Every table that names the same store shares one connection pool, and a
// reload (the new config's tables opened before the old ones close) keeps
// it: its connections, health checks and event subscription go on.
func TestStorePoolSharedAndKept(t *testing.T) {
	srv := testutil.StartRedis(t)
	cfg := func() *Config { return &Config{Redis: &Redis{Address: srv.Addr, Timeout: caddy.Duration(time.Second)}} }
	open := func(name string) *Table {
		t.Helper()
		tb, err := Open(cfg(), name, time.Hour, affinity.NewSessionTable(100, time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return tb
	}
	ip, learn := open("ip"), open("cookie:JSESSIONID")
	if ip.c != learn.c {
		t.Fatal("two policies naming one store got two connection pools")
	}
	// A reload: the new config's tables first, then the old ones close.
	ip2, learn2 := open("ip"), open("cookie:JSESSIONID")
	for _, tb := range []*Table{ip, learn} {
		if err := tb.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if ip2.c != ip.c || learn2.c != ip.c {
		t.Fatal("a reload replaced the store's connection pool")
	}
	if !ip2.c.up.Load() {
		t.Fatal("the kept pool is not up after the old tables closed")
	}
	for _, tb := range []*Table{ip2, learn2} {
		if err := tb.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// Unused, it is let go: the next table connects afresh.
	last := open("ip")
	defer last.Close()
	if last.c == ip.c {
		t.Fatal("the pool outlived every table that used it")
	}
}
