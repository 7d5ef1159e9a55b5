package integration

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// runCLI runs `caddy affinity args...` and returns its output and exit code.
func runCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(caddyBinary(t), append([]string{"affinity"}, args...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("caddy affinity %v: %v", args, err)
	}
	return string(out), code
}

// Every `caddy affinity` command against a running Caddy, and its errors.
func TestCLI(t *testing.T) {
	bs := []*backend{newBackend(t, "c0"), newBackend(t, "c1")}
	cookiePort, ipPort := freePort(t), freePort(t)
	c := startCaddy(t, adminSites(cookiePort, ipPort, bs...), caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", cookiePort)}, level: "WARN"})
	for range 5 {
		newClient(t).get(fmt.Sprintf("http://127.0.0.1:%d/", cookiePort))
	}
	admin := "--address=" + c.admin

	out, code := runCLI(t, "status", admin)
	if code != 0 || !strings.Contains(out, "UPSTREAM") || !strings.Contains(out, bs[0].addr) || !strings.Contains(out, "sticky_cookie") {
		t.Fatalf("status: exit %d:\n%s", code, out)
	}
	out, code = runCLI(t, "status", admin, "--json")
	var ups []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &ups) != nil || len(ups) < 2 {
		t.Fatalf("status --json: exit %d:\n%s", code, out)
	}

	out, code = runCLI(t, "drain", bs[0].addr, "--deadline", "10m", admin)
	if code != 0 || !strings.Contains(out, "draining, sessions move after") {
		t.Fatalf("drain: exit %d: %s", code, out)
	}
	if u := c.upstreams()[bs[0].addr]; !u.Draining {
		t.Fatalf("after caddy affinity drain: %+v", u)
	}
	if out, _ := runCLI(t, "status", admin); !strings.Contains(out, "draining until") {
		t.Fatalf("status does not show the drain's deadline:\n%s", out)
	}
	if out, code = runCLI(t, "undrain", bs[0].addr, admin); code != 0 || !strings.Contains(out, "undrained") || c.upstreams()[bs[0].addr].Draining {
		t.Fatalf("undrain: exit %d: %s", code, out)
	}

	// Sessions: an IP client with a table.
	ipSite := fmt.Sprintf("http://127.0.0.1:%d/", ipPort)
	newClient(t).get(ipSite)
	if out, code = runCLI(t, "sessions", admin, "--policy", "ip_affinity"); code != 0 || !strings.Contains(out, "ip_affinity") || !strings.Contains(out, "shown") {
		t.Fatalf("sessions: exit %d:\n%s", code, out)
	}
	if out, code = runCLI(t, "flush", admin); code != 0 || !strings.Contains(out, "flushed") {
		t.Fatalf("flush: exit %d: %s", code, out)
	}
	if out, _ = runCLI(t, "sessions", admin, "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("sessions after flush: %s", out)
	}

	// Errors: a non-zero exit and a message that says what was wrong.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"drain", "203.0.113.9:80", admin}, "no affinity policy knows upstream"},
		{[]string{"drain", bs[0].addr, "--deadline", "soon", admin}, `"deadline" must be a positive duration`},
		{[]string{"status", "--address=127.0.0.1:1"}, "admin endpoint 127.0.0.1:1"},
		{[]string{"sessions", "--limit", "0", admin}, "--limit must be from 1 to 10000"},
		{[]string{"drain", admin}, "accepts 1 arg"},
	} {
		if out, code := runCLI(t, tc.args...); code == 0 || !strings.Contains(out, tc.want) {
			t.Errorf("caddy affinity %v: exit %d, output %q; want a failure saying %q", tc.args, code, out, tc.want)
		}
	}
}
