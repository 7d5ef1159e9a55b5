package integration

import (
	"fmt"
	"strings"
	"testing"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

// rewriteSite is the example's vip.a.com site on a loopback port.
func rewriteSite(port int, addrs ...string) string {
	return fmt.Sprintf(`
http://127.0.0.1:%d {
	affinity
	reverse_proxy %s {
		lb_policy sticky_cookie name {
			mode rewrite
			secret %s
			fallback least_conn
			on_failure rebind
		}
		lb_retries 2
	}
}
`, port, strings.Join(addrs, " "), testSecret)
}

// splitRewritten splits a rewritten Set-Cookie line into route token,
// original value and attributes (everything from the first ';').
func splitRewritten(t *testing.T, line string) (token, orig, attrs string) {
	t.Helper()
	pair, attrs, _ := strings.Cut(line, ";")
	_, val, _ := strings.Cut(pair, "=")
	n := affinity.RouteLen
	if len(val) <= n || val[n] != '~' {
		t.Fatalf("Set-Cookie %q is not rewritten as TOKEN~original", line)
	}
	return val[:n], val[n+1:], attrs
}

func TestRewriteRealServers(t *testing.T) {
	for _, kind := range []string{"apache", "nginx", "lighttpd"} {
		t.Run(kind, func(t *testing.T) { testRewriteServer(t, kind) })
	}
}

func testRewriteServer(t *testing.T, kind string) {
	servers := map[string]*webServer{}
	var addrs []string
	for i := 1; i <= 3; i++ {
		ws := startServer(t, kind, fmt.Sprintf("%s%d", kind, i))
		servers[ws.name] = ws
		addrs = append(addrs, ws.addr)
	}
	// What the server sets when asked directly: the rewrite must keep it.
	direct := rawGet(t, "http://"+addrs[0]+"/", "")
	directLines := setCookiesNamed(direct.setCookies, "name")
	if len(directLines) != 1 {
		t.Fatalf("%s sets %q directly, want one 'name' cookie", kind, direct.setCookies)
	}
	_, directAttrs, _ := strings.Cut(directLines[0], ";")

	port := freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	startCaddy(t, rewriteSite(port, addrs...), caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", port)}})

	c := newClient(t)
	first := c.get(url)
	if first.status != 200 || servers[first.backend] == nil {
		t.Fatalf("first request: status %d backend %q", first.status, first.backend)
	}
	lines := setCookiesNamed(first.setCookies, "name")
	if len(lines) != 1 {
		t.Fatalf("want one rewritten 'name' cookie, got %q", first.setCookies)
	}
	_, orig, attrs := splitRewritten(t, lines[0])
	t.Logf("%s sets %q; the client gets %q", kind, directLines[0], lines[0])
	if attrs != directAttrs {
		t.Fatalf("attributes changed: backend wrote %q, client got %q", directAttrs, attrs)
	}
	if kind != "apache" {
		// nginx and lighttpd set a fixed value per instance.
		want := map[string]string{"nginx": "xxxx", "lighttpd": "XXXXXX"}[kind]
		if orig != first.backend+want {
			t.Fatalf("original value %q, want %q", orig, first.backend+want)
		}
	}
	pinned := servers[first.backend]

	for i := 0; i < 10; i++ {
		r := c.get(url)
		if r.status != 200 || r.backend != pinned.name {
			t.Fatalf("request %d went to %q (status %d), session is on %s", i, r.backend, r.status, pinned.name)
		}
	}

	// The backend receives its own value, token stripped, with every other
	// cookie unchanged and in order.
	full := c.cookie(url, "name")
	r := rawGet(t, url, "a=1; name="+full+"; b=x=y==")
	if r.backend != pinned.name {
		t.Fatalf("request with other cookies went to %s, want %s", r.backend, pinned.name)
	}
	if want := "a=1; name=" + orig + "; b=x=y=="; pinned.logCount(want, 1) != 1 {
		t.Fatalf("%s never received Cookie %q:\n%s", pinned.name, want, strings.Join(pinned.logLines(), "\n"))
	}

	// A plain cookie without a token is forwarded as it came and balanced.
	r = rawGet(t, url, "name=plainvalue")
	if ws := servers[r.backend]; ws == nil || r.status != 200 {
		t.Fatalf("plain cookie: status %d backend %q", r.status, r.backend)
	} else if ws.logCount("name=plainvalue", 1) != 1 {
		t.Fatalf("the plain cookie did not reach %s as it came:\n%s", ws.name, strings.Join(ws.logLines(), "\n"))
	}

	// Kill the session's backend: the next request rebinds on the same
	// request, and the session stays on its new backend.
	pinned.stop()
	moved := c.get(url)
	if moved.status != 200 || moved.backend == pinned.name || servers[moved.backend] == nil {
		t.Fatalf("after kill: status %d backend %q", moved.status, moved.backend)
	}
	for i := 0; i < 10; i++ {
		r := c.get(url)
		if r.status != 200 || r.backend != moved.backend {
			t.Fatalf("after rebind request %d went to %q (status %d), want %s", i, r.backend, r.status, moved.backend)
		}
	}
}
