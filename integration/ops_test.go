package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/caddy-affinity/caddy-affinity/internal/testutil"
)

const chromiumBin = "/usr/bin/chromium"

// requireChromium skips the test when Debian's chromium is not installed,
// unless AFFINITY_REQUIRE_SERVERS is set (CI sets it).
func requireChromium(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(chromiumBin); err == nil {
		return
	}
	msg := chromiumBin + " not installed: apt-get install chromium (make test installs it when run as root)"
	if os.Getenv("AFFINITY_REQUIRE_SERVERS") != "" {
		t.Fatal(msg)
	}
	t.Skipf("%s; set AFFINITY_REQUIRE_SERVERS=1 to require it", msg)
}

// browser starts a headless Chromium of the test's own.
func browser(t *testing.T, extra ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumBin),
		chromedp.NoSandbox, // root, in a container
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 720),
	)
	opts = append(opts, extra...)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	ctx, cancel3 := context.WithTimeout(ctx, 2*time.Minute)
	t.Cleanup(cancel3)
	return ctx
}

// startUI runs `caddy affinity ui` for the admin endpoint at admin and
// returns the page's address it prints.
func startUI(t *testing.T, admin string) string {
	t.Helper()
	cmd := exec.Command(caddyBinary(t), "affinity", "ui", "--listen", "127.0.0.1:0", "--address", admin)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("caddy affinity ui printed %q: %v", line, err)
	}
	i := strings.Index(line, "http://")
	if i < 0 {
		t.Fatalf("caddy affinity ui printed %q, no address", line)
	}
	return strings.TrimSpace(line[i:])
}

// uiRow is one upstream row of the status page as the browser shows it.
type uiRow struct {
	Address, State string
	Hits           int
}

func uiRows(t *testing.T, ctx context.Context) []uiRow {
	t.Helper()
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[[]uiRow](`Array.from(document.querySelectorAll("#upstreams tbody tr")).map(tr => ({
		Address: tr.dataset.address, State: tr.children[1].textContent, Hits: Number(tr.children[6].textContent)}))`))
	if err != nil {
		t.Fatalf("reading the page: %v", err)
	}
	return rows
}

// The status page in a real browser, on a Caddy under load: it shows the
// upstreams and their counters; draining from the page changes routing
// (new clients avoid the upstream, bound ones stay) and undraining
// restores it; it fits a phone's width.
func TestStatusPageInBrowser(t *testing.T) {
	requireChromium(t)
	bs := []*backend{newBackend(t, "u0"), newBackend(t, "u1"), newBackend(t, "u2")}
	port, ipPort := freePort(t), freePort(t)
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
http://127.0.0.1:%d {
	reverse_proxy %s %s %s {
		lb_policy ip_affinity {
			persist_timeout 10m
		}
	}
}
`, port, bs[0].addr, bs[1].addr, bs[2].addr, testSecret, ipPort, bs[0].addr, bs[1].addr, bs[2].addr),
		caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("127.0.0.1:%d", ipPort)}, level: "WARN"})
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	// 70 IP clients in a session table: more than a page of sessions.
	perUpstream := map[string]int{}
	for i := 2; i < 72; i++ {
		r := getFrom(t, fmt.Sprintf("127.0.0.%d", i), fmt.Sprintf("http://127.0.0.1:%d/", ipPort))
		for _, b := range bs {
			if b.name == r.backend {
				perUpstream[b.addr]++
			}
		}
	}

	// Load: two bound clients per backend, each asking all the time.
	homes := map[string]int{}
	type boundClient struct {
		cl   *client
		home string
	}
	var bound []boundClient
	for len(bound) < 6 {
		cl := newClient(t)
		r := cl.get(url)
		if homes[r.backend] < 2 {
			homes[r.backend]++
			bound = append(bound, boundClient{cl, r.backend})
		}
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var requests, strays atomic.Int64
	for _, b := range bound {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				r, err := b.cl.try(url)
				requests.Add(1)
				if err != nil || r.status != 200 || r.backend != b.home {
					strays.Add(1)
				}
				time.Sleep(5 * time.Millisecond) // a client's think time, not synchronisation
			}
		}()
	}
	defer func() { stop.Store(true); wg.Wait() }()

	// The page as an operator opens it: `caddy affinity ui`, which serves
	// it and forwards its calls to the admin endpoint.
	page := startUI(t, c.admin)
	ctx := browser(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(page),
		chromedp.WaitVisible(chromedp.CSS(`#upstreams tbody tr`))); err != nil {
		t.Fatalf("loading the page: %v", err)
	}
	waitFor(t, "the page to show the three upstreams with traffic", 30*time.Second, func() bool {
		rows := uiRows(t, ctx)
		if len(rows) != 3 {
			return false
		}
		for _, r := range rows {
			if r.State != "active" || r.Hits == 0 {
				return false
			}
		}
		return true
	})

	// The session table, paged: 50 of 70, then the rest; filtered by an
	// upstream: only its entries.
	sessionRows := func() []string {
		rows, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("#sessions tbody tr")).map(tr => tr.children[2].textContent)`))
		if err != nil {
			t.Fatal(err)
		}
		return rows
	}
	pageText := func() string {
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("page").textContent`))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	waitFor(t, "the first page of sessions", 30*time.Second, func() bool { return len(sessionRows()) == 50 && pageText() == "1–50 of 70" })
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#next"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second page of sessions", 30*time.Second, func() bool { return len(sessionRows()) == 20 && pageText() == "51–70 of 70" })
	one := bs[2].addr
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](fmt.Sprintf(`(() => { const f = document.getElementById("filter"); f.value = %q; f.dispatchEvent(new Event("change")); return true })()`, one))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the sessions of one upstream", 30*time.Second, func() bool {
		rows := sessionRows()
		for _, r := range rows {
			if r != one {
				return false
			}
		}
		return len(rows) == perUpstream[one] && pageText() == fmt.Sprintf("1–%d of %d", perUpstream[one], perUpstream[one])
	})

	// Drain u1 from the page.
	victim := bs[1]
	click := func(button, state string) {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr[data-address=%q] button.%s`, victim.addr, button)))); err != nil {
			t.Fatalf("clicking %s: %v", button, err)
		}
		waitFor(t, "the page to show u1 "+state, 30*time.Second, func() bool {
			for _, r := range uiRows(t, ctx) {
				if r.Address == victim.addr {
					return r.State == state
				}
			}
			return false
		})
	}
	click("drain", "draining")
	if !c.upstreams()[victim.addr].Draining {
		t.Fatal("the page shows u1 draining, the admin API does not")
	}
	for i := range 20 {
		if r := newClient(t).get(url); r.backend == "u1" {
			t.Fatalf("new client %d went to u1 while it drains from the page", i)
		}
	}
	if shot := os.Getenv("AFFINITY_UI_SCREENSHOT"); shot != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(shot, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Undrain from the page: new clients reach u1 again.
	click("undrain", "active")
	back := 0
	for range 30 {
		if newClient(t).get(url).backend == "u1" {
			back++
		}
	}
	if back == 0 {
		t.Error("after undrain from the page no new client reached u1")
	}
	stop.Store(true)
	wg.Wait()
	if n := strays.Load(); n != 0 {
		t.Errorf("%d of %d requests of bound clients failed or left their backend", n, requests.Load())
	}

	// A phone's width: nothing wider than the screen but the scrolling
	// tables.
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(390, 844)); err != nil {
		t.Fatal(err)
	}
	overflow, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth`))
	if err != nil {
		t.Fatal(err)
	}
	if overflow {
		t.Error("the page is wider than a 390-pixel screen")
	}
	t.Logf("status page: 3 upstreams under %d requests of 6 bound clients; 70 table sessions paged 50 + 20, %d of them filtered by upstream; drained and undrained u1 from the page: new clients avoided it, then %d of 30 reached it; bound clients never moved",
		requests.Load(), perUpstream[one], back)
}

// Every metric the Grafana dashboard queries exists in a scrape of a
// running Caddy with every kind of policy and a Redis store.
func TestGrafanaDashboardMetrics(t *testing.T) {
	rdb := testutil.StartRedis(t)
	bs := []*backend{newBackend(t, "g0"), newBackend(t, "g1")}
	cp, ip := freePort(t), freePort(t)
	c := startCaddy(t, fmt.Sprintf(`
http://127.0.0.1:%d {
	reverse_proxy %s %s {
		lb_policy sticky_cookie {
			secret %s
		}
	}
}
http://127.0.0.1:%d {
	reverse_proxy %s %s {
		lb_policy ip_affinity {
			persist_timeout 10m
			store redis %s
		}
	}
}
`, cp, bs[0].addr, bs[1].addr, testSecret, ip, bs[0].addr, bs[1].addr, rdb.Addr),
		caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", cp), fmt.Sprintf("127.0.0.1:%d", ip)}, level: "WARN"})
	for range 5 {
		newClient(t).get(fmt.Sprintf("http://127.0.0.1:%d/", cp))
		newClient(t).get(fmt.Sprintf("http://127.0.0.1:%d/", ip))
	}
	newClient(t).get(fmt.Sprintf("http://127.0.0.1:%d/", cp), "Cookie", "affinity=forged")
	if code, body := c.adminDo("POST", "/affinity/upstreams/drain", `{"address": "`+bs[1].addr+`"}`); code != 200 {
		t.Fatalf("drain: %d %s", code, body)
	}
	scraped := scrape(c.admin)

	b, err := os.ReadFile(filepath.Join(RepoRoot(), "examples", "grafana", "caddy-affinity.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	var exprs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && (k == "expr" || k == "definition") {
					exprs = append(exprs, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(dash)
	names := map[string]bool{}
	for _, e := range exprs {
		for _, n := range regexp.MustCompile(`\bcaddy_[a-z0-9_]+`).FindAllString(e, -1) {
			names[n] = true
		}
	}
	if len(exprs) < 10 || len(names) < 5 {
		t.Fatalf("the dashboard has %d queries of %d metrics", len(exprs), len(names))
	}
	for n := range names {
		if !metricNamed(scraped, n) {
			t.Errorf("the dashboard queries %s, which the scrape lacks", n)
		}
	}
	t.Logf("%d dashboard queries over %d metrics, each in the scrape", len(exprs), len(names))
}

// metricNamed reports whether the scrape has a sample of metric name.
func metricNamed(scrape, name string) bool {
	for _, l := range strings.Split(scrape, "\n") {
		if strings.HasPrefix(l, name+"{") || strings.HasPrefix(l, name+" ") {
			return true
		}
	}
	return false
}

// `caddy affinity ui` serves the page and the affinity API, and refuses
// what the admin endpoint would: another Host (DNS rebinding) and changes
// from another origin (a cross-site form).
func TestUIProxyChecks(t *testing.T) {
	bs := []*backend{newBackend(t, "p0"), newBackend(t, "p1")}
	cookiePort, ipPort := freePort(t), freePort(t)
	c := startCaddy(t, adminSites(cookiePort, ipPort, bs...), caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", cookiePort)}, level: "WARN"})
	newClient(t).get(fmt.Sprintf("http://127.0.0.1:%d/", cookiePort))
	page := startUI(t, c.admin)
	base := strings.TrimSuffix(page, "/affinity/ui")
	do := func(method, path, origin, host, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		if host != "" {
			req.Host = host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := do("GET", "/affinity/ui", "", "", ""); code != 200 || !strings.Contains(body, "<title>caddy-affinity</title>") {
		t.Errorf("GET the page: %d", code)
	}
	if code, body := do("GET", "/affinity/upstreams", "", "", ""); code != 200 || !strings.Contains(body, bs[0].addr) {
		t.Errorf("GET upstreams through the page's server: %d %s", code, body)
	}
	drain := `{"address": "` + bs[0].addr + `"}`
	if code, body := do("POST", "/affinity/upstreams/drain", "http://evil.example", "", drain); code != 403 || !strings.Contains(body, "origin") {
		t.Errorf("a cross-site drain: %d %s, want 403", code, body)
	}
	if code, _ := do("GET", "/affinity/upstreams", "", "evil.example:80", ""); code != 403 {
		t.Errorf("another Host: %d, want 403", code)
	}
	if c.upstreams()[bs[0].addr].Draining {
		t.Fatal("a refused request drained the upstream")
	}
	if code, body := do("POST", "/affinity/upstreams/drain", base, "", drain); code != 200 || !c.upstreams()[bs[0].addr].Draining {
		t.Errorf("a drain from the page's origin: %d %s", code, body)
	}
	if code, body := do("POST", "/affinity/upstreams/drain", base, "", `{"address": "10.9.9.9:1"}`); code != 404 || !strings.Contains(body, "no affinity policy knows upstream") {
		t.Errorf("an unknown upstream: %d %s, want the admin API's 404", code, body)
	}
	// The admin endpoint itself refuses a browser's typed navigation
	// (Sec-Fetch-Mode without Origin or Referer): why the page has a server.
	req, _ := http.NewRequest("GET", "http://"+c.admin+"/affinity/ui", nil)
	req.Header.Set("Sec-Fetch-Mode", "navigate")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		t.Logf("a browser's navigation to the admin endpoint's /affinity/ui: %s", resp.Status)
		resp.Body.Close()
	}
	if code, _ := c.adminDo("GET", "/affinity/ui", ""); code != 200 {
		t.Errorf("GET /affinity/ui on the admin endpoint (no browser headers): %d", code)
	}
}
