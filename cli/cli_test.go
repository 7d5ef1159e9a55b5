package cli

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spf13/cobra"

	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/caddy-affinity/caddy-affinity/admin"
)

// fakeAdmin is an admin endpoint answering the affinity API's paths with
// handlers a test gives; every other path is a 404.
func fakeAdmin(t *testing.T, routes map[string]http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, ok := routes[r.Method+" "+r.URL.Path]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "no route " + r.Method + " " + r.URL.Path})
			return
		}
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func replyJSON(v any) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
}

// run runs `caddy affinity args...` in the process and returns what it
// printed on standard output and its error.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "affinity", SilenceErrors: true, SilenceUsage: true}
	build(root)
	root.SetArgs(args)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		done <- string(b)
	}()
	err = root.Execute()
	os.Stdout = stdout
	w.Close()
	return <-done, err
}

func TestFlushJSON(t *testing.T) {
	addr := fakeAdmin(t, map[string]http.HandlerFunc{
		"DELETE /affinity/sessions": replyJSON(map[string]int{"flushed": 42}),
	})
	out, err := run(t, "flush", "--json", "--address", addr)
	if err != nil {
		t.Fatalf("flush --json: %v", err)
	}
	var got map[string]int
	if json.Unmarshal([]byte(out), &got) != nil || got["flushed"] != 42 || len(got) != 1 {
		t.Fatalf("flush --json printed %q, want {\"flushed\": 42}", out)
	}
	out, err = run(t, "flush", "--address", addr)
	if err != nil || !strings.Contains(out, "flushed (42 entries)") {
		t.Fatalf("flush: %v, %q", err, out)
	}
}

// drainingAdmin is a fake admin endpoint that drains up and answers its
// n-th poll (from 1) of the upstreams with status(n); polls counts them.
func drainingAdmin(t *testing.T, up string, polls *atomic.Int64, status func(n int64) admin.UpstreamStatus) string {
	return fakeAdmin(t, map[string]http.HandlerFunc{
		"POST /affinity/upstreams/drain": replyJSON(map[string]any{"address": up, "draining": true, "changed": true}),
		"GET /affinity/upstreams": func(w http.ResponseWriter, r *http.Request) {
			replyJSON([]admin.UpstreamStatus{status(polls.Add(1))})(w, r)
		},
	})
}

// drain --wait against an upstream that stays bound fails at --timeout,
// saying what is still bound.
func TestDrainWaitTimeout(t *testing.T) {
	const up = "10.0.0.1:8080"
	var polls atomic.Int64
	addr := drainingAdmin(t, up, &polls, func(int64) admin.UpstreamStatus {
		return admin.UpstreamStatus{Address: up, Draining: true, Sessions: 3, InFlight: 1}
	})
	out, err := run(t, "drain", up, "--wait", "--timeout", "300ms", "--interval", "20ms", "--address", addr)
	if err == nil {
		t.Fatalf("drain --wait of an upstream that never drains succeeded:\n%s", out)
	}
	if want := up + " not drained after 300ms: 3 sessions in tables"; !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "1 requests in flight") {
		t.Errorf("error %q, want it to contain %q and the requests in flight", err, want)
	}
	if polls.Load() < 2 {
		t.Errorf("the upstream was checked %d times before the timeout", polls.Load())
	}
	// Progress is printed once per change, not once per poll.
	if n := strings.Count(out, "3 sessions in tables"); n != 1 {
		t.Errorf("progress line printed %d times:\n%s", n, out)
	}
}

// drain --wait returns once the upstream is drained.
func TestDrainWaitDrained(t *testing.T) {
	const up = "10.0.0.2:8080"
	var polls atomic.Int64
	addr := drainingAdmin(t, up, &polls, func(n int64) admin.UpstreamStatus {
		if n >= 3 {
			return admin.UpstreamStatus{Address: up, Draining: true, Drained: true}
		}
		return admin.UpstreamStatus{Address: up, Draining: true, Sessions: 1}
	})
	out, err := run(t, "drain", up, "--wait", "--interval", "10ms", "--address", addr)
	if err != nil || !strings.Contains(out, up+": drained,") || polls.Load() != 3 {
		t.Fatalf("drain --wait: %v after %d polls:\n%s", err, polls.Load(), out)
	}
}

// An unknown upstream: the admin API's message, a failure.
func TestUndrainUnknown(t *testing.T) {
	addr := fakeAdmin(t, map[string]http.HandlerFunc{
		"POST /affinity/upstreams/undrain": func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": `no affinity policy knows upstream "203.0.113.1:80"`})
		},
	})
	out, err := run(t, "undrain", "203.0.113.1:80", "--address", addr)
	if err == nil || !strings.Contains(err.Error(), `HTTP 404: no affinity policy knows upstream "203.0.113.1:80"`) {
		t.Fatalf("undrain of an unknown upstream: %v, output %q", err, out)
	}
	if out != "" {
		t.Errorf("a failed undrain printed %q", out)
	}
}

// sessions --upstream keeps only that upstream's entries, over every page.
func TestSessionsUpstreamFilter(t *testing.T) {
	now := time.Now().UTC()
	all := []admin.SessionEntry{
		{Policy: "ip_affinity", Client: "192.0.2.1", Upstream: "a:1", LastSeen: now},
		{Policy: "ip_affinity", Client: "192.0.2.2", Upstream: "b:2", LastSeen: now},
		{Policy: "sticky_cookie", Client: "stored:x", Upstream: "a:1", LastSeen: now.Add(-time.Minute)},
		{Policy: "ip_affinity", Client: "192.0.2.3", Upstream: "c:3", LastSeen: now},
	}
	addr := fakeAdmin(t, map[string]http.HandlerFunc{
		"GET /affinity/sessions": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Total-Count", "4")
			replyJSON(all)(w, r)
		},
	})
	out, err := run(t, "sessions", "--upstream", "a:1", "--json", "--address", addr)
	if err != nil {
		t.Fatal(err)
	}
	var got []admin.SessionEntry
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v: %q", err, out)
	}
	if len(got) != 2 || got[0].Client != "192.0.2.1" || got[1].Client != "stored:x" {
		t.Errorf("sessions --upstream a:1 = %+v, want a:1's two, newest first", got)
	}
	out, err = run(t, "sessions", "--upstream", "a:1", "--policy", "ip_affinity", "--address", addr)
	if err != nil || !strings.Contains(out, "1 shown; 4 in all tables") || strings.Contains(out, "b:2") || strings.Contains(out, "stored:x") {
		t.Errorf("sessions --upstream a:1 --policy ip_affinity: %v:\n%s", err, out)
	}
}

// The admin address comes from --config with --adapter, as for `caddy
// reload`.
func TestAdminAddressFromConfig(t *testing.T) {
	addr := fakeAdmin(t, map[string]http.HandlerFunc{
		"GET /affinity/upstreams": replyJSON([]admin.UpstreamStatus{{Address: "10.1.1.1:80", Policies: []string{"ip_affinity"}}}),
	})
	cfg := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(cfg, []byte("{\n\tadmin "+addr+"\n}\n:0 {\n\trespond ok\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "status", "--config", cfg, "--adapter", "caddyfile")
	if err != nil || !strings.Contains(out, "10.1.1.1:80") {
		t.Fatalf("status --config %s --adapter caddyfile: %v:\n%s", cfg, err, out)
	}
	// Unreachable: the error names the address the config gave.
	if err := os.WriteFile(cfg, []byte("{\n\tadmin 127.0.0.1:1\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, "status", "--config", cfg, "--adapter", "caddyfile"); err == nil || !strings.Contains(err.Error(), "admin endpoint 127.0.0.1:1") {
		t.Errorf("status with admin 127.0.0.1:1 in the config: %v", err)
	}
}
