package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// results is everything one run measured.
type results struct {
	cfg               config
	env               env
	cases             []*benchCase
	started, finished time.Time
	ip                ipFigures
	mem               memFigures
	duels             []*duel
	sides             []*sideBySide
	redis             redisFigures
}

// env describes the machine and the software measured.
type env struct {
	CPUs                int
	CPU                 string
	Caddy, HAProxy, Wrk string
	Go, Command         string
	LoadBefore          string // /proc/loadavg as the run starts
	LoadAfter           string // and after the load test
	Commit              string // the plugin's code: git commit, "-dirty" with local changes
}

func environment(c config) env {
	return env{
		CPUs:       runtime.NumCPU(),
		CPU:        cpuModel(),
		Caddy:      version(c.caddy, "version"),
		HAProxy:    version(c.haproxy, "-v"),
		Wrk:        version(c.wrk, "-v"),
		Go:         runtime.Version(),
		Command:    command(),
		LoadBefore: loadAvg(),
		Commit:     gitCommit(),
	}
}

// gitCommit names the code measured: the checkout's commit, marked dirty
// when it has uncommitted changes, or "unknown" outside a git checkout.
func gitCommit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty", "--abbrev=12").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// loadAvg returns the 1, 5 and 15 minute load averages: on a shared
// machine, the reader's first clue to how noisy a run was.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// stats is a case's median over the rounds.
type stats struct {
	RPS          float64
	P50, P99     time.Duration
	MinRPS       float64
	MaxRPS       float64
	Errors       int64
	Status       int64
	LateFraction float64
	Foreign      float64 // median CPU of other processes, % of all CPUs
	ProxyCPU     time.Duration
	Select       time.Duration // median mean selection time inside Caddy (0: not timed)
}

func median[T float64 | time.Duration](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func (k *benchCase) stats() stats {
	var rps []float64
	var p50, p99, proxy, sel []time.Duration
	var foreign []float64
	var st stats
	var late, resp int64
	for _, s := range k.samples {
		rps = append(rps, s.RPS)
		p50 = append(p50, s.P50)
		p99 = append(p99, s.P99)
		foreign = append(foreign, s.Foreign)
		proxy = append(proxy, s.ProxyCPU)
		sel = append(sel, s.Select.Mean)
		st.Errors += s.Errors
		st.Status += s.Status
		late += s.Late
		resp += s.Responses
	}
	if len(rps) == 0 {
		return st
	}
	st.RPS, st.P50, st.P99 = median(rps), median(p50), median(p99)
	st.MinRPS, st.MaxRPS = slices.Min(rps), slices.Max(rps)
	st.Foreign, st.ProxyCPU, st.Select = median(foreign), median(proxy), median(sel)
	if resp > 0 {
		st.LateFraction = float64(late) / float64(resp)
	}
	return st
}

// wrkErrors lists the cases wrk saw socket errors or bad statuses in.
func (r *results) wrkErrors() []string {
	var bad []string
	for _, k := range r.cases {
		if s := k.stats(); s.Errors > 0 || s.Status > 0 {
			bad = append(bad, fmt.Sprintf("%s (%d socket errors, %d bad statuses)", k.Name, s.Errors, s.Status))
		}
	}
	return bad
}

// target is one of the goals and whether this run met it.
type target struct {
	Goal     string
	Measured string
	Verdict  verdict
}

// verdict says how a target's measurements stand against it.
type verdict int

const (
	verdictNA         verdict = iota // a case it needs was not run
	verdictPass                      // the whole 95 % interval meets the goal
	verdictOpenMeets                 // the interval straddles the goal; the median meets it
	verdictOpenMisses                // the interval straddles the goal; the median misses it
	verdictFail                      // the whole 95 % interval misses the goal
)

func (v verdict) String() string {
	switch v {
	case verdictPass:
		return "PASS"
	case verdictOpenMeets:
		return "not resolved, median meets"
	case verdictOpenMisses:
		return "not resolved, median misses"
	case verdictFail:
		return "FAIL"
	}
	return "n/a"
}

// judge gives the verdict of a ratio's median and 95 % interval against a
// goal: at least goal if atLeast, else at most goal. Only an interval wholly
// on one side of the goal settles it.
func judge(med, lo, hi, goal float64, atLeast bool) verdict {
	meets := func(x float64) bool { return atLeast && x >= goal || !atLeast && x <= goal }
	switch {
	case meets(lo) && meets(hi):
		return verdictPass
	case !meets(lo) && !meets(hi):
		return verdictFail
	case meets(med):
		return verdictOpenMeets
	}
	return verdictOpenMisses
}

// describe formats per-round ratios x for the targets table and judges
// them against goal.
func describe(x []float64, goal float64, atLeast bool) (string, verdict) {
	med, lo, hi, cover := medianInterval(x, 0.95)
	v := judge(med, lo, hi, goal, atLeast)
	if cover < 0.95 {
		// Too few rounds for a 95 % interval: nothing is settled.
		v = judge(med, med, med, goal, atLeast)
		if v == verdictPass {
			v = verdictOpenMeets
		} else {
			v = verdictOpenMisses
		}
	}
	return fmt.Sprintf("%s, %d rounds)", strings.TrimSuffix(ratioInterval(x), ")"), len(x)), v
}

// ratioInterval formats the median of per-round ratios x with its 95 %
// interval (or the range, when there are too few rounds for one).
func ratioInterval(x []float64) string {
	med, lo, hi, cover := medianInterval(x, 0.95)
	return fmt.Sprintf("%.3fx (%s %.3f-%.3f)", med, intervalName(cover), lo, hi)
}

// intervalName names an interval of the median by its coverage.
func intervalName(cover float64) string {
	if cover >= 0.95 {
		return "95 % interval"
	}
	return fmt.Sprintf("range, a %.0f %% interval", 100*cover)
}

// targets evaluates the goals against this run.
func (r *results) targets() []target {
	var out []target
	ratio := func(id, vsID string, min float64) {
		k, vs := caseByID(r.cases, id), caseByID(r.cases, vsID)
		goal := fmt.Sprintf("%s req/s >= %.2fx %s", nameOr(k, id), min, nameOr(vs, vsID))
		if k == nil || vs == nil || vs.stats().RPS == 0 {
			out = append(out, target{Goal: goal})
			return
		}
		t := target{Goal: goal + " (one after the other)"}
		t.Measured, t.Verdict = describe(pairedRatios(k, vs, func(s sample) float64 { return s.RPS }), min, true)
		out = append(out, t)
		if sb := r.side(id, vsID); sb != nil && len(sb.Rounds) > 0 {
			t := target{Goal: goal + " (side by side)"}
			t.Measured, t.Verdict = describe(sb.rpsRatios(), min, true)
			cpu, _, _, _ := medianInterval(sb.cpuRatios(), 0.95)
			t.Measured += fmt.Sprintf("; CPU per request %.3fx as cheap", cpu)
			out = append(out, t)
		}
	}
	p99 := func(id, vsID string) {
		k, vs := caseByID(r.cases, id), caseByID(r.cases, vsID)
		goal := fmt.Sprintf("%s p99 <= 1.10x %s p99", nameOr(k, id), nameOr(vs, vsID))
		if k == nil || vs == nil || vs.stats().P99 == 0 {
			out = append(out, target{Goal: goal})
			return
		}
		t := target{Goal: goal}
		t.Measured, t.Verdict = describe(pairedRatios(k, vs, func(s sample) float64 { return float64(s.P99) }), 1.10, false)
		t.Measured = fmt.Sprintf("%.2f vs %.2f ms; %s", ms(k.stats().P99), ms(vs.stats().P99), t.Measured)
		out = append(out, t)
	}
	// The selection inside Caddy, the two cases run at once: the only
	// work in which they differ, measured finely enough to compare.
	selection := func(id, vsID string, most float64) {
		k, vs := caseByID(r.cases, id), caseByID(r.cases, vsID)
		goal := fmt.Sprintf("%s selection time inside Caddy <= %.2fx %s's (run at once)", nameOr(k, id), most, nameOr(vs, vsID))
		du := r.duel(id, vsID)
		if du == nil || len(du.ratios()) == 0 {
			out = append(out, target{Goal: goal})
			return
		}
		t := target{Goal: goal}
		t.Measured, t.Verdict = describe(du.ratios(), most, false)
		a, b := du.medians()
		t.Measured = fmt.Sprintf("%.0f vs %.0f ns; %s", float64(a), float64(b), t.Measured)
		out = append(out, t)
	}
	ratio("sticky_insert", baselineID, 0.97)
	ratio("sticky_insert", "cookie", 1.0)
	selection("sticky_insert", "cookie", 1.0)
	p99("sticky_insert", baselineID)
	ratio("ip_affinity", baselineID, 0.97)
	ratio("ip_affinity", "client_ip_hash", 1.0)
	selection("ip_affinity", "client_ip_hash", 1.0)
	p99("ip_affinity", baselineID)
	selection("sticky_header", "sticky_insert", 1.0)
	selection("sticky_learn", "sticky_insert", 1.5)
	p99("sticky_learn_redis", "sticky_learn")
	if k := caseByID(r.cases, "sticky_learn_redis"); k != nil {
		t := target{Goal: "sticky_cookie learn, Redis: Redis round trips per request in the steady state = 0"}
		if r.redis.Requests > 0 {
			perReq := float64(r.redis.Trips) / float64(r.redis.Requests)
			t.Measured = fmt.Sprintf("%d round trips of requests over %d requests: %.6f per request (besides: %d batches of idle-time refreshes; Redis counted %s)",
				r.redis.Trips, r.redis.Requests, perReq, r.redis.Refresh, r.redis.Detail)
			t.Verdict = verdictPass
			if r.redis.Trips > 0 {
				t.Verdict = verdictFail
			}
		}
		out = append(out, t)
	}
	mib := float64(r.mem.IPv4) / (1 << 20)
	mem := target{
		Goal:     "1M-entry session table <= 64 MiB",
		Measured: fmt.Sprintf("%.1f MiB (IPv4), %.1f MiB (IPv6)", mib, float64(r.mem.IPv6)/(1<<20)),
		Verdict:  verdictFail,
	}
	if max(r.mem.IPv4, r.mem.IPv6) <= r.mem.LimitBytes {
		mem.Verdict = verdictPass
	}
	return append(out, mem)
}

// side returns the side-by-side comparison of id against vsID, or nil.
func (r *results) side(id, vsID string) *sideBySide {
	for _, sb := range r.sides {
		if sb.ID == id && sb.VsID == vsID {
			return sb
		}
	}
	return nil
}

// duel returns the duel of id against vsID, or nil.
func (r *results) duel(id, vsID string) *duel {
	for _, du := range r.duels {
		if du.ID == id && du.VsID == vsID {
			return du
		}
	}
	return nil
}

func nameOr(k *benchCase, id string) string {
	if k == nil {
		return id
	}
	return k.Name
}

// ratios returns a case's req/s and p99 relative to the baseline (0 if none).
func (r *results) ratios(k *benchCase) (rps, p99 float64) {
	base := caseByID(r.cases, baselineID)
	if base == nil {
		return 0, 0
	}
	rps = paired(k, base, func(s sample) float64 { return s.RPS }).Median
	p99 = paired(k, base, func(s sample) float64 { return float64(s.P99) }).Median
	return rps, p99
}

// pairRatios summarises a figure of one case against another's, round by
// round.
type pairRatios struct {
	Median, Min, Max float64
}

// paired compares k with vs round by round: each round's ratio sets k's
// run beside vs's run of the same round, minutes apart at most, so a
// machine that slows down or speeds up over the run (as shared ones do)
// moves both sides alike. The median of those ratios is the comparison.
func paired(k, vs *benchCase, f func(sample) float64) pairRatios {
	x := pairedRatios(k, vs, f)
	if len(x) == 0 {
		return pairRatios{}
	}
	return pairRatios{Median: median(x), Min: slices.Min(x), Max: slices.Max(x)}
}

// pairedRatios returns f(k)/f(vs) for every round both ran.
func pairedRatios(k, vs *benchCase, f func(sample) float64) []float64 {
	var x []float64
	for i := range min(len(k.samples), len(vs.samples)) {
		if d := f(vs.samples[i]); d > 0 {
			x = append(x, f(k.samples[i])/d)
		}
	}
	return x
}

// printSummary writes the compact table to w.
func printSummary(w io.Writer, r *results) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "case\treq/s\tp50 ms\tp99 ms\treq/s vs base\tp99 vs base\tproxy CPU µs/req\tselection ns\tother CPU %%\t\n")
	for _, k := range r.cases {
		s := k.stats()
		x, y := r.ratios(k)
		fmt.Fprintf(tw, "%s\t%.0f\t%.2f\t%.2f\t%.3f\t%.3f\t%.1f\t%s\t%.0f\t\n", k.Name, s.RPS, ms(s.P50), ms(s.P99), x, y, us(s.ProxyCPU), selectionNS(s), s.Foreign)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, t := range r.targets() {
		fmt.Fprintf(w, "%-12s  %s: %s\n", t.Verdict, t.Goal, t.Measured)
	}
	fmt.Fprintf(w, "\nIP affinity, %d clients over %d upstreams: max deviation from a fair share %.2f %% (table; its slots %.2f %%), %.2f %% (Caddy rendezvous)\n",
		r.ip.Clients, r.ip.Upstreams, maxDeviation(r.ip.Table, r.ip.Clients), maxDeviation(r.ip.Slots, sum(r.ip.Slots)), maxDeviation(r.ip.Rendezvous, r.ip.Clients))
	if len(r.ip.Disruption) > 0 {
		d := r.ip.Disruption[len(r.ip.Disruption)-1]
		fmt.Fprintf(w, "IP affinity, one of %d upstreams removed: %.2f %% of clients moved (ideal %.2f %%, Caddy rendezvous %.2f %%)\n", d.N, d.Table, d.Ideal, d.Rendezvous)
	}
	m := r.mem
	fmt.Fprintf(w, "Session table of max 1M after 1M Puts: %.1f MiB IPv4 (%d held), %.1f MiB IPv6 (%d held)\n",
		float64(m.IPv4)/(1<<20), m.HeldIPv4, float64(m.IPv6)/(1<<20), m.HeldIPv6)
}

// maxDeviation is the largest departure of a count from the fair share, in
// percent of the fair share.
func maxDeviation(counts []int, total int) float64 {
	if len(counts) == 0 {
		return 0
	}
	fair := float64(total) / float64(len(counts))
	d := 0.0
	for _, c := range counts {
		d = max(d, math.Abs(float64(c)-fair)/fair*100)
	}
	return d
}

// writeReport writes results.md, the plots and the raw samples into dir.
func writeReport(dir string, r *results) error {
	if err := plotThroughput(filepath.Join(dir, "throughput.png"), r); err != nil {
		return fmt.Errorf("throughput plot: %v", err)
	}
	if err := plotIP(filepath.Join(dir, "ip-affinity.png"), r.ip); err != nil {
		return fmt.Errorf("IP affinity plot: %v", err)
	}
	if err := writeRaw(filepath.Join(dir, "results", "raw", "bench.json"), r); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.md"), []byte(markdown(r)), 0o644)
}

// writeRaw keeps every round's samples (git-ignored) for a closer look.
func writeRaw(path string, r *results) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	type rawCase struct {
		ID, Name string
		Samples  []sample
	}
	raw := struct {
		Started time.Time
		Env     env
		Cases   []rawCase
		IP      ipFigures
		Memory  memFigures
		Duels   []*duel
		Sides   []*sideBySide
	}{Started: r.started, Env: r.env, IP: r.ip, Memory: r.mem, Duels: r.duels, Sides: r.sides}
	for _, k := range r.cases {
		raw.Cases = append(raw.Cases, rawCase{k.ID, k.Name, k.samples})
	}
	b, err := json.MarshalIndent(raw, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func markdown(r *results) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	c := r.cfg
	p("# Benchmark results\n\n")
	p("Generated by `make bench` (bench/cmd/bench); do not edit by hand, run it again.\n\n")
	p("- Date: %s (load test: %s)\n", r.started.Format("2006-01-02 15:04 MST"), r.finished.Sub(r.started).Round(time.Second))
	p("- Machine: %d CPUs, %s; load average %s before, %s after the load test\n", r.env.CPUs, r.env.CPU, r.env.LoadBefore, r.env.LoadAfter)
	p("- Caddy: %s (%s, with the plugin at commit %s)\n", r.env.Caddy, filepath.Base(c.caddy), r.env.Commit)
	p("- HAProxy: %s\n", r.env.HAProxy)
	p("- wrk: %s\n", r.env.Wrk)
	p("- Go (backends, analysis): %s\n", r.env.Go)
	p("- Command (in bench/): `%s`\n\n", r.env.Command)

	p("## Method\n\n")
	p("Everything runs on loopback on the same machine: %d in-process Go backends (each answers with its name; "+
		"under `/app` it also sets `name=<backend>xxxx`, which only the rewrite case requests), one Caddy with a site per Caddy case%s, "+
		"and one HAProxy with a frontend per HAProxy case. Every case proxies to the same backends and differs only in its policy. "+
		"wrk runs with %d thread and %d connections; each case runs %d s per round, the cases interleaved (each round starting one case later, every other round in reverse order, so that no case always follows the same one), "+
		"%d rounds, after a %v warm-up per case; the tables give each case's median over the rounds. "+
		"Ratios are paired by round: each is the median over the rounds of the case's figure divided by the other case's in the same round "+
		"(to the baseline, Caddy `round_robin`, unless the target names another case), so that a machine that drifts during the run moves both sides alike; "+
		"the targets give each such ratio with a 95 %% confidence interval.\n\n",
		c.backends, timerNote(c), c.threads, c.connections, int(c.duration/time.Second), c.rounds, c.warmup)
	p("Cookie cases measure the steady state: the wrk script (bench/cmd/bench/sticky.lua, the same for every case) keeps the first %d cookies "+
		"it is given as %d simulated clients and then sends every request with one of them in turn. Before measuring, each case is pre-checked with "+
		"Go's HTTP client: cookie cases must set their cookie and keep a client on one backend while new clients spread; rewrite mode must hand the "+
		"backend its own cookie back; HAProxy's `indirect` must hide its cookie from the backend; IP cases must keep each of 12 client addresses (in `X-Forwarded-For`, as wrk sends them) "+
		"on one backend, over more than one backend, and Caddy's on the backend their hash predicts.\n\n"+
		"Every request names its client in `X-Forwarded-For`, which Caddy (`trusted_proxies static 127.0.0.1/32`, for every Caddy case) and HAProxy "+
		"(`http-request set-src hdr(x-forwarded-for)` in the balance source case) trust from loopback: wrk's requests take %d client addresses in turn "+
		"(each simulated cookie client keeps one), so the IP cases see many clients spread over the backends, as in production, not the one address wrk connects from. "+
		"Every Caddy case pays for reading the header; of the HAProxy cases only balance source does.\n\n"+
		"All of this shares %d CPUs: wrk, Caddy or HAProxy, and the backends. The load-balancing decision is a small part of a proxied "+
		"request's cost (see a CPU profile with `-pprof`), so differences of a few percent between the Caddy cases are close to the noise; "+
		"*proxy CPU per request* is the CPU time (user and system) of the Caddy or HAProxy process divided by the requests it served, "+
		"median over the rounds: a cost that contention on the machine disturbs less than req/s. "+
		"*other CPU* is the median share of the machine (all CPUs) that processes other than the benchmark's used during the case's runs: "+
		"when it is high, the machine was busy and that case's figures are less trustworthy. %s"+
		"The raw samples of every round are in `docs/results/raw/bench.json` (not committed).\n\n",
		c.connections, c.connections, c.addresses, r.env.CPUs, maxOtherNote(c))

	p("## Throughput and latency\n\n")
	p("| case | configuration | req/s | p50 ms | p99 ms | req/s vs baseline | p99 vs baseline | req/s range over rounds | proxy CPU per request | selection inside Caddy | other CPU |\n")
	p("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|\n")
	for _, k := range r.cases {
		s := k.stats()
		x, y := r.ratios(k)
		cfg := strings.ReplaceAll(strings.Join(strings.Fields(strings.ReplaceAll(k.Policy, "\n", " ; ")), " "), "{ ;", "{")
		cfg = strings.ReplaceAll(strings.ReplaceAll(cfg, "; }", "}"), secret, "<secret>")
		if k.Kind == kindRewrite || k.Kind == kindHeader {
			cfg = "affinity ; " + cfg
		}
		p("| %s | `%s` | %.0f | %.2f | %.2f | %.3f | %.3f | %.0f-%.0f | %.1f µs | %s | %.0f %% |\n", k.Name, cfg, s.RPS, ms(s.P50), ms(s.P99), x, y, s.MinRPS, s.MaxRPS, us(s.ProxyCPU), selectionNS(s), s.Foreign)
	}
	p("\n![Throughput and p99 latency per case](throughput.png)\n\n")
	if bad := r.wrkErrors(); len(bad) > 0 {
		p("**wrk saw errors:** %s.\n\n", strings.Join(bad, "; "))
	}
	for _, k := range r.cases {
		if k.Kind == kindInsert {
			if s := k.stats(); s.LateFraction > 0.01 {
				p("**%s:** %.1f %% of responses still set the cookie once every simulated client had one: its cookie is not being honoured.\n\n", k.Name, 100*s.LateFraction)
			}
		}
	}

	p("## Targets\n\n")
	p("Each ratio is the median of the per-round ratios (paired by round, as in the first table) with a distribution-free 95 %% confidence interval of that median " +
		"(order statistics of the per-round ratios; it assumes only that rounds are independent). " +
		"**PASS** or **FAIL** when the whole interval meets or misses the goal; **not resolved** when the interval straddles it, with where the median falls: " +
		"this run cannot tell which side of the goal the case is on.\n\n")
	p("| target | measured | verdict |\n|---|---|---|\n")
	for _, t := range r.targets() {
		p("| %s | %s | **%s** |\n", t.Goal, t.Measured, t.Verdict)
	}
	p("\nThe machine is shared and small; a ratio within a few percent of its target can go either way between runs in turn. " +
		"The req/s range column shows the spread between rounds.\n\n")

	if len(r.sides) > 0 {
		p("## Side by side\n\n")
		p("Run one after the other, adjacent runs of one case differ by 10 to 30 %% on this shared machine, more than two policies differ, and a slow spell can fall on "+
			"several runs of one case. So each pair a req/s target compares also ran side by side: each case in a Caddy process of its own (the same binary and config as above, "+
			"one site each), both loaded by their own wrk at the same time, %d rounds of %d s, the one started first taking turns. The two processes share the CPUs by the kernel's "+
			"fair scheduling, so the cheaper configuration serves more requests in its share; both meet the same spells of the machine. Each round gives the ratio of the two req/s "+
			"and of the two CPU times per request (the other's over the case's: above 1 is cheaper); the table gives their medians with 95 %% intervals.\n\n",
			c.sideRounds, int(c.duration/time.Second))
		p("| pair | req/s, median of rounds | req/s ratio | CPU per request, median | CPU ratio (above 1: cheaper) | rounds |\n|---|---:|---:|---:|---:|---:|\n")
		for _, sb := range r.sides {
			k, vs := caseByID(r.cases, sb.ID), caseByID(r.cases, sb.VsID)
			var ra, rb []float64
			var ca, cb []time.Duration
			for _, x := range sb.Rounds {
				ra, rb, ca, cb = append(ra, x.RPS), append(rb, x.VsRPS), append(ca, x.CPU), append(cb, x.VsCPU)
			}
			p("| %s vs %s | %.0f vs %.0f | %s | %.1f vs %.1f µs | %s | %d |\n", k.Name, vs.Name, median(ra), median(rb),
				ratioInterval(sb.rpsRatios()), us(median(ca)), us(median(cb)), ratioInterval(sb.cpuRatios()), len(sb.Rounds))
		}
		p("\n")
	}

	if len(r.duels) > 0 {
		p("## Selection cost inside Caddy\n\n")
		p("Caddy runs every Caddy case's policy inside `select_timer` (bench/selecttimer, built into make bench's Caddy only): it times each call of the policy's `Select` " +
			"in the loaded server and keeps a histogram. The column *selection inside Caddy* above is the median over the rounds of each run's mean, leaving out the few calls " +
			"that took over 50 µs, nearly all because the thread was descheduled midway (their share, and the ratio with them, are in the duel table); about one clock read (some 25 ns) falls inside every timed call alike. " +
			"This is where the Caddy cases differ: everything else a request costs is the same code. A selection takes 0.2 to 3 %% of a proxied request's time here, " +
			"so whole-request req/s cannot tell two policies apart by less than the machine's round-to-round noise.\n\n")
		p("Run one after the other, two cases meet different spells of the shared machine. So each pair below also ran as a *duel*: both cases at once, each with its own wrk, "+
			"%d rounds of %d s, the case started first taking turns, the selections counted only while both run (from 0.5 s after the start to 0.5 s before the end); "+
			"their requests interleave within microseconds in one Caddy, on the same CPUs and caches. Each round gives the ratio of the two mean selection times; "+
			"the table gives the median ratio with its 95 %% interval (as for the targets). Their req/s are not compared: closed-loop clients of one process get about equal turns by construction.\n\n",
			c.duelRounds, int(c.duelDuration/time.Second))
		p("| duel | selection time, median of rounds | ratio | over 50 µs | ratio with those | rounds |\n|---|---:|---:|---:|---:|---:|\n")
		for _, du := range r.duels {
			k, vs := caseByID(r.cases, du.ID), caseByID(r.cases, du.VsID)
			a, b := du.medians()
			sa, sb := du.slow()
			p("| %s vs %s | %.0f vs %.0f ns | %s | %.2f vs %.2f %% | %s | %d |\n", k.Name, vs.Name, float64(a), float64(b),
				ratioInterval(du.ratios()), 100*sa, 100*sb, ratioInterval(du.untrimmed()), len(du.Rounds))
		}
		p("\n")
	}

	p("## IP affinity: distribution and disruption\n\n")
	p("Computed in process with the plugin's `affinity` package (`affinity.NewTable`, `MaskClient(ip, 32, 64).Hash()`) over %d "+
		"random IPv4 clients (fixed seed), against Caddy's `client_ip_hash` (rendezvous hashing: the highest xxhash64 of dial address + IP) "+
		"and plain modulo hashing, in %v.\n\n", r.ip.Clients, r.ip.Took.Round(time.Millisecond))
	p("![IP affinity: distribution over 10 upstreams, and clients moved when one of N upstreams is removed](ip-affinity.png)\n\n")
	fair := float64(r.ip.Clients) / float64(r.ip.Upstreams)
	fairSlots := float64(sum(r.ip.Slots)) / float64(r.ip.Upstreams)
	p("Clients per upstream, %d upstreams (fair share %.0f clients, %.1f of the table's %d slots). "+
		"The slot share is what the table converges to with many clients; rendezvous hashing converges to exactly fair.\n\n"+
		"| upstream | ip_affinity table | deviation | its slots | deviation | Caddy rendezvous | deviation |\n|---|---:|---:|---:|---:|---:|---:|\n",
		r.ip.Upstreams, fair, fairSlots, sum(r.ip.Slots))
	for i := range r.ip.Table {
		p("| %d | %d | %+.2f %% | %d | %+.2f %% | %d | %+.2f %% |\n", i+1, r.ip.Table[i], dev(r.ip.Table[i], fair),
			r.ip.Slots[i], dev(r.ip.Slots[i], fairSlots), r.ip.Rendezvous[i], dev(r.ip.Rendezvous[i], fair))
	}
	p("| **max abs. deviation** | | **%.2f %%** | | **%.2f %%** | | **%.2f %%** |\n\n", maxDeviation(r.ip.Table, r.ip.Clients),
		maxDeviation(r.ip.Slots, sum(r.ip.Slots)), maxDeviation(r.ip.Rendezvous, r.ip.Clients))
	p("Clients moved when one upstream of N is removed, in %% of all clients, averaged over up to %d removals (evenly spaced). "+
		"*Excess* is the moved clients that were not on the removed upstream; ideal consistent hashing moves exactly the removed upstream's share (1/N) and no others.\n\n", maxRemovals)
	p("| N | removals | ideal 1/N | ip_affinity table | of which excess | Caddy rendezvous | of which excess | modulo |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, d := range r.ip.Disruption {
		p("| %d | %d | %.2f %% | %.2f %% | %.3f %% | %.2f %% | %.3f %% | %.1f %% |\n", d.N, d.Removals, d.Ideal, d.Table, d.TableExcess, d.Rendezvous, d.RendezvousExcess, d.Modulo)
	}
	p("\nThe table looks a client up in O(1) (one slot of %d); rendezvous hashing computes a hash per upstream per request (O(N)).\n\n", 65536)

	m := r.mem
	p("## Session table memory\n\n")
	p("`affinity.NewSessionTable(1_000_000, time.Hour)` after %d Puts of distinct clients, live heap measured after a GC (`runtime.ReadMemStats`):\n\n", m.Entries)
	p("| keys | entries held | heap | per entry held |\n|---|---:|---:|---:|\n")
	p("| IPv4 /32 | %d | %.1f MiB | %.1f B |\n", m.HeldIPv4, float64(m.IPv4)/(1<<20), float64(m.IPv4)/float64(max(m.HeldIPv4, 1)))
	p("| IPv6 /64 | %d | %.1f MiB | %.1f B |\n\n", m.HeldIPv6, float64(m.IPv6)/(1<<20), float64(m.IPv6)/float64(max(m.HeldIPv6, 1)))
	if m.HeldIPv4 < m.Entries || m.HeldIPv6 < m.Entries {
		p("The table splits its maximum evenly over up to 32 shards by key hash; a shard that receives more than its share evicts its least recently used entries, so a table of maximum 1M holds slightly fewer than 1M random keys.\n\n")
	}
	p("Target: at most 64 MiB for 1M entries. The package budgets `SessionEntryBytes` = %d B per entry, so `max_sessions 64MiB` allows %d entries. "+
		"Filling took %v per Put (one goroutine). For comparison, HAProxy's stick table needs about 50 B per IPv4 entry.\n",
		m.SessionEntryB, m.EntriesInLimit, m.PutIPv4)
	return b.String()
}

// timerNote says, in the method, that the Caddy cases ran timed.
func timerNote(c config) string {
	if !c.timer {
		return ""
	}
	return " (make bench's Caddy build: every Caddy case's policy runs inside `select_timer`, see *Selection cost inside Caddy*)"
}

// selectionNS formats a case's selection time inside Caddy for the tables.
func selectionNS(s stats) string {
	if s.Select == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f ns", float64(s.Select))
}

func sum(v []int) int {
	t := 0
	for _, x := range v {
		t += x
	}
	return t
}

func dev(c int, fair float64) float64 { return (float64(c) - fair) / fair * 100 }

// maxOtherNote describes the quiet-machine policy of measure for the page.
func maxOtherNote(c config) string {
	if c.maxOther <= 0 {
		return ""
	}
	return fmt.Sprintf("Each run waited up to %v for other processes to use at most %.0f %% of the machine, and a run during which they used more "+
		"was repeated up to %d times, keeping the quietest attempt (-max-other, -retries, -quiet-wait). ", c.quietWait, c.maxOther, c.retries)
}

// medianInterval returns the median of x and a distribution-free
// confidence interval for it: the k-th smallest and k-th largest values,
// with k the largest for which the binomial tails leave a coverage of at
// least level (0.95, say), and that coverage. It assumes nothing about how
// the rounds' noise is distributed, only that rounds are independent. With
// too few values for the level, the interval is the whole range and its
// coverage is less than level (1 - 2^(1-n)).
func medianInterval(x []float64, level float64) (med, lo, hi, cover float64) {
	if len(x) == 0 {
		return 0, 0, 0, 0
	}
	s := slices.Clone(x)
	slices.Sort(s)
	n := len(s)
	med = median(s)
	// [x(j), x(n+1-j)] misses the median with probability 2·P(B(n, 1/2) < j).
	coverage := func(j int) float64 { return 1 - 2*binomCDF(n, j-1) }
	k := 1
	for j := 2; j <= n/2 && coverage(j) >= level; j++ {
		k = j
	}
	return med, s[k-1], s[n-k], coverage(k)
}

// binomCDF is P(Binomial(n, 1/2) <= j).
func binomCDF(n, j int) float64 {
	p := 0.0
	lg, _ := math.Lgamma(float64(n + 1))
	for i := 0; i <= j; i++ {
		li, _ := math.Lgamma(float64(i + 1))
		lni, _ := math.Lgamma(float64(n - i + 1))
		p += math.Exp(lg - li - lni - float64(n)*math.Ln2)
	}
	return p
}
