package main

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

//go:embed sticky.lua
var stickyLua []byte

// sample is one wrk run of one case.
type sample struct {
	Requests  int64
	Duration  time.Duration
	RPS       float64
	P50, P90  time.Duration
	P99, Max  time.Duration
	Errors    int64 // socket errors: connect, read, write, timeout
	Status    int64 // responses other than 2xx and 3xx
	Responses int64
	Late      int64 // responses still setting the cookie after the client pool was full
	// Foreign is the CPU other processes of the machine used meanwhile, in
	// percent of all CPUs (-1 if unknown): the noise of a shared machine.
	Foreign float64
	Attempt int // which attempt this was (see measure)
	// ProxyCPU is the CPU time (user and system) the proxy process spent
	// per request.
	ProxyCPU time.Duration
	// Select is how long the policy's Select took inside Caddy (zero if
	// not timed).
	Select selectStats
}

// wrkRunner runs wrk with the sticky script.
type wrkRunner struct {
	bin, script          string
	threads, connections int
	addresses            int // client addresses in X-Forwarded-For
}

func (w wrkRunner) run(ctx context.Context, k *benchCase, d time.Duration) (sample, error) {
	// wrk takes whole seconds.
	secs := max(1, int((d+time.Second/2)/time.Second))
	args := []string{
		"-t", strconv.Itoa(w.threads), "-c", strconv.Itoa(w.connections),
		"-d", strconv.Itoa(secs) + "s", "--timeout", "5s",
		"-s", w.script, "http://" + k.addr + k.Path,
		"--", k.Cookie, strconv.Itoa(w.connections), k.Path, strconv.Itoa(w.addresses),
	}
	cmd := exec.CommandContext(ctx, w.bin, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return sample{}, fmt.Errorf("wrk %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	s, err := parseWrk(out.String())
	if err != nil {
		return sample{}, fmt.Errorf("wrk %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return s, nil
}

// parseWrk reads the BENCH line that sticky.lua's done() prints.
func parseWrk(out string) (sample, error) {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "BENCH ") {
			continue
		}
		v := map[string]int64{}
		for _, f := range strings.Fields(line)[1:] {
			key, val, ok := strings.Cut(f, "=")
			if !ok {
				return sample{}, fmt.Errorf("bad field %q", f)
			}
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil {
				return sample{}, fmt.Errorf("bad field %q: %v", f, err)
			}
			v[key] = n
		}
		for _, key := range []string{"requests", "duration_us", "p50_us", "p99_us"} {
			if _, ok := v[key]; !ok {
				return sample{}, fmt.Errorf("BENCH line lacks %s", key)
			}
		}
		if v["duration_us"] <= 0 {
			return sample{}, fmt.Errorf("BENCH line has no duration")
		}
		us := func(key string) time.Duration { return time.Duration(v[key]) * time.Microsecond }
		return sample{
			Requests:  v["requests"],
			Duration:  us("duration_us"),
			RPS:       float64(v["requests"]) / (float64(v["duration_us"]) / 1e6),
			P50:       us("p50_us"),
			P90:       us("p90_us"),
			P99:       us("p99_us"),
			Max:       us("max_us"),
			Errors:    v["connect"] + v["read"] + v["write"] + v["timeout"],
			Status:    v["status"],
			Responses: v["responses"],
			Late:      v["late"],
		}, nil
	}
	return sample{}, fmt.Errorf("no BENCH line in wrk's output")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
