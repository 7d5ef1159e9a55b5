package cookie

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// Hostile Cookie headers: shapes that made an earlier scan quadratic (every
// occurrence of the cookie's name scanned back to its pair's start and on to
// its end), padded to size bytes. The name is the insert-mode default.
var hostileShapes = []struct {
	name string
	make func(name string, size int) string
}{
	// One value that repeats the name: each occurrence was a candidate.
	{"name-in-value", func(name string, size int) string {
		return fill("x=", name, size)
	}},
	// The name after a space, again and again, with no '=' to end it.
	{"spaced-names", func(name string, size int) string {
		return fill("x=", " "+name, size)
	}},
	// The name, then a long run of blanks before '='.
	{"blank-run", func(name string, size int) string {
		return fill(name, " ", size-1) + "="
	}},
	// The cookie itself, over and over (each a pair to edit).
	{"repeated-cookie", func(name string, size int) string {
		return fill("", name+"=v;", size)
	}},
	// '=' after '=' after the name.
	{"equals-run", func(name string, size int) string {
		return fill(name, "=", size)
	}},
}

// ordinaryHeader is a Cookie header of about size bytes of ordinary pairs,
// with the cookie's name nowhere in it.
func ordinaryHeader(size int) string {
	var b strings.Builder
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "k%d=v%08d; ", i, i)
	}
	return b.String()[:size]
}

// fill is prefix followed by unit repeated up to size bytes.
func fill(prefix, unit string, size int) string {
	n := max(size-len(prefix), 0)/len(unit) + 1
	return (prefix + strings.Repeat(unit, n))[:size]
}

// minTime is the least time of rounds runs of fn, each run reps calls.
func minTime(rounds, reps int, fn func()) time.Duration {
	best := time.Duration(1<<63 - 1)
	for range rounds {
		start := time.Now()
		for range reps {
			fn()
		}
		best = min(best, time.Since(start))
	}
	return best
}

// TestHostileHeaderCostsWhatOrdinaryOneDoes checks that no hostile shape
// costs more than a small multiple of an ordinary header of the same size,
// in each mode that scans the Cookie header. It compares times as a ratio
// measured side by side rather than against a limit, and the bound leaves
// room for a loaded machine (a header of many pairs to edit costs a few
// times one of pairs to skip): at 64 KiB the quadratic scan cost hundreds
// of times the ordinary header. TestHostileCookieCostInCaddy holds the
// tighter bound, measured through a real Caddy.
func TestHostileHeaderCostsWhatOrdinaryOneDoes(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped with -short: a timing comparison of hostile and ordinary headers; run without -short")
	}
	const size = 64 << 10
	const bound = 50.0
	policies := []*StickyCookie{
		provision(t, &StickyCookie{FallbackRaw: fallback("first")}),
		provision(t, &StickyCookie{FallbackRaw: fallback("first"), ForwardCookie: true}),
		provision(t, &StickyCookie{Mode: ModeRewrite, Name: "affinity", FallbackRaw: fallback("first")}),
	}
	pool := testPool(3)
	ordinary := ordinaryHeader(size)
	for _, s := range policies {
		mode := s.Mode
		if s.ForwardCookie {
			mode += "+forward_cookie"
		}
		for _, shape := range hostileShapes {
			hostile := shape.make(s.Name, size)
			if len(hostile) != size || len(ordinary) != size {
				t.Fatalf("sizes %d and %d, want %d", len(hostile), len(ordinary), size)
			}
			sel := func(h string) func() {
				return func() {
					if s.Select(pool, newRequest(h), httptest.NewRecorder()) == nil {
						t.Fatal("no upstream")
					}
				}
			}
			// Warm up both, then time them interleaved.
			sel(hostile)()
			sel(ordinary)()
			var h, o time.Duration
			h, o = minTime(5, 20, sel(hostile)), minTime(5, 20, sel(ordinary))
			ratio := float64(h) / float64(o)
			t.Logf("%s mode, %s: hostile %v, ordinary %v per 20 requests: %.2fx", mode, shape.name, h, o, ratio)
			if ratio > bound {
				t.Errorf("%s mode: a %d-byte %s header costs %.1fx an ordinary one of the same size (bound %.0fx)", mode, size, shape.name, ratio, bound)
			}
		}
	}
}

// BenchmarkHostileHeader times a selection whose Cookie header is hostile
// against one whose header is ordinary pairs of the same size, in the same
// loop, and reports the ratio (hostile/ordinary). 1 MiB stands for a
// server whose max_header_size was raised.
func BenchmarkHostileHeader(b *testing.B) {
	pool := testPool(3)
	for _, mode := range []string{ModeInsert, ModeRewrite} {
		s := &StickyCookie{Mode: mode, FallbackRaw: fallback("first")}
		if mode == ModeRewrite {
			s.Name = "affinity"
		}
		provision(b, s)
		for _, size := range []int{16 << 10, 1 << 20} {
			ordinary := ordinaryHeader(size)
			for _, shape := range hostileShapes {
				hostile := shape.make(s.Name, size)
				b.Run(fmt.Sprintf("mode=%s/size=%dKiB/shape=%s", mode, size>>10, shape.name), func(b *testing.B) {
					w := httptest.NewRecorder()
					var th, to time.Duration
					for i := 0; i < b.N; i++ {
						rh, ro := newRequest(hostile), newRequest(ordinary)
						t0 := time.Now()
						s.Select(pool, rh, w)
						t1 := time.Now()
						s.Select(pool, ro, w)
						to += time.Since(t1)
						th += t1.Sub(t0)
					}
					b.ReportMetric(float64(th)/float64(to), "hostile/ordinary")
				})
			}
		}
	}
}
