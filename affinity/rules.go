package affinity

// The rules every policy applies, written once: which upstreams a retry
// passes over, when a retry starts a new round of the pool, what a session
// whose upstream is unavailable does, and how draining upstreams are
// avoided. Policies describe their pool with functions of an index.

// NewRound reports whether a request's next attempt starts a new round of
// the pool: at least one of its n upstreams is available, and every
// available one already failed the request (tried). Until then each attempt
// passes over the upstreams that failed; a new round tries them again, so
// that a backend that restarts within lb_try_duration is reached, as with
// Caddy's own policies. tried may be nil (a first attempt).
func NewRound(n int, avail, tried func(i int) bool) bool {
	if tried == nil {
		return false
	}
	any := false
	for i := range n {
		if avail(i) {
			if !tried(i) {
				return false
			}
			any = true
		}
	}
	return any
}

// Outcome is what a request bound to a session's upstream does.
type Outcome uint8

const (
	// Keep: the request goes to the session's upstream.
	Keep Outcome = iota
	// Move: the session moves to another upstream (a rebind).
	Move
	// Refuse: no upstream (on_failure strict while its upstream is down).
	Refuse
	// Detour: this request goes to a replacement and the session stays
	// bound (on_failure temporary while its upstream is down).
	Detour
)

// Failure is what a session does while its upstream is unavailable.
type Failure uint8

const (
	// Rebind: the session moves (the default).
	Rebind Failure = iota
	// Strict: it waits for its upstream; no upstream meanwhile.
	Strict
	// Temporary: its requests go to a replacement meanwhile and return
	// when the upstream recovers, for backends that replicate sessions.
	Temporary
)

// OnBound decides for a request bound to an upstream: it keeps it while it
// is available and has not failed this request; otherwise the session
// moves (Rebind), waits for its upstream and is refused meanwhile (Strict:
// each retry tries it again), or takes a detour without moving
// (Temporary). An evicted upstream (its drain's deadline has passed, see
// Evicted) moves every session, whatever f: the operator asked for it to
// empty.
func OnBound(available, failedThisRequest bool, f Failure, evicted bool) Outcome {
	switch {
	case evicted:
		return Move
	case available && (f == Strict || !failedThisRequest):
		return Keep
	case f == Strict:
		return Refuse
	case f == Temporary:
		return Detour
	}
	return Move
}

// Undrained is accept that also refuses draining upstreams (accept itself
// while none drains). The drain rule: choose with Undrained first, and,
// finding none, with accept: serving from a draining upstream beats failing
// the request. PreferNotDraining does both; the IP selection calls the two
// steps itself, where a function value in between would cost allocations.
func Undrained[T any](accept func(T) bool, addr func(T) string) func(T) bool {
	if !AnyDraining() {
		return accept
	}
	return func(u T) bool { return accept(u) && !IsDraining(addr(u)) }
}

// PreferNotDraining applies the drain rule with pick, which reports whether
// it found an upstream for which its argument is true. T is how the caller
// names an upstream (an index, a pointer).
func PreferNotDraining[T any](accept func(T) bool, addr func(T) string, pick func(ok func(T) bool) (T, bool)) (T, bool) {
	if u, ok := pick(Undrained(accept, addr)); ok || !AnyDraining() {
		return u, ok
	}
	return pick(accept)
}
