package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// backends are the identical upstreams every case proxies to: small Go HTTP
// servers in this process. Each answers with its name (body and X-Backend
// header); under /app it also sets the cookie "name=<name>xxxx", as the
// seed's nginx does, for rewrite mode to rewrite. With ?echo it returns the
// Cookie header it received in X-Cookie-Seen, for the pre-check.
type backends struct {
	names []string
	lns   []net.Listener
	srvs  []*http.Server
}

func startBackends(n int) (*backends, error) {
	bs := &backends{}
	for i := range n {
		name := fmt.Sprintf("app%d", i+1)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			bs.close()
			return nil, err
		}
		body := []byte(name + "\n")
		setCookie := []string{"name=" + name + "xxxx"}
		session := []string{name + "xxxx"}
		backend := []string{name}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			// Direct map writes skip the canonicalisation Set does; the
			// backends should cost the same little in every case.
			h["X-Backend"] = backend
			if strings.HasPrefix(r.URL.Path, "/app") {
				h["Set-Cookie"] = setCookie
			}
			if strings.HasPrefix(r.URL.Path, "/hdr") {
				h[sessionHeader] = session
			}
			if r.URL.RawQuery == "echo" {
				h.Set("X-Cookie-Seen", strings.Join(r.Header.Values("Cookie"), "; "))
				h.Set("X-Header-Seen", r.Header.Get(sessionHeader))
			}
			w.Write(body)
		}), ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		bs.names = append(bs.names, name)
		bs.lns = append(bs.lns, ln)
		bs.srvs = append(bs.srvs, srv)
	}
	return bs, nil
}

func (bs *backends) addrs() []string {
	var a []string
	for _, ln := range bs.lns {
		a = append(a, ln.Addr().String())
	}
	return a
}

func (bs *backends) close() {
	for _, s := range bs.srvs {
		s.Close()
	}
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr() (string, error) {
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		addr := ln.Addr().String()
		ln.Close()
		// The kernel may hand a port it just freed out again; two sites of
		// one config on one port make Caddy refuse it.
		if _, dup := addrsHandedOut.LoadOrStore(addr, true); !dup {
			return addr, nil
		}
	}
}

// addrsHandedOut holds every address freeAddr returned in this process.
var addrsHandedOut sync.Map

// proc is a server child process.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// start runs bin with args, its output going to a log file in dir, and
// waits until every address in ready accepts connections (polling; the
// readiness of a server is its listening ports, not a time).
func start(ctx context.Context, name, dir, bin string, args []string, ready []string) (*proc, error) {
	p := &proc{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	logFile, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = dir
	p.cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "xdg-data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "xdg-config"))
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	go func() { p.cmd.Wait(); logFile.Close(); close(p.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for _, a := range ready {
		for !portOpen(a) {
			select {
			case <-p.done:
				return nil, fmt.Errorf("%s exited before %s was ready:\n%s", name, a, p.tail(30))
			case <-ctx.Done():
				p.stop()
				return nil, ctx.Err()
			default:
			}
			if time.Now().After(deadline) {
				p.stop()
				return nil, fmt.Errorf("%s: %s not ready after 30s:\n%s", name, a, p.tail(30))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return p, nil
}

func portOpen(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// stop sends SIGTERM and waits, killing the process if it lingers.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// tail returns the last n lines of the process's log.
func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// caddyfile renders one Caddy with a site per case. Logging is at ERROR so
// that it does not weigh on the measurement. Caddy trusts X-Forwarded-For
// from loopback (wrk), so client_ip is the header's address for every case.
func caddyfile(admin, storage string, cases []*benchCase, upstreams []string, timer bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, `{
	admin %s
	storage file_system %s
	auto_https off
	persist_config off
	default_bind 127.0.0.1
	servers {
		trusted_proxies static 127.0.0.1/32
	}
	log {
		level ERROR
	}
}
`, admin, storage)
	for _, k := range cases {
		directive := ""
		if k.Kind == kindRewrite || k.Kind == kindHeader {
			directive = "\taffinity\n"
		}
		policy := k.Policy
		if timer {
			policy = timed(k)
		}
		fmt.Fprintf(&b, "\n# %s\nhttp://%s {\n%s\treverse_proxy %s {\n\t\t%s\n\t}\n}\n",
			k.Name, k.addr, directive, strings.Join(upstreams, " "), policy)
	}
	return b.String()
}

// startCaddy starts Caddy with a site per case and returns it with its
// admin address.
func startCaddy(ctx context.Context, bin, work string, cases []*benchCase, bs *backends, timer bool) (*proc, string, error) {
	admin, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	ready := []string{admin}
	for _, k := range cases {
		if k.addr, err = freeAddr(); err != nil {
			return nil, "", err
		}
		ready = append(ready, k.addr)
	}
	cfg := filepath.Join(work, "Caddyfile")
	if err := os.WriteFile(cfg, []byte(caddyfile(admin, filepath.Join(work, "caddy-data"), cases, bs.addrs(), timer)), 0o644); err != nil {
		return nil, "", err
	}
	logf("starting Caddy (%d sites)", len(cases))
	p, err := start(ctx, "caddy", work, bin, []string{"run", "--config", cfg, "--adapter", "caddyfile"}, ready)
	return p, admin, err
}

// cpuProfile saves a CPU profile of Caddy taken over d from its admin
// endpoint (which serves net/http/pprof).
func cpuProfile(admin string, d time.Duration, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	secs := max(1, int(d/time.Second))
	resp, err := (&http.Client{Timeout: d + 30*time.Second}).Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", admin, secs))
	if err != nil {
		return err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// haproxyConfig renders one HAProxy with a frontend and backend per case.
func haproxyConfig(cases []*benchCase, bs *backends) string {
	var b strings.Builder
	b.WriteString(`global
	maxconn 4096

defaults
	mode http
	timeout connect 5s
	timeout client 30s
	timeout server 30s
`)
	for i, k := range cases {
		fe := ""
		if k.Frontend != "" {
			fe = "\t" + k.Frontend + "\n"
		}
		fmt.Fprintf(&b, "\n# %s\nfrontend fe%d\n\tbind %s\n%s\tdefault_backend be%d\n\nbackend be%d\n\t%s\n", k.Name, i, k.addr, fe, i, i, k.Policy)
		for j, a := range bs.addrs() {
			cookie := ""
			if k.Cookie != "" {
				cookie = " cookie " + bs.names[j]
			}
			fmt.Fprintf(&b, "\tserver %s %s%s\n", bs.names[j], a, cookie)
		}
	}
	return b.String()
}

func startHAProxy(ctx context.Context, bin, work string, cases []*benchCase, bs *backends) (*proc, error) {
	var ready []string
	for _, k := range cases {
		var err error
		if k.addr, err = freeAddr(); err != nil {
			return nil, err
		}
		ready = append(ready, k.addr)
	}
	cfg := filepath.Join(work, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(haproxyConfig(cases, bs)), 0o644); err != nil {
		return nil, err
	}
	logf("starting HAProxy (%d frontends)", len(cases))
	return start(ctx, "haproxy", work, bin, []string{"-f", cfg, "-db"}, ready)
}

// version returns the first line a binary prints for its version flag.
func version(bin string, args ...string) string {
	out, err := exec.Command(bin, args...).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if line == "" && err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return "unknown (" + err.Error() + ")"
		}
	}
	return strings.TrimSpace(line)
}

// drain reads and closes a response body so its connection can be reused.
func drain(r *http.Response) {
	io.Copy(io.Discard, r.Body)
	r.Body.Close()
}
