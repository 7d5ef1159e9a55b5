package integration

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-affinity/caddy-affinity/internal/testutil"
)

// metricValue is the value of the first line of the scrape that starts
// with name (labels included), or -1.
func metricValue(scrape, name string) float64 {
	for _, l := range strings.Split(scrape, "\n") {
		if strings.HasPrefix(l, name) {
			f := strings.Fields(l)
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
				return v
			}
		}
	}
	return -1
}

// Redis hanging (SIGSTOP: connections open, nothing answered) under an
// ip_affinity table with timeout 200ms: every request succeeds and none
// waits much longer than the timeout; the outage is logged once however
// long it lasts, its end is logged, and the store-errors metric rises.
func TestRedisFrozenOutage(t *testing.T) {
	rdb := testutil.StartRedis(t)
	bs := []*backend{newBackend(t, "f0"), newBackend(t, "f1")}
	port := freePort(t)
	const timeout = 200 * time.Millisecond
	c := startCaddy(t, fmt.Sprintf(`
http://127.0.0.1:%d {
	reverse_proxy %s %s {
		lb_policy ip_affinity {
			persist_timeout 10m
			store redis %s {
				timeout 200ms
			}
		}
		lb_retries 2
	}
}
`, port, bs[0].addr, bs[1].addr, rdb.Addr), caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", port)}, level: "INFO"})
	site := fmt.Sprintf("http://127.0.0.1:%d/", port)
	const unavailable, back = "session store unavailable", "session store available again"
	logCount := func(s string) int {
		b, _ := os.ReadFile(c.logPath)
		return strings.Count(string(b), s)
	}
	errorsMetric := `caddy_affinity_store_errors_total{address="` + rdb.Addr + `"}`
	upMetric := `caddy_affinity_store_up{address="` + rdb.Addr + `"}`

	home := map[string]string{}
	for i := 2; i <= 11; i++ {
		src := fmt.Sprintf("127.0.0.%d", i)
		r := getFrom(t, src, site)
		if r.status != 200 {
			t.Fatalf("%s before the outage: %+v", src, r)
		}
		home[src] = r.backend
	}
	m := scrape(c.admin)
	errsBefore := metricValue(m, errorsMetric)
	if errsBefore < 0 || metricValue(m, upMetric) != 1 || logCount(unavailable) != 0 {
		t.Fatalf("before the outage: %s = %v, %s = %v, %d outage lines logged", errorsMetric, errsBefore, upMetric, metricValue(m, upMetric), logCount(unavailable))
	}

	rdb.Freeze()
	frozen := time.Now()
	// New clients (whose entries are not cached: a GET each) and known
	// ones, for longer than a few health checks (one a second).
	slowest, n := time.Duration(0), 0
	for i := 20; time.Since(frozen) < 3500*time.Millisecond; i++ {
		for _, src := range []string{fmt.Sprintf("127.0.0.%d", 20+i%200), "127.0.0.2"} {
			t0 := time.Now()
			r := getFrom(t, src, site)
			d := time.Since(t0)
			n++
			slowest = max(slowest, d)
			if r.status != 200 {
				t.Fatalf("%s with Redis frozen: status %d", src, r.status)
			}
			if d > 2*time.Second {
				t.Fatalf("%s with Redis frozen waited %v; the store's timeout is %v", src, d, timeout)
			}
		}
	}
	waitFor(t, "the store reported down in the metrics", 10*time.Second, func() bool { return metricValue(scrape(c.admin), upMetric) == 0 })
	m = scrape(c.admin)
	if errs := metricValue(m, errorsMetric); errs <= errsBefore {
		t.Errorf("%s with Redis frozen: %v, was %v; want it to rise", errorsMetric, errs, errsBefore)
	}
	if k := logCount(unavailable); k != 1 {
		t.Errorf("the outage was logged %d times, want once", k)
	}
	if logCount(back) != 0 {
		t.Errorf("the store was logged back while frozen")
	}

	rdb.Thaw()
	waitFor(t, "the end of the outage logged", 15*time.Second, func() bool { return logCount(back) == 1 })
	waitFor(t, "the store reported up in the metrics", 10*time.Second, func() bool { return metricValue(scrape(c.admin), upMetric) == 1 })
	for src, want := range home {
		if r := getFrom(t, src, site); r.status != 200 || r.backend != want {
			t.Errorf("%s after the outage: %+v, want %s", src, r, want)
		}
	}
	if k := logCount(unavailable); k != 1 {
		t.Errorf("after the outage it was logged %d times, want once", k)
	}
	t.Logf("Redis frozen %v: %d requests, all 200, slowest %v (timeout %v)", time.Since(frozen).Round(100*time.Millisecond), n, slowest.Round(time.Millisecond), timeout)
}
