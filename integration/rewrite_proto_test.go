package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// backendCookies is what the Go backends below set on every response: the
// session cookie with every attribute a browser knows and one it does not,
// another cookie, and a deletion.
func backendCookies(name string) []string {
	return []string{
		"sid=" + name + "-s3ss10n==; Path=/app; Domain=127.0.0.1; Expires=Wed, 21 Oct 2099 07:28:00 GMT; Max-Age=600; Secure; HttpOnly; SameSite=None; Partitioned; Priority=High",
		"other=1; Path=/",
		"sid=; Path=/old; Max-Age=0",
	}
}

func cookieBackend(t *testing.T, name string) *backend {
	b := newBackend(t, name)
	b.extra = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Upgrade") == "websocket" {
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return true
			}
			defer conn.Close()
			fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Backend: %s\r\n", name)
			for _, c := range backendCookies(name) {
				fmt.Fprintf(brw, "Set-Cookie: %s\r\n", c)
			}
			brw.WriteString("\r\n")
			brw.Flush()
			io.Copy(conn, brw) // echo
			return true
		}
		for _, c := range backendCookies(name) {
			w.Header().Add("Set-Cookie", c)
		}
		return false
	}
	return b
}

func TestRewriteHTTP2AndWebSocket(t *testing.T) {
	b1, b2 := cookieBackend(t, "g1"), cookieBackend(t, "g2")
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	site := fmt.Sprintf(`
http://%s {
	affinity
	reverse_proxy %s %s {
		lb_policy sticky_cookie sid {
			mode rewrite
			secret %s
		}
	}
}
`, addr, b1.addr, b2.addr, testSecret)
	startCaddy(t, site, caddyOpts{wait: []string{addr}, global: "\tservers {\n\t\tprotocols h1 h2c\n\t}"})

	// An HTTP/2 client (cleartext, prior knowledge).
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://" + addr + "/app")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("client spoke %s, want HTTP/2", resp.Proto)
	}
	got := resp.Header.Values("Set-Cookie")
	want := backendCookies(resp.Header.Get("X-Backend"))
	if len(got) != len(want) {
		t.Fatalf("Set-Cookie %q, want %d lines", got, len(want))
	}
	token, orig, attrs := splitRewritten(t, got[0])
	wantPair, wantAttrs, _ := strings.Cut(want[0], ";")
	if "sid="+orig != wantPair || attrs != wantAttrs {
		t.Fatalf("rewritten %q does not keep the backend's %q", got[0], want[0])
	}
	if got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("other Set-Cookie lines changed: %q, want %q", got[1:], want[1:])
	}
	pinned := resp.Header.Get("X-Backend")
	for i := 0; i < 10; i++ {
		req, _ := http.NewRequest("GET", "http://"+addr+"/app", nil)
		req.Header.Set("Cookie", "sid="+token+"~"+orig)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if b := resp.Header.Get("X-Backend"); b != pinned {
			t.Fatalf("HTTP/2 request %d went to %s, session is on %s", i, b, pinned)
		}
	}

	// A WebSocket upgrade: the 101 response's cookie is rewritten, and the
	// tunnel works.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: sid=%s~%s\r\n\r\n", addr, token, orig)
	br := bufio.NewReader(conn)
	wsResp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if wsResp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: status %d", wsResp.StatusCode)
	}
	if b := wsResp.Header.Get("X-Backend"); b != pinned {
		t.Fatalf("upgrade went to %s, session is on %s", b, pinned)
	}
	wsCookies := wsResp.Header.Values("Set-Cookie")
	if len(wsCookies) == 0 {
		t.Fatalf("101 response has no Set-Cookie")
	}
	if _, o, a := splitRewritten(t, wsCookies[0]); "sid="+o != wantPair || a != wantAttrs {
		t.Fatalf("101 Set-Cookie %q does not keep %q", wsCookies[0], want[0])
	}
	io.WriteString(conn, "ping")
	echo := make([]byte, 4)
	if _, err := io.ReadFull(br, echo); err != nil || string(echo) != "ping" {
		t.Fatalf("tunnel echo %q, %v", echo, err)
	}
}
