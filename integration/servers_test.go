package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"
)

// The seed's three backend servers, from Debian's packages, each run in the
// foreground with the configuration in examples/rewrite/ rendered into a
// directory of its own.

// serverKinds lists the seed's servers: binary and example configuration.
var serverKinds = map[string]struct {
	bin, conf string
	args      func(conf, dir string) []string
}{
	"apache": {"/usr/sbin/apache2", "apache2.conf", func(conf, _ string) []string { return []string{"-f", conf, "-DFOREGROUND"} }},
	"nginx": {"/usr/sbin/nginx", "nginx.conf", func(conf, dir string) []string {
		return []string{"-c", conf, "-p", dir, "-e", filepath.Join(dir, "error.log")}
	}},
	"lighttpd": {"/usr/sbin/lighttpd", "lighttpd.conf", func(conf, _ string) []string { return []string{"-D", "-f", conf} }},
}

// requireServer skips the test when the server is not installed, unless
// AFFINITY_REQUIRE_SERVERS is set (CI sets it), where that is a failure.
func requireServer(t *testing.T, kind string) {
	t.Helper()
	if _, err := os.Stat(serverKinds[kind].bin); err == nil {
		return
	}
	msg := fmt.Sprintf("%s not installed: apt-get install apache2 nginx lighttpd (make test installs them when run as root)", serverKinds[kind].bin)
	if os.Getenv("AFFINITY_REQUIRE_SERVERS") != "" {
		t.Fatal(msg)
	}
	t.Skipf("%s; set AFFINITY_REQUIRE_SERVERS=1 to require them", msg)
}

// webServer is one running Apache, nginx or lighttpd.
type webServer struct {
	t    *testing.T
	kind string
	name string
	addr string
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

func startServer(t *testing.T, kind, name string) *webServer {
	t.Helper()
	requireServer(t, kind)
	k := serverKinds[kind]
	// Worker processes run as www-data or nobody: the directory must be
	// reachable by them, which t.TempDir's private parents are not.
	dir, err := os.MkdirTemp("", "affinity-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	os.MkdirAll(filepath.Join(dir, "html"), 0o755)
	os.WriteFile(filepath.Join(dir, "html", "index.html"), []byte(name+"\n"), 0o644)

	ws := &webServer{t: t, kind: kind, name: name, dir: dir, done: make(chan struct{})}
	port := freePort(t)
	ws.addr = fmt.Sprintf("127.0.0.1:%d", port)
	tmpl, err := template.ParseFiles(filepath.Join(RepoRoot(), "examples", "rewrite", k.conf))
	if err != nil {
		t.Fatal(err)
	}
	var conf bytes.Buffer
	if err := tmpl.Execute(&conf, map[string]any{"Dir": dir, "Port": port, "Name": name}); err != nil {
		t.Fatal(err)
	}
	confPath := filepath.Join(dir, k.conf)
	if err := os.WriteFile(confPath, conf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	ws.cmd = exec.Command(k.bin, k.args(confPath, dir)...)
	ws.cmd.Dir = dir
	out, _ := os.Create(filepath.Join(dir, "stdout.log"))
	ws.cmd.Stdout, ws.cmd.Stderr = out, out
	if err := ws.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() { ws.cmd.Wait(); out.Close(); close(ws.done) }()
	t.Cleanup(ws.stop)
	deadline := time.Now().Add(20 * time.Second)
	for !portOpen(ws.addr) {
		select {
		case <-ws.done:
			t.Fatalf("%s exited at start:\n%s", name, ws.logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening after 20s:\n%s", name, ws.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return ws
}

// stop ends the server with SIGTERM, so its workers go too, and waits until
// its port is closed.
func (ws *webServer) stop() {
	select {
	case <-ws.done:
		return
	default:
	}
	ws.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-ws.done:
	case <-time.After(15 * time.Second):
		ws.cmd.Process.Kill()
		<-ws.done
	}
	waitFor(ws.t, ws.name+" port closed", 15*time.Second, func() bool { return !portOpen(ws.addr) })
}

func (ws *webServer) logs() string {
	var b strings.Builder
	for _, f := range []string{"stdout.log", "error.log"} {
		data, _ := os.ReadFile(filepath.Join(ws.dir, f))
		fmt.Fprintf(&b, "--- %s\n%s\n", f, data)
	}
	return b.String()
}

// logLines returns the access log's lines: the Cookie header of each
// request the server received ("-" for none).
func (ws *webServer) logLines() []string {
	data, _ := os.ReadFile(filepath.Join(ws.dir, "access.log"))
	if len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(data), "\n"), "\n")
}

// logCount waits (10 s at most) until the access log holds want lines
// equal to line, and returns how many it holds. Apache writes a request's
// line after it answers, and requests over different upstream connections
// may be logged out of order, so a test counts lines rather than reading
// the last one.
func (ws *webServer) logCount(line string, want int) int {
	ws.t.Helper()
	count := func() (n int) {
		for _, l := range ws.logLines() {
			if l == line {
				n++
			}
		}
		return n
	}
	deadline := time.Now().Add(10 * time.Second)
	n := count()
	for n < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		n = count()
	}
	return n
}
