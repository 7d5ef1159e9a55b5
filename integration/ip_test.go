package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

// sourceClient is an HTTP client whose connections come from src, one of
// the many addresses of 127.0.0.0/8.
func sourceClient(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

func getFrom(t *testing.T, src, url string, hdr ...string) reply {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := sourceClient(src).Do(req)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", url, src, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, backend: resp.Header.Get("X-Backend"), body: string(body)}
}

// l4Get sends one HTTP request through the layer4 listener at addr from src
// and returns the backend that answered.
func l4Get(t *testing.T, src, addr string) string {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: l4\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("layer4 response from %s: %v", src, err)
	}
	resp.Body.Close()
	return resp.Header.Get("X-Backend")
}

// expected is the upstream the shared core picks for ip among addrs.
func expected(addrs []string, ip string, v4bits int) string {
	k := affinity.MaskClient(netip.MustParseAddr(ip), v4bits, 64)
	return addrs[affinity.NewTable(addrs).Lookup(k.Hash())]
}

func TestIPAffinityHTTPAndLayer4Agree(t *testing.T) {
	bs := []*backend{newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3"), newBackend(t, "b4")}
	var addrs []string
	nameOf := map[string]string{}
	for _, b := range bs {
		addrs = append(addrs, b.addr)
		nameOf[b.addr] = b.name
	}
	hp, lp := freePort(t), freePort(t)
	httpAddr, l4Addr := fmt.Sprintf("127.0.0.1:%d", hp), fmt.Sprintf("127.0.0.1:%d", lp)
	var ups strings.Builder
	for _, a := range addrs {
		fmt.Fprintf(&ups, "\t\t\t\t\tupstream %s\n", a)
	}
	global := fmt.Sprintf(`	servers {
		trusted_proxies static 127.0.0.1/32
	}
	layer4 {
		%s {
			route {
				proxy {
					lb_policy ip_affinity
					lb_try_duration 5s
					lb_try_interval 10ms
					fail_duration 1m
					max_fails 1
%s				}
			}
		}
	}`, l4Addr, ups.String())
	site := fmt.Sprintf(`
http://%s {
	reverse_proxy %s {
		lb_policy ip_affinity
		lb_retries 2
	}
}
`, httpAddr, strings.Join(addrs, " "))
	startCaddy(t, site, caddyOpts{wait: []string{httpAddr, l4Addr}, global: global})

	url := "http://" + httpAddr + "/"
	count := map[string]int{}
	for i := 2; i <= 250; i += 2 {
		src := fmt.Sprintf("127.0.0.%d", i)
		want := nameOf[expected(addrs, src, 32)]
		a := getFrom(t, src, url)
		if a.backend != want {
			t.Fatalf("HTTP from %s went to %s, the shared hash says %s", src, a.backend, want)
		}
		if b := getFrom(t, src, url); b.backend != a.backend {
			t.Fatalf("HTTP from %s moved from %s to %s", src, a.backend, b.backend)
		}
		if l := l4Get(t, src, l4Addr); l != a.backend {
			t.Fatalf("layer4 sent %s to %s, HTTP to %s", src, l, a.backend)
		}
		count[a.backend]++
	}
	if len(count) != len(bs) {
		t.Fatalf("125 clients reached only %v", count)
	}
	t.Logf("125 loopback clients over 4 backends: %v", count)

	// A forwarded-for header counts from the trusted proxy (127.0.0.1) only.
	for _, client := range []string{"10.1.2.3", "192.0.2.77", "203.0.113.9"} {
		want := nameOf[expected(addrs, client, 32)]
		if r := getFrom(t, "127.0.0.1", url, "X-Forwarded-For", client); r.backend != want {
			t.Fatalf("trusted X-Forwarded-For %s went to %s, want %s", client, r.backend, want)
		}
	}
	// From an untrusted peer the header changes nothing.
	for _, src := range []string{"127.0.0.9", "127.0.0.77"} {
		want := nameOf[expected(addrs, src, 32)]
		for _, spoof := range []string{"10.1.2.3", "192.0.2.77", "203.0.113.9"} {
			if r := getFrom(t, src, url, "X-Forwarded-For", spoof); r.backend != want {
				t.Fatalf("spoofed X-Forwarded-For %s from %s went to %s, want %s", spoof, src, r.backend, want)
			}
		}
	}

	// Kill one backend: its clients move (on the same request, by the
	// retry), everybody else stays.
	victim := bs[1]
	victim.kill()
	moved := 0
	for i := 2; i <= 250; i += 2 {
		src := fmt.Sprintf("127.0.0.%d", i)
		before := nameOf[expected(addrs, src, 32)]
		r := getFrom(t, src, url)
		if r.status != 200 {
			t.Fatalf("from %s after kill: status %d", src, r.status)
		}
		if before == victim.name {
			moved++
			if r.backend == victim.name {
				t.Fatalf("%s still sent to the killed backend", src)
			}
		} else if r.backend != before {
			t.Fatalf("%s moved from %s to %s though its backend is alive", src, before, r.backend)
		}
		// The layer4 proxy, retrying within lb_try_duration, moves the
		// same clients to the same backends.
		if l := l4Get(t, src, l4Addr); l != r.backend {
			t.Fatalf("after kill layer4 sent %s to %s, HTTP to %s", src, l, r.backend)
		}
	}
	if moved == 0 {
		t.Fatalf("no client was on the killed backend; the test proves nothing")
	}
}

func TestIPAffinitySessionsSurviveReload(t *testing.T) {
	bs := []*backend{newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3")}
	extra := newBackend(t, "b4")
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	url := "http://" + addr + "/"
	site := func(backends ...*backend) string {
		var a []string
		for _, b := range backends {
			a = append(a, b.addr)
		}
		return fmt.Sprintf(`
http://%s {
	reverse_proxy %s {
		lb_policy ip_affinity {
			persist_timeout 10m
			max_sessions 10k
		}
	}
}
`, addr, strings.Join(a, " "))
	}
	c := startCaddy(t, site(bs...), caddyOpts{wait: []string{addr}})
	where := map[string]string{}
	for i := 2; i <= 200; i++ {
		src := fmt.Sprintf("127.0.0.%d", i)
		where[src] = getFrom(t, src, url).backend
	}
	sessions := func() int {
		resp, err := http.Get("http://" + c.admin + "/affinity/sessions?limit=1")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var page []map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&page); err != nil || len(page) != 1 {
			t.Fatalf("sessions page: %v %v", page, err)
		}
		var n int
		fmt.Sscan(resp.Header.Get("X-Total-Count"), &n)
		return n
	}
	if n := sessions(); n != len(where) {
		t.Fatalf("session table has %d entries, want %d", n, len(where))
	}

	// Reload with a fourth upstream: every client in the table stays put.
	c.loadCaddyfile(site(append(bs, extra)...), "")
	waitFor(t, "reloaded config serving", 10*time.Second, func() bool { return portOpen(addr) })
	if n := sessions(); n != len(where) {
		t.Fatalf("after reload the session table has %d entries, want %d", n, len(where))
	}
	for src, b := range where {
		if r := getFrom(t, src, url); r.backend != b {
			t.Fatalf("after adding an upstream %s moved from %s to %s", src, b, r.backend)
		}
	}
	// New clients do reach the new upstream.
	reached := false
	for i := 201; i <= 254 && !reached; i++ {
		reached = getFrom(t, fmt.Sprintf("127.0.0.%d", i), url).backend == extra.name
	}
	if !reached {
		t.Fatalf("no new client reached the added upstream")
	}
}
