package header

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-affinity/caddy-affinity/affinity"
	"github.com/caddy-affinity/caddy-affinity/cookie"
	"github.com/caddy-affinity/caddy-affinity/internal/testutil"
)

const testSecret = "header-test-secret-0123456789"

func provision(t testing.TB, s *StickyHeader) *StickyHeader {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := s.Provision(ctx); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	t.Cleanup(func() { _ = s.Cleanup() })
	return s
}

func testPool(n int) reverseproxy.UpstreamPool {
	p := make(reverseproxy.UpstreamPool, n)
	for i := range p {
		p[i] = &reverseproxy.Upstream{Host: new(reverseproxy.Host), Dial: fmt.Sprintf("10.9.0.%d:80", i+1)}
	}
	return p
}

// request is a request as Caddy hands it to a policy, with its vars.
func request(header, value string) *http.Request {
	r := httptest.NewRequest("POST", "/mcp", nil)
	if header != "" {
		r.Header.Set(header, value)
	}
	vars := map[string]any{caddyhttp.ClientIPVarKey: "192.0.2.1"}
	return r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
}

// serve runs one request through the affinity handler and the policy, as
// Caddy would: the backend (mint) answers with its own header value.
func serve(t testing.TB, s *StickyHeader, pool reverseproxy.UpstreamPool, r *http.Request, mint func(u *reverseproxy.Upstream) string) (*reverseproxy.Upstream, *httptest.ResponseRecorder) {
	t.Helper()
	w := httptest.NewRecorder()
	var chosen *reverseproxy.Upstream
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		chosen = s.Select(pool, r, w)
		if chosen != nil && mint != nil {
			if v := mint(chosen); v != "" {
				w.Header().Set(s.Name, v)
			}
		}
		w.WriteHeader(http.StatusOK)
		return nil
	})
	if err := (cookie.Handler{}).ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
	return chosen, w
}

// Insert mode: Caddy mints the header, the client echoes it and stays; the
// backend never sees it; tampered and foreign tokens count as absent.
func TestInsertSticky(t *testing.T) {
	pool := testPool(4)
	s := provision(t, &StickyHeader{Name: "X-Session", Mode: ModeInsert, Secrets: []string{testSecret},
		FallbackRaw: json.RawMessage(`{"policy":"round_robin"}`)})
	first, w := serve(t, s, pool, request("", ""), nil)
	tok := w.Header().Get("X-Session")
	if first == nil || tok == "" {
		t.Fatalf("first request: upstream %v, header %q; want an upstream and a token", first, tok)
	}
	if strings.Contains(tok, "10.9.0.") {
		t.Fatalf("token %q reveals an address", tok)
	}
	for i := range 50 {
		r := request("x-session", tok) // any letter case
		u, _ := serve(t, s, pool, r, nil)
		if u != first {
			t.Fatalf("request %d went to %v, want %v", i, u, first)
		}
		if v := r.Header.Get("X-Session"); v != "" {
			t.Fatalf("the backend got the header %q; it is Caddy's", v)
		}
	}
	other := provision(t, &StickyHeader{Name: "X-Session", Mode: ModeInsert, Secrets: []string{"another-secret-0123456789abcdef"}})
	_, ow := serve(t, other, pool, request("", ""), nil)
	for name, bad := range map[string]string{
		"tampered": tampered(tok),
		"foreign":  ow.Header().Get("X-Session"),
		"garbage":  strings.Repeat("~", 5000),
	} {
		before := counts(pool, affinity.ResultRejected)
		u, w := serve(t, s, pool, request("X-Session", bad), nil)
		if u == nil || w.Header().Get("X-Session") == "" || w.Code != http.StatusOK {
			t.Fatalf("%s token: upstream %v, new token %q, status %d; want a new binding", name, u, w.Header().Get("X-Session"), w.Code)
		}
		if counts(pool, affinity.ResultRejected) != before+1 {
			t.Fatalf("%s token: not counted as rejected", name)
		}
	}
}

func counts(pool reverseproxy.UpstreamPool, r affinity.Result) uint64 {
	var n uint64
	for _, u := range pool {
		n += affinity.CountersFor(PolicyName, u.Dial).Count(r)
	}
	return n
}

// Rewrite mode: the backend mints the value; the client gets TOKEN~VALUE,
// echoes it, stays, and the backend gets VALUE back. A value without a
// token is routed by its hash, the same upstream every time.
func TestRewriteSticky(t *testing.T) {
	pool := testPool(3)
	s := provision(t, &StickyHeader{Name: "Mcp-Session-Id", Secrets: []string{testSecret}})
	mint := func(u *reverseproxy.Upstream) string { return "sess-" + u.Dial }
	first, w := serve(t, s, pool, request("", ""), mint)
	got := w.Header().Get("Mcp-Session-Id")
	tok, orig, ok := cookie.SplitRouted(got)
	if first == nil || !ok || orig != "sess-"+first.Dial {
		t.Fatalf("response header %q (upstream %v): want TOKEN~sess-<upstream>", got, first)
	}
	if strings.Contains(tok, "10.9.0.") {
		t.Fatalf("token %q reveals an address", tok)
	}
	for i := range 30 {
		r := request("Mcp-Session-Id", got)
		u, w := serve(t, s, pool, r, nil) // later responses carry no header
		if u != first {
			t.Fatalf("request %d went to %v, want %v", i, u, first)
		}
		if v := r.Header.Get("Mcp-Session-Id"); v != orig {
			t.Fatalf("the backend got %q, want its own value %q", v, orig)
		}
		if v := w.Header().Get("Mcp-Session-Id"); v != "" {
			t.Fatalf("a response without the backend's header got %q", v)
		}
	}
	// A response echoing a routed value does not double the token.
	_, w = serve(t, s, pool, request("Mcp-Session-Id", got), func(*reverseproxy.Upstream) string { return got })
	if v := w.Header().Get("Mcp-Session-Id"); strings.Count(v, "~") != 1 {
		t.Fatalf("re-set routed value became %q", v)
	}
	// No token: the value's hash routes it, alike on every request.
	var home *reverseproxy.Upstream
	for i := range 10 {
		r := request("Mcp-Session-Id", "4a6f3f0e-plain-uuid")
		u, _ := serve(t, s, pool, r, nil)
		if i == 0 {
			home = u
		}
		if u != home || r.Header.Get("Mcp-Session-Id") != "4a6f3f0e-plain-uuid" {
			t.Fatalf("untokened value: request %d to %v (first %v), forwarded %q", i, u, home, r.Header.Get("Mcp-Session-Id"))
		}
	}
}

// Hash mode: 1000 keys spread within 3 % of the fair share, each always on
// one upstream, and removing one upstream moves only its own keys.
func TestHashSpreadAndRemoval(t *testing.T) {
	pool := testPool(5)
	s := provision(t, &StickyHeader{Name: "X-Tenant-ID", Mode: ModeHash})
	const keys = 1000
	home := make([]*reverseproxy.Upstream, keys)
	per := map[*reverseproxy.Upstream]int{}
	for k := range keys {
		home[k] = s.Select(pool, request("X-Tenant-ID", fmt.Sprintf("tenant-%d", k)), nil)
		per[home[k]]++
		if again := s.Select(pool, request("X-Tenant-ID", fmt.Sprintf("tenant-%d", k)), nil); again != home[k] {
			t.Fatalf("key %d: %v then %v", k, home[k], again)
		}
	}
	fair := float64(keys) / float64(len(pool))
	for _, u := range pool {
		if dev := math.Abs(float64(per[u])-fair) / keys; dev > 0.03 {
			t.Errorf("%s has %d keys, %.1f %% of all keys from the fair share %v", u.Dial, per[u], 100*dev, fair)
		}
	}
	less := append(reverseproxy.UpstreamPool{}, pool[:2]...)
	less = append(less, pool[3:]...)
	for k := range keys {
		u := s.Select(less, request("X-Tenant-ID", fmt.Sprintf("tenant-%d", k)), nil)
		if home[k] != pool[2] && u != home[k] {
			t.Fatalf("key %d moved from %v to %v though its upstream stayed", k, home[k], u)
		}
	}
	// Without the header: the fallback.
	if s.Select(pool, request("", ""), nil) == nil {
		t.Fatal("no upstream for a request without the header")
	}
}

// tampered is tok with its last character changed.
func tampered(tok string) string {
	last := byte('A')
	if tok[len(tok)-1] == last {
		last = 'B'
	}
	return tok[:len(tok)-1] + string(last)
}

// Learn mode: the backend mints the value, the client gets it byte for
// byte and echoes it; every request returns to the upstream that minted it.
// The table keys on an HMAC of the value, never the value.
func TestLearnSticky(t *testing.T) {
	pool := testPool(3)
	s := provision(t, &StickyHeader{Name: "Mcp-Session-Id", Mode: ModeLearn, Secrets: []string{testSecret},
		FallbackRaw: json.RawMessage(`{"policy":"round_robin"}`)})
	seen := map[*reverseproxy.Upstream]bool{}
	for c := range 9 {
		value := fmt.Sprintf("3f1c-%d-uuid", c)
		first, w := serve(t, s, pool, request("", ""), func(*reverseproxy.Upstream) string { return value })
		if got := w.Header().Get("Mcp-Session-Id"); got != value {
			t.Fatalf("client got %q, want the backend's %q unchanged", got, value)
		}
		seen[first] = true
		for i := range 20 {
			r := request("Mcp-Session-Id", value)
			if u, _ := serve(t, s, pool, r, nil); u != first {
				t.Fatalf("client %d request %d went to %v, want %v", c, i, u, first)
			}
			if r.Header.Get("Mcp-Session-Id") != value {
				t.Fatalf("the backend got %q, want %q", r.Header.Get("Mcp-Session-Id"), value)
			}
		}
	}
	if len(seen) != 3 {
		t.Errorf("9 new sessions reached %d upstreams, want 3", len(seen))
	}
	for _, e := range s.tokens.LearnedSessions() {
		if strings.Contains(e.Key.String(), "uuid") || !e.Key.Named() {
			t.Fatalf("table key %v is not a hash", e.Key)
		}
	}
	// An unknown value is placed by the fallback and learned from the
	// response that sets it.
	u, _ := serve(t, s, pool, request("Mcp-Session-Id", "never-seen"), func(*reverseproxy.Upstream) string { return "fresh" })
	if again, _ := serve(t, s, pool, request("Mcp-Session-Id", "fresh"), nil); again != u {
		t.Fatalf("learned value went to %v, minted on %v", again, u)
	}
}

// Learn mode, failover: a session whose upstream is down moves to the same
// replacement on every request, the table is updated so it stays there,
// and another instance with the same key (its own table) moves it to the
// same replacement: the choice comes from the session's key.
func TestLearnFailover(t *testing.T) {
	pool := testPool(4)
	newPolicy := func() *StickyHeader {
		return provision(t, &StickyHeader{Name: "X-Session", Mode: ModeLearn, Secrets: []string{testSecret},
			FallbackRaw: json.RawMessage(`{"policy":"first"}`)})
	}
	a, b := newPolicy(), newPolicy()
	for _, s := range []*StickyHeader{a, b} {
		if home, _ := serve(t, s, pool, request("", ""), func(*reverseproxy.Upstream) string { return "sess-1" }); home != pool[0] {
			t.Fatalf("fallback first chose %v", home)
		}
	}
	less := pool[1:]
	moved, _ := serve(t, a, less, request("X-Session", "sess-1"), nil)
	if moved == nil || moved == pool[0] {
		t.Fatalf("with %v gone the session went to %v", pool[0], moved)
	}
	if other, _ := serve(t, b, less, request("X-Session", "sess-1"), nil); other != moved {
		t.Fatalf("instances moved the session to %v and %v", moved, other)
	}
	for i := range 10 {
		if u, _ := serve(t, a, pool, request("X-Session", "sess-1"), nil); u != moved {
			t.Fatalf("request %d after the move went to %v, want %v (the table was updated)", i, u, moved)
		}
	}
}

// A 101 Switching Protocols response (a WebSocket upgrade) carries the
// rewritten header too, and the final response after it is not rewritten
// twice.
func TestRewriteOnUpgrade(t *testing.T) {
	pool := testPool(2)
	s := provision(t, &StickyHeader{Name: "X-Session", Secrets: []string{testSecret}})
	w := httptest.NewRecorder()
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if s.Select(pool, r, w) == nil {
			t.Fatal("no upstream")
		}
		w.Header().Set("X-Session", "ws-1")
		w.WriteHeader(http.StatusSwitchingProtocols)
		return nil
	})
	if err := (cookie.Handler{}).ServeHTTP(w, request("", ""), next); err != nil {
		t.Fatal(err)
	}
	_, orig, ok := cookie.SplitRouted(w.Header().Get("X-Session"))
	if w.Code != http.StatusSwitchingProtocols || !ok || orig != "ws-1" {
		t.Fatalf("101 response: status %d, X-Session %q; want TOKEN~ws-1", w.Code, w.Header().Get("X-Session"))
	}
}

// Learn mode, on_failure temporary: during the outage the session detours
// without its entry changing, and returns once its upstream is back.
func TestLearnTemporary(t *testing.T) {
	pool := testPool(3)
	s := provision(t, &StickyHeader{Name: "X-Session", Mode: ModeLearn, OnFailure: "temporary", Secrets: []string{testSecret},
		FallbackRaw: json.RawMessage(`{"policy":"first"}`)})
	if home, _ := serve(t, s, pool, request("", ""), func(*reverseproxy.Upstream) string { return "sess-t" }); home != pool[0] {
		t.Fatalf("fallback first chose %v", home)
	}
	testutil.SetAvailable(t, pool[0], false)
	var detour *reverseproxy.Upstream
	for i := range 5 {
		u, _ := serve(t, s, pool, request("X-Session", "sess-t"), nil)
		if u == nil || u == pool[0] || (detour != nil && u != detour) {
			t.Fatalf("request %d of the detour went to %v (first %v)", i, u, detour)
		}
		detour = u
	}
	testutil.SetAvailable(t, pool[0], true)
	if u, _ := serve(t, s, pool, request("X-Session", "sess-t"), nil); u != pool[0] {
		t.Fatalf("after the outage: %v, want %v (the entry must not have moved)", u, pool[0])
	}
}
