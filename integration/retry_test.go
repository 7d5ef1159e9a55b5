package integration

import (
	"fmt"
	"testing"
	"time"
)

// With lb_try_duration, a request whose only backend is restarting waits
// for it, as with Caddy's own policies: once every upstream has failed the
// request, the policy goes round the pool again instead of giving up.
func TestRetryReachesRestartedBackend(t *testing.T) {
	for _, tc := range []struct{ name, policy string }{
		{"sticky_cookie", "lb_policy sticky_cookie {\n\t\t\tsecret " + testSecret + "\n\t\t}"},
		{"sticky_cookie strict", "lb_policy sticky_cookie {\n\t\t\tsecret " + testSecret + "\n\t\t\ton_failure strict\n\t\t}"},
		{"ip_affinity", "lb_policy ip_affinity"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t, "b1")
			port := freePort(t)
			url := fmt.Sprintf("http://127.0.0.1:%d/", port)
			site := fmt.Sprintf(`
http://127.0.0.1:%d {
	reverse_proxy %s {
		%s
		lb_try_duration 8s
		lb_try_interval 50ms
	}
}
`, port, b.addr, tc.policy)
			caddy := startCaddy(t, site, caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", port)}, level: "INFO"})
			decisions := func() uint64 {
				u := caddy.upstreams()[b.addr]
				return u.Hits + u.New + u.Rebinds
			}

			c := newClient(t)
			if r := c.get(url); r.status != 200 {
				t.Fatalf("first request: status %d", r.status)
			}
			before := decisions()
			b.kill()
			done := make(chan reply, 1)
			go func() {
				r, err := c.try(url)
				if err != nil {
					r.body = err.Error()
				}
				done <- r
			}()
			// A second decision for the same request means it failed once
			// and the policy chose again; then the backend comes back.
			waitFor(t, "a retry of the request", 6*time.Second, func() bool { return decisions() >= before+2 })
			b.restart()
			r := <-done
			if r.status != 200 || r.backend != "b1" {
				t.Fatalf("request during the restart: status %d from %q (%s), want 200 from b1", r.status, r.backend, r.body)
			}
		})
	}
}
