package affinity

import (
	"math"
	"testing"

	"github.com/cespare/xxhash/v2"
)

func TestSessionsSeen(t *testing.T) {
	const now = 1_800_000_000
	for _, n := range []int{0, 1, 4, 100, 1000, 5000} {
		var c Counters
		for i := range n {
			h := xxhash.Sum64String(string(rune(i)) + "session")
			c.Saw(h, now)
			c.Saw(h, now) // a session's second request counts once
		}
		got := SessionsSeen(now, &c)
		if tol := math.Max(1, 0.05*float64(n)); math.Abs(float64(got-n)) > tol {
			t.Errorf("%d sessions: estimate %d", n, got)
		}
		if n > 0 && c.LastSession() != now {
			t.Errorf("last session %d, want %d", c.LastSession(), now)
		}
	}
	// One session seen by two policies is one; a minute later, none.
	var a, b Counters
	a.Saw(42, now)
	b.Saw(42, now)
	b.Saw(43, now+sightWindow)
	if got := SessionsSeen(now+sightWindow, &a, &b); got != 2 {
		t.Errorf("two sessions over two counters: %d", got)
	}
	if got := SessionsSeen(now+3*sightWindow, &a, &b); got != 0 {
		t.Errorf("90 s later: %d sessions seen, want 0", got)
	}
	// A window reused after two clears the old bits.
	a.Saw(7, now+2*sightWindow)
	if got := SessionsSeen(now+2*sightWindow, &a); got != 1 {
		t.Errorf("after the window turned over: %d, want 1", got)
	}
}
