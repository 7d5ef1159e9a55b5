package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// A side-by-side run compares two Caddy cases end to end with the shared
// machine's drift cancelled: each case gets a Caddy process of its own,
// and both take load from their own wrk at the same time. Run one after
// the other, adjacent runs of one case differ by 10 to 30 % here, more
// than the policies differ. Two processes share the CPUs by the kernel's
// fair scheduling, so the cheaper configuration serves more requests in
// its share: its req/s ratio and its CPU per request are what the policy
// costs. (Unlike two sites in one Go process, whose closed-loop clients
// get about equal turns whatever each request costs.)
type sideBySide struct {
	ID, VsID string
	Rounds   []sideRound
}

// sideRound is one round: each process's req/s and CPU per request.
type sideRound struct {
	RPS, VsRPS float64
	CPU, VsCPU time.Duration // CPU per request
}

// sidePairs are the comparisons the req/s targets make.
var sidePairs = [][2]string{{"ip_affinity", "client_ip_hash"}, {"sticky_insert", "cookie"}, {"ip_affinity", baselineID}, {"sticky_insert", baselineID}}

// runSideBySide runs every pair whose cases are selected.
func runSideBySide(ctx context.Context, c config, w wrkRunner, work string, bs *backends, cases []*benchCase) ([]*sideBySide, error) {
	var out []*sideBySide
	for _, pr := range sidePairs {
		k0, vs0 := caseByID(cases, pr[0]), caseByID(cases, pr[1])
		if k0 == nil || vs0 == nil {
			continue
		}
		sb, err := sideBySidePair(ctx, c, w, work, bs, k0, vs0)
		if err != nil {
			return nil, fmt.Errorf("side by side, %s vs %s: %v", k0.Name, vs0.Name, err)
		}
		out = append(out, sb)
	}
	return out, nil
}

func sideBySidePair(ctx context.Context, c config, w wrkRunner, work string, bs *backends, k0, vs0 *benchCase) (*sideBySide, error) {
	// Copies: startCaddy gives each case the address of its own process.
	k, vs := *k0, *vs0
	k.samples, vs.samples = nil, nil
	var procs []*proc
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	for _, kc := range []*benchCase{&k, &vs} {
		dir := filepath.Join(work, "side-"+kc.ID)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		p, _, err := startCaddy(ctx, c.caddy, dir, []*benchCase{kc}, bs, false)
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
		kc.pid = p.cmd.Process.Pid
	}
	for _, kc := range []*benchCase{&k, &vs} {
		if err := precheck(kc, bs); err != nil {
			return nil, fmt.Errorf("pre-check of %s in its own Caddy: %v", kc.Name, err)
		}
	}
	sb := &sideBySide{ID: k.ID, VsID: vs.ID}
	for r := range c.sideRounds {
		round, err := sideOnce(ctx, w, &k, &vs, c.duration, r%2 == 0)
		if err != nil {
			return nil, fmt.Errorf("round %d: %v", r+1, err)
		}
		sb.Rounds = append(sb.Rounds, round)
		logf("side by side %d/%d %s %6.0f req/s %5.1f µs/req vs %s %6.0f req/s %5.1f µs/req: %.3fx", r+1, c.sideRounds,
			k.Name, round.RPS, us(round.CPU), vs.Name, round.VsRPS, us(round.VsCPU), round.RPS/round.VsRPS)
	}
	return sb, nil
}

// sideOnce runs both wrk at once, the one started first taking turns by
// round.
func sideOnce(ctx context.Context, w wrkRunner, k, vs *benchCase, d time.Duration, first bool) (sideRound, error) {
	type result struct {
		s   sample
		err error
	}
	ticks := func(kc *benchCase) int64 { return int64(procTicks(strconv.Itoa(kc.pid))) }
	t0k, t0v := ticks(k), ticks(vs)
	res := map[*benchCase]chan result{k: make(chan result, 1), vs: make(chan result, 1)}
	order := []*benchCase{k, vs}
	if !first {
		order = []*benchCase{vs, k}
	}
	for _, kc := range order {
		go func() {
			s, err := w.run(ctx, kc, d)
			res[kc] <- result{s, err}
		}()
	}
	a, b := <-res[k], <-res[vs]
	t1k, t1v := ticks(k), ticks(vs)
	for _, x := range []result{a, b} {
		if x.err != nil {
			return sideRound{}, x.err
		}
		if x.s.Errors+x.s.Status > 0 || x.s.Requests == 0 {
			return sideRound{}, fmt.Errorf("wrk saw errors or bad statuses, or no requests")
		}
	}
	perReq := func(t0, t1, n int64) time.Duration { return time.Duration(t1-t0) * clockTick / time.Duration(n) }
	return sideRound{RPS: a.s.RPS, VsRPS: b.s.RPS, CPU: perReq(t0k, t1k, a.s.Requests), VsCPU: perReq(t0v, t1v, b.s.Requests)}, nil
}

// rpsRatios and cpuRatios return the per-round ratios, the case over the
// other (for CPU, the other over the case, so that above 1 is cheaper).
func (sb *sideBySide) rpsRatios() []float64 {
	var x []float64
	for _, r := range sb.Rounds {
		x = append(x, r.RPS/r.VsRPS)
	}
	return x
}

func (sb *sideBySide) cpuRatios() []float64 {
	var x []float64
	for _, r := range sb.Rounds {
		if r.CPU > 0 {
			x = append(x, float64(r.VsCPU)/float64(r.CPU))
		}
	}
	return x
}
