package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

const redisBin = "/usr/bin/redis-server"

// redisFigures are the Redis round trips of the case with a Redis store
// over its measured rounds.
type redisFigures struct {
	Requests int64  // the case's requests in its rounds
	Trips    int64  // round trips of the request path (get, set, delete)
	Refresh  int64  // batches of idle-time refreshes meanwhile
	Detail   string // Redis's own count per command, health checks aside
}

// startRedis starts a redis-server of its own on a free port, in work,
// for the cases with a Redis store, and gives Caddy its address.
func startRedis(ctx context.Context, work string) (*proc, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	_, port, _ := net.SplitHostPort(addr)
	dir := work + "/redis"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	p, err := start(ctx, "redis", dir, redisBin, []string{"--port", port, "--bind", "127.0.0.1", "--dir", dir,
		"--save", "", "--appendonly", "no", "--protected-mode", "no"}, []string{addr})
	if err != nil {
		return nil, "", err
	}
	os.Setenv(redisEnv, addr)
	return p, addr, nil
}

// redisCalls returns each command's calls so far (INFO commandstats).
func redisCalls(addr string) (map[string]int64, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n"); err != nil {
		return nil, err
	}
	br := bufio.NewReader(c)
	head, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(head, "$") {
		return nil, fmt.Errorf("INFO: reply %q, %v", head, err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(head[1:]))
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return nil, err
	}
	calls := map[string]int64{}
	for _, l := range strings.Split(string(body), "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(l), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				calls[strings.TrimPrefix(name, "cmdstat_")], _ = strconv.ParseInt(v, 10, 64)
			}
		}
	}
	return calls, nil
}

// healthCommands are the store's checks of the server, made once a second
// whatever the load: not round trips of requests.
var healthCommands = map[string]bool{"info": true, "ping": true, "hello": true, "client|setinfo": true, "subscribe": true, "select": true}

// tripsBetween returns the request round trips from before to after.
func tripsBetween(before, after map[string]int64) (int64, string) {
	var total int64
	var parts []string
	for cmd, n := range after {
		if d := n - before[cmd]; d > 0 && !healthCommands[cmd] {
			total += d
			parts = append(parts, fmt.Sprintf("%s %d", cmd, d))
		}
	}
	if len(parts) == 0 {
		return 0, "none"
	}
	return total, strings.Join(parts, ", ")
}

// storeOps returns the plugin's count of store round trips by op, from
// Caddy's metrics (caddy_affinity_store_requests_total).
func storeOps(admin string) (map[string]int64, error) {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	ops := map[string]int64{}
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "caddy_affinity_store_requests_total{") {
			continue
		}
		_, rest, _ := strings.Cut(l, `op="`)
		op, val, _ := strings.Cut(rest, `"}`)
		n, _ := strconv.ParseFloat(strings.TrimSpace(val), 64)
		ops[op] += int64(n)
	}
	return ops, nil
}
