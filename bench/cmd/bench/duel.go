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

// duelRound is one round of a duel.
type duelRound struct {
	Case, Vs selectStats
	// Requests each side served.
	Requests, VsRequests int64
}

// duelPairs are the duels make bench runs: each plugin policy against the
// Caddy policy its target names.
var duelPairs = [][2]string{{"ip_affinity", "client_ip_hash"}, {"sticky_insert", "cookie"}}

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
			round, err := duelOnce(ctx, w, admin, k, vs, c.duelDuration)
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

func duelOnce(ctx context.Context, w wrkRunner, admin string, k, vs *benchCase, d time.Duration) (duelRound, error) {
	before, err := readTimer(admin)
	if err != nil {
		return duelRound{}, err
	}
	type result struct {
		s   sample
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := w.run(ctx, vs, d)
		done <- result{s, err}
	}()
	s, err := w.run(ctx, k, d)
	other := <-done
	if err == nil {
		err = other.err
	}
	if err != nil {
		return duelRound{}, err
	}
	if s.Errors+s.Status+other.s.Errors+other.s.Status > 0 {
		return duelRound{}, fmt.Errorf("wrk saw errors or bad statuses")
	}
	after, err := readTimer(admin)
	if err != nil {
		return duelRound{}, err
	}
	round := duelRound{Requests: s.Requests, VsRequests: other.s.Requests}
	if round.Case, err = selections(before, after, k.ID); err != nil {
		return duelRound{}, err
	}
	if round.Vs, err = selections(before, after, vs.ID); err != nil {
		return duelRound{}, err
	}
	return round, nil
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
