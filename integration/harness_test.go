package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The Caddy binary is built once per test run, on first need, unless
// AFFINITY_CADDY names one already built from this checkout (make test
// builds bin/caddy once and passes it, so the demo and benchmarks share it).
var caddyBuild struct {
	once sync.Once
	path string
	err  error
	dir  string
}

func caddyBinary(t testing.TB) string {
	t.Helper()
	caddyBuild.once.Do(func() {
		if p := os.Getenv("AFFINITY_CADDY"); p != "" {
			caddyBuild.path, caddyBuild.err = filepath.Abs(p)
			if caddyBuild.err == nil {
				_, caddyBuild.err = os.Stat(caddyBuild.path)
			}
			return
		}
		dir, err := os.MkdirTemp("", "affinity-caddy-")
		if err != nil {
			caddyBuild.err = err
			return
		}
		caddyBuild.dir = dir
		caddyBuild.path = filepath.Join(dir, "caddy")
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		caddyBuild.err = BuildCaddy(ctx, caddyBuild.path)
	})
	if caddyBuild.err != nil {
		t.Fatalf("caddy binary: %v", caddyBuild.err)
	}
	return caddyBuild.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if caddyBuild.dir != "" {
		os.RemoveAll(caddyBuild.dir)
	}
	os.Exit(code)
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		// The kernel may hand a port it just freed out again; two sites of
		// one config on one port make Caddy refuse it.
		if _, dup := portsHandedOut.LoadOrStore(port, true); !dup {
			return port
		}
	}
}

// portsHandedOut holds every port freePort returned in this process.
var portsHandedOut sync.Map

// waitFor polls cond until it holds or the deadline passes: a readiness
// check, not a sleep.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func portOpen(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// caddyProc is one running Caddy.
type caddyProc struct {
	t       testing.TB
	dir     string
	admin   string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	opts    caddyOpts
}

// caddyOpts are optional settings of startCaddy.
type caddyOpts struct {
	dataDir string   // storage directory to share between processes
	wait    []string // addresses to wait for besides the admin endpoint
	env     []string
	global  string // extra global options
	level   string // log level; DEBUG when empty
	// autoHTTPS is the auto_https global option; off when empty (sites
	// with tls internal need it on, e.g. disable_redirects).
	autoHTTPS string
}

// globalBlock is the global options block every test Caddy gets.
func globalBlock(admin, dataDir, extra, level, autoHTTPS string) string {
	if level == "" {
		level = "DEBUG"
	}
	if autoHTTPS == "" {
		autoHTTPS = "off"
	}
	return fmt.Sprintf(`{
	admin %s
	storage file_system %s
	auto_https %s
	persist_config off
	default_bind 127.0.0.1
	grace_period 2s
	log {
		level %s
		output stderr
	}
%s
}
`, admin, dataDir, autoHTTPS, level, extra)
}

// startCaddy starts Caddy with the site blocks of sites and waits until its
// admin endpoint and every address in o.wait accept connections.
func startCaddy(t testing.TB, sites string, o caddyOpts) *caddyProc {
	t.Helper()
	bin := caddyBinary(t)
	dir := t.TempDir()
	if o.dataDir == "" {
		o.dataDir = filepath.Join(dir, "data")
	}
	c := &caddyProc{t: t, dir: dir, admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)), done: make(chan struct{})}
	c.opts = o
	cfg := globalBlock(c.admin, o.dataDir, o.global, o.level, o.autoHTTPS) + sites
	cfgPath := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c.logPath = filepath.Join(dir, "caddy.log")
	logf, err := os.Create(c.logPath)
	if err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(bin, "run", "--config", cfgPath, "--adapter", "caddyfile")
	c.cmd.Dir = dir
	c.cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "xdg-data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "xdg-config"))
	c.cmd.Env = append(c.cmd.Env, o.env...)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.cmd.Wait(); logf.Close(); close(c.done) }()
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			t.Logf("caddy log (tail):\n%s", c.logTail(60))
		}
	})
	for _, a := range append([]string{c.admin}, o.wait...) {
		addr := a
		deadline := time.Now().Add(30 * time.Second)
		for !portOpen(addr) {
			select {
			case <-c.done:
				t.Fatalf("caddy exited before %s was ready:\n%s", addr, c.logTail(40))
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("caddy: %s not ready after 30s:\n%s", addr, c.logTail(40))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return c
}

func (c *caddyProc) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}

func (c *caddyProc) logTail(n int) string {
	b, _ := os.ReadFile(c.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logContains reports whether Caddy's log contains s.
func (c *caddyProc) logContains(s string) bool {
	b, _ := os.ReadFile(c.logPath)
	return bytes.Contains(b, []byte(s))
}

// loadCaddyfile replaces the running config through the admin API.
func (c *caddyProc) loadCaddyfile(sites string, dataDir string) {
	c.t.Helper()
	if dataDir == "" {
		dataDir = c.opts.dataDir
	}
	cfg := globalBlock(c.admin, dataDir, c.opts.global, c.opts.level, c.opts.autoHTTPS) + sites
	req, _ := http.NewRequest(http.MethodPost, "http://"+c.admin+"/load", strings.NewReader(cfg))
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("POST /load: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		c.t.Fatalf("POST /load: %s: %s", resp.Status, body)
	}
}

// backend is a real HTTP server on loopback that answers with its name.
type backend struct {
	t    testing.TB
	name string
	addr string
	hits atomic.Int64
	mu   sync.Mutex
	srv  *http.Server
	seen []string // Cookie headers received, unless noSeen
	// noSeen keeps seen empty: a long run's Cookie headers are not kept.
	noSeen atomic.Bool
	extra  func(w http.ResponseWriter, r *http.Request) (handled bool)
}

func newBackend(t testing.TB, name string) *backend {
	t.Helper()
	b := &backend{t: t, name: name}
	var ln net.Listener
	for ln == nil {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		// Not a port freePort handed out and a Caddy may be about to bind.
		if _, dup := portsHandedOut.LoadOrStore(l.Addr().(*net.TCPAddr).Port, true); dup {
			l.Close()
			continue
		}
		ln = l
	}
	b.addr = ln.Addr().String()
	b.serve(ln)
	t.Cleanup(b.kill)
	return b
}

func (b *backend) serve(ln net.Listener) {
	b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		if !b.noSeen.Load() {
			b.mu.Lock()
			b.seen = append(b.seen, strings.Join(r.Header["Cookie"], "; "))
			b.mu.Unlock()
		}
		if b.extra != nil && b.extra(w, r) {
			return
		}
		w.Header().Set("X-Backend", b.name)
		io.WriteString(w, b.name)
	})}
	go b.srv.Serve(ln)
}

// kill stops the backend at once, closing open connections.
func (b *backend) kill() {
	if b.srv != nil {
		b.srv.Close()
		b.srv = nil
	}
}

// restart listens again on the same address.
func (b *backend) restart() {
	b.t.Helper()
	var ln net.Listener
	var err error
	waitFor(b.t, "port "+b.addr+" free for restart", 10*time.Second, func() bool {
		ln, err = net.Listen("tcp", b.addr)
		return err == nil
	})
	b.serve(ln)
}

func (b *backend) lastCookie() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.seen) == 0 {
		return ""
	}
	return b.seen[len(b.seen)-1]
}

// client is one browser-like client with its own cookie jar.
type client struct {
	t  testing.TB
	hc *http.Client
}

// clientsOn returns n new clients whose first request to url the
// backend named backend answered (a session bound there), making as many
// clients as it takes.
func clientsOn(t testing.TB, url, backend string, n int) []*client {
	t.Helper()
	var bound []*client
	for len(bound) < n {
		cl := newClient(t)
		if cl.get(url).backend == backend {
			bound = append(bound, cl)
		}
	}
	return bound
}

func newClient(t testing.TB) *client {
	jar, _ := cookiejar.New(nil)
	return &client{t: t, hc: &http.Client{Jar: jar, Timeout: 10 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: false, MaxIdleConnsPerHost: 4}}}
}

// reply is what a test needs of a response.
type reply struct {
	status     int
	backend    string
	setCookies []string
	body       string
	cache      []string // Cache-Control
}

func (c *client) get(url string, hdr ...string) reply {
	c.t.Helper()
	r, err := c.try(url, hdr...)
	if err != nil {
		c.t.Fatalf("GET %s: %v", url, err)
	}
	return r
}

func (c *client) try(url string, hdr ...string) (reply, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return reply{}, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	return reply{status: resp.StatusCode, backend: resp.Header.Get("X-Backend"),
		setCookies: resp.Header.Values("Set-Cookie"), body: string(body), cache: resp.Header.Values("Cache-Control")}, nil
}

// cookie returns the value the jar holds for name on url.
func (c *client) cookie(url, name string) string {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for _, ck := range c.hc.Jar.Cookies(req.URL) {
		if ck.Name == name {
			return ck.Value
		}
	}
	return ""
}

// setCookiesNamed filters Set-Cookie lines for cookie name.
func setCookiesNamed(lines []string, name string) []string {
	var out []string
	for _, l := range lines {
		if strings.HasPrefix(l, name+"=") {
			out = append(out, l)
		}
	}
	return out
}

// rawGet sends one request with exactly the given Cookie header, no jar.
func rawGet(t testing.TB, url, cookie string) reply {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if cookie != "" {
		req.Header.Set("Cookie", cookie)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, backend: resp.Header.Get("X-Backend"),
		setCookies: resp.Header.Values("Set-Cookie"), body: string(body)}
}
