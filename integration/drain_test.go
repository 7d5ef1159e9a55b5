package integration

import (
	"fmt"
	"testing"
	"time"
)

// A drain with a deadline under load: until it passes, the clients bound to
// the draining backend stay and new ones avoid it; after it, each moves on
// its next request, and no request fails.
func TestDrainDeadlineUnderLoad(t *testing.T) {
	bs := []*backend{newBackend(t, "d0"), newBackend(t, "d1"), newBackend(t, "d2")}
	port := freePort(t)
	c := startCaddy(t, fmt.Sprintf(`
http://127.0.0.1:%d {
	reverse_proxy %s %s %s {
		lb_policy sticky_cookie {
			secret %s
			fallback round_robin
		}
		lb_retries 2
	}
}
`, port, bs[0].addr, bs[1].addr, bs[2].addr, testSecret), caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", port)}, level: "WARN"})
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	var bound []*client
	for len(bound) < 4 {
		cl := newClient(t)
		if cl.get(url).backend == "d0" {
			bound = append(bound, cl)
		}
	}
	const deadline = 3 * time.Second
	start := time.Now()
	if code, body := c.adminDo("POST", "/affinity/upstreams/drain", `{"address": "`+bs[0].addr+`", "deadline": "3s"}`); code != 200 {
		t.Fatalf("drain: %d %s", code, body)
	}
	stayed := 0
	for time.Since(start) < deadline-time.Second {
		for i, cl := range bound {
			r := cl.get(url)
			if r.status != 200 {
				t.Fatalf("client %d: status %d during the drain", i, r.status)
			}
			if r.backend != "d0" && time.Since(start) < deadline {
				t.Fatalf("client %d left d0 for %s before the deadline", i, r.backend)
			}
			stayed++
		}
		if r := newClient(t).get(url); r.backend == "d0" || r.status != 200 {
			t.Fatalf("a new client went to %s (%d) while d0 drains", r.backend, r.status)
		}
	}
	moved := map[int]string{}
	waitFor(t, "every bound client moved after the deadline", 10*time.Second, func() bool {
		for i, cl := range bound {
			r := cl.get(url)
			if r.status != 200 {
				t.Fatalf("client %d: status %d after the deadline", i, r.status)
			}
			if r.backend != "d0" {
				moved[i] = r.backend
			}
		}
		return len(moved) == len(bound)
	})
	if time.Since(start) < deadline {
		t.Fatalf("clients moved %v before the deadline", time.Since(start))
	}
	for i, cl := range bound {
		if r := cl.get(url); r.backend != moved[i] {
			t.Fatalf("client %d moved to %s, then went to %s: the new cookie must hold", i, moved[i], r.backend)
		}
	}
	t.Logf("%d requests of bound clients stayed on d0 before the deadline; after it all %d moved: %v", stayed, len(bound), moved)
}
