package integration

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// soakConfig sizes the soak: `make test` runs the short one, `make soak`
// sets AFFINITY_SOAK=long.
func soakConfig() (clientsPerKind int, phase time.Duration) {
	if os.Getenv("AFFINITY_SOAK") == "long" {
		return 60, 20 * time.Second
	}
	return 12, 1500 * time.Millisecond
}

// badCookies are cookie values a client might send: each must be handled
// as absent (200, a fresh cookie), never an error.
var badCookies = []string{
	"", "x", "%00", "\"", "\"\"", "A~", strings.Repeat("A", 34), strings.Repeat("_", 28) + "~v",
	"EVK4iZ5NDWsGzHtrBsx7dCnM6jU76cdUBQ", "EVK4iZ5NDWsGzHtrBsx7dCnM6jU76cdUB", "EVK4iZ5NDWsGzHtrBsx7dCnM6jU76cdUBQQ",
	"EtwAtqIf0GsGzYo_AbVnbJRxDir4~app2", "EtwAtqIf0GsGzYo_AbVnbJRxDir4~", "~~~~", "=====", "a=b=c",
	strings.Repeat("é", 40), "\\\\\\", "null", "undefined", "0", "-1", strings.Repeat("~", 200),
}

// heapAndGoroutines reads Caddy's heap in use after a forced GC, and its
// goroutine count, from the admin endpoint's pprof handlers.
func (c *caddyProc) heapAndGoroutines(t *testing.T) (heap uint64, goroutines int) {
	t.Helper()
	resp, err := http.Get("http://" + c.admin + "/debug/pprof/heap?gc=1&debug=1")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "# HeapAlloc = "); ok {
			heap, _ = strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	resp.Body.Close()
	resp, err = http.Get("http://" + c.admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	first, _ := bufio.NewReader(resp.Body).ReadString('\n')
	resp.Body.Close()
	fmt.Sscanf(first, "goroutine profile: total %d", &goroutines)
	if heap == 0 || goroutines == 0 {
		t.Fatalf("could not read heap (%d) or goroutines (%d) from pprof", heap, goroutines)
	}
	return heap, goroutines
}

// soakClient is one client of the soak: a cookie jar or a source address.
type soakClient struct {
	kind    string
	do      func() (reply, error)
	home    string
	changes int
	killed  bool // its home was the killed backend at the kill
}

func TestSoak(t *testing.T) {
	perKind, phase := soakConfig()
	var addrs []string
	byName := map[string]*backend{}
	for i := 1; i <= 3; i++ {
		b := newBackend(t, fmt.Sprintf("s%d", i))
		name := b.name
		b.extra = func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Add("Set-Cookie", "name="+name+"xxxx; Path=/")
			return false
		}
		addrs = append(addrs, b.addr)
		byName[name] = b
	}
	ins, rew, ipp := freePort(t), freePort(t), freePort(t)
	sites := fmt.Sprintf(`
http://127.0.0.1:%d {
	reverse_proxy %[4]s {
		lb_policy sticky_cookie {
			secret %[5]s
		}
		lb_retries 1
	}
}
http://127.0.0.1:%[2]d {
	affinity
	reverse_proxy %[4]s {
		lb_policy sticky_cookie name {
			mode rewrite
			secret %[5]s
		}
		lb_retries 1
	}
}
http://127.0.0.1:%[3]d {
	reverse_proxy %[4]s {
		lb_policy ip_affinity {
			persist_timeout 10m
		}
		lb_retries 1
	}
}
`, ins, rew, ipp, strings.Join(addrs, " "), testSecret)
	c := startCaddy(t, sites, caddyOpts{level: "INFO", wait: []string{
		fmt.Sprintf("127.0.0.1:%d", ins), fmt.Sprintf("127.0.0.1:%d", rew), fmt.Sprintf("127.0.0.1:%d", ipp)}})

	var clients []*soakClient
	for i := 0; i < perKind; i++ {
		for _, k := range []struct {
			kind string
			port int
		}{{"insert", ins}, {"rewrite", rew}} {
			cl := newClient(t)
			url := fmt.Sprintf("http://127.0.0.1:%d/", k.port)
			clients = append(clients, &soakClient{kind: k.kind, do: func() (reply, error) { return cl.try(url) }})
		}
		hc := sourceClient(fmt.Sprintf("127.0.0.%d", 2+i))
		url := fmt.Sprintf("http://127.0.0.1:%d/", ipp)
		clients = append(clients, &soakClient{kind: "ip", do: func() (reply, error) {
			resp, err := hc.Get(url)
			if err != nil {
				return reply{}, err
			}
			defer resp.Body.Close()
			io.Copy(io.Discard, resp.Body)
			return reply{status: resp.StatusCode, backend: resp.Header.Get("X-Backend")}, nil
		}})
	}

	var (
		requests, errorsSeen, misroutes, badHandled atomic.Int64
		mu                                          sync.Mutex // guards killedName and the clients' fields
		killedName                                  string
		errLog                                      []string
		stop                                        = make(chan struct{})
		wg                                          sync.WaitGroup
	)
	for _, cl := range clients {
		wg.Add(1)
		go func(cl *soakClient) {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := cl.do()
				requests.Add(1)
				mu.Lock()
				switch {
				case err != nil || r.status != 200:
					errorsSeen.Add(1)
					errLog = append(errLog, fmt.Sprintf("%s: %v status %d", cl.kind, err, r.status))
				case cl.home == "":
					cl.home = r.backend
				case r.backend != cl.home:
					// The one change allowed: a client of the killed
					// backend, after the kill, once.
					if cl.killed && cl.changes == 0 && r.backend != killedName {
						cl.changes++
					} else {
						misroutes.Add(1)
						errLog = append(errLog, fmt.Sprintf("%s: misroute %s -> %s", cl.kind, cl.home, r.backend))
					}
					cl.home = r.backend
				}
				mu.Unlock()
			}
		}(cl)
	}
	// Bad cookies, all through the soak.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			v := badCookies[i%len(badCookies)]
			for _, port := range []int{ins, rew} {
				name := "affinity"
				if port == rew {
					name = "name"
				}
				req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/", port), nil)
				req.Header.Set("Cookie", name+"="+v)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					errorsSeen.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || (port == ins && len(setCookiesNamed(resp.Header.Values("Set-Cookie"), "affinity")) != 1) {
					errorsSeen.Add(1)
					mu.Lock()
					errLog = append(errLog, fmt.Sprintf("bad cookie %q: status %d, Set-Cookie %q", v, resp.StatusCode, resp.Header.Values("Set-Cookie")))
					mu.Unlock()
					continue
				}
				badHandled.Add(1)
			}
		}
	}()

	waitFor(t, "every client homed", 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, cl := range clients {
			if cl.home == "" {
				return false
			}
		}
		return true
	})
	time.Sleep(phase) // traffic for a while: a duration of load, not synchronisation
	warmHeap, warmG := c.heapAndGoroutines(t)

	// Kill the backend with the most clients, mid-traffic.
	mu.Lock()
	count := map[string]int{}
	for _, cl := range clients {
		count[cl.home]++
	}
	for name, n := range count {
		if killedName == "" || n > count[killedName] {
			killedName = name
		}
	}
	for _, cl := range clients {
		cl.killed = cl.home == killedName
	}
	mu.Unlock()
	byName[killedName].kill()
	time.Sleep(phase)
	c.loadCaddyfile(sites, "")
	byName[killedName].restart()
	time.Sleep(phase)
	c.loadCaddyfile(sites, "")
	time.Sleep(phase)
	close(stop)
	wg.Wait()

	endHeap, endG := c.heapAndGoroutines(t)
	rebinds := 0
	for _, cl := range clients {
		rebinds += cl.changes
	}
	growth := float64(endHeap)/float64(warmHeap) - 1
	summary := fmt.Sprintf("soak: %d requests, %d clients, %d rebinds, %d misroutes, %d errors, %d bad cookies handled, heap %.1f MB -> %.1f MB (%+.1f%%), goroutines %d -> %d",
		requests.Load(), len(clients), rebinds, misroutes.Load(), errorsSeen.Load(), badHandled.Load(),
		float64(warmHeap)/1e6, float64(endHeap)/1e6, growth*100, warmG, endG)
	fmt.Println(summary)
	if out := os.Getenv("AFFINITY_SOAK_REPORT"); out != "" {
		report := fmt.Sprintf("# Reliability soak\n\nWritten by `make soak` (integration/soak_test.go, AFFINITY_SOAK=long) on %s:\n\n    %s\n\n"+
			"%d cookie clients in insert mode, %d in rewrite mode and %d IP clients, each phase %s: traffic, "+
			"a backend killed, a reload, the backend restarted, a second reload. Asserted: no misroute, no error, "+
			"every bad cookie answered as absent, heap within 10 %% of a warm start, no goroutine growth.\n",
			time.Now().UTC().Format("2006-01-02 15:04 MST"), summary, perKind, perKind, perKind, phase)
		if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
			t.Errorf("writing %s: %v", out, err)
		}
	}
	for i, e := range errLog {
		if i == 20 {
			t.Logf("... %d more", len(errLog)-20)
			break
		}
		t.Log(e)
	}
	if misroutes.Load() != 0 || errorsSeen.Load() != 0 {
		t.Fatalf("%d misroutes and %d errors", misroutes.Load(), errorsSeen.Load())
	}
	if rebinds == 0 {
		t.Fatalf("no client rebound after the kill: the soak proved nothing")
	}
	if badHandled.Load() == 0 {
		t.Fatalf("no bad cookie was sent")
	}
	if growth > 0.10 {
		t.Fatalf("heap grew %.1f%% from a warm start (limit 10%%)", growth*100)
	}
	if endG > warmG+20 {
		t.Fatalf("goroutines grew from %d to %d", warmG, endG)
	}
}
