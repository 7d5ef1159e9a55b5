package integration

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/caddy-affinity/caddy-affinity/admin"
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
	bound := clientsOn(t, url, "d0", 4)
	const deadline = 3 * time.Second
	start := time.Now()
	// The drain through the command line, which waits until d0 is drained.
	var cliOut bytes.Buffer
	cli := exec.Command(caddyBinary(t), "affinity", "drain", bs[0].addr, "--deadline", "3s", "--wait", "--interval", "100ms", "--address", c.admin)
	cli.Stdout, cli.Stderr = &cliOut, &cliOut
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	cliDone := make(chan error, 1)
	go func() { cliDone <- cli.Wait() }()
	waitFor(t, "d0 draining", 10*time.Second, func() bool { return c.upstreams()[bs[0].addr].Draining })
	stayed, checked := 0, false
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
		// Bound sessions still come: not drained.
		var ups []admin.UpstreamStatus
		adminGet(t, c.admin, "/affinity/upstreams", &ups)
		for _, u := range ups {
			if u.Address != bs[0].addr || time.Since(start) >= deadline {
				continue
			}
			// Sessions seen counts distinct tokens: clients bound to one
			// upstream in the same second hold the same insert-mode token.
			if u.Drained || !u.Draining || u.SessionsSeen < 1 || u.SessionsSeen > len(bound)+1 || u.LastSession == nil {
				t.Fatalf("d0 during the drain: %+v; want draining, not drained, 1 to %d sessions seen", u, len(bound))
			}
			checked = true
		}
	}
	if !checked {
		t.Fatal("d0 was never checked before the deadline")
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
	// Nothing bound or in flight any more: drained, and the command returns.
	select {
	case err := <-cliDone:
		if err != nil {
			t.Fatalf("caddy affinity drain --wait: %v:\n%s", err, cliOut.String())
		}
	case <-time.After(30 * time.Second):
		cli.Process.Kill()
		t.Fatalf("caddy affinity drain --wait did not return:\n%s", cliOut.String())
	}
	out := cliOut.String()
	if !strings.Contains(out, "draining, sessions move after") || !strings.Contains(out, "seen in the last minute") || !strings.Contains(out, ": drained,") {
		t.Errorf("drain --wait printed:\n%s", out)
	}
	if u := c.upstreams()[bs[0].addr]; !u.Draining {
		t.Errorf("d0 after the drain: %+v", u)
	}
	t.Logf("%d requests of bound clients stayed on d0 before the deadline; after it all %d moved: %v; drain --wait returned after %v:\n%s",
		stayed, len(bound), moved, time.Since(start).Round(100*time.Millisecond), out)
}

// drained with ip_affinity (a session table) and a request in flight: a
// drained upstream is one with no table entry bound and no request in
// flight. A backend holds a request open until the test releases it; while
// it does, and while the client's entry is bound, drained is false; after
// the deadline the entry moves, and once the request is answered, drained
// turns true.
func TestDrainedInFlightAndTable(t *testing.T) {
	h0, b1 := newBackend(t, "h0"), newBackend(t, "h1")
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	h0.extra = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/hold" {
			arrived <- struct{}{}
			<-release
		}
		return false
	}
	released := false
	t.Cleanup(func() {
		if !released {
			close(release)
		}
	})
	port := freePort(t)
	c := startCaddy(t, fmt.Sprintf(`
http://127.0.0.1:%d {
	reverse_proxy %s %s {
		lb_policy ip_affinity {
			persist_timeout 10m
		}
		lb_retries 2
	}
}
`, port, h0.addr, b1.addr), caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", port)}, level: "WARN"})
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	status := func() admin.UpstreamStatus {
		t.Helper()
		var ups []admin.UpstreamStatus
		adminGet(t, c.admin, "/affinity/upstreams", &ups)
		for _, u := range ups {
			if u.Address == h0.addr {
				return u
			}
		}
		t.Fatalf("%s not listed in %+v", h0.addr, ups)
		return admin.UpstreamStatus{}
	}
	// One client bound to h0 (the hash's choice, kept in the table).
	src := ""
	for i := 2; i < 60 && src == ""; i++ {
		s := fmt.Sprintf("127.0.0.%d", i)
		if getFrom(t, s, site+"/").backend == "h0" {
			src = s
		}
	}
	if src == "" {
		t.Fatal("no source address hashed to h0")
	}

	const deadline = 2 * time.Second
	if code, body := c.adminDo("POST", "/affinity/upstreams/drain", fmt.Sprintf(`{"address": %q, "deadline": "2s"}`, h0.addr)); code != 200 {
		t.Fatalf("drain: %d %s", code, body)
	}
	drainedAt := time.Now()
	if u := status(); !u.Draining || u.Sessions != 1 || u.Drained {
		t.Fatalf("draining with the client's entry bound: %+v; want 1 session, drained false", u)
	}

	// The bound client's request, held by h0: in flight.
	done := make(chan reply, 1)
	go func() {
		resp, err := sourceClient(src).Get(site + "/hold")
		if err != nil {
			done <- reply{status: -1, body: err.Error()}
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- reply{status: resp.StatusCode, backend: resp.Header.Get("X-Backend"), body: string(body)}
	}()
	select {
	case <-arrived:
	case r := <-done:
		t.Fatalf("the held request was answered before h0 held it: %+v", r)
	}
	if u := status(); u.InFlight < 1 || u.Drained {
		t.Fatalf("with a request held by h0: %+v; want in_flight >= 1, drained false", u)
	}

	// After the deadline the client's next request moves its entry; the
	// held request is still in flight: not drained.
	waitFor(t, "the drain deadline to pass", 10*time.Second, func() bool { return time.Since(drainedAt) > deadline+time.Second })
	if r := getFrom(t, src, site+"/"); r.status != 200 || r.backend != "h1" {
		t.Fatalf("the bound client after the deadline: %+v; want moved to h1", r)
	}
	if u := status(); u.Sessions != 0 || u.InFlight < 1 || u.Drained {
		t.Fatalf("entry moved, request still held: %+v; want 0 sessions, in_flight >= 1, drained false", u)
	}

	close(release)
	released = true
	if r := <-done; r.status != 200 || r.backend != "h0" {
		t.Fatalf("the held request: %+v; want 200 from h0", r)
	}
	waitFor(t, "h0 drained once the request is answered", 10*time.Second, func() bool {
		u := status()
		return u.Drained && u.InFlight == 0 && u.Sessions == 0
	})
}

// A drain's deadline survives a config reload (POST /load of a changed
// config): GET /affinity/upstreams still shows it, bound clients stay until
// it passes and move after it, as without the reload.
func TestDrainDeadlineSurvivesReload(t *testing.T) {
	bs := []*backend{newBackend(t, "r0"), newBackend(t, "r1")}
	port := freePort(t)
	sites := func(retries int) string {
		return fmt.Sprintf(`
http://127.0.0.1:%d {
	reverse_proxy %s %s {
		lb_policy sticky_cookie {
			secret %s
			fallback round_robin
		}
		lb_retries %d
	}
}
`, port, bs[0].addr, bs[1].addr, testSecret, retries)
	}
	c := startCaddy(t, sites(2), caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", port)}})
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	bound := clientsOn(t, url, "r0", 3)
	deadlineOf := func() *time.Time {
		var ups []admin.UpstreamStatus
		adminGet(t, c.admin, "/affinity/upstreams", &ups)
		for _, u := range ups {
			if u.Address == bs[0].addr {
				if !u.Draining {
					t.Fatalf("r0 is not draining: %+v", u)
				}
				return u.Deadline
			}
		}
		t.Fatalf("r0 not listed: %+v", ups)
		return nil
	}
	const wait = 4 * time.Second
	code, body := c.adminDo("POST", "/affinity/upstreams/drain", fmt.Sprintf(`{"address": %q, "deadline": "4s"}`, bs[0].addr))
	if code != 200 {
		t.Fatalf("drain: %d %s", code, body)
	}
	start := time.Now()
	before := deadlineOf()
	if before == nil {
		t.Fatal("no deadline shown after the drain")
	}

	// A changed config (lb_retries), so Caddy really reloads.
	c.loadCaddyfile(sites(3), "")
	if !c.logContains(`"msg":"load complete"`) {
		t.Fatalf("POST /load of a changed config did not reload:\n%s", c.logTail(20))
	}
	after := deadlineOf()
	if after == nil || !after.Equal(*before) {
		t.Fatalf("deadline after the reload: %v, want %v", after, before)
	}
	for time.Since(start) < wait-time.Second {
		for i, cl := range bound {
			if r := cl.get(url); r.status != 200 || r.backend != "r0" {
				t.Fatalf("client %d before the deadline, after the reload: %+v; want r0", i, r)
			}
		}
		if r := newClient(t).get(url); r.backend != "r1" {
			t.Fatalf("a new client went to %s while r0 drains", r.backend)
		}
	}
	// Enforced after the reload: past the deadline every bound client moves
	// on its next request.
	waitFor(t, "the deadline to pass", 10*time.Second, func() bool { return time.Now().After(*after) })
	for i, cl := range bound {
		if r := cl.get(url); r.status != 200 || r.backend != "r1" {
			t.Fatalf("client %d after the deadline: %+v; want moved to r1", i, r)
		}
	}
}
