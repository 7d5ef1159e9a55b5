package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// hostileCookie returns Cookie headers of size bytes that made the plugin's
// cookie scan quadratic, for the cookie named name.
func hostileCookies(name string, size int) map[string]string {
	fill := func(prefix, unit string) string {
		return (prefix + strings.Repeat(unit, size/len(unit)+1))[:size]
	}
	return map[string]string{
		"name-in-value":   fill("x=", name),
		"spaced-names":    fill("x=", " "+name),
		"repeated-cookie": fill("", name+"=v;"),
	}
}

// ordinaryCookie is a Cookie header of size bytes of ordinary pairs.
func ordinaryCookie(size int) string {
	var b strings.Builder
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "k%d=v%08d; ", i, i)
	}
	return b.String()[:size]
}

// bigHeaderBackend is a backend that takes request headers of up to 8 MiB.
func bigHeaderBackend(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{MaxHeaderBytes: 8 << 20, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestHostileCookieCostInCaddy sends hostile Cookie headers and ordinary
// ones of the same size through a real Caddy, interleaved on one
// connection, at Caddy's default header limit (16 KiB) and at 1 MiB with
// max_header_size raised, and compares the median request times. The scan
// that was quadratic cost 5x at 15 KiB and grew with the square of the size.
func TestHostileCookieCostInCaddy(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped with -short: a timing comparison of hostile and ordinary headers; run without -short")
	}
	backend := bigHeaderBackend(t)
	insert, rewrite := freePort(t), freePort(t)
	sites := fmt.Sprintf(`
http://127.0.0.1:%d {
	reverse_proxy %s {
		lb_policy sticky_cookie {
			secret %s
		}
	}
}
http://127.0.0.1:%d {
	affinity
	reverse_proxy %s {
		lb_policy sticky_cookie affinity {
			mode rewrite
			secret %s
		}
	}
}
`, insert, backend, testSecret, rewrite, backend, testSecret)
	startCaddy(t, sites, caddyOpts{level: "WARN", global: "\tservers {\n\t\tmax_header_size 4MB\n\t}",
		wait: []string{fmt.Sprintf("127.0.0.1:%d", insert), fmt.Sprintf("127.0.0.1:%d", rewrite)}})

	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	timed := func(url, cookie string) time.Duration {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Cookie", cookie)
		start := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s with a %d-byte Cookie header: status %d", url, len(cookie), resp.StatusCode)
		}
		return time.Since(start)
	}
	median := func(d []time.Duration) time.Duration {
		slices.Sort(d)
		return d[len(d)/2]
	}
	const bound = 2.0
	for _, size := range []int{16 << 10, 1 << 20} {
		rounds := 60
		if size > 64<<10 {
			rounds = 15
		}
		ordinary := ordinaryCookie(size)
		for _, site := range []struct {
			mode string
			port int
		}{{"insert", insert}, {"rewrite", rewrite}} {
			url := fmt.Sprintf("http://127.0.0.1:%d/", site.port)
			for shape, hostile := range hostileCookies("affinity", size) {
				timed(url, ordinary) // warm the connection
				var h, o []time.Duration
				for i := range rounds {
					// Alternate which goes first.
					if i%2 == 0 {
						h, o = append(h, timed(url, hostile)), append(o, timed(url, ordinary))
					} else {
						o, h = append(o, timed(url, ordinary)), append(h, timed(url, hostile))
					}
				}
				mh, mo := median(h), median(o)
				ratio := float64(mh) / float64(mo)
				t.Logf("HOSTILE %s mode, %d KiB, %s: %v vs ordinary %v: %.2fx", site.mode, size>>10, shape, mh, mo, ratio)
				if ratio > bound {
					t.Errorf("%s mode: a %d KiB %s Cookie header costs %.2fx an ordinary one in Caddy (bound %.0fx)", site.mode, size>>10, shape, ratio, bound)
				}
			}
		}
	}
}
