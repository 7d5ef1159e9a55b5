package main

import (
	"context"
	"fmt"
	"time"
)

// A duel runs two Caddy cases at the same time, each with its own wrk, and
// compares how long their policies' selections take inside Caddy
// (select_timer). Run one after the other, two cases meet different spells
// of a shared machine, and adjacent runs differ by 10 to 30 %; run at once,
// their requests interleave within microseconds and meet the same caches,
// CPUs and neighbours, so their ratio is steady to a few percent. Their
// req/s are not compared: closed-loop clients of one process get about
// equal turns by construction.
type duel struct {
	ID, VsID string
	Rounds   []duelRound
}

// duelRound is one round of a duel: each side's selections in its window.
type duelRound struct {
	Case, Vs selectStats
}

// duelPairs are the duels make bench runs: each plugin policy against the
// policy its target names (Caddy's; sticky_cookie insert for sticky_header
// and learn mode; learn mode in memory for learn mode with Redis).
var duelPairs = [][2]string{{"ip_affinity", "client_ip_hash"}, {"sticky_insert", "cookie"}, {"sticky_header", "sticky_insert"},
	{"sticky_learn", "sticky_insert"}, {"sticky_learn_redis", "sticky_learn"}}

// runDuels runs every duel whose two cases are selected, rounds times for d.
func runDuels(ctx context.Context, c config, w wrkRunner, admin string, cases []*benchCase) ([]*duel, error) {
	var out []*duel
	for _, p := range duelPairs {
		k, vs := caseByID(cases, p[0]), caseByID(cases, p[1])
		if k == nil || vs == nil {
			continue
		}
		du := &duel{ID: k.ID, VsID: vs.ID}
		for r := range c.duelRounds {
			round, err := duelOnce(ctx, w, admin, k, vs, c.duelDuration, r%2 == 0)
			if err != nil {
				return nil, fmt.Errorf("duel %s vs %s, round %d: %v", k.Name, vs.Name, r+1, err)
			}
			du.Rounds = append(du.Rounds, round)
			logf("duel %d/%d %s %4.0f ns vs %s %4.0f ns: %.3fx", r+1, c.duelRounds, k.Name, float64(round.Case.Mean), vs.Name, float64(round.Vs.Mean), round.ratio())
		}
		out = append(out, du)
	}
	return out, nil
}

// duelOnce runs one round: both wrk at once, the one started first taking
// turns by round (first), and the selections timed only while both run,
// from duelMargin after the start to duelMargin before the end, so that
// neither case has the server to itself in the window.
func duelOnce(ctx context.Context, w wrkRunner, admin string, k, vs *benchCase, d time.Duration, first bool) (duelRound, error) {
	if d < 3*duelMargin {
		return duelRound{}, fmt.Errorf("duel rounds need at least %v", 3*duelMargin)
	}
	type result struct {
		s   sample
		err error
	}
	a, b := k, vs
	if !first {
		a, b = vs, k
	}
	done := make(chan result, 2)
	var got [2]result
	for _, c := range []*benchCase{a, b} {
		go func() {
			s, err := w.run(ctx, c, d)
			done <- result{s, err}
		}()
	}
	before, err := timerAfter(ctx, admin, duelMargin)
	var after timerSums
	if err == nil {
		after, err = timerAfter(ctx, admin, d-2*duelMargin)
	}
	got[0], got[1] = <-done, <-done
	for _, g := range got {
		if err == nil {
			err = g.err
		}
		if err == nil && g.s.Errors+g.s.Status > 0 {
			err = fmt.Errorf("wrk saw errors or bad statuses")
		}
	}
	if err != nil {
		return duelRound{}, err
	}
	var round duelRound
	if round.Case, err = selections(before, after, k.ID); err != nil {
		return duelRound{}, err
	}
	if round.Vs, err = selections(before, after, vs.ID); err != nil {
		return duelRound{}, err
	}
	return round, nil
}

// duelMargin is how long a duel round runs before and after the window in
// which its selections count.
const duelMargin = 500 * time.Millisecond

// timerAfter reads the timer once d has passed.
func timerAfter(ctx context.Context, admin string, d time.Duration) (timerSums, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(d):
	}
	return readTimer(admin)
}

func (r duelRound) ratio() float64 { return float64(r.Case.Mean) / float64(r.Vs.Mean) }

// ratios returns the per-round ratios of the case's mean selection time to
// the other's.
func (du *duel) ratios() []float64 {
	var x []float64
	for _, r := range du.Rounds {
		if r.Vs.Mean > 0 {
			x = append(x, r.ratio())
		}
	}
	return x
}

// untrimmed is ratios of the means of every selection, slow ones included.
func (du *duel) untrimmed() []float64 {
	var x []float64
	for _, r := range du.Rounds {
		if r.Vs.All > 0 {
			x = append(x, float64(r.Case.All)/float64(r.Vs.All))
		}
	}
	return x
}

// slow returns the median fraction of each side's selections over 50 µs.
func (du *duel) slow() (k, vs float64) {
	var a, b []float64
	for _, r := range du.Rounds {
		a, b = append(a, r.Case.Slow), append(b, r.Vs.Slow)
	}
	if len(a) == 0 {
		return 0, 0
	}
	return median(a), median(b)
}

// medians returns the median over the rounds of each side's mean selection
// time.
func (du *duel) medians() (k, vs time.Duration) {
	var a, b []time.Duration
	for _, r := range du.Rounds {
		a, b = append(a, r.Case.Mean), append(b, r.Vs.Mean)
	}
	if len(a) == 0 {
		return 0, 0
	}
	return median(a), median(b)
}
