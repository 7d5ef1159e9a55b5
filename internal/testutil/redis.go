package testutil

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// RedisServer is a redis-server a test started on a free loopback port,
// with a directory of its own, never as a system service.
type RedisServer struct {
	t    testing.TB
	Addr string
	dir  string
	cmd  *exec.Cmd
	exit chan struct{}
	opts RedisOptions
}

// RedisOptions are settings of the server StartRedisWith starts.
type RedisOptions struct {
	// Password, if any, every client must give (--requirepass); Do
	// gives it.
	Password string
}

const redisBin = "/usr/bin/redis-server"

// StartRedis starts a redis-server and waits until it answers PING. It
// skips t when Debian's redis-server is not installed, unless
// AFFINITY_REQUIRE_SERVERS is set (CI sets it), where that fails t. The
// server stops when t ends.
func StartRedis(t testing.TB) *RedisServer {
	t.Helper()
	return StartRedisWith(t, RedisOptions{})
}

// StartRedisWith is StartRedis with options.
func StartRedisWith(t testing.TB, opts RedisOptions) *RedisServer {
	t.Helper()
	if _, err := os.Stat(redisBin); err != nil {
		msg := redisBin + " not installed: apt-get install redis-server (make test installs it when run as root)"
		if os.Getenv("AFFINITY_REQUIRE_SERVERS") != "" {
			t.Fatal(msg)
		}
		t.Skipf("%s; set AFFINITY_REQUIRE_SERVERS=1 to require it", msg)
	}
	r := &RedisServer{t: t, dir: t.TempDir(), opts: opts}
	// A port found free can be taken before the server binds it: try again.
	var err error
	for range 5 {
		r.Addr = FreeAddr(t)
		if err = r.start(); err == nil {
			t.Cleanup(r.Stop)
			return r
		}
	}
	t.Fatalf("redis-server did not start: %v", err)
	return nil
}

// FreeAddr returns a loopback address whose port was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (r *RedisServer) start() error {
	_, port, _ := net.SplitHostPort(r.Addr)
	log, err := os.OpenFile(r.dir+"/redis.log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	r.cmd = exec.Command(redisBin, "--port", port, "--bind", "127.0.0.1", "--dir", r.dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no")
	if r.opts.Password != "" {
		r.cmd.Args = append(r.cmd.Args, "--requirepass", r.opts.Password)
	}
	r.cmd.Stdout, r.cmd.Stderr = log, log
	if err := r.cmd.Start(); err != nil {
		return err
	}
	r.exit = make(chan struct{})
	go func(cmd *exec.Cmd, exit chan struct{}) { _ = cmd.Wait(); close(exit) }(r.cmd, r.exit)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-r.exit:
			out, _ := os.ReadFile(r.dir + "/redis.log")
			return fmt.Errorf("exited: %s", lastLines(string(out), 5))
		default:
		}
		if _, err := r.Do("PING"); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.Stop()
	return fmt.Errorf("no answer on %s within 10s", r.Addr)
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// Stop kills the server (as a crash would) and waits for it to exit.
func (r *RedisServer) Stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.exit
	r.cmd = nil
}

// Freeze stops the server's process (SIGSTOP) without closing its
// connections: it accepts nothing and answers nothing, as a server that
// hangs. Thaw resumes it; the test's cleanup thaws it too.
func (r *RedisServer) Freeze() {
	r.t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		r.t.Fatalf("SIGSTOP redis-server: %v", err)
	}
	r.t.Cleanup(func() {
		if r.cmd != nil {
			_ = r.cmd.Process.Signal(syscall.SIGCONT)
		}
	})
}

// Thaw resumes a frozen server (SIGCONT).
func (r *RedisServer) Thaw() {
	r.t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		r.t.Fatalf("SIGCONT redis-server: %v", err)
	}
}

// Restart starts the server again on the same port, empty (it keeps no
// data on disk), and waits until it answers.
func (r *RedisServer) Restart() {
	r.t.Helper()
	r.Stop()
	var err error
	for range 50 {
		if err = r.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond) // the port may linger
	}
	r.t.Fatalf("redis-server did not start again: %v", err)
}

// Do sends one command (after AUTH, if the server has a password) and
// returns its reply as text: a simple string, an integer, a bulk string,
// or an array's elements one a line.
func (r *RedisServer) Do(args ...string) (string, error) {
	return r.DoDB(0, args...)
}

// DoDB is Do in database db (after SELECT db).
func (r *RedisServer) DoDB(db int, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", r.Addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	send := func(cmd []string) (string, error) {
		var b strings.Builder
		fmt.Fprintf(&b, "*%d\r\n", len(cmd))
		for _, a := range cmd {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
		}
		if _, err := c.Write([]byte(b.String())); err != nil {
			return "", err
		}
		return readReply(br)
	}
	if r.opts.Password != "" {
		if _, err := send([]string{"AUTH", r.opts.Password}); err != nil {
			return "", err
		}
	}
	if db != 0 {
		if _, err := send([]string{"SELECT", strconv.Itoa(db)}); err != nil {
			return "", err
		}
	}
	return send(args)
}

func readReply(br *bufio.Reader) (string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", fmt.Errorf("redis: %s", line[1:])
	case '$':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return "", nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	case '*':
		n, _ := strconv.Atoi(line[1:])
		var out []string
		for range n {
			s, err := readReply(br)
			if err != nil {
				return "", err
			}
			out = append(out, s)
		}
		return strings.Join(out, "\n"), nil
	}
	return "", fmt.Errorf("unexpected reply %q", line)
}

// Keys returns how many keys the server holds under prefix (by SCAN).
func (r *RedisServer) Keys(prefix string) int {
	r.t.Helper()
	return r.KeysDB(0, prefix)
}

// KeysDB is Keys in database db.
func (r *RedisServer) KeysDB(db int, prefix string) int {
	r.t.Helper()
	n, cursor := 0, "0"
	for {
		out, err := r.DoDB(db, "SCAN", cursor, "MATCH", prefix+"*", "COUNT", "1000")
		if err != nil {
			r.t.Fatalf("SCAN: %v", err)
		}
		lines := strings.Split(out, "\n")
		cursor = lines[0]
		for _, l := range lines[1:] {
			if l != "" {
				n++
			}
		}
		if cursor == "0" {
			return n
		}
	}
}

// CommandCalls returns the calls of each command since the server started
// (or since CONFIG RESETSTAT), from INFO commandstats: "get" -> 12.
func (r *RedisServer) CommandCalls() map[string]int {
	r.t.Helper()
	out, err := r.Do("INFO", "commandstats")
	if err != nil {
		r.t.Fatalf("INFO commandstats: %v", err)
	}
	calls := map[string]int{}
	for _, l := range strings.Split(out, "\n") {
		// cmdstat_get:calls=12,usec=...
		name, rest, ok := strings.Cut(strings.TrimSpace(l), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				calls[strings.TrimPrefix(name, "cmdstat_")], _ = strconv.Atoi(v)
			}
		}
	}
	return calls
}
