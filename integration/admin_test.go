package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// adminDo sends a request to Caddy's admin endpoint and returns the status
// and body.
func (c *caddyProc) adminDo(method, path, body string) (int, string) {
	c.t.Helper()
	req, _ := http.NewRequest(method, "http://"+c.admin+path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

type upstreamStatus struct {
	Address         string         `json:"address"`
	Draining        bool           `json:"draining"`
	Sessions        int            `json:"sessions"`
	Hits            uint64         `json:"hits"`
	New             uint64         `json:"new"`
	Rebinds         uint64         `json:"rebinds"`
	CookiesTooLarge uint64         `json:"cookies_too_large"`
	Rejected        map[string]int `json:"rejected"`
}

func (c *caddyProc) upstreams() map[string]upstreamStatus {
	c.t.Helper()
	code, body := c.adminDo("GET", "/affinity/upstreams", "")
	if code != 200 {
		c.t.Fatalf("GET /affinity/upstreams: %d %s", code, body)
	}
	var list []upstreamStatus
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		c.t.Fatalf("GET /affinity/upstreams: %v: %s", err, body)
	}
	out := map[string]upstreamStatus{}
	for _, u := range list {
		out[u.Address] = u
	}
	return out
}

// adminSites has a cookie site and an IP site over the same backends.
func adminSites(cookiePort, ipPort int, backends ...*backend) string {
	var a []string
	for _, b := range backends {
		a = append(a, b.addr)
	}
	return fmt.Sprintf(`
http://127.0.0.1:%d {
	reverse_proxy %[3]s {
		lb_policy sticky_cookie {
			secret %[4]s
		}
		lb_retries 2
	}
}
http://127.0.0.1:%[2]d {
	reverse_proxy %[3]s {
		lb_policy ip_affinity {
			persist_timeout 10m
		}
		lb_retries 2
	}
}
`, cookiePort, ipPort, strings.Join(a, " "), testSecret)
}

func TestAdminDrainSessionsMetrics(t *testing.T) {
	bs := []*backend{newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3")}
	byName := map[string]*backend{}
	for _, b := range bs {
		byName[b.name] = b
	}
	cp, ip := freePort(t), freePort(t)
	curl, iurl := fmt.Sprintf("http://127.0.0.1:%d/", cp), fmt.Sprintf("http://127.0.0.1:%d/", ip)
	c := startCaddy(t, adminSites(cp, ip, bs...), caddyOpts{
		wait: []string{fmt.Sprintf("127.0.0.1:%d", cp), fmt.Sprintf("127.0.0.1:%d", ip)}})

	// Every upstream is known before any traffic, so it can be drained.
	if ups := c.upstreams(); len(ups) != 3 {
		t.Fatalf("before traffic GET /affinity/upstreams lists %d upstreams, want 3", len(ups))
	}

	// Sessions on every backend: cookie clients and IP clients.
	var clients []*client
	onB1 := 0
	for len(clients) < 30 {
		cl := newClient(t)
		if cl.get(curl).backend == "b1" {
			onB1++
		}
		clients = append(clients, cl)
	}
	ipOn := map[string]string{}
	for i := 2; i <= 60; i++ {
		src := fmt.Sprintf("127.0.0.%d", i)
		ipOn[src] = getFrom(t, src, iurl).backend
	}
	if onB1 == 0 {
		t.Fatalf("no cookie session landed on b1")
	}

	// Drain b1: its sessions keep reaching it, new ones never do.
	if code, body := c.adminDo("POST", "/affinity/upstreams/drain", `{"address": "`+bs[0].addr+`"}`); code != 200 {
		t.Fatalf("drain: %d %s", code, body)
	}
	if !c.upstreams()[bs[0].addr].Draining {
		t.Fatalf("b1 not listed as draining")
	}
	for _, cl := range clients {
		before := cl.get(curl).backend
		for i := 0; i < 3; i++ {
			if r := cl.get(curl); r.backend != before {
				t.Fatalf("while draining a session moved from %s to %s", before, r.backend)
			}
		}
	}
	for src, b := range ipOn {
		if r := getFrom(t, src, iurl); r.backend != b {
			t.Fatalf("while draining IP session %s moved from %s to %s", src, b, r.backend)
		}
	}
	for i := 0; i < 30; i++ {
		if r := newClient(t).get(curl); r.backend == "b1" {
			t.Fatalf("a new cookie session went to draining b1")
		}
	}
	for i := 100; i <= 160; i++ {
		if r := getFrom(t, fmt.Sprintf("127.0.0.%d", i), iurl); r.backend == "b1" {
			t.Fatalf("a new IP session (127.0.0.%d) went to draining b1", i)
		}
	}

	// Draining survives a reload; counters keep counting.
	hitsBefore := c.upstreams()[bs[1].addr].Hits
	c.loadCaddyfile(adminSites(cp, ip, bs...), "")
	if !c.upstreams()[bs[0].addr].Draining {
		t.Fatalf("draining lost on reload")
	}
	for _, cl := range clients {
		cl.get(curl)
	}
	if after := c.upstreams()[bs[1].addr].Hits; after <= hitsBefore {
		t.Fatalf("hits of b2 went from %d to %d across a reload", hitsBefore, after)
	}

	// Undrain: new sessions reach b1 again.
	if code, body := c.adminDo("POST", "/affinity/upstreams/undrain", `{"address": "`+bs[0].addr+`"}`); code != 200 {
		t.Fatalf("undrain: %d %s", code, body)
	}
	reached := false
	for i := 0; i < 60 && !reached; i++ {
		reached = newClient(t).get(curl).backend == "b1"
	}
	if !reached {
		t.Fatalf("no new session reached b1 after undrain")
	}

	// The session table lists entries, pages, and flushes.
	code, body := c.adminDo("GET", "/affinity/sessions?limit=5&offset=2", "")
	var page []map[string]any
	if code != 200 || json.Unmarshal([]byte(body), &page) != nil || len(page) != 5 {
		t.Fatalf("GET /affinity/sessions?limit=5: %d %s", code, body)
	}
	if page[0]["upstream"] == "" || !strings.HasPrefix(page[0]["client"].(string), "127.0.0.") {
		t.Fatalf("session entry %v", page[0])
	}
	if code, body := c.adminDo("DELETE", "/affinity/sessions", ""); code != 200 || !strings.Contains(body, "flushed") {
		t.Fatalf("DELETE /affinity/sessions: %d %s", code, body)
	}
	if code, body := c.adminDo("GET", "/affinity/sessions", ""); code != 200 || strings.TrimSpace(body) != "[]" {
		t.Fatalf("after flush: %d %s", code, body)
	}

	// A rejected cookie is counted by reason.
	rawGet(t, curl, "affinity=not-a-token")
	total := 0
	for _, u := range c.upstreams() {
		total += u.Rejected["malformed"]
	}
	if total != 1 {
		t.Fatalf("malformed rejections: %d, want 1", total)
	}

	// The metrics show the series.
	resp, err := http.Get("http://" + c.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`caddy_affinity_decisions_total{policy="sticky_cookie",result="hit",upstream="` + bs[1].addr + `"}`,
		`caddy_affinity_decisions_total{policy="ip_affinity",result="new",upstream="`,
		`caddy_affinity_rejected_total{policy="sticky_cookie",reason="malformed"`,
		`caddy_affinity_sessions{upstream="`,
		`caddy_affinity_draining{upstream="` + bs[0].addr + `"} 0`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// Bad requests get clear errors.
	for _, tc := range []struct {
		method, path, body string
		code               int
	}{
		{"GET", "/affinity/upstreams/drain", "", 405},
		{"PUT", "/affinity/upstreams/undrain", `{"address":"x"}`, 405},
		{"POST", "/affinity/upstreams", "", 405},
		{"POST", "/affinity/upstreams/drain", `{"address": `, 400},
		{"POST", "/affinity/upstreams/drain", `{"addr": "x"}`, 400},
		{"POST", "/affinity/upstreams/drain", `{}`, 400},
		{"POST", "/affinity/upstreams/drain", `{"address": "10.9.9.9:1"}`, 404},
		{"GET", "/affinity/sessions?limit=abc", "", 400},
		{"GET", "/affinity/sessions?offset=-1", "", 400},
		{"POST", "/affinity/sessions", "", 405},
	} {
		code, body := c.adminDo(tc.method, tc.path, tc.body)
		if code != tc.code || !strings.Contains(body, "error") {
			t.Errorf("%s %s %q: %d %s, want %d with an error message", tc.method, tc.path, tc.body, code, body, tc.code)
		}
	}
}

func TestReloadUnderLoad(t *testing.T) {
	bs := []*backend{newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3")}
	cp, ip := freePort(t), freePort(t)
	curl, iurl := fmt.Sprintf("http://127.0.0.1:%d/", cp), fmt.Sprintf("http://127.0.0.1:%d/", ip)
	c := startCaddy(t, adminSites(cp, ip, bs...), caddyOpts{
		wait: []string{fmt.Sprintf("127.0.0.1:%d", cp), fmt.Sprintf("127.0.0.1:%d", ip)}})

	var failures, moves, requests atomic.Int64
	var errs sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(2)
		go func(i int) { // a cookie client
			defer wg.Done()
			cl := newClient(t)
			home := ""
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := cl.try(curl)
				requests.Add(1)
				if err != nil || r.status != 200 {
					failures.Add(1)
					errs.Store(fmt.Sprintf("cookie %d: %v %d", i, err, r.status), true)
					continue
				}
				if home == "" {
					home = r.backend
				} else if r.backend != home {
					moves.Add(1)
				}
			}
		}(i)
		go func(i int) { // an IP client
			defer wg.Done()
			src := fmt.Sprintf("127.0.0.%d", 10+i)
			hc := sourceClient(src)
			home := ""
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := hc.Get(iurl)
				requests.Add(1)
				if err != nil {
					failures.Add(1)
					errs.Store(fmt.Sprintf("ip %s: %v", src, err), true)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				b := resp.Header.Get("X-Backend")
				if resp.StatusCode != 200 {
					failures.Add(1)
					errs.Store(fmt.Sprintf("ip %s: status %d", src, resp.StatusCode), true)
				} else if home == "" {
					home = b
				} else if b != home {
					moves.Add(1)
				}
			}
		}(i)
	}
	waitFor(t, "traffic before the reloads", 10*time.Second, func() bool { return requests.Load() > 200 })
	for i := 0; i < 2; i++ {
		n := requests.Load()
		c.loadCaddyfile(adminSites(cp, ip, bs...), "")
		waitFor(t, "traffic after a reload", 10*time.Second, func() bool { return requests.Load() > n+200 })
	}
	close(stop)
	wg.Wait()
	errs.Range(func(k, _ any) bool { t.Log(k); return true })
	t.Logf("%d requests over two reloads: %d failed, %d moved", requests.Load(), failures.Load(), moves.Load())
	if failures.Load() != 0 || moves.Load() != 0 {
		t.Fatalf("reload under load: %d failed requests, %d moved clients", failures.Load(), moves.Load())
	}
}

// A reload that removes an upstream removes it from the admin API and the
// metrics; the upstreams that stay keep their counters.
func TestReloadForgetsRemovedUpstream(t *testing.T) {
	b1, b2, b3 := newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3")
	cp, ip := freePort(t), freePort(t)
	c := startCaddy(t, adminSites(cp, ip, b1, b2), caddyOpts{
		wait: []string{fmt.Sprintf("127.0.0.1:%d", cp), fmt.Sprintf("127.0.0.1:%d", ip)}})
	for i := 0; i < 20; i++ {
		newClient(t).get(fmt.Sprintf("http://127.0.0.1:%d/", cp))
	}
	before := c.upstreams()
	c.loadCaddyfile(adminSites(cp, ip, b2, b3), "")
	for i := 0; i < 5; i++ {
		// A connection accepted by the old server as it shuts down may be
		// closed before its request is read (Caddy's reload, not the
		// plugin): such a transport error is retried, an HTTP error is not.
		url := fmt.Sprintf("http://127.0.0.1:%d/", cp)
		r, err := newClient(t).try(url)
		if err != nil {
			t.Logf("GET %s right after the reload: %v; again", url, err)
			r = newClient(t).get(url)
		}
		if r.status != 200 {
			t.Fatalf("GET %s after the reload: status %d", url, r.status)
		}
	}
	after := c.upstreams()
	if _, ok := after[b1.addr]; ok {
		t.Fatalf("removed upstream %s still listed: %v", b1.addr, after)
	}
	if _, ok := after[b3.addr]; !ok {
		t.Fatalf("added upstream %s not listed", b3.addr)
	}
	if after[b2.addr].New < before[b2.addr].New {
		t.Fatalf("b2's counters went back from %d to %d", before[b2.addr].New, after[b2.addr].New)
	}
}
