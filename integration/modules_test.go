package integration

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// TestListModules: one --with brings every module of the plugin, and the
// layer4 app.
func TestListModules(t *testing.T) {
	out, err := exec.Command(caddyBinary(t), "list-modules").CombinedOutput()
	if err != nil {
		t.Fatalf("caddy list-modules: %v\n%s", err, out)
	}
	for _, id := range []string{
		"http.reverse_proxy.selection_policies.sticky_cookie",
		"http.reverse_proxy.selection_policies.ip_affinity",
		"http.handlers.affinity",
		"layer4.proxy.selection_policies.ip_affinity",
		"admin.api.affinity",
		"layer4",
	} {
		if !strings.Contains("\n"+string(out), "\n"+id+"\n") {
			t.Errorf("caddy list-modules lacks %s", id)
		}
	}
}

// TestRewriteWithoutAffinityHandler: rewrite mode without the affinity
// directive logs one error that names the fix, and passes the backend's
// cookie through untouched.
func TestRewriteWithoutAffinityHandler(t *testing.T) {
	b1, b2 := cookieBackend(t, "g1"), cookieBackend(t, "g2")
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := startCaddy(t, fmt.Sprintf(`
http://%s {
	reverse_proxy %s %s {
		lb_policy sticky_cookie sid {
			mode rewrite
			secret %s
		}
	}
}
`, addr, b1.addr, b2.addr, testSecret), caddyOpts{wait: []string{addr}})
	for i := 0; i < 5; i++ {
		r := rawGet(t, "http://"+addr+"/app", "")
		if r.status != 200 {
			t.Fatalf("status %d", r.status)
		}
		want := backendCookies(r.backend)
		if len(r.setCookies) != len(want) || r.setCookies[0] != want[0] {
			t.Fatalf("without the handler the backend's cookie changed: %q, want %q", r.setCookies, want)
		}
	}
	log := c.logTail(1000)
	if n := strings.Count(log, "needs the affinity handler"); n != 1 {
		t.Fatalf("the missing-handler error was logged %d times, want once", n)
	}
	if !strings.Contains(log, "add the 'affinity' directive") {
		t.Fatalf("the error does not name the fix")
	}
}
