package main

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseWrk(t *testing.T) {
	out := "Running 2s test @ http://127.0.0.1:1/\n" +
		"BENCH requests=20000 duration_us=2000000 p50_us=1500 p90_us=2500 p99_us=7000 max_us=9000 " +
		"connect=0 read=1 write=0 status=2 timeout=3 responses=20000 late=5\n"
	s, err := parseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	if s.RPS != 10000 || s.P50 != 1500*time.Microsecond || s.P99 != 7*time.Millisecond {
		t.Errorf("got %+v", s)
	}
	if s.Errors != 4 || s.Status != 2 || s.Late != 5 {
		t.Errorf("errors %d, status %d, late %d", s.Errors, s.Status, s.Late)
	}
	if _, err := parseWrk("no summary"); err == nil {
		t.Error("parsed output without a BENCH line")
	}
	if _, err := parseWrk("BENCH requests=1 duration_us=0 p50_us=1 p99_us=1"); err == nil {
		t.Error("accepted a zero duration")
	}
}

func TestMedian(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median of 3 = %v", m)
	}
	if m := median([]time.Duration{4, 1, 3, 2}); m != 2 {
		t.Errorf("median of 4 = %v", m) // (2+3)/2 in integer nanoseconds
	}
}

func TestSelectCases(t *testing.T) {
	cs, err := selectCases("ip_affinity")
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 || cs[0].ID != baselineID || cs[1].ID != "ip_affinity" {
		t.Errorf("got %v", cs)
	}
	if _, err := selectCases("nope"); err == nil {
		t.Error("accepted an unknown case")
	}
}

func TestCaddyfile(t *testing.T) {
	cs := allCases()
	for i, k := range cs {
		k.addr = "127.0.0.1:" + string(rune('0'+i))
	}
	cfg := caddyfile("127.0.0.1:9", "/tmp/x", cs, []string{"127.0.0.1:1", "127.0.0.1:2"}, false)
	for _, want := range []string{"admin 127.0.0.1:9", "persist_config off", "level ERROR", "\taffinity\n\treverse_proxy", "mode rewrite", "lb_policy ip_affinity"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("Caddyfile lacks %q:\n%s", want, cfg)
		}
	}
	if strings.Count(cfg, "\taffinity\n") != 4 {
		t.Error("the affinity directive belongs to the rewrite sites (cookie and header) and the two learn sites only")
	}
	if !strings.Contains(cfg, "store redis {env."+redisEnv+"}") {
		t.Errorf("the learn case with Redis names no store:\n%s", cfg)
	}
	if strings.Contains(cfg, "select_timer") {
		t.Error("select_timer without the timer")
	}
	cfg = caddyfile("127.0.0.1:9", "/tmp/x", cs, []string{"127.0.0.1:1", "127.0.0.1:2"}, true)
	for _, want := range []string{"lb_policy select_timer ip_affinity {\n\t\t\tpolicy ip_affinity\n\t\t}", "lb_policy select_timer sticky_rewrite {\n\t\t\tpolicy sticky_cookie name {\n\t\t\t\tmode rewrite"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("timed Caddyfile lacks %q:\n%s", want, cfg)
		}
	}
}

func TestRemovals(t *testing.T) {
	if r := removals(3); len(r) != 3 || r[2] != 2 {
		t.Errorf("removals(3) = %v", r)
	}
	r := removals(100)
	if len(r) != maxRemovals || r[0] != 0 || r[len(r)-1] >= 100 {
		t.Errorf("removals(100) = %v", r)
	}
}

func TestPaired(t *testing.T) {
	// The machine halves its speed after round 1: both sides move alike,
	// so the paired ratio stays 0.9 where the ratio of medians would not.
	k := &benchCase{samples: []sample{{RPS: 900}, {RPS: 450}, {RPS: 460}}}
	vs := &benchCase{samples: []sample{{RPS: 1000}, {RPS: 500}, {RPS: 500}, {RPS: 7}}}
	p := paired(k, vs, func(s sample) float64 { return s.RPS })
	if p.Median != 0.9 || p.Min != 0.9 || p.Max != 0.92 {
		t.Errorf("got %+v", p)
	}
	if p := paired(k, &benchCase{}, func(s sample) float64 { return s.RPS }); p != (pairRatios{}) {
		t.Errorf("no rounds: got %+v", p)
	}
}

// Over two rounds, every case runs right after each of its neighbours once
// and right before it once.
func TestRoundOrder(t *testing.T) {
	cs := allCases()
	after := map[[2]string]int{}
	for r := range 4 {
		order := roundOrder(cs, r)
		if len(order) != len(cs) {
			t.Fatalf("round %d: %d cases", r, len(order))
		}
		seen := map[string]bool{}
		for i, k := range order {
			if seen[k.ID] {
				t.Fatalf("round %d runs %s twice", r, k.ID)
			}
			seen[k.ID] = true
			if i > 0 {
				after[[2]string{order[i-1].ID, k.ID}]++
			}
		}
	}
	a, b := "client_ip_hash", "ip_affinity"
	if after[[2]string{a, b}] == 0 || after[[2]string{a, b}] != after[[2]string{b, a}] {
		t.Fatalf("%s then %s %d times, the other way %d times", a, b, after[[2]string{a, b}], after[[2]string{b, a}])
	}
}

func TestMedianInterval(t *testing.T) {
	seq := func(n int) []float64 {
		x := make([]float64, n)
		for i := range x {
			x[i] = float64(n - i) // descending: the function must sort
		}
		return x
	}
	for _, tc := range []struct {
		n                  int
		med, lo, hi, cover float64
	}{
		{1, 1, 1, 1, 0},
		{5, 3, 1, 5, 0.9375},       // too few for 95 %: the whole range, 1 - 2^-4
		{9, 5, 2, 8, 0.9609},       // P(B(9,.5) <= 1) = 10/512
		{15, 8, 4, 12, 0.9648},     // P(B(15,.5) <= 3) = 576/32768
		{30, 15.5, 10, 21, 0.9572}, // P(B(30,.5) <= 9) = 0.0214
	} {
		med, lo, hi, cover := medianInterval(seq(tc.n), 0.95)
		if med != tc.med || lo != tc.lo || hi != tc.hi || math.Abs(cover-tc.cover) > 0.001 {
			t.Errorf("n=%d: median %v interval %v-%v (%.4f), want %v %v-%v (%.4f)", tc.n, med, lo, hi, cover, tc.med, tc.lo, tc.hi, tc.cover)
		}
	}
	if m, l, h, c := medianInterval(nil, 0.95); m != 0 || l != 0 || h != 0 || c != 0 {
		t.Errorf("empty: %v %v %v %v", m, l, h, c)
	}
}

func TestJudge(t *testing.T) {
	for _, tc := range []struct {
		med, lo, hi, goal float64
		atLeast           bool
		want              verdict
	}{
		{1.02, 1.00, 1.05, 1.0, true, verdictPass},
		{1.01, 0.98, 1.03, 1.0, true, verdictOpenMeets},
		{0.99, 0.97, 1.02, 1.0, true, verdictOpenMisses},
		{0.95, 0.93, 0.98, 1.0, true, verdictFail},
		{1.05, 1.00, 1.10, 1.10, false, verdictPass},
		{1.08, 1.05, 1.20, 1.10, false, verdictOpenMeets},
		{1.12, 1.05, 1.20, 1.10, false, verdictOpenMisses},
		{1.20, 1.15, 1.30, 1.10, false, verdictFail},
	} {
		if got := judge(tc.med, tc.lo, tc.hi, tc.goal, tc.atLeast); got != tc.want {
			t.Errorf("judge(%v, %v-%v, goal %v, atLeast %v) = %v, want %v", tc.med, tc.lo, tc.hi, tc.goal, tc.atLeast, got, tc.want)
		}
	}
}

func TestSelections(t *testing.T) {
	before := timerSums{"x": {Histogram: []uint64{1, 0, 5}}}
	h := make([]uint64, timerBuckets)
	h[0], h[2], h[3], h[timerBuckets-1] = 1, 5+2, 1, 1 // the run: 2 at 25 ns, 1 at 35, 1 slow
	after := timerSums{"x": {Histogram: h}}
	st, err := selections(before, after, "x")
	if err != nil {
		t.Fatal(err)
	}
	if st.Mean != 28*time.Nanosecond || st.P50 != 25*time.Nanosecond || st.Slow != 0.25 {
		t.Errorf("got %+v, want mean 28 ns (of 25, 25, 35), p50 25 ns, slow 0.25", st)
	}
	if _, err := selections(after, after, "x"); err == nil {
		t.Error("no selections: want an error")
	}
}

// Fewer rounds than a 95 % interval needs settle nothing, however they
// fall.
func TestDescribeNeedsRounds(t *testing.T) {
	if _, v := describe([]float64{1.2, 1.3}, 1.0, true); v != verdictOpenMeets {
		t.Errorf("2 rounds above the goal: %v, want not resolved", v)
	}
	if _, v := describe([]float64{0.8, 0.9}, 1.0, true); v != verdictOpenMisses {
		t.Errorf("2 rounds below the goal: %v, want not resolved", v)
	}
	x := []float64{1.2, 1.3, 1.25, 1.22, 1.28, 1.21, 1.3, 1.24}
	if _, v := describe(x, 1.0, true); v != verdictPass {
		t.Errorf("8 rounds above the goal: %v, want PASS", v)
	}
}

// With 8 rounds only the whole range reaches 95 % (99.2 %; the next
// order statistics give 93 %).
func TestRatioInterval(t *testing.T) {
	x := []float64{0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97}
	if got, want := ratioInterval(x), "0.935x (95 % interval 0.900-0.970)"; got != want {
		t.Errorf("ratioInterval = %q, want %q", got, want)
	}
	if got, _ := describe(x, 1.0, false); got != "0.935x (95 % interval 0.900-0.970, 8 rounds)" {
		t.Errorf("describe = %q", got)
	}
}
