package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"time"
)

// timerModule is the selection policy of bench/selecttimer, which Caddy
// builds for make bench have: it times the policy it wraps inside the
// loaded Caddy.
const timerModule = "http.reverse_proxy.selection_policies.select_timer"

// hasTimer reports whether the Caddy binary has the select_timer module.
func hasTimer(bin string) bool {
	out, err := exec.Command(bin, "list-modules").Output()
	return err == nil && strings.Contains(string(out), timerModule)
}

// timed wraps a case's policy lines ("lb_policy <name> ...") in the timer,
// labelled with the case's ID.
func timed(k *benchCase) string {
	inner := strings.TrimPrefix(k.Policy, "lb_policy ")
	return "lb_policy select_timer " + k.ID + " {\n\t\t\tpolicy " + strings.ReplaceAll(inner, "\n", "\n\t") + "\n\t\t}"
}

// Histogram layout of bench/selecttimer: 10 ns buckets, the last one
// (from 50 µs) holding every longer selection.
const (
	timerBucket  = 10 * time.Nanosecond
	timerBuckets = 5001
)

// timerSums is the admin endpoint's answer: per label, how many
// selections, how long they took in all, and their histogram.
type timerSums map[string]struct {
	Selections  uint64   `json:"selections"`
	Nanoseconds uint64   `json:"nanoseconds"`
	Histogram   []uint64 `json:"histogram"`
}

func readTimer(admin string) (timerSums, error) {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + admin + "/select-timer")
	if err != nil {
		return nil, err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /select-timer: %s", resp.Status)
	}
	var s timerSums
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// selectStats summarises the selections of one run.
type selectStats struct {
	// Mean is the mean time of the selections that took less than 50 µs:
	// longer ones were descheduled midway (the CPUs are shared with wrk
	// and the backends), and their wall time is not the policy's work.
	Mean time.Duration
	P50  time.Duration
	// Slow is the fraction of selections left out of Mean.
	Slow float64
	// All is the mean of every selection, the slow ones included.
	All time.Duration
}

// selections computes the stats of label's selections between two reads.
func selections(before, after timerSums, label string) (selectStats, error) {
	b, a := before[label].Histogram, after[label].Histogram
	h := make([]uint64, len(a))
	var n, kept, sum uint64
	for i := range a {
		h[i] = a[i]
		if i < len(b) {
			h[i] -= b[i]
		}
		n += h[i]
		if i < timerBuckets-1 {
			kept += h[i]
			// A bucket's selections count at its midpoint.
			sum += h[i] * uint64(2*i+1) * uint64(timerBucket) / 2
		}
	}
	if kept == 0 {
		return selectStats{}, fmt.Errorf("select_timer counted no selection of %s", label)
	}
	st := selectStats{Mean: time.Duration(sum / kept), Slow: float64(n-kept) / float64(n)}
	if dn := after[label].Selections - before[label].Selections; dn > 0 {
		st.All = time.Duration((after[label].Nanoseconds - before[label].Nanoseconds) / dn)
	}
	var c uint64
	for i := range h {
		if c += h[i]; 2*c >= n {
			st.P50 = time.Duration(2*i+1) * timerBucket / 2
			break
		}
	}
	return st, nil
}
