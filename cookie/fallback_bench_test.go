package cookie

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

// BenchmarkFallbackRetry is a retry of a new session whose first upstream
// failed, by sticky_cookie with ip_affinity as its fallback: each retry
// hands the fallback the pool less the failed upstream.
func BenchmarkFallbackRetry(b *testing.B) {
	for _, n := range []int{8, 32} {
		b.Run(fmt.Sprintf("upstreams=%d", n), func(b *testing.B) {
			s := &StickyCookie{Secrets: []string{"bench-secret-0123456789abcdef"},
				FallbackRaw: json.RawMessage(`{"policy":"ip_affinity"}`)}
			// A loaded config's logger, quiet: rebinds are logged at info, and a
			// context without one logs every decision.
			if err := caddy.Load([]byte(`{"admin":{"disabled":true},"logging":{"logs":{"default":{"level":"WARN"}}}}`), true); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = caddy.Stop() })
			ctx, cancel := caddy.NewContext(caddy.ActiveContext())
			b.Cleanup(cancel)
			if err := s.Provision(ctx); err != nil {
				b.Fatal(err)
			}
			pool := testPool(n)
			w := httptest.NewRecorder()
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				ip := fmt.Sprintf("10.0.%d.%d", i%4096/256, i%256)
				r := httptest.NewRequest("GET", "/", nil)
				r.RemoteAddr = "10.1.1.1:5000"
				vars := map[string]any{caddyhttp.ClientIPVarKey: ip}
				r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
				if s.Select(pool, r, w) == nil || s.Select(pool, r, w) == nil {
					b.Fatal("no upstream")
				}
			}
		})
	}
}

// BenchmarkSelectLearn compares learn mode, its value learned, with insert
// mode and a valid cookie, in one run (make bench's learn target: at most
// 1.5x insert mode's cost).
func BenchmarkSelectLearn(b *testing.B) {
	pool := testPool(4)
	insert := provision(b, &StickyCookie{FallbackRaw: fallback("random")})
	insertLine := "_ga=GA1.2.3.4; affinity=" + insertCookie(insert, pool, 2, time.Now(), time.Now()) + "; theme=dark"
	learn := provision(b, &StickyCookie{Mode: ModeLearn, Name: "JSESSIONID", FallbackRaw: fallback("random")})
	const value = "0F3A1C9B7D2E4F6A8B0C1D2E3F4A5B6C"
	learn.learned.Sessions().Put(learn.keys.ValueKey(0, value), affinity.AddrHash(pool[2].Dial), time.Now())
	learnLine := "_ga=GA1.2.3.4; JSESSIONID=" + value + "; theme=dark"
	for _, p := range []struct {
		name string
		s    *StickyCookie
		line string
	}{{"insert", insert, insertLine}, {"learn", learn, learnLine}} {
		b.Run("mode="+p.name, func(b *testing.B) {
			w := httptest.NewRecorder()
			r := newRequest()
			vars := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
			b.ReportAllocs()
			for b.Loop() {
				// A new request as far as the policy goes: its own Cookie
				// header (insert mode edits it), no state of an earlier one.
				r.Header["Cookie"] = []string{p.line}
				delete(vars, p.s.varKey)
				if p.s.Select(pool, r, w) != pool[2] {
					b.Fatal("the session's upstream was not chosen")
				}
			}
		})
	}
}
