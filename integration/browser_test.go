package integration

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/caddy-affinity/caddy-affinity/cookie"
)

// A real browser against a real Caddy over HTTPS (tls internal) and
// HTTP/2: Chromium stores the cookie sticky_cookie inserts with its
// defaults (Secure and SameSite=None under TLS) and sends it back, so 20
// page loads reach one backend; a backend's own cookie, rewritten, does the
// same; and a backend cookie that the route token would take past the 4096
// bytes browsers store is left as the backend wrote it and counted, so the
// browser keeps the backend's session (a rewritten one it would drop).
func TestBrowserCookiesOverTLS(t *testing.T) {
	requireChromium(t)
	var names []string
	var addrs []string
	var minted atomic.Int64
	big := cookie.MaxCookieSize - len("big") // name and value exactly at the limit
	for i := 1; i <= 3; i++ {
		b := newBackend(t, fmt.Sprintf("web%d", i))
		name := b.name
		b.extra = func(w http.ResponseWriter, r *http.Request) bool {
			switch r.URL.Path {
			case "/rewrite":
				if _, err := r.Cookie("sid"); err != nil {
					w.Header().Add("Set-Cookie", fmt.Sprintf("sid=%s.%d; Path=/; HttpOnly; Secure; SameSite=Lax", name, minted.Add(1)))
				}
			case "/big":
				got := "none"
				if c, err := r.Cookie("big"); err == nil {
					got = fmt.Sprint(len(c.Value))
				} else {
					w.Header().Add("Set-Cookie", "big="+name[:4]+strings.Repeat("v", big-4)+"; Path=/; Secure")
				}
				w.Header().Set("X-Backend", name)
				fmt.Fprintf(w, "%s got %s", name, got)
				return true
			}
			return false
		}
		names = append(names, name)
		addrs = append(addrs, b.addr)
	}
	port := freePort(t)
	origin := fmt.Sprintf("https://localhost:%d", port)
	ups := strings.Join(addrs, " ")
	c := startCaddy(t, fmt.Sprintf(`
%[1]s {
	tls internal
	handle /rewrite {
		affinity
		reverse_proxy %[2]s {
			lb_policy sticky_cookie sid {
				mode rewrite
				secret %[3]s
			}
		}
	}
	handle /big {
		affinity
		reverse_proxy %[2]s {
			lb_policy sticky_cookie big {
				mode rewrite
				secret %[3]s
			}
		}
	}
	handle {
		reverse_proxy %[2]s {
			lb_policy sticky_cookie {
				secret %[3]s
			}
		}
	}
}
`, origin, ups, testSecret), caddyOpts{level: "WARN", autoHTTPS: "disable_redirects", global: "\tskip_install_trust",
		wait: []string{fmt.Sprintf("127.0.0.1:%d", port)}})

	ctx := browser(t, chromedp.IgnoreCertErrors) // Caddy's local CA is not in the browser's store
	load := func(path string) (body, proto string) {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.Navigate(origin+path)); err != nil {
			t.Fatalf("loading %s: %v", path, err)
		}
		body, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
		if err != nil {
			t.Fatal(err)
		}
		proto, err = chromedp.Run(ctx, chromedp.Evaluate[string](`performance.getEntriesByType("navigation")[0].nextHopProtocol`))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(body), proto
	}
	cookies := func() map[string]*network.Cookie {
		t.Helper()
		res, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{origin + "/"}})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]*network.Cookie{}
		for _, ck := range res.Cookies {
			out[ck.Name] = ck
		}
		return out
	}
	// Twenty loads of a path: one backend, over HTTP/2.
	sticky := func(path string) string {
		t.Helper()
		first, proto := load(path)
		if proto != "h2" {
			t.Fatalf("%s loaded over %q, want h2", path, proto)
		}
		for i := 1; i < 20; i++ {
			if got, _ := load(path); got != first {
				t.Fatalf("%s load %d reached %q, the first reached %q", path, i+1, got, first)
			}
		}
		return first
	}

	// Insert mode with the defaults.
	home := sticky("/")
	ck := cookies()["affinity"]
	if ck == nil || !ck.Secure || !ck.HTTPOnly || ck.SameSite != network.CookieSameSiteNone {
		t.Fatalf("the browser holds the inserted cookie as %+v; want Secure, HttpOnly, SameSite=None", ck)
	}
	t.Logf("insert: 20 loads on %s over h2; the browser holds affinity=%s (Secure, SameSite=None)", home, ck.Value)

	// Rewrite mode: the backend's own session cookie, prefixed.
	home = sticky("/rewrite")
	ck = cookies()["sid"]
	if ck == nil || !strings.Contains(ck.Value, "~"+home+".") || !ck.Secure || ck.SameSite != network.CookieSameSiteLax {
		t.Fatalf("the browser holds the rewritten cookie as %+v; want a token before %s's value, its attributes kept", ck, home)
	}

	// A cookie at the browser's limit: a token would push it past, so it
	// goes out as the backend wrote it; the browser keeps it and sends it
	// back whole, and the value's own hash keeps the session on one backend
	// (rewrite mode routes an untokened value so).
	body, _ := load("/big")
	ck = cookies()["big"]
	if ck == nil || len(ck.Value) != big || strings.Contains(ck.Value, "~") {
		t.Fatalf("first load %q: the browser holds %v; want the backend's %d-byte value, unchanged", body, ck, big)
	}
	owner := ""
	for i := range 10 {
		got, _ := load("/big")
		if owner == "" {
			owner = strings.Fields(got)[0]
		}
		if got != fmt.Sprintf("%s got %d", owner, big) {
			t.Fatalf("load %d with the big cookie: %q; want %s to get the %d-byte cookie", i+2, got, owner, big)
		}
	}
	var tooLarge uint64
	for _, u := range c.upstreams() {
		tooLarge += u.CookiesTooLarge
	}
	if tooLarge != 1 {
		t.Fatalf("the admin API counts %d cookies too large, want 1", tooLarge)
	}
	if !metricLine(scrape(c.admin), "caddy_affinity_cookies_too_large_total", "1") {
		t.Errorf("no caddy_affinity_cookies_too_large_total 1 in the metrics")
	}
	t.Logf("a %d-byte cookie left unrewritten and counted; the browser sent it back on 10 loads, all to %s", big+len("big"), owner)
}
