package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testSecret = "integration-secret-0123456789abcdef"

// insertSite is a site that proxies to backends with sticky_cookie.
func insertSite(port int, opts string, backends ...*backend) string {
	var addrs []string
	for _, b := range backends {
		addrs = append(addrs, b.addr)
	}
	return fmt.Sprintf(`
http://127.0.0.1:%d {
	reverse_proxy %s {
		lb_policy sticky_cookie {
			%s
		}
		lb_retries 2
	}
}
`, port, strings.Join(addrs, " "), opts)
}

func TestInsertStickiness(t *testing.T) {
	b1, b2, b3 := newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3")
	port := freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	c := startCaddy(t, insertSite(port, "secret "+testSecret+"\nmax_age 1h\nnocache on", b1, b2, b3),
		caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", port)}})

	used := map[string]int{}
	for i := 0; i < 30; i++ {
		cl := newClient(t)
		first := cl.get(url)
		if first.status != 200 {
			t.Fatalf("client %d: status %d", i, first.status)
		}
		sc := setCookiesNamed(first.setCookies, "affinity")
		if len(sc) != 1 {
			t.Fatalf("client %d: want one affinity Set-Cookie, got %q", i, first.setCookies)
		}
		for _, attr := range []string{"Path=/", "Max-Age=3600", "HttpOnly", "SameSite=Lax"} {
			if !strings.Contains(sc[0], attr) {
				t.Errorf("Set-Cookie %q lacks %s", sc[0], attr)
			}
		}
		for _, b := range []*backend{b1, b2, b3} {
			host, port, _ := strings.Cut(b.addr, ":")
			if strings.Contains(sc[0], port) || strings.Contains(sc[0], host) {
				t.Fatalf("cookie %q reveals backend address %s", sc[0], b.addr)
			}
		}
		if len(first.cache) != 1 || first.cache[0] != "private" {
			t.Fatalf("client %d: the response inserting the cookie has Cache-Control %q, want private", i, first.cache)
		}
		used[first.backend]++
		for j := 0; j < 10; j++ {
			r := cl.get(url)
			if r.backend != first.backend {
				t.Fatalf("client %d request %d went to %s, session is on %s", i, j, r.backend, first.backend)
			}
			if len(setCookiesNamed(r.setCookies, "affinity")) != 0 {
				t.Fatalf("client %d: cookie re-set on a hit: %q", i, r.setCookies)
			}
			if len(r.cache) != 0 {
				t.Fatalf("client %d: a hit was marked Cache-Control %q", i, r.cache)
			}
		}
	}
	if c.logContains(testSecret) {
		t.Fatalf("the secret appears in Caddy's log")
	}
	if len(used) < 2 {
		t.Fatalf("30 new sessions all went to one backend: %v", used)
	}
	// The backend never sees the inserted cookie (forward_cookie is off).
	for _, b := range []*backend{b1, b2, b3} {
		if strings.Contains(b.lastCookie(), "affinity=") {
			t.Fatalf("%s received the affinity cookie: %q", b.name, b.lastCookie())
		}
	}
}

func TestInsertBadCookiesAreAbsent(t *testing.T) {
	b1, b2 := newBackend(t, "b1"), newBackend(t, "b2")
	port, other := freePort(t), freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	startCaddy(t, insertSite(port, "secret "+testSecret, b1, b2)+
		insertSite(other, "secret another-secret-entirely-0123456789", b1, b2),
		caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("127.0.0.1:%d", other)}})

	good := setCookiesNamed(rawGet(t, url, "").setCookies, "affinity")[0]
	goodVal := strings.TrimPrefix(strings.SplitN(good, ";", 2)[0], "affinity=")
	foreign := setCookiesNamed(rawGet(t, fmt.Sprintf("http://127.0.0.1:%d/", other), "").setCookies, "affinity")[0]
	foreignVal := strings.TrimPrefix(strings.SplitN(foreign, ";", 2)[0], "affinity=")

	tampered := []byte(goodVal)
	tampered[10] ^= 1
	if tampered[10] == '`' || tampered[10] == '@' || tampered[10] == '[' || tampered[10] == '{' {
		tampered[10] = 'A'
	}
	for name, val := range map[string]string{
		"tampered":  string(tampered),
		"foreign":   foreignVal,
		"truncated": goodVal[:20],
		"garbage":   "%%%;;;\"\\",
		"empty":     "",
		"long":      strings.Repeat("A", 4096),
	} {
		r := rawGet(t, url, "affinity="+val)
		if r.status != 200 {
			t.Errorf("%s cookie: status %d, want 200", name, r.status)
		}
		if n := len(setCookiesNamed(r.setCookies, "affinity")); n != 1 {
			t.Errorf("%s cookie: want a fresh cookie, got %d Set-Cookie", name, n)
		}
	}
	// The good cookie still works, and is not re-set.
	r := rawGet(t, url, "affinity="+goodVal)
	if r.status != 200 || len(setCookiesNamed(r.setCookies, "affinity")) != 0 {
		t.Fatalf("good cookie: status %d, Set-Cookie %q", r.status, r.setCookies)
	}
}

func TestInsertRebindOnSameRequest(t *testing.T) {
	b1, b2, b3 := newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3")
	port := freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	// No health checks at all: the rebind must come from the retry.
	startCaddy(t, insertSite(port, "secret "+testSecret, b1, b2, b3),
		caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", port)}})
	byName := map[string]*backend{"b1": b1, "b2": b2, "b3": b3}

	c := newClient(t)
	first := c.get(url)
	pinned := byName[first.backend]
	pinned.kill()

	r := c.get(url)
	if r.status != 200 {
		t.Fatalf("request after kill: status %d, want 200 from a retry", r.status)
	}
	if r.backend == pinned.name {
		t.Fatalf("request went to the killed backend")
	}
	if n := len(setCookiesNamed(r.setCookies, "affinity")); n != 1 {
		t.Fatalf("rebind: want exactly one affinity Set-Cookie, got %q", r.setCookies)
	}
	for i := 0; i < 10; i++ {
		if got := c.get(url); got.backend != r.backend || got.status != 200 {
			t.Fatalf("after rebind request %d went to %s (status %d), want %s", i, got.backend, got.status, r.backend)
		}
	}
}

func TestInsertStrict(t *testing.T) {
	b1, b2 := newBackend(t, "b1"), newBackend(t, "b2")
	port := freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	site := fmt.Sprintf(`
http://127.0.0.1:%d {
	reverse_proxy %s %s {
		lb_policy sticky_cookie {
			secret %s
			on_failure strict
		}
		fail_duration 30s
		max_fails 1
	}
}
`, port, b1.addr, b2.addr, testSecret)
	startCaddy(t, site, caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", port)}})
	byName := map[string]*backend{"b1": b1, "b2": b2}

	c := newClient(t)
	first := c.get(url)
	byName[first.backend].kill()
	// The first request finds the upstream dead (502); passive health checks
	// mark it down, and from then on strict mode selects nothing: 503.
	if r := c.get(url); r.status != 502 {
		t.Fatalf("first request after kill: status %d, want 502", r.status)
	}
	for i := 0; i < 3; i++ {
		r := c.get(url)
		if r.status != 503 {
			t.Fatalf("strict: status %d from %q, want 503", r.status, r.backend)
		}
	}
	// A new client is still served.
	if r := newClient(t).get(url); r.status != 200 {
		t.Fatalf("new client under strict: status %d", r.status)
	}
}

func TestTwoInstancesShareSecret(t *testing.T) {
	b1, b2, b3 := newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3")
	p1, p2 := freePort(t), freePort(t)
	startCaddy(t, insertSite(p1, "secret "+testSecret, b1, b2, b3), caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", p1)}})
	// The second instance lists the upstreams in another order.
	startCaddy(t, insertSite(p2, "secret "+testSecret, b3, b1, b2), caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", p2)}})
	for i := 0; i < 10; i++ {
		r1 := rawGet(t, fmt.Sprintf("http://127.0.0.1:%d/", p1), "")
		val := strings.SplitN(setCookiesNamed(r1.setCookies, "affinity")[0], ";", 2)[0]
		r2 := rawGet(t, fmt.Sprintf("http://127.0.0.1:%d/", p2), val)
		if r2.backend != r1.backend {
			t.Fatalf("instance 2 sent %s's session to %s", r1.backend, r2.backend)
		}
		if n := len(setCookiesNamed(r2.setCookies, "affinity")); n != 0 {
			t.Fatalf("instance 2 re-set a valid cookie: %q", r2.setCookies)
		}
	}
}

func TestRestartKeepsStoredKey(t *testing.T) {
	b1, b2, b3 := newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3")
	data := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	site := insertSite(port, "max_age 1h", b1, b2, b3) // no secret: generated and stored
	wait := []string{fmt.Sprintf("127.0.0.1:%d", port)}

	c1 := startCaddy(t, site, caddyOpts{dataDir: data, wait: wait})
	var cookies []string
	var backends []string
	for i := 0; i < 6; i++ {
		r := rawGet(t, url, "")
		cookies = append(cookies, strings.SplitN(setCookiesNamed(r.setCookies, "affinity")[0], ";", 2)[0])
		backends = append(backends, r.backend)
	}
	key, err := os.ReadFile(filepath.Join(data, "caddy-affinity", "secret.key"))
	if err != nil {
		t.Fatalf("generated key not in storage: %v", err)
	}
	if !c1.logContains("generated a new affinity key") {
		t.Fatalf("first start did not log generating the key")
	}
	if c1.logContains(strings.TrimSpace(string(key))) {
		t.Fatalf("the generated key appears in Caddy's log")
	}
	c1.stop()

	c2 := startCaddy(t, site, caddyOpts{dataDir: data, wait: wait})
	for i, ck := range cookies {
		r := rawGet(t, url, ck)
		if r.backend != backends[i] || len(setCookiesNamed(r.setCookies, "affinity")) != 0 {
			t.Fatalf("after restart cookie %d went to %s (Set-Cookie %q), want %s", i, r.backend, r.setCookies, backends[i])
		}
	}
	if c2.logContains("generated a new affinity key") {
		t.Fatalf("restart generated a new key instead of loading the stored one")
	}
}
