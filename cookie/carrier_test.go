package cookie

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

// The header carrier in insert mode (sticky_header's) checks the signed
// lifetimes as the cookie does: a token idle past idle_timeout, or older
// than max_lifetime, counts as absent and the response carries a new one;
// one aged a quarter of idle_timeout is re-issued.
func TestHeaderInsertLifetimes(t *testing.T) {
	clock := newClock()
	s := &StickyCookie{Mode: ModeInsert, Name: "X-Session", Secrets: []string{testSecret},
		IdleTimeout: caddy.Duration(time.Hour), MaxLifetime: caddy.Duration(4 * time.Hour),
		FallbackRaw: fallback("random"), now: clock.Now}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := s.ProvisionHeader(ctx, "test_header_lifetimes"); err != nil {
		t.Fatal(err)
	}
	s.setLogger(zap.NewNop())
	pool := testPool(3)
	get := func(tok string) (string, string) {
		r := newRequest()
		if tok != "" {
			r.Header.Set("X-Session", tok)
		}
		w := httptest.NewRecorder()
		up := s.Select(pool, r, w)
		if up == nil {
			t.Fatal("no upstream")
		}
		return up.Dial, w.Header().Get("X-Session")
	}
	home, tok := get("")
	if tok == "" {
		t.Fatal("insert mode set no header")
	}
	clock.Advance(10 * time.Minute)
	if up, again := get(tok); up != home || again != "" {
		t.Fatalf("fresh token: %s (home %s), re-issued %q", up, home, again)
	}
	clock.Advance(10 * time.Minute) // a quarter of idle_timeout passed
	up, refreshed := get(tok)
	if up != home || refreshed == "" || refreshed == tok {
		t.Fatalf("aged token: %s, re-issued %q; want the same upstream and a refreshed token", up, refreshed)
	}
	rejected := func() (n uint64) {
		for _, u := range pool {
			n += affinity.CountersFor("test_header_lifetimes", u.Dial).RejectedBy(affinity.ReasonIdle) +
				affinity.CountersFor("test_header_lifetimes", u.Dial).RejectedBy(affinity.ReasonExpired)
		}
		return n
	}
	clock.Advance(61 * time.Minute)
	_, long := get(refreshed)
	if long == "" || rejected() != 1 {
		t.Fatalf("a token idle past idle_timeout: new token %q, %d rejections; want a new token and 1", long, rejected())
	}
	// Kept refreshed, the new binding still ends at max_lifetime from its
	// issue: 4 refreshes of 50 minutes pass, the fifth is past 4 hours.
	for i := range 4 {
		clock.Advance(50 * time.Minute)
		_, next := get(long)
		if next == "" {
			t.Fatalf("refresh %d: no refreshed token", i)
		}
		long = next
	}
	if rejected() != 1 {
		t.Fatalf("%d rejections while refreshed within max_lifetime, want 1", rejected())
	}
	clock.Advance(50 * time.Minute)
	if _, fresh := get(long); fresh == "" || rejected() != 2 {
		t.Fatalf("past max_lifetime: new token %q, %d rejections; want a new token and 2", fresh, rejected())
	}
}
