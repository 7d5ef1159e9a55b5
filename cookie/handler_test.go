package cookie

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

// serveThrough runs r through the affinity handler; the next handler plays
// reverse_proxy: it selects with s (attempts times, as Caddy's retry loop
// does), then lets backend write the response.
func serveThrough(t *testing.T, s *StickyCookie, pool reverseproxy.UpstreamPool, w http.ResponseWriter, r *http.Request,
	attempts int, backend func(w http.ResponseWriter, r *http.Request),
) *reverseproxy.Upstream {
	t.Helper()
	var up *reverseproxy.Upstream
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		for i := 0; i < attempts; i++ {
			up = s.Select(pool, r, w)
		}
		if up == nil {
			return caddyhttp.Error(http.StatusServiceUnavailable, nil)
		}
		backend(w, r)
		return nil
	})
	if err := (Handler{}).ServeHTTP(w, r, next); err != nil && up != nil {
		t.Fatalf("ServeHTTP: %v", err)
	}
	return up
}

// routeOf decodes the route token of a rewritten cookie value and returns
// the upstream it names and the token.
func routeOf(t *testing.T, s *StickyCookie, pool reverseproxy.UpstreamPool, value string) (*reverseproxy.Upstream, affinity.Token, string) {
	t.Helper()
	tok, orig, ok := SplitRouted(value)
	if !ok {
		t.Fatalf("value %q carries no route token", value)
	}
	parsed, key, reason := s.keys.ParseToken(affinity.KindRoute, tok)
	if reason != affinity.ReasonNone {
		t.Fatalf("route token %q does not verify: %v", tok, reason)
	}
	i, ok := s.pools.Get(pool).index.Lookup(key, parsed.Upstream)
	if !ok {
		t.Fatalf("route token names no upstream of the pool")
	}
	return pool[i], parsed, orig
}

const backendCookie = "SESSID=abc123; Path=/; Expires=Wed, 09 Jun 2100 10:18:14 GMT; Max-Age=3600; Domain=example.com; Secure; HttpOnly; SameSite=Lax; Partitioned; X-Custom=1"

func setBackendCookies(w http.ResponseWriter, lines ...string) {
	for _, l := range lines {
		w.Header().Add("Set-Cookie", l)
	}
}

func TestHandlerRewritesBackendCookie(t *testing.T) {
	clock := newClock()
	s := provision(t, &StickyCookie{Mode: ModeRewrite, Name: "SESSID", now: clock.Now, FallbackRaw: fallback("random")})
	pool := testPool(4)
	others := []string{
		"other=1; Path=/",
		"SESSID=; Max-Age=0; Path=/old",
		"SESSID=gone; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
		"name=8159697f.661184c1247cb; path=/; max-age=86400",
	}
	rec := httptest.NewRecorder()
	up := serveThrough(t, s, pool, rec, newRequest(), 1, func(w http.ResponseWriter, r *http.Request) {
		setBackendCookies(w, backendCookie)
		setBackendCookies(w, others...)
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("ok"))
	})
	res := rec.Result()
	got := res.Header["Set-Cookie"]
	if len(got) != 1+len(others) {
		t.Fatalf("Set-Cookie = %q", got)
	}
	if !slices.Equal(got[1:], others) {
		t.Errorf("other Set-Cookie lines changed:\n got %q\nwant %q", got[1:], others)
	}
	val := cookieValue(got[0])
	if want := "SESSID=" + val + strings.TrimPrefix(backendCookie, "SESSID=abc123"); got[0] != want {
		t.Errorf("rewritten line lost or changed attributes:\n got %q\nwant %q", got[0], want)
	}
	named, tok, orig := routeOf(t, s, pool, val)
	if named != up || orig != "abc123" {
		t.Fatalf("token names %s with original %q; served by %s", named.Dial, orig, up.Dial)
	}
	if tok.Issued != affinity.UnixSeconds(clock.Now()) {
		t.Errorf("token issued %d, want now", tok.Issued)
	}
	if body, _ := io.ReadAll(res.Body); string(body) != "ok" || res.StatusCode != 200 {
		t.Errorf("response %d %q", res.StatusCode, body)
	}

	// The client sends it back: same upstream, the backend sees its value,
	// and when it sets its cookie again the issue time is kept, so
	// max_lifetime runs from the binding, not from the last response.
	clock.Advance(10 * time.Minute)
	var seen []string
	rec = httptest.NewRecorder()
	again := serveThrough(t, s, pool, rec, newRequest("a=1; SESSID="+val+"; b=2"), 1, func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header["Cookie"]
		setBackendCookies(w, "SESSID=abc123; Path=/")
		_, _ = w.Write(nil)
	})
	if again != up {
		t.Fatalf("second request went to %s, session on %s", again.Dial, up.Dial)
	}
	if !slices.Equal(seen, []string{"a=1; SESSID=abc123; b=2"}) {
		t.Fatalf("backend saw Cookie %q", seen)
	}
	_, tok2, _ := routeOf(t, s, pool, cookieValue(rec.Result().Header["Set-Cookie"][0]))
	if tok2.Issued != tok.Issued {
		t.Errorf("re-set cookie has issue time %d, the session's is %d", tok2.Issued, tok.Issued)
	}
}

func TestHandlerWriteWithoutWriteHeader(t *testing.T) {
	s := provision(t, &StickyCookie{Mode: ModeRewrite, Name: "SESSID"})
	pool := testPool(2)
	for name, write := range map[string]func(w http.ResponseWriter){
		"Write":    func(w http.ResponseWriter) { _, _ = w.Write([]byte("body")) },
		"ReadFrom": func(w http.ResponseWriter) { _, _ = w.(io.ReaderFrom).ReadFrom(strings.NewReader("body")) },
		"io.Copy":  func(w http.ResponseWriter) { _, _ = io.Copy(w, strings.NewReader("body")) },
		"Flush": func(w http.ResponseWriter) {
			if err := http.NewResponseController(w).Flush(); err != nil {
				t.Errorf("Flush: %v", err)
			}
			_, _ = w.Write([]byte("body"))
		},
	} {
		t.Run(name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			up := serveThrough(t, s, pool, rec, newRequest(), 1, func(w http.ResponseWriter, r *http.Request) {
				setBackendCookies(w, "SESSID=v1; Path=/")
				write(w)
			})
			// Result().Header is the snapshot taken when the header was
			// written: the rewrite must have happened before.
			res := rec.Result()
			sc := res.Header["Set-Cookie"]
			if len(sc) != 1 {
				t.Fatalf("Set-Cookie = %q", sc)
			}
			if named, _, orig := routeOf(t, s, pool, cookieValue(sc[0])); named != up || orig != "v1" {
				t.Fatalf("token names %s (original %q), served by %s", named.Dial, orig, up.Dial)
			}
			if !strings.HasSuffix(sc[0], "~v1; Path=/") {
				t.Fatalf("rewritten line %q", sc[0])
			}
			if body, _ := io.ReadAll(res.Body); string(body) != "body" || res.StatusCode != 200 {
				t.Fatalf("response %d %q", res.StatusCode, body)
			}
		})
	}
}

// statusLog records each WriteHeader with the Set-Cookie lines at that
// moment, including informational responses.
type statusLog struct {
	h     http.Header
	calls []statusCall
	body  bytes.Buffer
}

type statusCall struct {
	code      int
	setCookie []string
}

func (l *statusLog) Header() http.Header {
	if l.h == nil {
		l.h = http.Header{}
	}
	return l.h
}

func (l *statusLog) WriteHeader(code int) {
	l.calls = append(l.calls, statusCall{code, slices.Clone(l.Header()["Set-Cookie"])})
}

func (l *statusLog) Write(b []byte) (int, error) {
	if len(l.calls) == 0 || l.calls[len(l.calls)-1].code < 200 && l.calls[len(l.calls)-1].code != 101 {
		l.WriteHeader(http.StatusOK)
	}
	return l.body.Write(b)
}

func TestHandlerInformationalResponses(t *testing.T) {
	s := provision(t, &StickyCookie{Mode: ModeRewrite, Name: "SESSID"})
	pool := testPool(3)

	t.Run("101 Switching Protocols", func(t *testing.T) {
		rec := httptest.NewRecorder()
		up := serveThrough(t, s, pool, rec, newRequest(), 1, func(w http.ResponseWriter, r *http.Request) {
			setBackendCookies(w, "SESSID=ws; Path=/", "other=x")
			w.Header().Set("Upgrade", "websocket")
			w.WriteHeader(http.StatusSwitchingProtocols)
		})
		res := rec.Result()
		if res.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("status %d", res.StatusCode)
		}
		sc := res.Header["Set-Cookie"]
		if len(sc) != 2 || sc[1] != "other=x" {
			t.Fatalf("Set-Cookie = %q", sc)
		}
		if named, _, orig := routeOf(t, s, pool, cookieValue(sc[0])); named != up || orig != "ws" {
			t.Fatalf("101: token names %s (original %q), served by %s", named.Dial, orig, up.Dial)
		}
	})

	t.Run("103 then 200", func(t *testing.T) {
		log := &statusLog{}
		up := serveThrough(t, s, pool, log, newRequest(), 1, func(w http.ResponseWriter, r *http.Request) {
			setBackendCookies(w, "SESSID=early; Path=/")
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte("done"))
		})
		if len(log.calls) != 2 || log.calls[0].code != 103 || log.calls[1].code != 200 {
			t.Fatalf("WriteHeader calls: %+v", log.calls)
		}
		for _, c := range log.calls {
			if len(c.setCookie) != 1 {
				t.Fatalf("%d: Set-Cookie = %q", c.code, c.setCookie)
			}
			named, _, orig := routeOf(t, s, pool, cookieValue(c.setCookie[0]))
			if named != up || orig != "early" {
				t.Fatalf("%d: token names %s with original %q (doubled?)", c.code, named.Dial, orig)
			}
		}
		if log.calls[0].setCookie[0] != log.calls[1].setCookie[0] {
			t.Fatalf("the final response's cookie differs from the early hint's: %q vs %q", log.calls[1].setCookie[0], log.calls[0].setCookie[0])
		}
		if log.body.String() != "done" {
			t.Fatalf("body %q", log.body.String())
		}
	})

	t.Run("header changes after the final header are not rewritten", func(t *testing.T) {
		log := &statusLog{}
		serveThrough(t, s, pool, log, newRequest(), 1, func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
			setBackendCookies(w, "SESSID=late")
			w.WriteHeader(http.StatusOK) // superfluous, passed through
		})
		if len(log.calls) != 2 || !slices.Equal(log.calls[1].setCookie, []string{"SESSID=late"}) {
			t.Fatalf("calls: %+v", log.calls)
		}
	})
}

func TestHandlerRetryNamesFinalUpstream(t *testing.T) {
	s := provision(t, &StickyCookie{Mode: ModeRewrite, Name: "SESSID", FallbackRaw: fallback("random")})
	pool := testPool(4)
	tok := routeToken(s, pool[0].Dial, time.Now())
	rec := httptest.NewRecorder()
	// The session's upstream fails the first attempt; the second serves.
	up := serveThrough(t, s, pool, rec, newRequest("SESSID="+tok+"~orig"), 2, func(w http.ResponseWriter, r *http.Request) {
		setBackendCookies(w, "SESSID=orig2")
		w.WriteHeader(http.StatusOK)
	})
	if up == nil || up == pool[0] {
		t.Fatalf("retry served by %v", up)
	}
	sc := rec.Result().Header["Set-Cookie"]
	if len(sc) != 1 {
		t.Fatalf("Set-Cookie = %q", sc)
	}
	if named, _, orig := routeOf(t, s, pool, cookieValue(sc[0])); named != up || orig != "orig2" {
		t.Fatalf("token names %s (original %q), served by %s", named.Dial, orig, up.Dial)
	}
}

func TestHandlerLeavesResponsesAlone(t *testing.T) {
	pool := testPool(2)
	t.Run("backend sets no cookie", func(t *testing.T) {
		s := provision(t, &StickyCookie{Mode: ModeRewrite, Name: "SESSID"})
		rec := httptest.NewRecorder()
		serveThrough(t, s, pool, rec, newRequest(), 1, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-A", "1")
			_, _ = w.Write([]byte("x"))
		})
		if sc := rec.Result().Header["Set-Cookie"]; len(sc) != 0 {
			t.Fatalf("Set-Cookie = %q", sc)
		}
	})
	t.Run("insert mode", func(t *testing.T) {
		s := provision(t, &StickyCookie{})
		rec := httptest.NewRecorder()
		up := serveThrough(t, s, pool, rec, newRequest(), 1, func(w http.ResponseWriter, r *http.Request) {
			setBackendCookies(w, "SESSID=abc; Path=/", "affinity2=x")
			_, _ = w.Write(nil)
		})
		h := rec.Result().Header
		if got, _ := upstreamOf(t, s, pool, onlyCookie(t, s, rec)); got != up {
			t.Fatal("insert cookie names another upstream")
		}
		if !slices.Equal(setCookieLines(h, "SESSID"), []string{"SESSID=abc; Path=/"}) ||
			!slices.Equal(setCookieLines(h, "affinity2"), []string{"affinity2=x"}) {
			t.Fatalf("backend cookies changed in insert mode: %q", h["Set-Cookie"])
		}
	})
	t.Run("no upstream selected", func(t *testing.T) {
		s := provision(t, &StickyCookie{Mode: ModeRewrite, Name: "SESSID", OnFailure: "strict"})
		p := testPool(1)
		tok := routeToken(s, p[0].Dial, time.Now())
		setAvailable(t, p[0], false)
		rec := httptest.NewRecorder()
		var h Handler
		err := h.ServeHTTP(rec, newRequest("SESSID="+tok+"~v"), caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			if up := s.Select(p, r, w); up != nil {
				t.Fatalf("strict selected %s", up.Dial)
			}
			// An error page that happens to set the cookie: no session
			// to name, so it is left alone.
			setBackendCookies(w, "SESSID=err")
			w.WriteHeader(http.StatusServiceUnavailable)
			return nil
		}))
		if err != nil {
			t.Fatal(err)
		}
		if sc := rec.Result().Header["Set-Cookie"]; !slices.Equal(sc, []string{"SESSID=err"}) {
			t.Fatalf("Set-Cookie = %q", sc)
		}
	})
}

func TestHandlerWithoutVars(t *testing.T) {
	// Without Caddy's vars map nothing can attach; the handler must still
	// pass the response through.
	rec := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	err := (Handler{}).ServeHTTP(rec, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Add("Set-Cookie", "SESSID=x")
		_, err := w.Write([]byte("hi"))
		return err
	}))
	if err != nil || rec.Body.String() != "hi" || rec.Header().Get("Set-Cookie") != "SESSID=x" {
		t.Fatalf("err %v, body %q, header %v", err, rec.Body.String(), rec.Header())
	}
}

// Learn mode: the backend's cookie reaches the client byte for byte, later
// requests carrying it return to the upstream that set it, and a response
// that deletes it makes Caddy forget it.
func TestLearnCookie(t *testing.T) {
	s := provision(t, &StickyCookie{Mode: ModeLearn, Name: "JSESSIONID", FallbackRaw: fallback("round_robin")})
	pool := testPool(3)
	const line = `JSESSIONID="8159697f.661184c1247cb"; Path=/; HttpOnly`
	rec := httptest.NewRecorder()
	home := serveThrough(t, s, pool, rec, newRequest(), 1, func(w http.ResponseWriter, r *http.Request) {
		setBackendCookies(w, line)
		w.WriteHeader(http.StatusOK)
	})
	if got := rec.Result().Header["Set-Cookie"]; len(got) != 1 || got[0] != line {
		t.Fatalf("Set-Cookie = %q, want the backend's %q unchanged", got, line)
	}
	for i := range 20 {
		r := newRequest()
		r.Header.Set("Cookie", `a=1; JSESSIONID="8159697f.661184c1247cb"`)
		up := serveThrough(t, s, pool, httptest.NewRecorder(), r, 1, func(http.ResponseWriter, *http.Request) {})
		if up != home {
			t.Fatalf("request %d went to %v, want %v", i, up, home)
		}
		if got := r.Header.Get("Cookie"); got != `a=1; JSESSIONID="8159697f.661184c1247cb"` {
			t.Fatalf("the backend got Cookie %q, want the client's unchanged", got)
		}
	}
	if n := len(s.LearnedSessions()); n != 1 {
		t.Fatalf("%d learned sessions, want 1", n)
	}
	r := newRequest()
	r.Header.Set("Cookie", `JSESSIONID="8159697f.661184c1247cb"`)
	serveThrough(t, s, pool, httptest.NewRecorder(), r, 1, func(w http.ResponseWriter, r *http.Request) {
		setBackendCookies(w, "JSESSIONID=; Max-Age=0; Path=/")
		w.WriteHeader(http.StatusOK)
	})
	if n := len(s.LearnedSessions()); n != 0 {
		t.Fatalf("%d learned sessions after the backend deleted its cookie, want 0", n)
	}
}

// Learn mode's max_lifetime: a value is forgotten that long after it was
// learned, however often it is used.
func TestLearnMaxLifetime(t *testing.T) {
	s := provision(t, &StickyCookie{Mode: ModeLearn, Name: "JSESSIONID", MaxLifetime: caddy.Duration(time.Hour), FallbackRaw: fallback("round_robin")})
	clock := time.Unix(1_800_000_000, 0)
	s.now = func() time.Time { return clock }
	pool := testPool(3)
	const value = "8159697f.661184c1247cb"
	home := serveThrough(t, s, pool, httptest.NewRecorder(), newRequest(), 1, func(w http.ResponseWriter, r *http.Request) {
		setBackendCookies(w, "JSESSIONID="+value+"; Path=/")
		w.WriteHeader(http.StatusOK)
	})
	for m := 20; m <= 59; m += 13 {
		clock = time.Unix(1_800_000_000, 0).Add(time.Duration(m) * time.Minute)
		r := newRequest()
		r.Header.Set("Cookie", "JSESSIONID="+value)
		if up := serveThrough(t, s, pool, httptest.NewRecorder(), r, 1, func(http.ResponseWriter, *http.Request) {}); up != home {
			t.Fatalf("at %d minutes the session went to %v, want %v", m, up, home)
		}
	}
	if n := len(s.LearnedSessions()); n != 1 {
		t.Fatalf("%d learned sessions within the lifetime, want 1", n)
	}
	clock = time.Unix(1_800_000_000, 0).Add(61 * time.Minute)
	r := newRequest()
	r.Header.Set("Cookie", "JSESSIONID="+value)
	serveThrough(t, s, pool, httptest.NewRecorder(), r, 1, func(http.ResponseWriter, *http.Request) {})
	if n := len(s.LearnedSessions()); n != 0 {
		t.Fatalf("%d learned sessions past max_lifetime, want 0", n)
	}
}
