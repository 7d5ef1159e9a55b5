// Command bench is `make bench`: it measures caddy-affinity's load-balancing
// policies against Caddy's own and against HAProxy on loopback, and writes
// the results page (docs/results.md) and its plots.
//
// It starts identical in-process backends, one Caddy with a site per case,
// and one HAProxy with a frontend per case, checks that every case balances
// and sticks as configured, then runs wrk against the cases interleaved in
// rounds and reports the median of each. It also computes, in process, how
// the plugin's IP affinity spreads and moves clients, and how much memory a
// session table of a million entries takes.
//
// Usage (from bench/):
//
//	go run ./cmd/bench -caddy ../bin/caddy -out ../docs
//	go run ./cmd/bench -quick -out /tmp/bench    # 1 round x 2 s, for development
//
// It exits non-zero when a case fails its pre-check or wrk sees errors, but
// not when a performance target is missed: those are reported as FAIL on
// the page, since the machines it runs on are shared and noisy.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config holds the command-line settings.
type config struct {
	caddy, haproxy, wrk string
	out                 string
	rounds              int
	duration, warmup    time.Duration
	connections         int
	threads             int
	backends            int
	cases               string
	clients             int
	addresses           int
	quick               bool
	pprof               bool
	maxOther            float64
	retries             int
	quietWait           time.Duration
	timer               bool // the Caddy binary has select_timer: time every Caddy case's selections
	duelRounds          int
	duelDuration        time.Duration
	sideRounds          int
}

func main() {
	var c config
	defCaddy := os.Getenv("AFFINITY_CADDY")
	if defCaddy == "" {
		defCaddy = "../bin/caddy"
	}
	flag.StringVar(&c.caddy, "caddy", defCaddy, "Caddy binary built with the plugin (default $AFFINITY_CADDY)")
	flag.StringVar(&c.haproxy, "haproxy", "/usr/sbin/haproxy", "HAProxy binary")
	flag.StringVar(&c.wrk, "wrk", "/usr/bin/wrk", "wrk binary")
	flag.StringVar(&c.out, "out", "../docs", "directory for results.md and the PNG plots")
	flag.IntVar(&c.rounds, "rounds", 15, "rounds; each runs every case once, and each case reports its median")
	flag.DurationVar(&c.duration, "duration", 5*time.Second, "wrk run per case and round")
	flag.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured wrk run per case before the first round, whole seconds (0 for none)")
	flag.IntVar(&c.connections, "c", 32, "wrk connections (and simulated cookie clients)")
	flag.IntVar(&c.threads, "t", 1, "wrk threads")
	flag.IntVar(&c.backends, "backends", 3, "number of backends")
	flag.StringVar(&c.cases, "cases", "", "comma-separated case names to run (default all); targets needing a missing case show n/a")
	flag.IntVar(&c.addresses, "addresses", 256, "client addresses wrk's requests name in X-Forwarded-For (the IP cases' clients)")
	flag.IntVar(&c.clients, "clients", 1_000_000, "random IPv4 clients for the IP affinity distribution and disruption figures")
	flag.BoolVar(&c.quick, "quick", false, "fast development run: 1 round x 2 s, no warm-up")
	flag.Float64Var(&c.maxOther, "max-other", 20, "a run during which other processes use more than this % of the machine is repeated (0: never)")
	flag.IntVar(&c.retries, "retries", 2, "repeats of a run with too much other CPU; the quietest attempt is kept")
	flag.DurationVar(&c.quietWait, "quiet-wait", 30*time.Second, "before each run, wait up to this long for the other processes to use at most -max-other")
	flag.IntVar(&c.duelRounds, "duel-rounds", 20, "rounds of each duel (two cases at once, their selections timed inside Caddy; needs select_timer)")
	flag.DurationVar(&c.duelDuration, "duel-duration", 3*time.Second, "wrk run per duel round")
	flag.IntVar(&c.sideRounds, "side-rounds", 12, "rounds of each side-by-side comparison (two cases in two Caddy processes at once, -duration each)")
	flag.BoolVar(&c.pprof, "pprof", false, "save a CPU profile of Caddy per Caddy case during the first round into <out>/results/raw/ (perturbs that round)")
	flag.Parse()
	if c.quick {
		c.rounds, c.duration, c.warmup, c.duelRounds, c.sideRounds = 1, 2*time.Second, 0, 2, 2
	}
	if c.rounds < 1 || c.duration <= 0 || c.connections < 1 || c.addresses < 1 || c.threads < 1 || c.backends < 2 {
		fatalf("need -rounds >= 1, -duration > 0, -c >= 1, -addresses >= 1, -t >= 1 and -backends >= 2")
	}
	if c.duelRounds < 0 || c.sideRounds < 0 || (c.duelRounds > 0 && c.duelDuration < 3*duelMargin) {
		fatalf("need -duel-rounds >= 0, -side-rounds >= 0 and, with duels, -duel-duration >= %v", 3*duelMargin)
	}

	// Children get SIGTERM through the context on Ctrl-C as well as at the end.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, c)
	stop()
	if err != nil {
		fatalf("%v", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// command is the invocation as a user would type it from bench/, for the page.
func command() string {
	args := []string{"go run ./cmd/bench"}
	for _, a := range os.Args[1:] {
		if strings.ContainsAny(a, " \t'\"$") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		args = append(args, a)
	}
	return strings.Join(args, " ")
}

func run(ctx context.Context, c config) error {
	for _, bin := range []string{c.caddy, c.haproxy, c.wrk} {
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("%v (make bench builds Caddy and installs wrk and haproxy with scripts/install-deps.sh --bench)", err)
		}
	}
	var err error
	if c.caddy, err = filepath.Abs(c.caddy); err != nil {
		return err
	}
	if c.timer = hasTimer(c.caddy); !c.timer {
		logf("%s has no select_timer (make bench builds bin/caddy-bench with it): no selection timings", c.caddy)
	}
	cases, err := selectCases(c.cases)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "affinity-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	env := environment(c)
	res := &results{cfg: c, env: env, cases: cases, started: time.Now().UTC()}

	if err := runLoad(ctx, c, work, res); err != nil {
		return err
	}

	// The in-process figures run after the load test so they cannot disturb it.
	logf("IP affinity: distribution and disruption over %d random IPv4 clients", c.clients)
	res.ip = analyseIP(c.clients)
	logf("session table: memory of 1M entries")
	res.mem = measureSessionMemory()

	if err := writeReport(c.out, res); err != nil {
		return err
	}
	printSummary(os.Stdout, res)
	if bad := res.wrkErrors(); len(bad) > 0 {
		return fmt.Errorf("wrk saw errors in %s: the figures of those cases are not trustworthy", strings.Join(bad, ", "))
	}
	return nil
}

// runLoad starts the servers, pre-checks every case and runs wrk.
func runLoad(ctx context.Context, c config, work string, res *results) error {
	bs, err := startBackends(c.backends)
	if err != nil {
		return err
	}
	defer bs.close()
	logf("backends: %s", strings.Join(bs.addrs(), " "))

	var procs []*proc
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	caddyCases, haproxyCases := splitCases(res.cases)
	var redisAddr string
	if caseByID(res.cases, "sticky_learn_redis") != nil {
		p, a, err := startRedis(ctx, work)
		if err != nil {
			return fmt.Errorf("redis-server: %v", err)
		}
		procs = append(procs, p)
		redisAddr = a
	}
	var admin string
	if len(caddyCases) > 0 {
		p, a, err := startCaddy(ctx, c.caddy, work, caddyCases, bs, c.timer)
		if err != nil {
			return err
		}
		procs = append(procs, p)
		admin = a
		for _, k := range caddyCases {
			k.pid = p.cmd.Process.Pid
		}
	}
	if len(haproxyCases) > 0 {
		p, err := startHAProxy(ctx, c.haproxy, work, haproxyCases, bs)
		if err != nil {
			return err
		}
		procs = append(procs, p)
		for _, k := range haproxyCases {
			k.pid = p.cmd.Process.Pid
		}
	}

	for _, k := range res.cases {
		if err := precheck(k, bs); err != nil {
			return fmt.Errorf("pre-check of %s failed: %v", k.Name, err)
		}
		logf("pre-check %-24s ok (%s)", k.Name, k.checked)
	}

	script := filepath.Join(work, "sticky.lua")
	if err := os.WriteFile(script, stickyLua, 0o644); err != nil {
		return err
	}
	w := wrkRunner{bin: c.wrk, script: script, threads: c.threads, connections: c.connections, addresses: c.addresses}
	meter := &cpuMeter{}
	for _, p := range procs {
		meter.pids = append(meter.pids, p.cmd.Process.Pid)
	}
	if c.warmup > 0 {
		for _, k := range res.cases {
			if _, err := w.run(ctx, k, c.warmup); err != nil {
				return fmt.Errorf("warm-up of %s: %v", k.Name, err)
			}
		}
		logf("warm-up done (%v per case)", c.warmup)
	}
	// Redis commands of the measured rounds: a learned session cached in
	// every instance costs none.
	var redisBefore, opsBefore map[string]int64
	if redisAddr != "" {
		if redisBefore, err = redisCalls(redisAddr); err != nil {
			return fmt.Errorf("redis-server: %v", err)
		}
		if opsBefore, err = storeOps(admin); err != nil {
			return fmt.Errorf("Caddy's metrics: %v", err)
		}
	}
	// Interleave the cases so that a slow spell of the shared machine or a
	// position in the order does not fall on one case only.
	for r := range c.rounds {
		for _, k := range roundOrder(res.cases, r) {
			var prof chan error
			if c.pprof && r == 0 && k.Server == "caddy" {
				prof = make(chan error, 1)
				go func() { prof <- cpuProfile(admin, c.duration, filepath.Join(c.out, "results", "raw", k.ID+".pprof")) }()
			}
			s, err := measure(ctx, c, w, meter, k, admin)
			if prof != nil {
				if perr := <-prof; perr != nil {
					logf("profile of %s: %v", k.Name, perr)
				}
			}
			if err != nil {
				return fmt.Errorf("round %d, %s: %v", r+1, k.Name, err)
			}
			k.samples = append(k.samples, s)
			note := ""
			if s.Attempt > 1 {
				note = fmt.Sprintf(" (attempt %d)", s.Attempt)
			}
			if s.Select.Mean > 0 {
				note = fmt.Sprintf("  select %4.0f ns (p50 %4.0f, slow %.3f %%)%s", float64(s.Select.Mean), float64(s.Select.P50), 100*s.Select.Slow, note)
			}
			logf("round %d/%d %-24s %9.0f req/s  p50 %6.2f ms  p99 %6.2f ms  other CPU %3.0f %%%s", r+1, c.rounds, k.Name, s.RPS, ms(s.P50), ms(s.P99), s.Foreign, note)
		}
	}
	if redisAddr != "" {
		after, err := redisCalls(redisAddr)
		if err != nil {
			return fmt.Errorf("redis-server: %v", err)
		}
		ops, err := storeOps(admin)
		if err != nil {
			return fmt.Errorf("Caddy's metrics: %v", err)
		}
		for _, s := range caseByID(res.cases, "sticky_learn_redis").samples {
			res.redis.Requests += s.Requests
		}
		for _, op := range []string{"get", "set", "delete"} {
			res.redis.Trips += ops[op] - opsBefore[op]
		}
		res.redis.Refresh = ops["refresh"] - opsBefore["refresh"]
		_, res.redis.Detail = tripsBetween(redisBefore, after)
		logf("Redis: %d request round trips over %d requests of sticky_cookie learn, Redis; %d refresh batches; Redis counted %s",
			res.redis.Trips, res.redis.Requests, res.redis.Refresh, res.redis.Detail)
	}
	if c.timer && c.duelRounds > 0 {
		if res.duels, err = runDuels(ctx, c, w, admin, res.cases); err != nil {
			return err
		}
	}
	if c.sideRounds > 0 {
		if res.sides, err = runSideBySide(ctx, c, w, work, bs, res.cases); err != nil {
			return err
		}
	}
	res.finished = time.Now().UTC()
	res.env.LoadAfter = loadAvg()
	return nil
}

// measure runs wrk once against k, on a shared machine as fairly as it can:
// it first waits (briefly) for the other processes to calm down, and
// repeats a run during which they used more than c.maxOther percent of the
// machine, up to c.retries times, keeping the quietest attempt. With the
// timer, it also reads the Caddy case's mean selection time over the run
// from admin.
func measure(ctx context.Context, c config, w wrkRunner, meter *cpuMeter, k *benchCase, admin string) (sample, error) {
	timed := c.timer && k.Server == "caddy"
	var best sample
	for attempt := 1; ; attempt++ {
		if c.maxOther > 0 {
			meter.waitQuiet(ctx, c.maxOther, c.quietWait)
		}
		var sums timerSums
		if timed {
			var err error
			if sums, err = readTimer(admin); err != nil {
				return sample{}, err
			}
		}
		before, proxy := meter.snap(), procTicks(strconv.Itoa(k.pid))
		s, err := w.run(ctx, k, c.duration)
		if err != nil {
			return sample{}, err
		}
		proxyAfter := procTicks(strconv.Itoa(k.pid))
		if timed {
			after, err := readTimer(admin)
			if err == nil {
				s.Select, err = selections(sums, after, k.ID)
			}
			if err != nil {
				return sample{}, err
			}
		}
		s.Foreign, s.Attempt = foreign(before, meter.snap()), attempt
		if s.Requests > 0 {
			// CPU per request is steadier than req/s on a busy machine.
			s.ProxyCPU = time.Duration(proxyAfter-proxy) * clockTick / time.Duration(s.Requests)
		}
		if attempt == 1 || s.Foreign < best.Foreign {
			best = s
		}
		if c.maxOther <= 0 || s.Foreign <= c.maxOther || attempt > c.retries {
			return best, nil
		}
		logf("%s: other processes used %.0f %% of the machine meanwhile; repeating", k.Name, s.Foreign)
	}
}

// roundOrder is the order of the cases in round r: each round starts one
// case later, and every other round runs backwards, so that each case
// follows a given other case as often as it precedes it (a case run just
// after another can inherit its warm or cold state: caches, GC, the backend
// it used).
func roundOrder(cases []*benchCase, r int) []*benchCase {
	n := len(cases)
	out := make([]*benchCase, n)
	for j := range n {
		if r%2 == 0 {
			out[j] = cases[(j+r)%n]
		} else {
			out[j] = cases[(2*n-1-j+r)%n]
		}
	}
	return out
}
