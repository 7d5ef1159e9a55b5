package cookie

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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
