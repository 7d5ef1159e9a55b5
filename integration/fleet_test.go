package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-affinity/caddy-affinity/admin"
	"github.com/caddy-affinity/caddy-affinity/internal/testutil"
)

// metricLine reports whether a line of the scrape starts with name and
// ends in value.
func metricLine(scrape, name, value string) bool {
	for _, l := range strings.Split(scrape, "\n") {
		if strings.HasPrefix(l, name) && strings.HasSuffix(l, " "+value) {
			return true
		}
	}
	return false
}

// The fleet: three Caddy instances share one Redis in learn mode before
// three Apaches whose mod_usertrack mints each client's cookie, and each
// request goes to a random instance. No request reaches another Apache
// than its session's; a killed Apache's sessions move to one replacement
// on every instance; a restarted instance loses no session; with Redis
// killed no request fails, and restarted, the instances recover by
// themselves.
func TestFleetLearnRedis(t *testing.T) {
	requireServer(t, "apache")
	rdb := testutil.StartRedis(t)
	servers := map[string]*webServer{}
	var addrs []string
	for i := 1; i <= 3; i++ {
		ws := startServer(t, "apache", fmt.Sprintf("apache%d", i))
		servers[ws.name] = ws
		addrs = append(addrs, ws.addr)
	}
	site := func(port int) string {
		return fmt.Sprintf(`
http://127.0.0.1:%d {
	affinity
	reverse_proxy %s {
		lb_policy sticky_cookie name {
			mode learn
			store redis %s
			fallback round_robin
		}
		lb_retries 2
		fail_duration 30s
	}
}
`, port, strings.Join(addrs, " "), rdb.Addr)
	}
	type instance struct {
		port int
		url  string
		proc *caddyProc
	}
	var fleet []*instance
	start := func(in *instance) {
		a := fmt.Sprintf("127.0.0.1:%d", in.port)
		in.proc = startCaddy(t, site(in.port), caddyOpts{wait: []string{a}, level: "WARN"})
	}
	for range 3 {
		p := freePort(t)
		in := &instance{port: p, url: fmt.Sprintf("http://127.0.0.1:%d/", p)}
		start(in)
		fleet = append(fleet, in)
	}

	type session struct {
		cl    *client
		value string
		home  string
	}
	const clients = 60
	rng := rand.New(rand.NewPCG(1, 2))
	var sessions []*session
	for i := range clients {
		cl := newClient(t)
		r := cl.get(fleet[rng.IntN(3)].url)
		value := cl.cookie(fleet[0].url, "name")
		if r.status != 200 || servers[r.backend] == nil || value == "" {
			t.Fatalf("client %d: status %d from %q, cookie %q", i, r.status, r.backend, value)
		}
		sessions = append(sessions, &session{cl: cl, value: value, home: r.backend})
	}
	// round sends every client's next requests: first one to each instance,
	// then random ones; it returns the misroutes and failures.
	round := func(what string, n int, check bool) (misroutes, failures int, slowest time.Duration) {
		t.Helper()
		for _, s := range sessions {
			order := rng.Perm(3)
			for j := range n {
				in := fleet[rng.IntN(3)]
				if j < 3 {
					in = fleet[order[j]]
				}
				t0 := time.Now()
				r, err := s.cl.try(in.url)
				slowest = max(slowest, time.Since(t0))
				switch {
				case err != nil || r.status != 200:
					failures++
					if check {
						t.Errorf("%s: client %s: status %d, %v", what, s.value, r.status, err)
					}
				case r.backend != s.home:
					misroutes++
					if check {
						t.Errorf("%s: client %s reached %s via :%d, its session is on %s", what, s.value, r.backend, in.port, s.home)
					}
				}
				if got := s.cl.cookie(in.url, "name"); got != s.value {
					t.Fatalf("%s: the client's cookie changed from %q to %q", what, s.value, got)
				}
			}
		}
		return
	}
	homes := map[string]int{}
	for _, s := range sessions {
		homes[s.home]++
	}
	m, f, _ := round("steady", 10, true)
	t.Logf("steady: %d clients over %v, %d requests to random instances: %d misroutes, %d failures", clients, homes, clients*10, m, f)
	// Every instance caches every session now: no round trips.
	before := rdb.CommandCalls()
	round("steady, cached", 10, true)
	after := rdb.CommandCalls()
	t.Logf("steady state: %d requests made %d GET and %d SET round trips to Redis (and the instances' health checks %d INFO)",
		clients*10, after["get"]-before["get"], after["set"]-before["set"], after["info"]-before["info"])
	if after["get"] != before["get"] || after["set"] != before["set"] {
		t.Errorf("cached sessions made %d GETs and %d SETs, want none", after["get"]-before["get"], after["set"]-before["set"])
	}
	if n := rdb.Keys("caddy-affinity:t:cookie:name:"); n != clients {
		t.Errorf("Redis holds %d entries, want %d", n, clients)
	}
	keys, _ := rdb.Do("KEYS", "*")
	for _, s := range sessions {
		if strings.Contains(keys, s.value) {
			t.Fatalf("Redis names a session by its cookie value %q", s.value)
		}
	}

	// A backend killed: its sessions move, to one replacement per session
	// whichever instance sees the failure first.
	dead := "apache2"
	servers[dead].stop()
	moved := 0
	for _, s := range sessions {
		if s.home != dead {
			continue
		}
		r := s.cl.get(fleet[rng.IntN(3)].url)
		if r.status != 200 || r.backend == dead {
			t.Fatalf("after the kill: status %d from %s", r.status, r.backend)
		}
		s.home = r.backend
		moved++
	}
	m, f, _ = round("after a backend died", 6, true)
	t.Logf("backend %s killed: %d sessions moved, then %d requests: %d misroutes, %d failures", dead, moved, clients*6, m, f)
	if moved == 0 {
		t.Fatal("no session was on the killed backend")
	}

	// An instance restarted: it starts with an empty cache, and Redis has
	// every session.
	fleet[1].proc.stop()
	start(fleet[1])
	m, f, _ = round("after an instance restarted", 6, true)
	t.Logf("instance restarted: %d requests: %d misroutes, %d failures", clients*6, m, f)

	// Redis killed: nothing fails; what an instance cached still routes.
	rdb.Stop()
	m, f, slow := round("with Redis down", 6, false)
	t.Logf("Redis down: %d requests: %d failures, %d misroutes (sessions an instance had not cached), slowest %v",
		clients*6, f, m, slow.Round(time.Millisecond))
	if f != 0 {
		t.Errorf("with Redis down %d requests failed", f)
	}
	for _, in := range fleet {
		waitFor(t, "every instance to notice the outage", 30*time.Second, func() bool { return in.proc.logContains("session store unavailable") })
	}
	rdb.Restart()
	for _, in := range fleet {
		waitFor(t, "the instances to find Redis back", 30*time.Second, func() bool { return metricLine(scrape(in.proc.admin), "caddy_affinity_store_up{", "1") })
	}
	// The caches wrote their entries back: no session was lost.
	waitFor(t, "the caches to write the sessions back", 30*time.Second, func() bool {
		return rdb.Keys("caddy-affinity:t:cookie:name:") == clients
	})
	m, f, _ = round("after Redis came back", 6, true)
	t.Logf("Redis restarted (empty): %d entries written back; %d requests: %d misroutes, %d failures",
		rdb.Keys("caddy-affinity:t:cookie:name:"), clients*6, m, f)
	// A restarted instance, empty, finds them all in Redis again.
	fleet[2].proc.stop()
	start(fleet[2])
	m, f, _ = round("an instance restarted after the outage", 3, true)
	t.Logf("then an instance restarted: %d misroutes, %d failures", m, f)
}

func scrape(admin string) string {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// ip_affinity with a Redis table, HTTP and layer4 in two Caddy instances:
// after a failover seen by one instance's HTTP proxy alone, the other
// instance and both layer4 proxies send the moved clients to the same
// replacement, even once the failed backend is back and their own view
// (and the hash) would send them there.
func TestFleetIPAffinityRedis(t *testing.T) {
	rdb := testutil.StartRedis(t)
	bs := []*backend{newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3")}
	var addrs []string
	nameOf := map[string]string{}
	for _, b := range bs {
		addrs = append(addrs, b.addr)
		nameOf[b.addr] = b.name
	}
	type instance struct {
		http, l4 string
		proc     *caddyProc
	}
	var fleet []instance
	for range 2 {
		hp, lp := freePort(t), freePort(t)
		in := instance{http: fmt.Sprintf("127.0.0.1:%d", hp), l4: fmt.Sprintf("127.0.0.1:%d", lp)}
		var ups strings.Builder
		for _, a := range addrs {
			fmt.Fprintf(&ups, "\t\t\t\t\tupstream %s\n", a)
		}
		global := fmt.Sprintf(`	layer4 {
		%s {
			route {
				proxy {
					lb_policy ip_affinity {
						persist_timeout 10m
						store redis %s
					}
					lb_try_duration 5s
					lb_try_interval 10ms
					fail_duration 1m
					max_fails 1
%s				}
			}
		}
	}`, in.l4, rdb.Addr, ups.String())
		site := fmt.Sprintf(`
http://%s {
	reverse_proxy %s {
		lb_policy ip_affinity {
			persist_timeout 10m
			store redis %s
		}
		lb_retries 2
		fail_duration 1m
	}
}
`, in.http, strings.Join(addrs, " "), rdb.Addr)
		in.proc = startCaddy(t, site, caddyOpts{wait: []string{in.http, in.l4}, global: global, level: "WARN"})
		fleet = append(fleet, in)
	}
	var srcs []string
	home := map[string]string{}
	for i := 2; i <= 121; i++ {
		src := fmt.Sprintf("127.0.0.%d", i)
		srcs = append(srcs, src)
		home[src] = nameOf[expected(addrs, src, 32)]
	}
	// Every client, through both proxies of both instances, on its hash.
	for _, src := range srcs {
		for _, in := range fleet {
			if r := getFrom(t, src, "http://"+in.http+"/"); r.backend != home[src] {
				t.Fatalf("HTTP via %s sent %s to %s, want %s", in.http, src, r.backend, home[src])
			}
			if l := l4Get(t, src, in.l4); l != home[src] {
				t.Fatalf("layer4 via %s sent %s to %s, want %s", in.l4, src, l, home[src])
			}
		}
	}
	// One more entry is 127.0.0.1's, whose readiness probes connected to
	// the layer4 listeners.
	if n := rdb.Keys("caddy-affinity:t:ip:"); n != len(srcs)+1 {
		t.Errorf("Redis holds %d entries, want %d", n, len(srcs)+1)
	}
	keys, _ := rdb.Do("KEYS", "*")
	if strings.Contains(keys, "127.0.0.") {
		t.Fatalf("Redis names clients by address:\n%s", keys)
	}

	// The victim dies; only instance 0's HTTP proxy sees it and moves its
	// clients.
	victim := bs[0]
	victim.kill()
	var moved []string
	rebound := map[string]time.Time{}
	for _, src := range srcs {
		if home[src] != victim.name {
			continue
		}
		r := getFrom(t, src, "http://"+fleet[0].http+"/")
		rebound[src] = time.Now()
		if r.status != 200 || r.backend == victim.name {
			t.Fatalf("after the kill %s: status %d from %s", src, r.status, r.backend)
		}
		home[src] = r.backend
		moved = append(moved, src)
	}
	if len(moved) == 0 {
		t.Fatal("no client was on the killed backend; the test proves nothing")
	}
	victim.restart()
	// Instance 1 never saw the victim down, and it is up again: only the
	// shared table keeps the moved clients on their replacements.
	slowest, stale := time.Duration(0), 0
	for _, src := range moved {
		waitFor(t, "the rebind to reach instance 1", 10*time.Second, func() bool {
			if getFrom(t, src, "http://"+fleet[1].http+"/").backend == home[src] {
				return true
			}
			stale++
			return false
		})
		slowest = max(slowest, time.Since(rebound[src]))
	}
	if stale > 0 {
		t.Errorf("instance 1 sent %d requests of moved clients to the old backend before the rebind reached it", stale)
	}
	for _, src := range srcs {
		for _, in := range fleet {
			if r := getFrom(t, src, "http://"+in.http+"/"); r.backend != home[src] {
				t.Errorf("HTTP via %s sent %s to %s, its session is on %s", in.http, src, r.backend, home[src])
			}
			if l := l4Get(t, src, in.l4); l != home[src] {
				t.Errorf("layer4 via %s sent %s to %s, its session is on %s", in.l4, src, l, home[src])
			}
		}
	}
	// The admin API of either instance lists and counts Redis's entries,
	// by keyed hash, and a flush empties Redis and every cache.
	var page []admin.SessionEntry
	resp := adminGet(t, fleet[1].proc.admin, "/affinity/sessions?limit=1000", &page)
	if total := resp.Header.Get("X-Total-Count"); total != fmt.Sprint(len(srcs)+1) || len(page) != len(srcs)+1 {
		t.Errorf("GET /affinity/sessions: X-Total-Count %s, %d entries; want %d", total, len(page), len(srcs)+1)
	}
	for _, e := range page {
		if !strings.HasPrefix(e.Client, "stored:") || strings.Contains(e.Client, "127.0.0.") || e.Upstream == "" {
			t.Fatalf("session entry %+v: want a stored key and an upstream", e)
		}
	}
	var ups []admin.UpstreamStatus
	adminGet(t, fleet[1].proc.admin, "/affinity/upstreams", &ups)
	sum := 0
	for _, u := range ups {
		sum += u.Sessions
	}
	if sum != len(srcs)+1 {
		t.Errorf("GET /affinity/upstreams counts %d sessions, want %d", sum, len(srcs)+1)
	}
	req, _ := http.NewRequest(http.MethodDelete, "http://"+fleet[0].proc.admin+"/affinity/sessions", nil)
	if r, err := http.DefaultClient.Do(req); err != nil || r.StatusCode != 200 {
		t.Fatalf("DELETE /affinity/sessions: %v %v", r, err)
	}
	if n := rdb.Keys("caddy-affinity:t:ip:"); n != 0 {
		t.Errorf("after a flush Redis holds %d entries", n)
	}
	// Instance 1's cache was flushed too: the moved clients go back to
	// their hash's backend.
	waitFor(t, "the flush to reach instance 1", 10*time.Second, func() bool {
		return getFrom(t, moved[0], "http://"+fleet[1].http+"/").backend == victim.name
	})
	t.Logf("%d clients moved by instance 0's HTTP proxy; with the backend back, instance 1 and both layer4 proxies kept all %d on their replacements: "+
		"instance 1's first request of each went there, at most %v after the rebind (restarting the backend included)",
		len(moved), len(moved), slowest.Round(time.Millisecond))
}

// adminGet decodes the JSON of GET path on the admin endpoint into v.
func adminGet(t *testing.T, addr, path string, v any) *http.Response {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s, %v", path, resp.Status, err)
	}
	return resp
}
