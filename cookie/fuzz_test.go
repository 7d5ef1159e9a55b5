package cookie

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

func fuzzKeyring(t testing.TB) *affinity.Keyring {
	k, err := affinity.NewKeyring("insert\x00affinity", []byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func FuzzParseToken(f *testing.F) {
	k := fuzzKeyring(f)
	ins := string(k.AppendToken(nil, affinity.Token{Kind: affinity.KindInsert, Upstream: 12345, Issued: 1_700_000_000, Refreshed: 1_700_000_100}))
	route := string(k.AppendToken(nil, affinity.Token{Kind: affinity.KindRoute, Upstream: 1<<48 - 1, Issued: 1}))
	for _, s := range []string{
		ins, route, "", "garbage", ins[:33], ins + "A", route[:27] + "_", route + "~orig",
		strings.Repeat("A", 34), strings.Repeat("_", 28), strings.Repeat("\xff", 34),
		ins[:33] + "B", "+" + route[1:], route[:14] + "=" + route[15:],
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, kind := range []affinity.Kind{affinity.KindInsert, affinity.KindRoute} {
			tok, key, reason := k.ParseToken(kind, s)
			looks := affinity.LooksLikeToken(kind, s)
			if reason == affinity.ReasonNone {
				if key != 0 || tok.Kind != kind {
					t.Fatalf("accepted %q with key %d, kind %d", s, key, tok.Kind)
				}
				if again := string(k.AppendToken(nil, tok)); again != s {
					t.Fatalf("accepted %q, which re-encodes as %q", s, again)
				}
				if !looks {
					t.Fatalf("accepted %q, which LooksLikeToken rejects", s)
				}
			} else if key != -1 || tok != (affinity.Token{}) {
				t.Fatalf("rejected %q (%v) but returned key %d, token %+v", s, reason, key, tok)
			}
			if !looks && reason != affinity.ReasonMalformed {
				t.Fatalf("%q is not token-shaped but was rejected as %v", s, reason)
			}
		}
		tok, orig, ok := SplitRouted(s)
		if ok && tok+"~"+orig != s || !ok && orig != s {
			t.Fatalf("SplitRouted(%q) = %q, %q, %v", s, tok, orig, ok)
		}
	})
}

func FuzzRewriteSetCookie(f *testing.F) {
	tok := testRouteToken(f, 42)
	old := testRouteToken(f, 7)
	now := time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, s := range []string{
		"SESSID=abc", backendCookie, "SESSID=" + old + "~abc; Path=/", `SESSID="q v"; path=/`,
		"name=8159697f.661184c1247cb; path=/; max-age=86400", "SESSID=; Max-Age=0",
		"SESSID=x; Expires=Thu, 01-Jan-1970 00:00:01 GMT", "SESSID=x; Expires=Thu, 01 Jan 2099 00:00:01 GMT; Max-Age=-1",
		"OTHER=1", "SESSID", "", ";", "SESSID=\"", " SESSID = a = b ;", "SESSID=" + tok + "~" + old + "~x",
		"SESSID=\"\"", "SESSID=\t\"a\"\t; max-age=+1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		out, ok, _ := RewriteSetCookie(line, "SESSID", tok, now)
		if !ok {
			if out != line {
				t.Fatalf("not rewritten, yet changed: %q -> %q", line, out)
			}
			return
		}
		if !strings.Contains(out, tok+"~") {
			t.Fatalf("rewritten %q without the token: %q", line, out)
		}
		if SetCookieName(out) != "SESSID" {
			t.Fatalf("rewriting %q changed the cookie name: %q", line, out)
		}
		// Attributes are kept byte for byte.
		if i := strings.IndexByte(line, ';'); i >= 0 && !strings.HasSuffix(out, line[i:]) {
			t.Fatalf("rewriting %q changed the attributes: %q", line, out)
		}
		if eq := strings.IndexByte(line, '='); !strings.HasPrefix(out, line[:eq+1]) {
			t.Fatalf("rewriting %q changed the name part: %q", line, out)
		}
		again, ok, _ := RewriteSetCookie(out, "SESSID", tok, now)
		if !ok || again != out {
			t.Fatalf("rewriting twice differs from once:\n once %q\ntwice %q", out, again)
		}
		// Another token replaces ours rather than stacking on it.
		other, ok, _ := RewriteSetCookie(out, "SESSID", old, now)
		if !ok || len(other) != len(out) || !strings.Contains(other, old+"~") {
			t.Fatalf("rewriting %q with another token: %q", out, other)
		}
	})
}

// cookiePairs lists the pairs of Cookie header lines as an independent
// splitter sees them: split at ';', spaces and tabs trimmed, blanks
// dropped.
func cookiePairs(lines []string) []string {
	var out []string
	for _, l := range lines {
		for _, seg := range strings.Split(l, ";") {
			seg = strings.Trim(seg, " \t")
			if strings.TrimSpace(seg) != "" {
				out = append(out, seg)
			}
		}
	}
	return out
}

func isCookie(pair, name string) bool {
	n, _, ok := strings.Cut(pair, "=")
	return ok && strings.TrimSpace(n) == name
}

func without(pairs []string, name string) []string {
	var out []string
	for _, p := range pairs {
		if !isCookie(p, name) {
			out = append(out, p)
		}
	}
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func FuzzEditLines(f *testing.F) {
	route := testRouteToken(f, 1)
	for _, s := range [][2]string{
		{"a=1; affinity=T; b=2", "c=3"},
		{"affinity=T", ""},
		{"x=1; affinity=T; affinity=U", "affinity=V;y=2"},
		{`a="q v";  b=c==  ;affinity=T;	d=e=f`, " ; ;"},
		{"affinity=" + route + "~orig; z=1", `affinity="` + route + `~"`},
		{";affinity=T;", "affinity"},
		{"a=1 ;affinity = T ; b=2", "\v"},
	} {
		f.Add(s[0], s[1])
	}
	// The shapes that made the scan quadratic, at a size a fuzzer can
	// mutate quickly.
	for _, shape := range hostileShapes {
		f.Add(shape.make("affinity", 256), ordinaryHeader(128))
	}
	f.Fuzz(func(t *testing.T, l1, l2 string) {
		in := []string{l1, l2}
		before := cookiePairs(in)

		// Insert mode: drop every cookie of the name.
		dropped := EditLines([]string{l1, l2}, "affinity", drop)
		if got, want := cookiePairs(dropped), without(before, "affinity"); !equalStrings(got, want) {
			t.Fatalf("dropping from %q gave %q:\npairs %q\n want %q", in, dropped, got, want)
		}
		for _, l := range dropped {
			if strings.TrimSpace(l) == "" {
				t.Fatalf("dropping from %q left a blank line: %q", in, dropped)
			}
		}
		// Dropping from a well-formed line (no empty segment) leaves a
		// well-formed line: no separator dangling at either end, none
		// doubled.
		for _, l := range in {
			out := EditLines([]string{l}, "affinity", drop)
			if len(out) == 1 && !hasBlankSegment(l) && hasBlankSegment(out[0]) {
				t.Fatalf("dropping from %q left an empty segment: %q", l, out[0])
			}
		}
		// Lines without the cookie are untouched.
		for _, l := range in {
			has := false
			for _, p := range cookiePairs([]string{l}) {
				has = has || isCookie(p, "affinity")
			}
			if !has && strings.TrimSpace(l) != "" && !contains(dropped, l) {
				t.Fatalf("line %q without the cookie changed: %q", l, dropped)
			}
		}

		// Rewrite mode: strip route tokens, as the policy does.
		stripped := EditLines([]string{l1, l2}, "affinity", func(v string) (string, bool, bool) {
			_, orig, ok := SplitRouted(v)
			return orig, true, ok
		})
		after := cookiePairs(stripped)
		if !equalStrings(without(after, "affinity"), without(before, "affinity")) {
			t.Fatalf("stripping tokens from %q changed other cookies: %q", in, stripped)
		}
		if n, m := len(after)-len(without(after, "affinity")), len(before)-len(without(before, "affinity")); n != m {
			t.Fatalf("stripping tokens from %q changed the number of its cookies: %q", in, stripped)
		}
		// Nothing to edit: byte for byte the same, blank lines aside.
		same := EditLines([]string{l1, l2}, "affinity", keep)
		var want []string
		for _, l := range in {
			if strings.TrimSpace(l) != "" {
				want = append(want, l)
			}
		}
		if !equalStrings(same, want) {
			t.Fatalf("an edit that changes nothing changed %q to %q", in, same)
		}
	})
}

func hasBlankSegment(line string) bool {
	for _, seg := range strings.Split(line, ";") {
		if strings.Trim(seg, " \t") == "" {
			return true
		}
	}
	return false
}

func contains(lines []string, l string) bool {
	for _, x := range lines {
		if x == l {
			return true
		}
	}
	return false
}

func FuzzSelectCookie(f *testing.F) {
	clock := newClock()
	ins := provision(f, &StickyCookie{now: clock.Now, FallbackRaw: fallback("random"), IdleTimeout: 600e9, MaxLifetime: 3600e9})
	rw := provision(f, &StickyCookie{Mode: ModeRewrite, Name: "SESSID", now: clock.Now, FallbackRaw: fallback("random")})
	pool := testPool(3)
	valid := insertCookie(ins, pool, 1, clock.Now(), clock.Now())
	route := routeToken(rw, pool[2].Dial, clock.Now())
	for _, s := range []string{
		"", "affinity=" + valid, "a=1; affinity=" + valid + "; b=2", "affinity=garbage; affinity=" + valid,
		"affinity=" + valid[:20], "affinity=\"" + valid + "\"", "SESSID=" + route + "~orig; a=1",
		"SESSID=" + route + "~" + route + "~x", "affinity", ";;;", "affinity=;SESSID=", "SESSID=\"" + route + "~\"",
	} {
		f.Add(s)
	}
	for _, shape := range hostileShapes {
		f.Add(shape.make("affinity", 256))
		f.Add(shape.make("SESSID", 256))
	}
	f.Fuzz(func(t *testing.T, header string) {
		for _, s := range []*StickyCookie{ins, rw} {
			r, w := newRequest(header), httptest.NewRecorder()
			up := s.Select(pool, r, w)
			if up == nil {
				t.Fatalf("%s mode: nil for Cookie %q", s.Mode, header)
			}
			sc := setCookieLines(w.Header(), s.Name)
			if s.rewrite {
				if len(w.Header()["Set-Cookie"]) != 0 {
					t.Fatalf("rewrite mode set a cookie: %q", w.Header()["Set-Cookie"])
				}
			} else {
				if len(sc) > 1 {
					t.Fatalf("several cookies: %q", sc)
				}
				if len(sc) == 1 {
					if got, _ := upstreamOf(t, s, pool, cookieValue(sc[0])); got != up {
						t.Fatalf("cookie names %s, chose %s", got.Dial, up.Dial)
					}
				}
				for _, p := range cookiePairs(r.Header["Cookie"]) {
					if isCookie(p, s.Name) {
						t.Fatalf("Cookie %q: %q forwarded upstream", header, p)
					}
				}
			}
			// A retry goes elsewhere and leaves at most one cookie.
			again := s.Select(pool, r, w)
			if again == nil || again == up {
				t.Fatalf("%s mode: retry for Cookie %q: %v after %s", s.Mode, header, again, up.Dial)
			}
			if n := len(setCookieLines(w.Header(), s.Name)); !s.rewrite && n != 1 {
				t.Fatalf("after a retry: %d cookies", n)
			}
		}
	})
}
