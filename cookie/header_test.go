package cookie

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

func TestEachValue(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lines []string
		want  []string
	}{
		{"none", nil, nil},
		{"one", []string{"affinity=abc"}, []string{"abc"}},
		{"among others", []string{"a=1; affinity=abc; b=2"}, []string{"abc"}},
		{"several lines and several of the name",
			[]string{"a=1; affinity=x1", "b=2", "affinity=x2; affinity=x3"}, []string{"x1", "x2", "x3"}},
		{"quoted", []string{`affinity="abc"; b="q"`}, []string{"abc"}},
		{"quoted empty", []string{`affinity=""`}, []string{""}},
		{"empty", []string{"affinity=; b=1"}, []string{""}},
		{"value containing =", []string{"affinity=a=b=c"}, []string{"a=b=c"}},
		{"base64 padding", []string{"x=1; affinity=YWJjZA==; y=2"}, []string{"YWJjZA=="}},
		{"spaces and tabs", []string{" \taffinity = v1 \t;  affinity\t=v2"}, []string{"v1", "v2"}},
		{"no semicolon spaces", []string{"a=1;affinity=v;b=2"}, []string{"v"}},
		{"name is exact and case-sensitive",
			[]string{"Affinity=1; affinityx=2; xaffinity=3; a=affinity; affinity"}, nil},
		{"empty pairs", []string{";;affinity=v;;", ""}, []string{"v"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			EachValue(tc.lines, "affinity", func(v string) bool {
				got = append(got, v)
				return true
			})
			if !slices.Equal(got, tc.want) {
				t.Errorf("EachValue(%q) = %q, want %q", tc.lines, got, tc.want)
			}
		})
	}
}

func TestEachValueStops(t *testing.T) {
	lines := []string{"affinity=1; affinity=2", "affinity=3"}
	for stopAfter := 1; stopAfter <= 3; stopAfter++ {
		n := 0
		EachValue(lines, "affinity", func(string) bool {
			n++
			return n < stopAfter
		})
		if n != stopAfter {
			t.Errorf("fn returned false after %d calls, but was called %d times", stopAfter, n)
		}
	}
}

var (
	drop    = func(string) (string, bool, bool) { return "", false, true }
	keep    = func(v string) (string, bool, bool) { return v, true, false }
	replace = func(v string) (string, bool, bool) { return "NEW", true, true }
	upper   = func(v string) (string, bool, bool) { return strings.ToUpper(v), true, true }
)

func TestEditLines(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lines []string
		edit  func(string) (string, bool, bool)
		want  []string
	}{
		{"drop only cookie", []string{"affinity=T"}, drop, []string{}},
		{"drop only cookie with spaces", []string{"  affinity=T ;  "}, drop, []string{}},
		{"drop at start", []string{"affinity=T; a=1; b=2"}, drop, []string{"a=1; b=2"}},
		{"drop in the middle", []string{"a=1; affinity=T; b=2"}, drop, []string{"a=1; b=2"}},
		{"drop at end", []string{"a=1; b=2; affinity=T"}, drop, []string{"a=1; b=2"}},
		{"drop without spaces", []string{"a=1;affinity=T;b=2"}, drop, []string{"a=1;b=2"}},
		{"drop at start without spaces", []string{"affinity=T;a=1"}, drop, []string{"a=1"}},
		{"drop at end without spaces", []string{"a=1;affinity=T"}, drop, []string{"a=1"}},
		{"drop keeps other bytes exactly",
			[]string{`a="q v";  b=c==  ;affinity=T;	d=e=f`}, drop, []string{`a="q v";  b=c==  ;d=e=f`}},
		{"drop across lines, empty line removed",
			[]string{"a=1", "affinity=T", "b=2; affinity=U", "c=3"}, drop, []string{"a=1", "b=2", "c=3"}},
		{"drop several in one line", []string{"affinity=T; a=1; affinity=U; b=2; affinity=V"}, drop, []string{"a=1; b=2"}},
		{"drop two adjacent at start", []string{"affinity=T; affinity=U; x=1"}, drop, []string{"x=1"}},
		{"drop two adjacent at end", []string{"x=1; affinity=T; affinity=U"}, drop, []string{"x=1"}},
		{"drop two adjacent in the middle", []string{"x=1; affinity=T; affinity=U; y=2"}, drop, []string{"x=1; y=2"}},
		{"drop at end before a stray separator", []string{"x=1; affinity=T;"}, drop, []string{"x=1"}},
		{"drop around a pair without a value", []string{"x=1; affinity=T; flag; affinity=U"}, drop, []string{"x=1; flag"}},
		{"drop last two around a kept pair", []string{"x=1; affinity=T; y=2; affinity=U"}, drop, []string{"x=1; y=2"}},
		{"drop all of a line", []string{"affinity=T; affinity=U"}, drop, []string{}},
		{"drop interleaved", []string{"x=1; affinity=T; y=2; affinity=U; z=3"}, drop, []string{"x=1; y=2; z=3"}},
		{"drop quoted", []string{`a=1; affinity="T"; b=2`}, drop, []string{"a=1; b=2"}},
		{"drop ignores similar names",
			[]string{"Affinity=1; affinityx=2; a=affinity; affinity=T"}, drop, []string{"Affinity=1; affinityx=2; a=affinity"}},
		{"nothing to drop", []string{"a=1;  b=2 ;c"}, drop, []string{"a=1;  b=2 ;c"}},
		{"blank lines without the cookie are removed", []string{"a=1", " ", ""}, keep, []string{"a=1"}},
		{"unchanged", []string{"a=1; affinity=T; b=2"}, keep, []string{"a=1; affinity=T; b=2"}},
		{"replace", []string{"a=1; affinity=T; b=2"}, replace, []string{"a=1; affinity=NEW; b=2"}},
		{"replace quoted keeps quotes", []string{`a=1; affinity="T"`}, replace, []string{`a=1; affinity="NEW"`}},
		{"replace keeps spacing", []string{"a=1 ;affinity = T ; b=2"}, replace, []string{"a=1 ;affinity = NEW ; b=2"}},
		{"replace several", []string{"affinity=a; x=y; affinity=b", "affinity=c"}, upper,
			[]string{"affinity=A; x=y; affinity=B", "affinity=C"}},
		{"replace value containing =", []string{"affinity=a=b==; z=1"}, upper, []string{"affinity=A=B==; z=1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.lines)
			got := EditLines(in, "affinity", tc.edit)
			if !slices.Equal(got, tc.want) {
				t.Errorf("EditLines(%q) = %q, want %q", tc.lines, got, tc.want)
			}
			// The tail of the input slice beyond the result is cleared,
			// so nothing stale is left for the garbage collector or a
			// caller that reuses the array.
			for i := len(got); i < len(in); i++ {
				if in[i] != "" {
					t.Errorf("input[%d] = %q after EditLines, want cleared", i, in[i])
				}
			}
		})
	}
}

func TestEditLinesPassesUnquotedValue(t *testing.T) {
	var got []string
	EditLines([]string{`affinity="a b"; affinity=c; x="d"`}, "affinity", func(v string) (string, bool, bool) {
		got = append(got, v)
		return v, true, false
	})
	if !slices.Equal(got, []string{"a b", "c"}) {
		t.Fatalf("edit got %q, want [a b c]", got)
	}
}

func testRouteToken(t testing.TB, upstream uint64) string {
	k, err := affinity.NewKeyring("rewrite\x00SESSID", []byte("a test key for header tests"))
	if err != nil {
		t.Fatal(err)
	}
	return string(k.AppendToken(nil, affinity.Token{Kind: affinity.KindRoute, Upstream: upstream, Issued: 1_700_000_000}))
}

func TestSplitRouted(t *testing.T) {
	tok := testRouteToken(t, 1)
	ins := strings.Repeat("A", affinity.InsertLen)
	for _, tc := range []struct {
		value, token, original string
		ok                     bool
	}{
		{tok + "~orig", tok, "orig", true},
		{tok + "~", tok, "", true},
		{tok + "~a~b", tok, "a~b", true},
		{tok + "~" + tok + "~x", tok, tok + "~x", true},
		{tok, "", tok, false},
		{tok + "-orig", "", tok + "-orig", false},
		{"orig", "", "orig", false},
		{"", "", "", false},
		{strings.Repeat("A", affinity.RouteLen) + "~orig", "", strings.Repeat("A", affinity.RouteLen) + "~orig", false},
		{ins + "~orig", "", ins + "~orig", false},
		{"~" + tok, "", "~" + tok, false},
	} {
		token, orig, ok := SplitRouted(tc.value)
		if token != tc.token || orig != tc.original || ok != tc.ok {
			t.Errorf("SplitRouted(%q) = %q, %q, %v; want %q, %q, %v", tc.value, token, orig, ok, tc.token, tc.original, tc.ok)
		}
	}
}

func TestSetCookieName(t *testing.T) {
	for line, want := range map[string]string{
		"a=1":                  "a",
		"SESSID=x; Path=/":     "SESSID",
		" SESSID =x;Path=/":    "SESSID",
		"SESSID=a=b; Path=/":   "SESSID",
		"=x":                   "",
		"name=v; other=SESSID": "name",
	} {
		if got := SetCookieName(line); got != want {
			t.Errorf("SetCookieName(%q) = %q, want %q", line, got, want)
		}
	}
}

func TestRewriteSetCookie(t *testing.T) {
	tok := testRouteToken(t, 42)
	old := testRouteToken(t, 7)
	now := time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name, cookie, line, want string
	}{
		{"bare", "SESSID", "SESSID=abc", "SESSID=" + tok + "~abc"},
		{"every attribute kept",
			"SESSID", "SESSID=abc; Expires=Wed, 09 Jun 2100 10:18:14 GMT; Max-Age=3600; Path=/app; Domain=.example.com; Secure; HttpOnly; SameSite=Strict; Partitioned; Priority=High; X-Unknown=1; flag",
			"SESSID=" + tok + "~abc; Expires=Wed, 09 Jun 2100 10:18:14 GMT; Max-Age=3600; Path=/app; Domain=.example.com; Secure; HttpOnly; SameSite=Strict; Partitioned; Priority=High; X-Unknown=1; flag"},
		{"apache mod_usertrack, lower-case attributes",
			"name", "name=8159697f.661184c1247cb; path=/; max-age=86400",
			"name=" + tok + "~8159697f.661184c1247cb; path=/; max-age=86400"},
		{"odd spacing kept", "SESSID", "SESSID = abc ;path=/;  secure", "SESSID = " + tok + "~abc ;path=/;  secure"},
		{"quoted value", "SESSID", `SESSID="abc def"; Path=/`, `SESSID="` + tok + `~abc def"; Path=/`},
		{"value with = and padding", "SESSID", "SESSID=YWJjZA==; Path=/", "SESSID=" + tok + "~YWJjZA==; Path=/"},
		{"empty value", "SESSID", "SESSID=; Path=/", "SESSID=" + tok + "~; Path=/"},
		{"old token replaced, not doubled", "SESSID", "SESSID=" + old + "~abc; Path=/", "SESSID=" + tok + "~abc; Path=/"},
		{"same token replaced, not doubled", "SESSID", "SESSID=" + tok + "~abc", "SESSID=" + tok + "~abc"},
		{"quoted old token replaced", "SESSID", `SESSID="` + old + `~abc"`, `SESSID="` + tok + `~abc"`},
		{"future Expires", "SESSID", "SESSID=a; Expires=Fri, 01 Jan 2100 00:00:00 GMT", "SESSID=" + tok + "~a; Expires=Fri, 01 Jan 2100 00:00:00 GMT"},
		{"positive Max-Age wins over past Expires", "SESSID",
			"SESSID=a; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=60", "SESSID=" + tok + "~a; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=60"},
		{"positive Max-Age before past Expires", "SESSID",
			"SESSID=a; Max-Age=60; Expires=Thu, 01 Jan 1970 00:00:00 GMT", "SESSID=" + tok + "~a; Max-Age=60; Expires=Thu, 01 Jan 1970 00:00:00 GMT"},
		{"unparsable Max-Age is ignored", "SESSID", "SESSID=a; Max-Age=soon", "SESSID=" + tok + "~a; Max-Age=soon"},
		{"unparsable Expires is ignored", "SESSID", "SESSID=a; Expires=yesterday", "SESSID=" + tok + "~a; Expires=yesterday"},
		{"the last Max-Age wins", "SESSID", "SESSID=a; Max-Age=0; Max-Age=60", "SESSID=" + tok + "~a; Max-Age=0; Max-Age=60"},
		{"the last Expires wins", "SESSID",
			"SESSID=a; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Expires=Fri, 01 Jan 2100 00:00:00 GMT",
			"SESSID=" + tok + "~a; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Expires=Fri, 01 Jan 2100 00:00:00 GMT"},
		{"Max-Age with a plus sign is invalid, so ignored", "SESSID", "SESSID=a; Max-Age=+0", "SESSID=" + tok + "~a; Max-Age=+0"},
		{"huge Max-Age wins over past Expires", "SESSID",
			"SESSID=a; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=99999999999999999999",
			"SESSID=" + tok + "~a; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=99999999999999999999"},
		{"invalid Max-Age leaves a future Expires", "SESSID", "SESSID=a; Max-Age=1e3; Expires=Fri, 01 Jan 2100 00:00:00 GMT",
			"SESSID=" + tok + "~a; Max-Age=1e3; Expires=Fri, 01 Jan 2100 00:00:00 GMT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, _ := RewriteSetCookie(tc.line, tc.cookie, tok, now)
			if !ok || got != tc.want {
				t.Fatalf("RewriteSetCookie(%q)\n got %q, %v\nwant %q, true", tc.line, got, ok, tc.want)
			}
			again, ok, _ := RewriteSetCookie(got, tc.cookie, tok, now)
			if !ok || again != got {
				t.Fatalf("rewriting twice: %q, want %q", again, got)
			}
		})
	}
}

func TestRewriteSetCookieUnchanged(t *testing.T) {
	tok := testRouteToken(t, 42)
	now := time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct{ name, line string }{
		{"other cookie", "OTHER=abc; Path=/"},
		{"longer name", "SESSIDX=abc"},
		{"case differs", "sessid=abc"},
		{"name only in an attribute", "OTHER=1; SESSID=abc"},
		{"no value", "SESSID"},
		{"empty line", ""},
		{"Max-Age=0", "SESSID=; Max-Age=0"},
		{"negative Max-Age", "SESSID=x; Path=/; Max-Age=-1"},
		{"lower-case max-age=0", "SESSID=x; path=/; max-age=0"},
		{"Max-Age=0 wins over future Expires", "SESSID=x; Expires=Fri, 01 Jan 2100 00:00:00 GMT; Max-Age=0"},
		{"Expires in the past, RFC 1123", "SESSID=deleted; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/"},
		{"Expires in the past, Netscape dashes", "SESSID=deleted; expires=Thu, 01-Jan-1970 00:00:01 GMT; path=/"},
		{"Expires in the past, RFC 850", "SESSID=deleted; Expires=Thursday, 01-Jan-70 00:00:00 GMT"},
		{"Expires now", "SESSID=x; Expires=Sat, 01 Jun 2024 12:00:00 GMT"},
		{"the last Max-Age wins (deletes)", "SESSID=a; Max-Age=60; Max-Age=0"},
		{"Max-Age=-0", "SESSID=a; Max-Age=-0"},
		{"huge negative Max-Age", "SESSID=a; Max-Age=-99999999999999999999"},
		{"the last Expires wins (deletes)", "SESSID=a; Expires=Fri, 01 Jan 2100 00:00:00 GMT; Expires=Thu, 01 Jan 1970 00:00:00 GMT"},
		{"invalid Max-Age leaves a past Expires", "SESSID=a; Max-Age=soon; Expires=Thu, 01 Jan 1970 00:00:00 GMT"},
		{"PHP session_destroy style", "SESSID=deleted; expires=Thu, 01-Jan-1970 00:00:01 GMT; Max-Age=0; path=/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, _ := RewriteSetCookie(tc.line, "SESSID", tok, now)
			if ok || got != tc.line {
				t.Fatalf("RewriteSetCookie(%q) = %q, %v; want it unchanged, false", tc.line, got, ok)
			}
		})
	}
}

// A rewrite that would take the cookie past the 4096 bytes of name and
// value browsers store leaves the line as the backend wrote it.
func TestRewriteSetCookieTooLarge(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tok := strings.Repeat("T", 28)
	// Chromium counts name and value, not the '=' between them.
	room := MaxCookieSize - len("SESSID") - len(tok) - 1 // what the value may have
	fits := "SESSID=" + strings.Repeat("v", room) + "; Path=/"
	got, ok, tooLarge := RewriteSetCookie(fits, "SESSID", tok, now)
	if n := len(strings.SplitN(got, ";", 2)[0]) - 1; !ok || tooLarge || n != MaxCookieSize {
		t.Fatalf("a value that fits: ok %v, tooLarge %v, %d bytes of name and value", ok, tooLarge, n)
	}
	over := "SESSID=" + strings.Repeat("v", room+1) + "; Path=/"
	if got, ok, tooLarge := RewriteSetCookie(over, "SESSID", tok, now); ok || !tooLarge || got != over {
		t.Fatalf("one byte more: ok %v, tooLarge %v, line changed: %v", ok, tooLarge, got != over)
	}
	// Quotes count as part of the value.
	quoted := `SESSID="` + strings.Repeat("v", room-1) + `"; Path=/`
	if _, ok, tooLarge := RewriteSetCookie(quoted, "SESSID", tok, now); ok || !tooLarge {
		t.Fatalf("a quoted value one byte over: ok %v, tooLarge %v", ok, tooLarge)
	}
}
