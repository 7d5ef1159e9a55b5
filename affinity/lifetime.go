package affinity

import "time"

// Lifetimes bounds how long a token keeps its session.
type Lifetimes struct {
	// MaxLifetime is the absolute lifetime of a binding from its issue time;
	// zero means unbounded.
	MaxLifetime time.Duration
	// IdleTimeout ends a binding not refreshed within it; zero means none.
	IdleTimeout time.Duration
}

// refreshFraction: an insert cookie is re-issued once it has aged this part
// of the idle timeout, so a busy client does not get a Set-Cookie on every
// response, and a session stays alive while its requests come less than
// three quarters of the idle timeout apart.
const refreshFraction = 4

// MaxClockSkew is how far ahead of the clock a token's times may be, for
// instances sharing a key whose clocks disagree a little. A token further
// ahead was minted by a clock that is wrong, and would never age here.
const MaxClockSkew = 5 * time.Minute

// Check reports why t is no longer valid at now, or ReasonNone. A time up
// to MaxClockSkew ahead counts as now; one further ahead is rejected where
// a lifetime applies to it (ReasonFuture), as HAProxy ignores cookie dates
// far in the future.
func (l Lifetimes) Check(t Token, now time.Time) Reason {
	sec := unixSeconds(now)
	if l.MaxLifetime > 0 {
		if ahead(t.Issued, sec) {
			return ReasonFuture
		}
		if age(t.Issued, sec) > l.MaxLifetime {
			return ReasonExpired
		}
	}
	if l.IdleTimeout > 0 && t.Kind == KindInsert {
		if ahead(t.Refreshed, sec) {
			return ReasonFuture
		}
		if age(t.Refreshed, sec) > l.IdleTimeout {
			return ReasonIdle
		}
	}
	return ReasonNone
}

// ahead reports whether then lies more than MaxClockSkew after now.
func ahead(then, now uint32) bool {
	return then > now && time.Duration(then-now)*time.Second > MaxClockSkew
}

// NeedsRefresh reports whether an insert cookie carrying t should be
// re-issued at now to keep its idle timeout sliding.
func (l Lifetimes) NeedsRefresh(t Token, now time.Time) bool {
	return l.IdleTimeout > 0 && age(t.Refreshed, unixSeconds(now)) >= l.IdleTimeout/refreshFraction
}

// UnixSeconds is now as the 32-bit seconds a token carries (valid to 2106).
func UnixSeconds(now time.Time) uint32 { return unixSeconds(now) }

func unixSeconds(now time.Time) uint32 {
	s := now.Unix()
	if s < 0 {
		return 0
	}
	return uint32(s)
}

func age(then, now uint32) time.Duration {
	if now <= then {
		return 0
	}
	return time.Duration(now-then) * time.Second
}
