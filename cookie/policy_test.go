package cookie

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"github.com/caddy-affinity/caddy-affinity/internal/testutil"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	_ "github.com/caddyserver/caddy/v2/modules/filestorage"
	"go.uber.org/zap"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

const (
	testSecret  = "policy-test-secret-0123456789"
	otherSecret = "another-secret-9876543210abcdef"
)

// fakeClock is the policy's clock in tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// provisionIn provisions s in ctx, with the test secret unless s has
// secrets (or noSecret), and a quiet logger.
func provisionIn(t testing.TB, ctx caddy.Context, s *StickyCookie) *StickyCookie {
	t.Helper()
	if err := s.Provision(ctx); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	// Caddy's context without a config logs at debug level to stderr;
	// the decisions would flood test output and benchmarks.
	s.setLogger(zap.NewNop())
	return s
}

func provision(t testing.TB, s *StickyCookie) *StickyCookie {
	t.Helper()
	if s.Secrets == nil {
		s.Secrets = []string{testSecret}
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	return provisionIn(t, ctx, s)
}

func fallback(name string) json.RawMessage {
	return json.RawMessage(`{"policy":"` + name + `"}`)
}

func testPool(n int) reverseproxy.UpstreamPool {
	p := make(reverseproxy.UpstreamPool, n)
	for i := range p {
		p[i] = &reverseproxy.Upstream{Host: new(reverseproxy.Host), Dial: fmt.Sprintf("10.0.0.%d:80", i+1)}
	}
	return p
}

// setAvailable marks u healthy or unhealthy (testutil.SetAvailable).
func setAvailable(t testing.TB, u *reverseproxy.Upstream, on bool) { testutil.SetAvailable(t, u, on) }

// newRequest is a request as Caddy's server hands it on: with the vars map
// and a replacer in its context.
func newRequest(cookieLines ...string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	for _, l := range cookieLines {
		r.Header.Add("Cookie", l)
	}
	ctx := context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{})
	ctx = context.WithValue(ctx, caddy.ReplacerCtxKey, caddy.NewReplacer())
	return r.WithContext(ctx)
}

// setCookieLines returns the Set-Cookie lines for cookie name.
func setCookieLines(h http.Header, name string) []string {
	var out []string
	for _, l := range h["Set-Cookie"] {
		if SetCookieName(l) == name {
			out = append(out, l)
		}
	}
	return out
}

// cookieValue is the value of a Set-Cookie line.
func cookieValue(line string) string {
	v, _, _ := strings.Cut(line, ";")
	_, v, _ = strings.Cut(v, "=")
	return v
}

// onlyCookie returns the value of the one Set-Cookie line for s's cookie,
// failing unless there is exactly one.
func onlyCookie(t testing.TB, s *StickyCookie, w http.ResponseWriter) string {
	t.Helper()
	lines := setCookieLines(w.Header(), s.Name)
	if len(lines) != 1 {
		t.Fatalf("want exactly one Set-Cookie for %s, got %q", s.Name, w.Header()["Set-Cookie"])
	}
	return cookieValue(lines[0])
}

// upstreamOf decodes an insert cookie value and returns the upstream of
// pool it names, failing if it is not valid.
func upstreamOf(t testing.TB, s *StickyCookie, pool reverseproxy.UpstreamPool, value string) (*reverseproxy.Upstream, affinity.Token) {
	t.Helper()
	tok, key, reason := s.keys.ParseToken(affinity.KindInsert, value)
	if reason != affinity.ReasonNone {
		t.Fatalf("cookie %q does not verify: %v", value, reason)
	}
	i, ok := s.pools.Get(pool).index.Lookup(key, tok.Upstream)
	if !ok {
		t.Fatalf("cookie %q names no upstream of the pool", value)
	}
	return pool[i], tok
}

// insertCookie mints a valid insert cookie value for pool[i].
func insertCookie(s *StickyCookie, pool reverseproxy.UpstreamPool, i int, issued, refreshed time.Time) string {
	return string(s.keys.AppendToken(nil, affinity.Token{
		Kind:     affinity.KindInsert,
		Upstream: s.keys.UpstreamID(0, pool[i].Dial),
		Issued:   affinity.UnixSeconds(issued), Refreshed: affinity.UnixSeconds(refreshed),
	}))
}

func routeToken(s *StickyCookie, upstream string, issued time.Time) string {
	return string(s.keys.AppendToken(nil, affinity.Token{
		Kind: affinity.KindRoute, Upstream: s.keys.UpstreamID(0, upstream), Issued: affinity.UnixSeconds(issued),
	}))
}

// counts sums a pool's counters for one result, or rejection reason.
func counts(pool reverseproxy.UpstreamPool, r affinity.Result) uint64 {
	var n uint64
	for _, u := range pool {
		n += affinity.CountersFor(PolicyName, u.Dial).Count(r)
	}
	return n
}

func rejections(pool reverseproxy.UpstreamPool, reason affinity.Reason) uint64 {
	var n uint64
	for _, u := range pool {
		n += affinity.CountersFor(PolicyName, u.Dial).RejectedBy(reason)
	}
	return n
}

func TestProvisionDefaults(t *testing.T) {
	s := provision(t, &StickyCookie{})
	if s.Mode != ModeInsert || s.Name != "affinity" || s.Path != "/" || s.Secure != "auto" ||
		s.SameSite != "auto" || s.OnFailure != "rebind" || s.rewrite || s.failure != affinity.Rebind {
		t.Fatalf("defaults: %+v", s)
	}
	if !s.attrs.HTTPOnly {
		t.Error("HttpOnly is not on by default")
	}
	if _, ok := s.fallback.(*reverseproxy.LeastConnSelection); !ok {
		t.Errorf("fallback is %T", s.fallback)
	}
}

func TestProvisionErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		json string
		want string
	}{
		{"bad mode", `{"mode":"prefix"}`, "mode:"},
		{"rewrite without name", `{"mode":"rewrite"}`, "name:"},
		{"bad name", `{"name":"a b"}`, "name:"},
		{"name with =", `{"name":"a=b"}`, "name:"},
		{"negative max_age", `{"max_age":-1}`, "max_age:"},
		{"negative idle_timeout", `{"idle_timeout":-1}`, "idle_timeout:"},
		{"negative max_lifetime", `{"max_lifetime":-1}`, "max_lifetime:"},
		{"bad secure", `{"secure":"yes"}`, "secure:"},
		{"bad same_site", `{"same_site":"lenient"}`, "same_site:"},
		{"same_site none without secure", `{"same_site":"none","secure":"never"}`, "same_site:"},
		{"bad on_failure", `{"on_failure":"retry"}`, "on_failure:"},
		{"relative path", `{"path":"app"}`, "path:"},
		{"empty secret", `{"secrets":["` + testSecret + `",""]}`, "secret 2 is empty"},
		{"unknown fallback", `{"fallback":{"policy":"nope"}}`, "loading fallback selection policy"},
		{"rewrite with max_age", `{"mode":"rewrite","name":"S","max_age":60000000000}`, "max_age: applies to insert mode only"},
		{"rewrite with forward_cookie", `{"mode":"rewrite","name":"S","forward_cookie":true}`, "forward_cookie: applies to insert mode only"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s StickyCookie
			if err := json.Unmarshal([]byte(tc.json), &s); err != nil {
				t.Fatal(err)
			}
			if s.Secrets == nil {
				s.Secrets = []string{testSecret}
			}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			err := s.Provision(ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Provision(%s) = %v, want an error containing %q", tc.json, err, tc.want)
			}
			if strings.Contains(err.Error(), testSecret) {
				t.Fatalf("error reveals a secret: %v", err)
			}
		})
	}
}

func TestSelectNewSession(t *testing.T) {
	clock := newClock()
	s := provision(t, &StickyCookie{now: clock.Now, FallbackRaw: fallback("random")})
	pool := testPool(4)
	before := counts(pool, affinity.ResultNew)

	r, w := newRequest(), httptest.NewRecorder()
	up := s.Select(pool, r, w)
	if up == nil {
		t.Fatal("Select returned nil")
	}
	if n := len(w.Header()["Set-Cookie"]); n != 1 {
		t.Fatalf("%d Set-Cookie lines, want 1: %q", n, w.Header()["Set-Cookie"])
	}
	line := w.Header()["Set-Cookie"][0]
	val := cookieValue(line)
	if want := "affinity=" + val + "; Path=/; HttpOnly; SameSite=Lax"; line != want {
		t.Errorf("Set-Cookie = %q, want %q", line, want)
	}
	if len(val) != affinity.InsertLen {
		t.Errorf("cookie value %q has %d chars, want %d", val, len(val), affinity.InsertLen)
	}
	got, tok := upstreamOf(t, s, pool, val)
	if got != up {
		t.Fatalf("cookie names %s, Select chose %s", got.Dial, up.Dial)
	}
	now := affinity.UnixSeconds(clock.Now())
	if tok.Issued != now || tok.Refreshed != now {
		t.Errorf("token times %d/%d, want %d", tok.Issued, tok.Refreshed, now)
	}
	if counts(pool, affinity.ResultNew) != before+1 {
		t.Error("new session not counted")
	}
	for _, u := range pool {
		host, port, _ := strings.Cut(u.Dial, ":")
		if strings.Contains(line, host) || strings.Contains(line, ":"+port) {
			t.Errorf("Set-Cookie %q reveals the address %s", line, u.Dial)
		}
	}
}

func TestSelectCookieAttributes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		s       *StickyCookie
		tls     bool
		trusted bool
		xfp     string
		want    string
	}{
		{"defaults over TLS", &StickyCookie{}, true, false, "", "; Path=/; HttpOnly; Secure; SameSite=None"},
		{"trusted proxy says https", &StickyCookie{}, false, true, "https", "; Path=/; HttpOnly; Secure; SameSite=None"},
		{"untrusted proxy says https", &StickyCookie{}, false, false, "https", "; Path=/; HttpOnly; SameSite=Lax"},
		{"all options", &StickyCookie{Name: "srv", Path: "/app", Domain: "example.com", MaxAge: caddy.Duration(24 * time.Hour),
			Secure: "always", SameSite: "strict", HTTPOnly: new(bool)}, false, false, "",
			"; Path=/app; Domain=example.com; Max-Age=86400; Secure; SameSite=Strict"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := provision(t, tc.s)
			r, w := newRequest(), httptest.NewRecorder()
			if tc.tls {
				r.TLS = &tls.ConnectionState{}
			}
			if tc.xfp != "" {
				r.Header.Set("X-Forwarded-Proto", tc.xfp)
			}
			caddyhttp.SetVar(r.Context(), caddyhttp.TrustedProxyVarKey, tc.trusted)
			if s.Select(testPool(2), r, w) == nil {
				t.Fatal("nil")
			}
			v := onlyCookie(t, s, w)
			if got, want := w.Header()["Set-Cookie"][0], s.Name+"="+v+tc.want; got != want {
				t.Errorf("Set-Cookie = %q, want %q", got, want)
			}
		})
	}
}

func TestSelectSticks(t *testing.T) {
	clock := newClock()
	s := provision(t, &StickyCookie{now: clock.Now, FallbackRaw: fallback("random")})
	pool := testPool(8)
	first, w := newRequest(), httptest.NewRecorder()
	up := s.Select(pool, first, w)
	val := onlyCookie(t, s, w)
	hits := counts(pool, affinity.ResultHit)

	for i := 0; i < 100; i++ {
		clock.Advance(time.Minute)
		r, w := newRequest("a=1; affinity="+val+"; b=2"), httptest.NewRecorder()
		if got := s.Select(pool, r, w); got != up {
			t.Fatalf("request %d went to %v, session is on %s", i, got, up.Dial)
		}
		if sc := w.Header()["Set-Cookie"]; len(sc) != 0 {
			t.Fatalf("request %d: a hit without idle_timeout set a cookie: %q", i, sc)
		}
	}
	if got := counts(pool, affinity.ResultHit) - hits; got != 100 {
		t.Errorf("%d hits counted, want 100", got)
	}
}

func TestSelectFirstValidCookieWins(t *testing.T) {
	clock := newClock()
	s := provision(t, &StickyCookie{now: clock.Now, FallbackRaw: fallback("random")})
	pool := testPool(4)
	c1 := insertCookie(s, pool, 1, clock.Now(), clock.Now())
	c3 := insertCookie(s, pool, 3, clock.Now(), clock.Now())
	for _, tc := range []struct {
		lines []string
		want  int
	}{
		{[]string{"affinity=garbage; affinity=" + c1}, 1},
		{[]string{"affinity=" + c3, "affinity=" + c1}, 3},
		{[]string{"x=1", "affinity=" + c1[:10] + "; affinity=" + c3}, 3},
		{[]string{`affinity="` + c1 + `"`}, 1},
	} {
		if got := s.Select(pool, newRequest(tc.lines...), httptest.NewRecorder()); got != pool[tc.want] {
			t.Errorf("%q went to %v, want %s", tc.lines, got, pool[tc.want].Dial)
		}
	}
}

func TestSelectInvalidCookieIsAbsent(t *testing.T) {
	clock := newClock()
	s := provision(t, &StickyCookie{now: clock.Now, FallbackRaw: fallback("random"),
		MaxLifetime: caddy.Duration(time.Hour), IdleTimeout: caddy.Duration(10 * time.Minute)})
	foreignKey := provision(t, &StickyCookie{Secrets: []string{otherSecret}})
	otherName := provision(t, &StickyCookie{Name: "other"})
	pool := testPool(4)
	now := clock.Now()
	valid := insertCookie(s, pool, 2, now, now)
	tampered := []byte(valid)
	tampered[12] = 'A'
	if valid[12] == 'A' {
		tampered[12] = 'B'
	}

	for _, tc := range []struct {
		name   string
		value  string
		reason affinity.Reason
	}{
		{"garbage", "garbage", affinity.ReasonMalformed},
		{"truncated", valid[:len(valid)-1], affinity.ReasonMalformed},
		{"route token in insert mode", routeToken(s, pool[2].Dial, now), affinity.ReasonMalformed},
		{"tampered", string(tampered), affinity.ReasonSignature},
		{"foreign key", insertCookie(foreignKey, pool, 2, now, now), affinity.ReasonSignature},
		{"token of another cookie name", insertCookie(otherName, pool, 2, now, now), affinity.ReasonSignature},
		{"expired", insertCookie(s, pool, 2, now.Add(-time.Hour-time.Second), now), affinity.ReasonExpired},
		{"idle", insertCookie(s, pool, 2, now.Add(-20*time.Minute), now.Add(-11*time.Minute)), affinity.ReasonIdle},
		{"unknown upstream", string(s.keys.AppendToken(nil, affinity.Token{Kind: affinity.KindInsert,
			Upstream: s.keys.UpstreamID(0, "10.9.9.9:80"), Issued: affinity.UnixSeconds(now), Refreshed: affinity.UnixSeconds(now)})),
			affinity.ReasonUnknownUpstream},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := rejections(pool, tc.reason)
			rejected := counts(pool, affinity.ResultRejected)
			r, w := newRequest("affinity="+tc.value), httptest.NewRecorder()
			up := s.Select(pool, r, w)
			if up == nil {
				t.Fatal("Select returned nil with upstreams available")
			}
			got, tok := upstreamOf(t, s, pool, onlyCookie(t, s, w))
			if got != up {
				t.Fatalf("new cookie names %s, Select chose %s", got.Dial, up.Dial)
			}
			if tok.Issued != affinity.UnixSeconds(now) {
				t.Errorf("new cookie carries issue time %d, want now", tok.Issued)
			}
			if d := rejections(pool, tc.reason) - before; d != 1 {
				t.Errorf("%d rejections for %v counted, want 1", d, tc.reason)
			}
			if d := counts(pool, affinity.ResultRejected) - rejected; d != 1 {
				t.Errorf("%d rejected results counted, want 1", d)
			}
			if c := r.Header["Cookie"]; len(c) != 0 {
				t.Errorf("invalid cookie forwarded upstream: %q", c)
			}
		})
	}
	// The valid cookie itself sticks, as a control.
	if got := s.Select(pool, newRequest("affinity="+valid), httptest.NewRecorder()); got != pool[2] {
		t.Fatalf("valid cookie went to %v", got)
	}
}

func TestSelectEmptyOrUnavailablePool(t *testing.T) {
	s := provision(t, &StickyCookie{})
	w := httptest.NewRecorder()
	if up := s.Select(nil, newRequest(), w); up != nil || len(w.Header()["Set-Cookie"]) != 0 {
		t.Fatalf("empty pool: %v, %q", up, w.Header()["Set-Cookie"])
	}
	pool := testPool(2)
	c := insertCookie(s, pool, 0, time.Now(), time.Now())
	for _, u := range pool {
		setAvailable(t, u, false)
	}
	w = httptest.NewRecorder()
	if up := s.Select(pool, newRequest("affinity="+c), w); up != nil || len(w.Header()["Set-Cookie"]) != 0 {
		t.Fatalf("no upstream available: %v, %q", up, w.Header()["Set-Cookie"])
	}
}

func TestSelectRetryRebinds(t *testing.T) {
	s := provision(t, &StickyCookie{FallbackRaw: fallback("random")})
	pool := testPool(4)

	t.Run("new session", func(t *testing.T) {
		r, w := newRequest(), httptest.NewRecorder()
		w.Header().Add("Set-Cookie", "other=1; Path=/")
		tried := map[*reverseproxy.Upstream]bool{}
		for attempt := 1; attempt <= len(pool); attempt++ {
			up := s.Select(pool, r, w)
			if up == nil || tried[up] {
				t.Fatalf("attempt %d: %v after %d tried", attempt, up, len(tried))
			}
			tried[up] = true
			if got, _ := upstreamOf(t, s, pool, onlyCookie(t, s, w)); got != up {
				t.Fatalf("attempt %d: cookie names %s, chose %s", attempt, got.Dial, up.Dial)
			}
			if o := setCookieLines(w.Header(), "other"); len(o) != 1 || o[0] != "other=1; Path=/" {
				t.Fatalf("attempt %d: other Set-Cookie changed: %q", attempt, w.Header()["Set-Cookie"])
			}
		}
		// Every upstream failed this request once: the next attempt (within
		// lb_try_duration) goes round again rather than give up.
		up := s.Select(pool, r, w)
		if up == nil {
			t.Fatal("after every upstream was tried once, no upstream")
		}
		if got, _ := upstreamOf(t, s, pool, onlyCookie(t, s, w)); got != up {
			t.Fatalf("round again: cookie names %s, chose %s", got.Dial, up.Dial)
		}
	})

	t.Run("existing session", func(t *testing.T) {
		c := insertCookie(s, pool, 1, time.Now(), time.Now())
		r, w := newRequest("affinity="+c), httptest.NewRecorder()
		rebinds := counts(pool, affinity.ResultRebind)
		if up := s.Select(pool, r, w); up != pool[1] || len(w.Header()["Set-Cookie"]) != 0 {
			t.Fatalf("first attempt: %v, %q", up, w.Header()["Set-Cookie"])
		}
		up := s.Select(pool, r, w)
		if up == nil || up == pool[1] {
			t.Fatalf("retry went to %v, want another upstream than %s", up, pool[1].Dial)
		}
		if got, _ := upstreamOf(t, s, pool, onlyCookie(t, s, w)); got != up {
			t.Fatalf("retry cookie names %s, chose %s", got.Dial, up.Dial)
		}
		if counts(pool, affinity.ResultRebind)-rebinds != 1 {
			t.Error("rebind not counted")
		}
		// The rebound session sticks to its new upstream.
		if got := s.Select(pool, newRequest("affinity="+onlyCookie(t, s, w)), httptest.NewRecorder()); got != up {
			t.Fatalf("after rebind: %v, want %s", got, up.Dial)
		}
	})

	t.Run("unavailable upstream", func(t *testing.T) {
		c := insertCookie(s, pool, 3, time.Now(), time.Now())
		setAvailable(t, pool[3], false)
		defer setAvailable(t, pool[3], true)
		w := httptest.NewRecorder()
		up := s.Select(pool, newRequest("affinity="+c), w)
		if up == nil || up == pool[3] {
			t.Fatalf("session on an unavailable upstream went to %v", up)
		}
		if got, _ := upstreamOf(t, s, pool, onlyCookie(t, s, w)); got != up {
			t.Fatal("re-issued cookie names another upstream")
		}
	})
}

func TestSelectStrict(t *testing.T) {
	s := provision(t, &StickyCookie{OnFailure: "strict", FallbackRaw: fallback("random")})
	pool := testPool(3)
	c := insertCookie(s, pool, 0, time.Now(), time.Now())

	setAvailable(t, pool[0], false)
	w := httptest.NewRecorder()
	if up := s.Select(pool, newRequest("affinity="+c), w); up != nil {
		t.Fatalf("strict: session on an unavailable upstream went to %s", up.Dial)
	}
	if sc := w.Header()["Set-Cookie"]; len(sc) != 0 {
		t.Fatalf("strict failure set a cookie: %q", sc)
	}
	setAvailable(t, pool[0], true)
	if up := s.Select(pool, newRequest("affinity="+c), httptest.NewRecorder()); up != pool[0] {
		t.Fatalf("back up: %v", up)
	}

	// A retry of the same request never leaves the session's upstream: it
	// tries that one again (it may have recovered by lb_try_interval).
	r, w := newRequest("affinity="+c), httptest.NewRecorder()
	if up := s.Select(pool, r, w); up != pool[0] {
		t.Fatalf("first attempt: %v", up)
	}
	for i := 0; i < 3; i++ {
		if up := s.Select(pool, r, w); up != pool[0] {
			t.Fatalf("strict retry %d went to %v", i, up)
		}
	}
	setAvailable(t, pool[0], false)
	if up := s.Select(pool, r, w); up != nil {
		t.Fatalf("strict retry with the upstream down went to %s", up.Dial)
	}
	setAvailable(t, pool[0], true)
	if sc := w.Header()["Set-Cookie"]; len(sc) != 0 {
		t.Fatalf("strict retry set a cookie: %q", sc)
	}

	// Strict binds new sessions as usual, and an invalid cookie is absent.
	for _, lines := range [][]string{nil, {"affinity=garbage"}} {
		w := httptest.NewRecorder()
		up := s.Select(pool, newRequest(lines...), w)
		if up == nil {
			t.Fatalf("strict, cookie %q: nil", lines)
		}
		if got, _ := upstreamOf(t, s, pool, onlyCookie(t, s, w)); got != up {
			t.Fatal("wrong cookie")
		}
	}
}

func TestSelectDraining(t *testing.T) {
	s := provision(t, &StickyCookie{FallbackRaw: fallback("random")})
	pool := testPool(3)
	t.Cleanup(func() {
		for _, u := range pool {
			affinity.SetDraining(u.Dial, false)
		}
	})
	existing := insertCookie(s, pool, 0, time.Now(), time.Now())
	affinity.SetDraining(pool[0].Dial, true)

	for i := 0; i < 60; i++ {
		w := httptest.NewRecorder()
		up := s.Select(pool, newRequest(), w)
		if up == nil || up == pool[0] {
			t.Fatalf("new session %d went to %v while %s drains", i, up, pool[0].Dial)
		}
		if got, _ := upstreamOf(t, s, pool, onlyCookie(t, s, w)); got != up {
			t.Fatal("wrong cookie")
		}
	}
	for i := 0; i < 10; i++ {
		w := httptest.NewRecorder()
		if up := s.Select(pool, newRequest("affinity="+existing), w); up != pool[0] {
			t.Fatalf("existing session left its draining upstream for %v", up)
		}
		if sc := w.Header()["Set-Cookie"]; len(sc) != 0 {
			t.Fatalf("existing session on a draining upstream got a new cookie: %q", sc)
		}
	}
	// A retry away from the draining upstream avoids draining ones too.
	affinity.SetDraining(pool[1].Dial, true)
	r, w := newRequest("affinity="+existing), httptest.NewRecorder()
	s.Select(pool, r, w)
	if up := s.Select(pool, r, w); up != pool[2] {
		t.Fatalf("retry went to %v, want the only non-draining %s", up, pool[2].Dial)
	}
	// Every upstream draining: still served.
	affinity.SetDraining(pool[2].Dial, true)
	for i := 0; i < 10; i++ {
		if up := s.Select(pool, newRequest(), httptest.NewRecorder()); up == nil {
			t.Fatal("all draining: nil")
		}
	}
	// Only draining upstreams left untried on a retry: still served.
	r, w = newRequest(), httptest.NewRecorder()
	seen := map[*reverseproxy.Upstream]bool{}
	for i := 0; i < 3; i++ {
		up := s.Select(pool, r, w)
		if up == nil || seen[up] {
			t.Fatalf("all draining, attempt %d: %v", i, up)
		}
		seen[up] = true
	}
}

func TestSelectKeyRotation(t *testing.T) {
	clock := newClock()
	old := provision(t, &StickyCookie{now: clock.Now, Secrets: []string{otherSecret}})
	rotated := provision(t, &StickyCookie{now: clock.Now, Secrets: []string{testSecret, otherSecret}, FallbackRaw: fallback("random")})
	newOnly := provision(t, &StickyCookie{now: clock.Now, Secrets: []string{testSecret}, FallbackRaw: fallback("random")})
	pool := testPool(5)
	issued := clock.Now()
	c := insertCookie(old, pool, 3, issued, issued)
	clock.Advance(time.Minute)

	w := httptest.NewRecorder()
	if up := rotated.Select(pool, newRequest("affinity="+c), w); up != pool[3] {
		t.Fatalf("old-key cookie under [new, old] went to %v", up)
	}
	reissued := onlyCookie(t, rotated, w)
	tok, key, reason := newOnly.keys.ParseToken(affinity.KindInsert, reissued)
	if reason != affinity.ReasonNone || key != 0 {
		t.Fatalf("re-issued cookie does not verify under the new key alone: key %d, %v", key, reason)
	}
	if tok.Issued != affinity.UnixSeconds(issued) {
		t.Errorf("re-issuing under the new key changed the issue time: %d, want %d", tok.Issued, affinity.UnixSeconds(issued))
	}
	// The re-issued cookie is stable: no further Set-Cookie, same upstream.
	w = httptest.NewRecorder()
	if up := rotated.Select(pool, newRequest("affinity="+reissued), w); up != pool[3] || len(w.Header()["Set-Cookie"]) != 0 {
		t.Fatalf("re-issued cookie: %v, %q", up, w.Header()["Set-Cookie"])
	}
	if up := newOnly.Select(pool, newRequest("affinity="+reissued), httptest.NewRecorder()); up != pool[3] {
		t.Fatalf("re-issued cookie after dropping the old key: %v", up)
	}
}

func TestSelectIdleRefreshAndLifetime(t *testing.T) {
	clock := newClock()
	s := provision(t, &StickyCookie{now: clock.Now, FallbackRaw: fallback("random"),
		IdleTimeout: caddy.Duration(time.Hour), MaxLifetime: caddy.Duration(3 * time.Hour)})
	pool := testPool(4)
	start := clock.Now()
	c := insertCookie(s, pool, 2, start, start)

	get := func() (*reverseproxy.Upstream, []string) {
		w := httptest.NewRecorder()
		up := s.Select(pool, newRequest("affinity="+c), w)
		return up, setCookieLines(w.Header(), "affinity")
	}
	clock.Advance(10 * time.Minute)
	if up, sc := get(); up != pool[2] || len(sc) != 0 {
		t.Fatalf("before a quarter of idle_timeout: %v, %q", up, sc)
	}
	clock.Advance(6 * time.Minute)
	up, sc := get()
	if up != pool[2] || len(sc) != 1 {
		t.Fatalf("past a quarter of idle_timeout: %v, %q; want a refreshed cookie", up, sc)
	}
	_, tok := upstreamOf(t, s, pool, cookieValue(sc[0]))
	if tok.Issued != affinity.UnixSeconds(start) || tok.Refreshed != affinity.UnixSeconds(clock.Now()) {
		t.Fatalf("refreshed token times %d/%d, want %d/%d", tok.Issued, tok.Refreshed,
			affinity.UnixSeconds(start), affinity.UnixSeconds(clock.Now()))
	}
	old := c
	c = cookieValue(sc[0])

	// 59 minutes after the refresh: the refreshed cookie is alive, the
	// old one has been idle 75 minutes.
	clock.Advance(59 * time.Minute)
	if up, _ := get(); up != pool[2] {
		t.Fatalf("refreshed cookie went to %v", up)
	}
	before := rejections(pool, affinity.ReasonIdle)
	w := httptest.NewRecorder()
	s.Select(pool, newRequest("affinity="+old), w)
	if rejections(pool, affinity.ReasonIdle) != before+1 {
		t.Fatal("the unrefreshed cookie was not rejected as idle")
	}

	// Refreshing never extends max_lifetime.
	for clock.Now().Sub(start) <= 3*time.Hour {
		up, sc := get()
		if up != pool[2] {
			t.Fatalf("at %v: %v", clock.Now().Sub(start), up)
		}
		if len(sc) == 1 {
			c = cookieValue(sc[0])
		}
		clock.Advance(20 * time.Minute)
	}
	before = rejections(pool, affinity.ReasonExpired)
	w = httptest.NewRecorder()
	s.Select(pool, newRequest("affinity="+c), w)
	if rejections(pool, affinity.ReasonExpired) != before+1 {
		t.Fatal("a refreshed cookie outlived max_lifetime")
	}
	_, tok = upstreamOf(t, s, pool, onlyCookie(t, s, w))
	if tok.Issued != affinity.UnixSeconds(clock.Now()) {
		t.Fatal("the session that replaced an expired one kept the old issue time")
	}
}

func TestInsertModeRequestCookie(t *testing.T) {
	s := provision(t, &StickyCookie{})
	fwd := provision(t, &StickyCookie{ForwardCookie: true})
	pool := testPool(2)
	c := insertCookie(s, pool, 1, time.Now(), time.Now())
	for _, tc := range []struct {
		name  string
		s     *StickyCookie
		lines []string
		want  []string
	}{
		{"only cookie", s, []string{"affinity=" + c}, nil},
		{"middle", s, []string{"a=1; affinity=" + c + "; b=\"2\""}, []string{`a=1; b="2"`}},
		{"start and other lines", s, []string{"affinity=" + c + "; a=1", "b=2", "c=3"}, []string{"a=1", "b=2", "c=3"}},
		{"several of the name, invalid too", s, []string{"z=0; affinity=junk", "affinity=" + c + ";y=1"}, []string{"z=0", "y=1"}},
		{"no cookie of ours", s, []string{"a=1; b=2"}, []string{"a=1; b=2"}},
		{"forward_cookie keeps it", fwd, []string{"a=1; affinity=" + c + "; b=2"}, []string{"a=1; affinity=" + c + "; b=2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, w := newRequest(tc.lines...), httptest.NewRecorder()
			if tc.s.Select(pool, r, w) == nil {
				t.Fatal("nil")
			}
			got := r.Header["Cookie"]
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Cookie header sent upstream = %q, want %q", got, tc.want)
			}
			if _, present := r.Header["Cookie"]; present != (tc.want != nil) {
				t.Fatal("Cookie header presence is wrong")
			}
			// A retry sees the edited header and keeps the session state.
			s2 := tc.s.Select(pool, r, w)
			if s2 == nil || !reflect.DeepEqual(r.Header["Cookie"], tc.want) {
				t.Fatalf("after a retry: %v, Cookie %q", s2, r.Header["Cookie"])
			}
		})
	}
}

func TestRewriteModeRequestCookie(t *testing.T) {
	clock := newClock()
	s := provision(t, &StickyCookie{Mode: ModeRewrite, Name: "SESSID", now: clock.Now, FallbackRaw: fallback("random")})
	foreign := provision(t, &StickyCookie{Mode: ModeRewrite, Name: "SESSID", Secrets: []string{otherSecret}})
	pool := testPool(4)
	tok := routeToken(s, pool[1].Dial, clock.Now())
	bad := routeToken(foreign, pool[1].Dial, clock.Now())
	for _, tc := range []struct {
		name   string
		lines  []string
		want   []string
		pinned bool
	}{
		{"stripped, others unchanged and in order",
			[]string{"a=1; SESSID=" + tok + "~orig; b=\"x\"", "z=9"}, []string{"a=1; SESSID=orig; b=\"x\"", "z=9"}, true},
		{"quoted", []string{`SESSID="` + tok + `~or=ig=="`}, []string{`SESSID="or=ig=="`}, true},
		{"empty original", []string{"SESSID=" + tok + "~; a=1"}, []string{"SESSID=; a=1"}, true},
		{"foreign token stripped too", []string{"a=1; SESSID=" + bad + "~orig"}, []string{"a=1; SESSID=orig"}, false},
		{"no token", []string{"SESSID=plain; a=1"}, []string{"SESSID=plain; a=1"}, false},
		{"other cookie with a token untouched", []string{"OTHER=" + tok + "~x; SESSID=" + tok + "~y"}, []string{"OTHER=" + tok + "~x; SESSID=y"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, w := newRequest(tc.lines...), httptest.NewRecorder()
			up := s.Select(pool, r, w)
			if up == nil {
				t.Fatal("nil")
			}
			if tc.pinned && up != pool[1] {
				t.Fatalf("went to %s, token names %s", up.Dial, pool[1].Dial)
			}
			if !reflect.DeepEqual(r.Header["Cookie"], tc.want) {
				t.Fatalf("Cookie header sent upstream = %q, want %q", r.Header["Cookie"], tc.want)
			}
			if sc := w.Header()["Set-Cookie"]; len(sc) != 0 {
				t.Fatalf("rewrite mode set a cookie itself: %q", sc)
			}
			// A retry must not strip again (the original value could
			// itself look like a token) nor lose the session.
			s.Select(pool, r, w)
			if !reflect.DeepEqual(r.Header["Cookie"], tc.want) {
				t.Fatalf("after a retry: Cookie %q", r.Header["Cookie"])
			}
		})
	}
}

func TestRewriteModeRebindIsDeterministic(t *testing.T) {
	clock := newClock()
	mk := func() *StickyCookie {
		return provision(t, &StickyCookie{Mode: ModeRewrite, Name: "SESSID", now: clock.Now, FallbackRaw: fallback("random")})
	}
	s, s2 := mk(), mk()
	pool := testPool(6)
	tok := routeToken(s, pool[2].Dial, clock.Now())
	setAvailable(t, pool[2], false)

	var moved *reverseproxy.Upstream
	for i, p := range []*StickyCookie{s, s, s, s2, s2, s, s2, s} {
		up := p.Select(pool, newRequest("SESSID="+tok+"~orig"), httptest.NewRecorder())
		if up == nil || up == pool[2] {
			t.Fatalf("request %d: %v", i, up)
		}
		if moved == nil {
			moved = up
		} else if up != moved {
			t.Fatalf("request %d moved to %s, earlier ones to %s", i, up.Dial, moved.Dial)
		}
	}
	// A retry leaves the replacement for yet another, also stable.
	r := newRequest("SESSID=" + tok + "~orig")
	s.Select(pool, r, httptest.NewRecorder())
	second := s.Select(pool, r, httptest.NewRecorder())
	if second == nil || second == moved || second == pool[2] {
		t.Fatalf("retry after the replacement: %v", second)
	}
	r = newRequest("SESSID=" + tok + "~orig")
	s2.Select(pool, r, httptest.NewRecorder())
	if again := s2.Select(pool, r, httptest.NewRecorder()); again != second {
		t.Fatalf("second replacement not stable: %v vs %s", again, second.Dial)
	}
	// Back up: the session returns.
	setAvailable(t, pool[2], true)
	if up := s.Select(pool, newRequest("SESSID="+tok+"~orig"), httptest.NewRecorder()); up != pool[2] {
		t.Fatalf("upstream back, session went to %v", up)
	}
}

// TestRewriteModeRemovedUpstreamIsDeterministic: a valid route token whose
// upstream has left the pool is the same case as an upstream that is down
// for good. The backend may never set its cookie again (mod_usertrack does
// not while the request carries it), so the client keeps sending this
// token, and every request must reach one replacement, not a new one each
// time.
func TestRewriteModeRemovedUpstreamIsDeterministic(t *testing.T) {
	clock := newClock()
	s := provision(t, &StickyCookie{Mode: ModeRewrite, Name: "SESSID", now: clock.Now, FallbackRaw: fallback("random")})
	pool := testPool(6)
	tok := routeToken(s, "10.0.0.99:80", clock.Now()) // scaled away
	seen := map[string]bool{}
	for i := 0; i < 30; i++ {
		up := s.Select(pool, newRequest("SESSID="+tok+"~orig"), httptest.NewRecorder())
		if up == nil {
			t.Fatal("nil")
		}
		seen[up.Dial] = true
	}
	if len(seen) != 1 {
		t.Fatalf("a session whose upstream left the pool was spread over %d upstreams: %v", len(seen), seen)
	}
}

// TestRewriteWithoutHandler: rewrite mode without the affinity handler
// still routes (without stickiness for new sessions) and never fails.
func TestRewriteWithoutHandler(t *testing.T) {
	s := provision(t, &StickyCookie{Mode: ModeRewrite, Name: "SESSID"})
	pool := testPool(3)
	for i := 0; i < 3; i++ {
		if s.Select(pool, newRequest(), httptest.NewRecorder()) == nil {
			t.Fatal("nil")
		}
	}
}

// outsideSelector is a fallback that returns an upstream outside the pool
// it is given.
type outsideSelector struct{ up *reverseproxy.Upstream }

func (o outsideSelector) Select(reverseproxy.UpstreamPool, *http.Request, http.ResponseWriter) *reverseproxy.Upstream {
	return o.up
}

func TestSelectFallbackOutsidePool(t *testing.T) {
	s := provision(t, &StickyCookie{})
	out := &reverseproxy.Upstream{Host: new(reverseproxy.Host), Dial: "10.99.0.1:80"}
	s.fallback = outsideSelector{out}
	w := httptest.NewRecorder()
	if up := s.Select(testPool(2), newRequest(), w); up != out {
		t.Fatalf("Select = %v, want the fallback's choice", up)
	}
	if sc := w.Header()["Set-Cookie"]; len(sc) != 0 {
		t.Fatalf("bound a session to an upstream outside the pool: %q", sc)
	}
}

func TestSelectConcurrent(t *testing.T) {
	s := provision(t, &StickyCookie{FallbackRaw: fallback("random"), IdleTimeout: caddy.Duration(time.Hour)})
	pools := []reverseproxy.UpstreamPool{testPool(3), testPool(5)}
	var wg sync.WaitGroup
	var bad atomic.Int64
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			pool := pools[g%2]
			w := httptest.NewRecorder()
			up := s.Select(pool, newRequest(), w)
			c := cookieValue(setCookieLines(w.Header(), "affinity")[0])
			for i := 0; i < 100; i++ {
				if s.Select(pool, newRequest("affinity="+c), httptest.NewRecorder()) != up {
					bad.Add(1)
				}
			}
		}(g)
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d requests left their session under concurrency", bad.Load())
	}
}

// storageContext is a Caddy context whose storage is a file system at dir.
func storageContext(t *testing.T, dir string) caddy.Context {
	t.Helper()
	cfg := &caddy.Config{
		Admin:      &caddy.AdminConfig{Disabled: true},
		StorageRaw: json.RawMessage(fmt.Sprintf(`{"module":"file_system","root":%q}`, dir)),
	}
	base, err := caddy.ProvisionContext(cfg)
	if err != nil {
		t.Fatalf("ProvisionContext: %v", err)
	}
	ctx, cancel := caddy.NewContext(base)
	t.Cleanup(cancel)
	return ctx
}

func TestProvisionStoredKey(t *testing.T) {
	dir := t.TempDir()
	pool := testPool(4)
	p1 := provisionIn(t, storageContext(t, dir), &StickyCookie{FallbackRaw: fallback("random")})
	keyFile := filepath.Join(dir, filepath.FromSlash(StorageKey))
	data, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatalf("the generated key was not stored: %v", err)
	}
	if len(strings.TrimSpace(string(data))) < minSecretLen {
		t.Fatalf("stored key too short: %d bytes", len(data))
	}
	p2 := provisionIn(t, storageContext(t, dir), &StickyCookie{FallbackRaw: fallback("random")})
	if again, _ := os.ReadFile(keyFile); string(again) != string(data) {
		t.Fatal("the second provision replaced the stored key")
	}
	other := provisionIn(t, storageContext(t, t.TempDir()), &StickyCookie{})

	w := httptest.NewRecorder()
	up := p1.Select(pool, newRequest(), w)
	c := onlyCookie(t, p1, w)
	w = httptest.NewRecorder()
	if got := p2.Select(pool, newRequest("affinity="+c), w); got != up || len(w.Header()["Set-Cookie"]) != 0 {
		t.Fatalf("second instance with the same storage: %v, %q; want a hit on %s", got, w.Header()["Set-Cookie"], up.Dial)
	}
	if _, _, r := other.keys.ParseToken(affinity.KindInsert, c); r != affinity.ReasonSignature {
		t.Fatalf("an instance with other storage accepted the cookie: %v", r)
	}
}

func TestProvisionStoredKeyCorrupt(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, filepath.FromSlash(StorageKey))
	if err := os.MkdirAll(filepath.Dir(keyFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, []byte("xyzzy\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &StickyCookie{}
	err := s.Provision(storageContext(t, dir))
	if err == nil || !strings.Contains(err.Error(), "secrets:") {
		t.Fatalf("corrupt stored key: %v", err)
	}
	if strings.Contains(err.Error(), "xyzzy") {
		t.Fatalf("error reveals the stored key: %v", err)
	}
}

func TestSecretPlaceholders(t *testing.T) {
	const value = "env-secret-value-0123456789abcdef"
	t.Setenv("CADDY_AFFINITY_TEST_SECRET", value)
	pool := testPool(4)
	fromEnv := provision(t, &StickyCookie{Secrets: []string{"{env.CADDY_AFFINITY_TEST_SECRET}"}, FallbackRaw: fallback("random")})
	literal := provision(t, &StickyCookie{Secrets: []string{value}})
	placeholderText := provision(t, &StickyCookie{Secrets: []string{"{env.CADDY_AFFINITY_TEST_SECRET}x"}})

	w := httptest.NewRecorder()
	up := fromEnv.Select(pool, newRequest(), w)
	c := onlyCookie(t, fromEnv, w)
	if got := literal.Select(pool, newRequest("affinity="+c), httptest.NewRecorder()); got != up {
		t.Fatalf("the placeholder was not replaced by the variable's value: %v vs %s", got, up.Dial)
	}
	if _, _, r := placeholderText.keys.ParseToken(affinity.KindInsert, c); r != affinity.ReasonSignature {
		t.Fatal("a different secret verified the cookie")
	}

	os.Unsetenv("CADDY_AFFINITY_UNSET_FOR_TEST")
	s := &StickyCookie{Secrets: []string{"{env.CADDY_AFFINITY_TEST_SECRET}", "literal-secret-do-not-print", "{env.CADDY_AFFINITY_UNSET_FOR_TEST}"}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	err := s.Provision(ctx)
	if err == nil {
		t.Fatal("an unset environment variable in a secret was accepted")
	}
	msg := err.Error()
	if !strings.Contains(msg, "secret 3") {
		t.Errorf("error does not name the secret by position: %v", err)
	}
	if strings.Contains(msg, value) || strings.Contains(msg, "literal-secret-do-not-print") {
		t.Errorf("error reveals a secret: %v", err)
	}
}

// BenchmarkSelect compares sticky_cookie with Caddy's own cookie policy for
// a request that carries a valid cookie, among two other cookies. Caddy's
// policy recomputes an HMAC for each upstream until one matches, so its
// cost depends on where the cookie's upstream sits in the pool: both get
// the cookie of the upstream in the middle of the pool (index n/2), which
// is Caddy's average case. Each iteration gets a fresh vars map, as a new
// request would (policy=harness is that per-request setup alone), and its
// Cookie header restored, since sticky_cookie removes its cookie from the
// proxied request.
func BenchmarkSelect(b *testing.B) {
	for _, n := range []int{4, 16, 64} {
		pool := testPool(n)
		mid := n / 2

		sticky := provision(b, &StickyCookie{FallbackRaw: fallback("random")})
		stickyLine := "_ga=GA1.2.3.4; affinity=" + insertCookie(sticky, pool, mid, time.Now(), time.Now()) + "; theme=dark"

		caddyPolicy := &reverseproxy.CookieHashSelection{Name: "lb", Secret: testSecret}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		if err := caddyPolicy.Provision(ctx); err != nil {
			b.Fatal(err)
		}
		mac := hmac.New(sha256.New, []byte(testSecret))
		mac.Write([]byte(pool[mid].Dial))
		caddyLine := "_ga=GA1.2.3.4; lb=" + hex.EncodeToString(mac.Sum(nil)) + "; theme=dark"

		for _, p := range []struct {
			name string
			sel  reverseproxy.Selector
			line string
		}{
			{"sticky_cookie", sticky, stickyLine},
			{"caddy_cookie", caddyPolicy, caddyLine},
		} {
			b.Run(fmt.Sprintf("upstreams=%d/policy=%s", n, p.name), func(b *testing.B) {
				base := newRequest()
				baseCtx := base.Context()
				w := httptest.NewRecorder()
				// Check the cookie is honoured before timing.
				if p.sel != nil {
					r := base.WithContext(context.WithValue(baseCtx, caddyhttp.VarsCtxKey, map[string]any{}))
					r.Header = http.Header{"Cookie": {p.line}}
					if up := p.sel.Select(pool, r, w); up != pool[mid] || len(w.Header()["Set-Cookie"]) != 0 {
						b.Fatalf("valid cookie went to %v (Set-Cookie %q)", up, w.Header()["Set-Cookie"])
					}
				}
				// Each Select gets a request of its own, as Caddy's server makes
				// it (a fresh vars map holding the client IP and the trusted-proxy
				// flag, its own Cookie header); they are made in batches outside
				// the timer, so only Select is measured.
				const batch = 1024
				reqs := make([]*http.Request, batch)
				prepare := func() {
					for j := range reqs {
						r := base.WithContext(context.WithValue(baseCtx, caddyhttp.VarsCtxKey, map[string]any{
							caddyhttp.TrustedProxyVarKey: false, caddyhttp.ClientIPVarKey: "192.0.2.1"}))
						r.Header = http.Header{"Cookie": {p.line}}
						reqs[j] = r
					}
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if i%batch == 0 {
						b.StopTimer()
						prepare()
						b.StartTimer()
					}
					if p.sel != nil && p.sel.Select(pool, reqs[i%batch], w) == nil {
						b.Fatal("nil")
					}
				}
			})
		}
		cancel()
	}
}

// BenchmarkSetCookie is the per-response cookie work of each mode: rewrite
// mode prefixes the backend's Set-Cookie with a fresh route token (as the
// affinity handler does for each response), insert mode writes its own
// Set-Cookie line (on new sessions, rebinds and refreshes).
func BenchmarkSetCookie(b *testing.B) {
	pool := testPool(4)
	b.Run("mode=rewrite", func(b *testing.B) {
		s := provision(b, &StickyCookie{Mode: ModeRewrite, Name: "SESSID"})
		st := &reqState{policy: s, chosenID: s.keys.UpstreamID(0, pool[1].Dial), issued: affinity.UnixSeconds(time.Now())}
		const line = "SESSID=8159697f.661184c1247cb; path=/; max-age=86400; HttpOnly"
		now := time.Now()
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, ok, _ := RewriteSetCookie(line, "SESSID", st.routeToken(), now); !ok {
				b.Fatal("not rewritten")
			}
		}
	})
	b.Run("mode=insert", func(b *testing.B) {
		s := provision(b, &StickyCookie{MaxAge: caddy.Duration(time.Hour)})
		w := httptest.NewRecorder()
		tok := affinity.Token{Kind: affinity.KindInsert, Upstream: s.keys.UpstreamID(0, pool[1].Dial), Issued: 1, Refreshed: 2}
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			s.setCookie(w, false, tok)
		}
		if len(w.Header()["Set-Cookie"]) != 1 {
			b.Fatal("setCookie did not replace its earlier line")
		}
	})
}

// A pool slice changed in place (Caddy does not, but a dynamic upstream
// source could) must not send a cookie to the upstream now at its old
// position: the O(1) cache check is backed by a per-selection address check.
func TestSelectPoolChangedInPlace(t *testing.T) {
	pool := testPool(3)
	s := provision(t, &StickyCookie{FallbackRaw: fallback("first")})
	now := time.Now()
	val := insertCookie(s, pool, 1, now, now)
	if up := s.Select(pool, newRequest("affinity="+val), httptest.NewRecorder()); up != pool[1] {
		t.Fatalf("valid cookie went to %v, want %s", up, pool[1].Dial)
	}
	pool[1] = &reverseproxy.Upstream{Host: new(reverseproxy.Host), Dial: "10.9.9.9:1"}
	w := httptest.NewRecorder()
	up := s.Select(pool, newRequest("affinity="+val), w)
	if up == pool[1] {
		t.Fatalf("a cookie for the removed upstream went to %s, now at its position", up.Dial)
	}
	if len(w.Header()["Set-Cookie"]) != 1 {
		t.Fatalf("the session was not rebound with a fresh cookie: %q", w.Header()["Set-Cookie"])
	}
}

// Dynamic upstreams are new objects on every attempt: a retry must still
// move off the upstream that failed, by its address.
func TestRetryDynamicUpstreamsMovesOff(t *testing.T) {
	s := provision(t, &StickyCookie{})
	r, w := newRequest(), httptest.NewRecorder()
	seen := map[string]bool{}
	for attempt := 0; attempt < 3; attempt++ {
		up := s.Select(testPool(3), r, w)
		if up == nil || seen[up.Dial] {
			t.Fatalf("attempt %d chose %v, already tried", attempt, up)
		}
		seen[up.Dial] = true
	}
	if n := len(setCookieLines(w.Header(), s.Name)); n != 1 {
		t.Fatalf("%d Set-Cookie lines after the retries, want 1", n)
	}
}

// In rewrite mode a backend cookie without a valid token (set before this
// config, expired, signed by a dropped key) routes by its value: the same
// upstream on every request, since the backend may never set it again.
func TestRewriteWithoutTokenRoutesByValue(t *testing.T) {
	pool := testPool(4)
	s := provision(t, &StickyCookie{Mode: ModeRewrite, Name: "SESSID"})
	spread := map[string]bool{}
	for c := 0; c < 20; c++ {
		val := fmt.Sprintf("8159697f.66118%04d", c)
		first := s.Select(pool, newRequest("SESSID="+val), httptest.NewRecorder())
		for i := 0; i < 10; i++ {
			r := newRequest("a=1; SESSID=" + val)
			if up := s.Select(pool, r, httptest.NewRecorder()); up != first {
				t.Fatalf("value %s went to %s then %s", val, first.Dial, up.Dial)
			}
			if got := r.Header.Get("Cookie"); got != "a=1; SESSID="+val {
				t.Fatalf("the backend's cookie was changed: %q", got)
			}
		}
		spread[first.Dial] = true
	}
	if len(spread) < 3 {
		t.Fatalf("20 sessions reached only %d of 4 upstreams", len(spread))
	}
}

// TestSelectAllocations holds the target of the issue: a valid cookie costs
// at most 2 allocations a selection (the request state kept for retries and
// the Cookie header without the cookie). Run without -race by make test.
func TestSelectAllocations(t *testing.T) {
	if testutil.RaceEnabled {
		t.Skip("allocation counts require a build without -race")
	}
	pool := testPool(16)
	s := provision(t, &StickyCookie{})
	line := "_ga=GA1.2.3.4; affinity=" + insertCookie(s, pool, 8, time.Now(), time.Now()) + "; theme=dark"
	const runs = 200
	reqs := make([]*http.Request, runs+1)
	for i := range reqs {
		r := newRequest()
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{
			caddyhttp.TrustedProxyVarKey: false, caddyhttp.ClientIPVarKey: "192.0.2.1"}))
		r.Header = http.Header{"Cookie": {line}}
		reqs[i] = r
	}
	w := httptest.NewRecorder()
	i := 0
	n := testing.AllocsPerRun(runs, func() {
		if s.Select(pool, reqs[i], w) != pool[8] {
			t.Fatal("valid cookie not honoured")
		}
		i++
	})
	if n > 2 {
		t.Fatalf("Select with a valid cookie: %.1f allocations, want at most 2", n)
	}
}

// nocache marks exactly the responses that insert the cookie as private.
func TestNoCache(t *testing.T) {
	pool := testPool(3)
	s := provision(t, &StickyCookie{NoCache: true})
	w := httptest.NewRecorder()
	r := newRequest()
	up := s.Select(pool, r, w)
	s.Select(pool, r, w) // a retry re-issues the cookie: still one "private"
	if got := w.Header()["Cache-Control"]; len(got) != 1 || got[0] != "private" {
		t.Fatalf("new session: Cache-Control %q, want [private]", got)
	}
	now := time.Now()
	val := insertCookie(s, pool, indexOf(pool, up), now, now)
	w = httptest.NewRecorder()
	s.Select(pool, newRequest("affinity="+val), w)
	if got := w.Header()["Cache-Control"]; len(got) != 0 {
		t.Fatalf("a hit that sets no cookie was marked %q", got)
	}
	plain := provision(t, &StickyCookie{})
	w = httptest.NewRecorder()
	plain.Select(pool, newRequest(), w)
	if got := w.Header()["Cache-Control"]; len(got) != 0 {
		t.Fatalf("without nocache: Cache-Control %q", got)
	}
}

// subsetRecorder is a fallback that chooses among part of a pool handed to
// it whole, and records the pools it was handed.
type subsetRecorder struct{ pools []int }

func (f *subsetRecorder) Select(pool reverseproxy.UpstreamPool, _ *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	f.pools = append(f.pools, len(pool))
	return pool[0]
}

func (f *subsetRecorder) SelectSubset(pool reverseproxy.UpstreamPool, _ *http.Request, _ http.ResponseWriter, skip func(*reverseproxy.Upstream) bool) *reverseproxy.Upstream {
	f.pools = append(f.pools, len(pool))
	for _, u := range pool {
		if !skip(u) {
			return u
		}
	}
	return nil
}

// A retry hands a fallback that can filter the whole pool, not a new
// slice without the failed upstream (a stateful fallback would build its
// state again for each subset).
func TestRetryHandsSubsetSelectorWholePool(t *testing.T) {
	s := provision(t, &StickyCookie{FallbackRaw: fallback("first")})
	rec := &subsetRecorder{}
	s.fallback = rec
	pool := testPool(5)
	r, w := newRequest(), httptest.NewRecorder()
	seen := map[*reverseproxy.Upstream]bool{}
	for range pool {
		up := s.Select(pool, r, w)
		if up == nil || seen[up] {
			t.Fatalf("attempt chose %v again or none", up)
		}
		seen[up] = true
	}
	for i, n := range rec.pools {
		if n != len(pool) {
			t.Fatalf("attempt %d handed the fallback %d upstreams, want the whole pool of %d", i+1, n, len(pool))
		}
	}
}

// A secret shorter than 16 bytes once its placeholders are replaced is
// refused, naming the option and the secret's position, never its value.
func TestShortSecretRefused(t *testing.T) {
	t.Setenv("CADDY_AFFINITY_SHORT_SECRET", "tooshort")
	for _, secrets := range [][]string{{"{env.CADDY_AFFINITY_SHORT_SECRET}"}, {testSecret, "fifteen-bytes.."}} {
		s := &StickyCookie{Secrets: secrets}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		err := s.Provision(ctx)
		cancel()
		if err == nil {
			t.Fatalf("secrets %q accepted", secrets)
		}
		n := len(secrets)
		if msg := err.Error(); !strings.Contains(msg, fmt.Sprintf("secrets: secret %d is", n)) || strings.Contains(msg, "tooshort") || strings.Contains(msg, "fifteen") {
			t.Errorf("secrets %q: error %q", secrets, msg)
		}
	}
}

// A cookie whose times lie far ahead of the clock (minted by an instance
// whose clock runs ahead) would never age: it is rejected where a lifetime
// applies, and the client gets a fresh cookie.
func TestSelectFutureCookieRejected(t *testing.T) {
	clock := newClock()
	s := provision(t, &StickyCookie{now: clock.Now, FallbackRaw: fallback("first"), IdleTimeout: caddy.Duration(10 * time.Minute)})
	pool := testPool(3)
	ahead := clock.Now().Add(affinity.MaxClockSkew + time.Minute)
	c := insertCookie(s, pool, 2, ahead, ahead)
	w := httptest.NewRecorder()
	if up := s.Select(pool, newRequest("affinity="+c), w); up != pool[0] {
		t.Fatalf("a cookie from the future kept its session: %v", up)
	}
	if n := rejections(pool, affinity.ReasonFuture); n != 1 {
		t.Fatalf("%d future rejections counted", n)
	}
	if onlyCookie(t, s, w) == "" {
		t.Fatal("no fresh cookie")
	}
	// Within the skew, it counts as now.
	near := clock.Now().Add(affinity.MaxClockSkew - time.Minute)
	if up := s.Select(pool, newRequest("affinity="+insertCookie(s, pool, 2, near, near)), httptest.NewRecorder()); up != pool[2] {
		t.Fatalf("a cookie within the skew lost its session: %v", up)
	}
}

// A drain with a deadline: bound sessions keep their upstream until it
// passes, then move on their next request and get a new cookie, strict ones
// too; new sessions avoid the upstream throughout.
func TestSelectDrainDeadline(t *testing.T) {
	for _, strict := range []bool{false, true} {
		clock := newClock()
		sc := &StickyCookie{now: clock.Now, FallbackRaw: fallback("random")}
		if strict {
			sc.OnFailure = "strict"
		}
		s := provision(t, sc)
		pool := testPool(3)
		t.Cleanup(func() { affinity.SetDraining(pool[0].Dial, false) })
		existing := insertCookie(s, pool, 0, clock.Now(), clock.Now())
		affinity.DrainUntil(pool[0].Dial, clock.Now().Add(time.Minute))
		for i := range 10 {
			w := httptest.NewRecorder()
			if up := s.Select(pool, newRequest("affinity="+existing), w); up != pool[0] {
				t.Fatalf("strict %v, before the deadline, request %d: %v, want the draining %s", strict, i, up, pool[0].Dial)
			}
			if up := s.Select(pool, newRequest(), httptest.NewRecorder()); up == pool[0] {
				t.Fatalf("strict %v: a new session went to the draining upstream", strict)
			}
		}
		clock.Advance(time.Minute)
		w := httptest.NewRecorder()
		up := s.Select(pool, newRequest("affinity="+existing), w)
		if up == nil || up == pool[0] {
			t.Fatalf("strict %v, after the deadline: %v, want another upstream", strict, up)
		}
		if got, _ := upstreamOf(t, s, pool, onlyCookie(t, s, w)); got != up {
			t.Fatalf("strict %v: the moved session's new cookie names %v, not %v", strict, got, up)
		}
		affinity.SetDraining(pool[0].Dial, false)
	}
}

// on_failure temporary: while the session's upstream is unavailable its
// requests go to one replacement, with no new cookie; once it recovers they
// return. A drain's deadline still moves the session for good.
func TestSelectTemporaryFailover(t *testing.T) {
	s := provision(t, &StickyCookie{OnFailure: "temporary", FallbackRaw: fallback("random")})
	pool := testPool(4)
	existing := insertCookie(s, pool, 0, time.Now(), time.Now())
	setAvailable(t, pool[0], false)
	var detour *reverseproxy.Upstream
	for i := range 10 {
		w := httptest.NewRecorder()
		up := s.Select(pool, newRequest("affinity="+existing), w)
		if up == nil || up == pool[0] || (detour != nil && up != detour) {
			t.Fatalf("request %d during the outage: %v (first detour %v)", i, up, detour)
		}
		detour = up
		if sc := w.Header()["Set-Cookie"]; len(sc) != 0 {
			t.Fatalf("a detour re-issued the cookie: %q", sc)
		}
	}
	setAvailable(t, pool[0], true)
	if up := s.Select(pool, newRequest("affinity="+existing), httptest.NewRecorder()); up != pool[0] {
		t.Fatalf("after recovery: %v, want the session's own %v", up, pool[0])
	}
}

// Rewrite mode, on_failure temporary: a cookie the replacement sets during
// the detour is rewritten with the session's own upstream, so the session
// does not move.
func TestRewriteTemporaryKeepsToken(t *testing.T) {
	s := provision(t, &StickyCookie{Mode: ModeRewrite, Name: "SESSID", OnFailure: "temporary", FallbackRaw: fallback("random")})
	pool := testPool(3)
	r := newRequest("SESSID=" + routeToken(s, pool[1].Dial, time.Now()) + "~abc")
	setAvailable(t, pool[1], false)
	t.Cleanup(func() { setAvailable(t, pool[1], true) })
	rec := httptest.NewRecorder()
	up := serveThrough(t, s, pool, rec, r, 1, func(w http.ResponseWriter, r *http.Request) {
		setBackendCookies(w, "SESSID=abc; Path=/")
		w.WriteHeader(http.StatusOK)
	})
	if up == nil || up == pool[1] {
		t.Fatalf("detour went to %v", up)
	}
	named, _, orig := routeOf(t, s, pool, cookieValue(rec.Result().Header["Set-Cookie"][0]))
	if named != pool[1] || orig != "abc" {
		t.Fatalf("the re-set cookie names %v (%q), want the session's own %v", named, orig, pool[1])
	}
}
