package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

// The CLI's remaining promises against a running Caddy: drain --wait fails
// at its timeout while a session stays bound; the admin address is found
// from --config with --adapter, as `caddy reload` finds it; sessions
// --upstream lists only that upstream's entries; undrain of an unknown
// address fails clearly; flush --json prints the admin API's result.
func TestCLIWaitConfigFilters(t *testing.T) {
	bs := []*backend{newBackend(t, "w0"), newBackend(t, "w1"), newBackend(t, "w2")}
	cookiePort, ipPort := freePort(t), freePort(t)
	c := startCaddy(t, adminSites(cookiePort, ipPort, bs...), caddyOpts{
		wait: []string{fmt.Sprintf("127.0.0.1:%d", cookiePort), fmt.Sprintf("127.0.0.1:%d", ipPort)}, level: "WARN"})
	admin := "--address=" + c.admin
	ipSite := fmt.Sprintf("http://127.0.0.1:%d/", ipPort)

	// IP clients with table entries (persist_timeout 10m), on every backend.
	onBackend := map[string]int{}
	for i := 2; i <= 40; i++ {
		onBackend[getFrom(t, fmt.Sprintf("127.0.0.%d", i), ipSite).backend]++
	}
	if onBackend["w0"] == 0 || onBackend["w1"] == 0 {
		t.Fatalf("IP clients by backend %v: want some on w0 and w1", onBackend)
	}

	// The admin address from the Caddyfile Caddy runs, not --address.
	cfg := filepath.Join(c.dir, "Caddyfile")
	out, code := runCLI(t, "status", "--config", cfg, "--adapter", "caddyfile")
	if code != 0 || !strings.Contains(out, bs[0].addr) || !strings.Contains(out, "ip_affinity") {
		t.Fatalf("status --config %s --adapter caddyfile: exit %d:\n%s", cfg, code, out)
	}
	// A config whose admin address is wrong is reported as unreachable
	// there: the address really came from the file.
	other := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(other, []byte("{\n\tadmin 127.0.0.1:1\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := runCLI(t, "status", "--config", other, "--adapter", "caddyfile"); code == 0 || !strings.Contains(out, "admin endpoint 127.0.0.1:1") {
		t.Errorf("status with a config naming admin 127.0.0.1:1: exit %d, %q", code, out)
	}

	// sessions --upstream: only w1's entries, all of them.
	out, code = runCLI(t, "sessions", admin, "--upstream", bs[1].addr, "--json")
	var entries []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &entries) != nil {
		t.Fatalf("sessions --upstream --json: exit %d:\n%s", code, out)
	}
	if len(entries) != onBackend["w1"] {
		t.Errorf("sessions --upstream %s: %d entries, want %d (the IP clients on w1)", bs[1].addr, len(entries), onBackend["w1"])
	}
	for _, e := range entries {
		if e["upstream"] != bs[1].addr {
			t.Errorf("sessions --upstream %s listed %v", bs[1].addr, e)
		}
	}
	out, code = runCLI(t, "sessions", admin, "--upstream", bs[0].addr)
	if want := fmt.Sprintf("%d shown", onBackend["w0"]); code != 0 || !strings.Contains(out, want) || strings.Contains(out, bs[1].addr) {
		t.Errorf("sessions --upstream %s (table): exit %d, want %q and no %s:\n%s", bs[0].addr, code, want, bs[1].addr, out)
	}

	// drain --wait with a short timeout: w0's IP sessions stay bound (no
	// deadline), so it never drains, and the command says so.
	out, code = runCLI(t, "drain", bs[0].addr, "--wait", "--timeout", "1s", "--interval", "100ms", admin)
	if code == 0 || !strings.Contains(out, bs[0].addr+" not drained after 1s") ||
		!strings.Contains(out, fmt.Sprintf("%d sessions in tables", onBackend["w0"])) {
		t.Errorf("drain --wait --timeout 1s of a bound upstream: exit %d:\n%s", code, out)
	}
	if u := c.upstreams()[bs[0].addr]; !u.Draining {
		t.Errorf("after the failed wait w0 is %+v; the drain itself stays", u)
	}
	runCLI(t, "undrain", bs[0].addr, admin)

	// undrain of an address no policy knows.
	if out, code := runCLI(t, "undrain", "203.0.113.7:8080", admin); code == 0 || !strings.Contains(out, "no affinity policy knows upstream") ||
		!strings.Contains(out, "203.0.113.7:8080") {
		t.Errorf("undrain of an unknown address: exit %d, %q", code, out)
	}

	// flush --json: the admin API's result, as JSON.
	total := 0
	for _, n := range onBackend {
		total += n
	}
	out, code = runCLI(t, "flush", admin, "--json")
	var flushed map[string]int
	if code != 0 || json.Unmarshal([]byte(out), &flushed) != nil || flushed["flushed"] != total {
		t.Fatalf("flush --json: exit %d, %q; want {\"flushed\": %d}", code, out, total)
	}
	if out, _ = runCLI(t, "sessions", admin, "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("sessions after flush --json: %s", out)
	}
}
