package header

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-affinity/caddy-affinity/cookie"
)

// A rewritten response value carries the token exactly once, before the
// backend's own value (any token it had replaced), and rewriting it again
// changes nothing.
func FuzzRewriteHeaderValue(f *testing.F) {
	s := provision(f, &StickyHeader{Name: "Mcp-Session-Id", Secrets: []string{testSecret}})
	routed := routedValue(f, s)
	tok, _, _ := cookie.SplitRouted(routed)
	for _, v := range []string{"", "abc", "~", "~~~", routed, tok, tok + "~", tok + "~" + routed, strings.Repeat("a~", 100), "\x00\xff"} {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, v string) {
		out := cookie.RewriteHeaderValue(v, tok)
		got, orig, ok := cookie.SplitRouted(out)
		if !ok || got != tok {
			t.Fatalf("RewriteHeaderValue(%q) = %q: no token in front", v, out)
		}
		if _, want, _ := cookie.SplitRouted(v); orig != want {
			t.Fatalf("RewriteHeaderValue(%q) kept %q, want %q", v, orig, want)
		}
		if again := cookie.RewriteHeaderValue(out, tok); again != out {
			t.Fatalf("rewriting %q again gave %q", out, again)
		}
	})
}

// routedValue is the value a client of rewrite-mode policy s gets from a
// backend that sets "v".
func routedValue(t testing.TB, s *StickyHeader) string {
	_, w := serve(t, s, testPool(3), request("", ""), func(*reverseproxy.Upstream) string { return "v" })
	return w.Header().Get(s.Name)
}

// Any header value, in every mode, is routed (never no upstream while one
// is available) without a panic; in rewrite mode the backend gets the value
// without its token, and in insert mode not at all.
func FuzzSelectHeaderValue(f *testing.F) {
	pool := testPool(3)
	policies := []*StickyHeader{
		provision(f, &StickyHeader{Name: "X-S", Secrets: []string{testSecret}}),
		provision(f, &StickyHeader{Name: "X-S", Mode: ModeInsert, Secrets: []string{testSecret}}),
		provision(f, &StickyHeader{Name: "X-S", Mode: ModeHash}),
	}
	routed := routedValue(f, policies[0])
	for _, v := range []string{"", "v", routed, routed + "x", "~" + routed, strings.Repeat("~", 300), "\x00", strings.Repeat(routed, 50)} {
		f.Add(v, v)
	}
	f.Fuzz(func(t *testing.T, v1, v2 string) {
		for _, s := range policies {
			r := request("", "")
			r.Header["X-S"] = []string{v1, v2}
			if u := s.Select(pool, r, httptest.NewRecorder()); u == nil {
				t.Fatalf("%s: no upstream for %q, %q", s.Mode, v1, v2)
			}
			switch s.Mode {
			case ModeInsert:
				if len(r.Header["X-S"]) != 0 {
					t.Fatalf("insert: the backend would get %q", r.Header["X-S"])
				}
			case ModeRewrite:
				for i, v := range []string{v1, v2} {
					if _, orig, _ := cookie.SplitRouted(v); r.Header["X-S"][i] != orig {
						t.Fatalf("rewrite: %q forwarded as %q, want %q", v, r.Header["X-S"][i], orig)
					}
				}
			}
		}
	})
}
