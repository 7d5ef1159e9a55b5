package integration

import (
	"fmt"
	"strings"
	"testing"
)

// Learn mode against Apache with mod_usertrack, as the seed configures it:
// each client gets the value Apache minted, byte for byte (no token), and
// every later request carrying it reaches the Apache that minted it, which
// receives it unchanged.
func TestLearnApacheUsertrack(t *testing.T) {
	requireServer(t, "apache")
	servers := map[string]*webServer{}
	var addrs []string
	for i := 1; i <= 3; i++ {
		ws := startServer(t, "apache", fmt.Sprintf("apache%d", i))
		servers[ws.name] = ws
		addrs = append(addrs, ws.addr)
	}
	port := freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	startCaddy(t, fmt.Sprintf(`
http://127.0.0.1:%d {
	affinity
	reverse_proxy %s {
		lb_policy sticky_cookie name {
			mode learn
			secret %s
			fallback round_robin
		}
		lb_retries 2
	}
}
`, port, strings.Join(addrs, " "), testSecret), caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", port)}, level: "WARN"})

	homes := map[string]int{}
	for c := range 9 {
		cl := newClient(t)
		first := cl.get(url)
		lines := setCookiesNamed(first.setCookies, "name")
		if first.status != 200 || servers[first.backend] == nil || len(lines) != 1 {
			t.Fatalf("client %d: status %d from %q, name cookies %q", c, first.status, first.backend, first.setCookies)
		}
		value := cl.cookie(url, "name")
		if strings.Contains(lines[0], "~") || !strings.HasPrefix(lines[0], "name="+value+";") {
			t.Fatalf("client %d got %q: want Apache's own cookie, unchanged", c, lines[0])
		}
		homes[first.backend]++
		ws := servers[first.backend]
		for i := range 10 {
			r := cl.get(url)
			if r.backend != first.backend {
				t.Fatalf("client %d request %d went to %s, its cookie %q was minted by %s", c, i, r.backend, value, first.backend)
			}
		}
		if n := ws.logCount("name="+value, 10); n != 10 {
			t.Fatalf("%s received Cookie %q in %d of 10 requests:\n%s", ws.name, "name="+value, n, strings.Join(ws.logLines(), "\n"))
		}
	}
	t.Logf("learn with mod_usertrack: 9 clients over %v", homes)
	if len(homes) != 3 {
		t.Errorf("9 clients reached %v, want all three servers", homes)
	}
}
