package ipaffinity

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/caddy-affinity/caddy-affinity/internal/testutil"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"go.uber.org/zap"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

func testPool(n int) reverseproxy.UpstreamPool {
	pool := make(reverseproxy.UpstreamPool, n)
	for i := range pool {
		pool[i] = &reverseproxy.Upstream{Host: new(reverseproxy.Host), Dial: fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250+1)}
	}
	return pool
}

func provision(t testing.TB, m interface{ Provision(caddy.Context) error }) caddy.Context {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := m.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return ctx
}

// clientRequest is a request as Caddy's server hands it on: with the vars
// map, the client IP it derived from trusted_proxies, and the peer address.
func clientRequest(clientIP, remote string) *http.Request {
	r := httptest.NewRequest("GET", "/", nil)
	vars := map[string]any{caddyhttp.ClientIPVarKey: clientIP}
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
	r.RemoteAddr = remote
	return r
}

func TestIPAffinitySourceAndAgreement(t *testing.T) {
	pool := testPool(8)
	addrs := make([]string, len(pool))
	for i, u := range pool {
		addrs[i] = u.Dial
	}
	table := affinity.NewTable(addrs)
	want := func(ip string) *reverseproxy.Upstream {
		return pool[table.Lookup(affinity.MaskClient(netip.MustParseAddr(ip), 32, 64).Hash())]
	}

	client := &IPAffinity{}
	provision(t, client)
	remote := &IPAffinity{Source: "remote"}
	provision(t, remote)
	for i := 0; i < 200; i++ {
		cip := fmt.Sprintf("192.0.2.%d", i)
		peer := fmt.Sprintf("10.9.%d.%d", i/200, i%200)
		if got := client.Select(pool, clientRequest(cip, peer+":5555"), nil); got != want(cip) {
			t.Fatalf("source client: %s went to %s, want %s", cip, got.Dial, want(cip).Dial)
		}
		if got := remote.Select(pool, clientRequest(cip, peer+":5555"), nil); got != want(peer) {
			t.Fatalf("source remote: %s went to %s, want %s", peer, got.Dial, want(peer).Dial)
		}
	}
}

func TestIPAffinityRetryRebinds(t *testing.T) {
	for _, table := range []bool{false, true} {
		t.Run(fmt.Sprintf("session table %v", table), func(t *testing.T) {
			pool := testPool(5)
			p := &IPAffinity{}
			if table {
				p.PersistTimeout = caddy.Duration(time.Hour)
			}
			provision(t, p)
			r := clientRequest("198.51.100.7", "198.51.100.7:1234")
			var order []*reverseproxy.Upstream
			seen := map[*reverseproxy.Upstream]bool{}
			for attempt := 0; attempt < len(pool); attempt++ {
				u := p.Select(pool, r, nil)
				if u == nil || seen[u] {
					t.Fatalf("attempt %d chose %v, already tried or none", attempt, u)
				}
				seen[u] = true
				order = append(order, u)
			}
			// Every upstream failed this request once: the next attempts go
			// round again in the same order, from the client's own upstream.
			for attempt, want := range order {
				if u := p.Select(pool, r, nil); u != want {
					t.Fatalf("round 2, attempt %d chose %v, want %s as in round 1", attempt, u, want.Dial)
				}
			}
			// A new request of the same client goes where the last attempt
			// went with a table (the move is remembered), else to its own.
			want := order[0]
			if table {
				want = order[len(order)-1]
			}
			if again := p.Select(pool, clientRequest("198.51.100.7", "198.51.100.7:1"), nil); again != want {
				t.Fatalf("new request went to %v, want %s", again, want.Dial)
			}
		})
	}
}

func TestIPAffinityUnparsableClientUsesFallback(t *testing.T) {
	pool := testPool(3)
	p := &IPAffinity{}
	provision(t, p)
	p = &IPAffinity{FallbackRaw: []byte(`{"policy":"first"}`)}
	provision(t, p)
	if u := p.Select(pool, clientRequest("not-an-ip", "garbage"), nil); u != pool[0] {
		t.Fatalf("fallback first chose %v", u)
	}
}

// selector is a policy under benchmark.
type selector struct {
	name string
	sel  reverseproxy.Selector
}

// benchSelectors returns ip_affinity, provisioned as in production at
// Caddy's default INFO level (the per-decision debug log off; the test
// context logs everything), beside Caddy's IP policies.
func benchSelectors(b *testing.B) (*IPAffinity, []selector) {
	ours := &IPAffinity{}
	provision(b, ours)
	ours.core.SetLogger(zap.NewNop())
	return ours, []selector{
		{"ip_affinity", ours},
		{"caddy_ip_hash", reverseproxy.IPHashSelection{}},
		{"caddy_client_ip_hash", reverseproxy.ClientIPHashSelection{}},
	}
}

// benchRequests returns n requests, from clients ip(0) to ip(n-1).
func benchRequests(n int, ip func(i int) string) []*http.Request {
	reqs := make([]*http.Request, n)
	for i := range reqs {
		reqs[i] = clientRequest(ip(i), ip(i)+":40000")
	}
	return reqs
}

// selectFresh selects for r as for a new request, as far as retries go.
func selectFresh(b *testing.B, ours *IPAffinity, s reverseproxy.Selector, pool reverseproxy.UpstreamPool, r *http.Request) {
	delete(r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any), ours.core.triedKey)
	if s.Select(pool, r, nil) == nil {
		b.Fatal("no upstream")
	}
}

// BenchmarkIPSelect compares ip_affinity with Caddy's ip_hash and
// client_ip_hash in one run. Each iteration serves the next of 1024
// clients, each its own request.
func BenchmarkIPSelect(b *testing.B) {
	for _, n := range []int{4, 16, 64} {
		pool := testPool(n)
		reqs := benchRequests(1024, func(i int) string { return fmt.Sprintf("172.%d.%d.%d", 16+i%16, i/16%256, i%251+1) })
		ours, policies := benchSelectors(b)
		for _, p := range policies {
			b.Run(fmt.Sprintf("upstreams=%d/policy=%s", n, p.name), func(b *testing.B) {
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					selectFresh(b, ours, p.sel, pool, reqs[i&1023])
				}
			})
		}
	}
}

func lanIP(i int) string { return fmt.Sprintf("10.0.%d.%d", i/256, i%256) }

// BenchmarkIPSelectParallel is BenchmarkIPSelect at 3 upstreams on every
// CPU at once, as a loaded server runs it: what is shared between requests
// (the decision counters) costs here and not in the serial benchmark.
func BenchmarkIPSelectParallel(b *testing.B) {
	pool := testPool(3)
	ours, policies := benchSelectors(b)
	for _, p := range policies {
		b.Run("policy="+p.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				// Requests are not shared between goroutines: each has its own.
				reqs := benchRequests(256, lanIP)
				for i := 0; pb.Next(); i++ {
					selectFresh(b, ours, p.sel, pool, reqs[i&255])
				}
			})
		})
	}
}

// BenchmarkIPSelectColdCache is BenchmarkIPSelect at 3 upstreams with the
// caches cold, as in a busy server whose other work evicts the policy's
// data between two requests: each selection follows a walk through 2 MiB,
// and only the selection is timed (ns/select; policy=none is the cost of
// timing nothing).
func BenchmarkIPSelectColdCache(b *testing.B) {
	pool := testPool(3)
	ours, policies := benchSelectors(b)
	reqs := benchRequests(256, lanIP)
	junk := make([]byte, 2<<20)
	for _, p := range append([]selector{{"none", nil}}, policies...) {
		b.Run("policy="+p.name, func(b *testing.B) {
			var spent time.Duration
			n := 0
			for i := 0; b.Loop(); i++ {
				for j := 0; j < len(junk); j += 64 {
					junk[j]++
				}
				r := reqs[i&255]
				start := time.Now()
				if p.sel != nil {
					selectFresh(b, ours, p.sel, pool, r)
				}
				spent += time.Since(start)
				n++
			}
			b.ReportMetric(float64(spent.Nanoseconds())/float64(n), "ns/select")
		})
	}
}

// Dynamic upstreams are new objects on every attempt: a retry must still
// move off the upstream that failed, by its address.
func TestIPAffinityRetryDynamicUpstreams(t *testing.T) {
	p := &IPAffinity{}
	provision(t, p)
	r := clientRequest("198.51.100.9", "198.51.100.9:1")
	seen := map[string]bool{}
	for attempt := 0; attempt < 4; attempt++ {
		u := p.Select(testPool(4), r, nil)
		if u == nil || seen[u.Dial] {
			t.Fatalf("attempt %d chose %v, already tried", attempt, u)
		}
		seen[u.Dial] = true
	}
}

// Once every upstream has failed a request, later attempts (within
// lb_try_duration) go round the pool again rather than give up: a backend
// that restarts meanwhile is reached.
func TestIPAffinityRetriesGoRoundAgain(t *testing.T) {
	p := &IPAffinity{}
	provision(t, p)
	pool := testPool(2)
	r := clientRequest("198.51.100.9", "198.51.100.9:1")
	var got []string
	for range 5 {
		u := p.Select(pool, r, nil)
		if u == nil {
			t.Fatalf("attempt %d: no upstream after %v", len(got)+1, got)
		}
		got = append(got, u.Dial)
	}
	if got[0] == got[1] || got[2] != got[0] || got[3] != got[1] || got[4] != got[0] {
		t.Fatalf("attempts chose %v: want the hash's choice, the other, then round again", got)
	}
}

// A client address that is not an IP (a unix-socket listener) is served
// at random when no fallback is set, not failed.
func TestIPAffinityNonIPClient(t *testing.T) {
	p := &IPAffinity{Source: "remote"}
	provision(t, p)
	r := clientRequest("", "@")
	for range 10 {
		if p.Select(testPool(3), r, nil) == nil {
			t.Fatal("no upstream for a unix-socket client")
		}
	}
}

// TestIPSelectAllocations: ip_affinity selects without allocating. Run
// without -race by make test.
func TestIPSelectAllocations(t *testing.T) {
	if testutil.RaceEnabled {
		t.Skip("allocation counts require a build without -race")
	}
	pool := testPool(16)
	p := &IPAffinity{}
	provision(t, p)
	p.core.SetLogger(zap.NewNop())
	r := clientRequest("203.0.113.50", "203.0.113.50:4000")
	vars := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	n := testing.AllocsPerRun(200, func() {
		delete(vars, p.core.triedKey)
		if p.Select(pool, r, nil) == nil {
			t.Fatal("no upstream")
		}
	})
	if n != 0 {
		t.Fatalf("ip_affinity Select: %.1f allocations, want 0", n)
	}
	// Dynamic upstreams: the same addresses in a new slice each request.
	pools := make([]reverseproxy.UpstreamPool, 201)
	for i := range pools {
		pools[i] = slices.Clone(pool)
	}
	i := 0
	n = testing.AllocsPerRun(200, func() {
		delete(vars, p.core.triedKey)
		if p.Select(pools[i], r, nil) == nil {
			t.Fatal("no upstream")
		}
		i++
	})
	if n != 0 {
		t.Fatalf("ip_affinity Select over dynamic upstreams: %.1f allocations, want 0", n)
	}
}

// TestIPAffinitySubsetsBuildNothing: a policy whose fallback ip_affinity is
// hands it the whole pool and a filter for each subset of failed or
// draining upstreams; however many distinct subsets come, the one table of
// the whole pool serves them all, and the choice stays within the subset.
func TestIPAffinitySubsetsBuildNothing(t *testing.T) {
	s := &IPAffinity{}
	provision(t, s)
	s.core.SetLogger(zap.NewNop())
	builds := 0
	build := s.core.pools.Build
	s.core.pools.Build = func(addrs []string) affinity.IPPool { builds++; return build(addrs) }
	pool := testPool(8)
	for mask := 1; mask < 1<<len(pool)-1; mask++ {
		skip := func(u *reverseproxy.Upstream) bool {
			return mask&(1<<slices.Index(pool, u)) != 0
		}
		for c := 0; c < 4; c++ {
			r := clientRequest(fmt.Sprintf("198.51.100.%d", c), "198.51.100.1:5000")
			up := s.SelectSubset(pool, r, nil, skip)
			if up == nil || skip(up) {
				t.Fatalf("subset %08b: chose %v, outside the subset", mask, up)
			}
		}
	}
	if builds != 1 {
		t.Fatalf("%d tables built for 254 subsets of one pool, want 1", builds)
	}
}

// source client behind trusted proxies without strict mode lets a client
// behind an appending proxy choose its address: provisioning says so.
func TestSpoofableClientWarning(t *testing.T) {
	for _, tc := range []struct {
		trusted string
		strict  int
		warn    bool
	}{{"", 0, false}, {`{"source":"static","ranges":["10.0.0.0/8"]}`, 0, true}, {`{"source":"static","ranges":["10.0.0.0/8"]}`, 1, false}} {
		srv := &caddyhttp.Server{TrustedProxiesRaw: json.RawMessage(tc.trusted), TrustedProxiesStrict: tc.strict}
		if tc.trusted == "" {
			srv.TrustedProxiesRaw = nil
		}
		msg := spoofableClientWarning(srv)
		if (msg != "") != tc.warn {
			t.Errorf("trusted_proxies %q, strict %d: warning %q", tc.trusted, tc.strict, msg)
		}
		if tc.warn && !strings.Contains(msg, "trusted_proxies_strict") {
			t.Errorf("the warning does not name the fix: %q", msg)
		}
	}
}

// With a session table, a drain's deadline moves the clients bound to the
// draining upstream on their next request after it, and the table keeps
// their new upstream.
func TestIPAffinityDrainDeadline(t *testing.T) {
	p := &IPAffinity{Config: Config{PersistTimeout: caddy.Duration(time.Hour)}}
	provision(t, p)
	p.core.SetLogger(zap.NewNop())
	now := time.Unix(1_800_000_000, 0)
	p.core.now = func() time.Time { return now }
	pool := testPool(4)
	sel := func() *reverseproxy.Upstream {
		return p.Select(pool, clientRequest("198.51.100.77", "198.51.100.77:1"), nil)
	}
	home := sel()
	t.Cleanup(func() { affinity.SetDraining(home.Dial, false) })
	affinity.DrainUntil(home.Dial, now.Add(time.Minute))
	if u := sel(); u != home {
		t.Fatalf("before the deadline: %v, want the draining %v", u, home)
	}
	now = now.Add(time.Minute)
	moved := sel()
	if moved == nil || moved == home {
		t.Fatalf("after the deadline: %v, want another upstream", moved)
	}
	affinity.SetDraining(home.Dial, false)
	if u := sel(); u != moved {
		t.Fatalf("after undrain: %v, want %v, where the table now keeps the client", u, moved)
	}
}

// handlerPolicy runs Caddy with one reverse_proxy handler (its JSON
// without the handler key) and returns the handler's ip_affinity policy,
// provisioned as in production: by the handler, its parent.
func handlerPolicy(t *testing.T, handler string) *IPAffinity {
	t.Helper()
	cfg := `{"admin": {"disabled": true, "config": {"persist": false}},
		"apps": {"http": {"servers": {"t": {"listen": ["127.0.0.1:0"], "automatic_https": {"disable": true},
			"routes": [{"handle": [{"handler": "reverse_proxy", ` + strings.TrimPrefix(handler, "{") + `]}]}}}}}`
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	app, err := caddy.ActiveContext().App("http")
	if err != nil {
		t.Fatal(err)
	}
	h := app.(*caddyhttp.App).Servers["t"].Routes[0].Handlers[0].(*reverseproxy.Handler)
	p, ok := h.LoadBalancing.SelectionPolicy.(*IPAffinity)
	if !ok {
		t.Fatalf("selection policy is %T", h.LoadBalancing.SelectionPolicy)
	}
	p.core.SetLogger(zap.NewNop())
	return p
}

// A reverse_proxy handler without lb_retries or lb_try_duration calls its
// policy once per request: ip_affinity then keeps nothing in the request's
// variables. With either, it keeps the upstream of each attempt, and a
// retry moves off the one that failed.
func TestIPAffinityKeepsAttemptsOnlyWithRetries(t *testing.T) {
	const upstreams = `"upstreams": [{"dial": "10.0.0.1:80"}, {"dial": "10.0.0.2:80"}, {"dial": "10.0.0.3:80"}]`
	for _, tc := range []struct {
		name, lb string
		retries  bool
	}{
		{"no retries", `{"selection_policy": {"policy": "ip_affinity"}}`, false},
		{"retries", `{"selection_policy": {"policy": "ip_affinity"}, "retries": 2}`, true},
		{"try_duration", `{"selection_policy": {"policy": "ip_affinity"}, "try_duration": 5000000000}`, true},
		{"retries without limit", `{"selection_policy": {"policy": "ip_affinity"}, "retries": -1}`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := handlerPolicy(t, `{`+upstreams+`, "load_balancing": `+tc.lb+`}`)
			pool := testPool(3)
			r := clientRequest("198.51.100.7", "198.51.100.7:1234")
			vars := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
			// Several requests, so that the pool's state is built and the
			// common case (Hit) decides.
			for range 3 {
				delete(vars, p.core.VarKey())
				if p.Select(pool, r, nil) == nil {
					t.Fatal("no upstream")
				}
			}
			_, kept := vars[p.core.VarKey()]
			if kept != tc.retries {
				t.Fatalf("upstream of the attempt kept in the request's variables: %v, want %v", kept, tc.retries)
			}
			delete(vars, p.core.VarKey()) // a new request, then a second attempt of it
			first, again := p.Select(pool, r, nil), p.Select(pool, r, nil)
			if tc.retries && (first == again || again == nil) {
				t.Fatalf("with retries a second attempt went to %v after %v: want another upstream", again, first)
			}
			if !tc.retries && first != again {
				t.Fatalf("without retries (each call a new request) the client went to %v, then %v", first, again)
			}
		})
	}
}
