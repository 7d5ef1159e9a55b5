package integration

import (
	"fmt"
	"testing"
	"time"
)

// on_failure temporary through a real Caddy: while a session's backend is
// down its requests go to one replacement, with no new cookie, and they
// return to their backend once it is back.
func TestOnFailureTemporary(t *testing.T) {
	bs := []*backend{newBackend(t, "t0"), newBackend(t, "t1"), newBackend(t, "t2")}
	port := freePort(t)
	startCaddy(t, fmt.Sprintf(`
http://127.0.0.1:%d {
	reverse_proxy %s %s %s {
		lb_policy sticky_cookie {
			secret %s
			fallback round_robin
			on_failure temporary
		}
		lb_retries 2
		fail_duration 1s
		max_fails 1
	}
}
`, port, bs[0].addr, bs[1].addr, bs[2].addr, testSecret), caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", port)}, level: "WARN"})
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	var bound []*client
	var cookies []string
	for len(bound) < 6 {
		cl := newClient(t)
		if cl.get(url).backend == "t0" {
			bound = append(bound, cl)
			cookies = append(cookies, cl.cookie(url, "affinity"))
		}
	}
	bs[0].kill()
	detour := map[int]string{}
	for round := range 5 {
		for i, cl := range bound {
			r := cl.get(url)
			if r.status != 200 || r.backend == "t0" || r.backend == "" {
				t.Fatalf("round %d, client %d: status %d from %q while t0 is down", round, i, r.status, r.backend)
			}
			if len(setCookiesNamed(r.setCookies, "affinity")) != 0 || cl.cookie(url, "affinity") != cookies[i] {
				t.Fatalf("client %d got a new cookie on a temporary failover: %q", i, r.setCookies)
			}
			if d, ok := detour[i]; ok && d != r.backend {
				t.Fatalf("client %d went to %s, then %s: one replacement per session", i, d, r.backend)
			}
			detour[i] = r.backend
		}
	}
	bs[0].restart()
	// Once t0's failure is forgotten (fail_duration), every session is back.
	waitFor(t, "every session back on t0", 15*time.Second, func() bool {
		back := 0
		for i, cl := range bound {
			r := cl.get(url)
			if r.status != 200 {
				t.Fatalf("client %d: status %d after t0 came back", i, r.status)
			}
			if r.backend == "t0" {
				back++
			}
		}
		return back == len(bound)
	})
	for i, cl := range bound {
		if cl.cookie(url, "affinity") != cookies[i] {
			t.Errorf("client %d's cookie changed over the failover", i)
		}
	}
	t.Logf("t0 down: its %d sessions went to %v without a new cookie; back: all returned to t0", len(bound), detour)
}
