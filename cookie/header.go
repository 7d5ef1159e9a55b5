package cookie

import (
	"net/http"
	"strings"
	"time"
	"unsafe"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

// Separator stands between the route token and the backend's own value in
// rewrite mode, as HAProxy's "prefix" does: "TOKEN~original".
const Separator = '~'

// The functions below work on raw header text, so that every byte the
// client or the backend wrote outside the one cookie they touch is kept as
// it came, and so the request path allocates only when it changes a line.

// nextPair finds the next pair named name in a Cookie header line at or
// after byte from, which is the start of a pair or inside the separators
// after one. s and e bound the pair (the text between semicolons, spaces and
// tabs trimmed), eq is its first '='. It matches exactly the pairs for which
// splitPair gives name. Each byte of the line is looked at a bounded number
// of times whatever it holds, so a header that repeats the name costs what
// any other header of its length does: the request path runs this on text
// the client chose.
func nextPair(line, name string, from int) (s, eq, e int, ok bool) {
	s, eq, e, _, ok = findPair(line, name, from)
	return s, eq, e, ok
}

// findPair is nextPair, also returning where the pair's segment ends: at
// its ';', or the end of the line.
func findPair(line, name string, from int) (s, eq, e, semi int, ok bool) {
	for from < len(line) {
		end := strings.IndexByte(line[from:], ';')
		if end < 0 {
			end = len(line)
		} else {
			end += from
		}
		seg := from
		from = end + 1
		eq, ok = pairNamed(line[seg:end], name)
		if !ok {
			continue
		}
		s, e, eq = seg, end, eq+seg
		for s < e && (line[s] == ' ' || line[s] == '\t') {
			s++
		}
		for e > s && (line[e-1] == ' ' || line[e-1] == '\t') {
			e--
		}
		return s, eq, e, end, true
	}
	return 0, 0, 0, 0, false
}

// pairNamed reports whether the pair text seg (one segment between
// semicolons) has name before its first '=', white space around it
// ignored as strings.TrimSpace ignores it, and where that '=' is.
func pairNamed(seg, name string) (eq int, ok bool) {
	i := 0
	for i < len(seg) && (seg[i] == ' ' || seg[i] == '\t') {
		i++
	}
	if i < len(seg) && !otherSpace(seg[i]) {
		// The common case: the name must start right here.
		if !strings.HasPrefix(seg[i:], name) {
			return 0, false
		}
		j := i + len(name)
		for j < len(seg) && (seg[j] == ' ' || seg[j] == '\t') {
			j++
		}
		if j < len(seg) && seg[j] == '=' {
			return j, true
		}
		if j == len(seg) || !otherSpace(seg[j]) {
			return 0, false
		}
	}
	// Other white space (a control or non-ASCII byte): the general rule.
	eq = strings.IndexByte(seg, '=')
	if eq < 0 || strings.TrimSpace(seg[:eq]) != name {
		return 0, false
	}
	return eq, true
}

// otherSpace reports whether c may start white space that
// strings.TrimSpace trims, other than a space or a tab.
func otherSpace(c byte) bool {
	return c >= 0x80 || (c >= '\n' && c <= '\r')
}

// splitPair splits "name=value" at the first '='; ok is false without one.
func splitPair(pair string) (name, value string, ok bool) {
	name, value, ok = strings.Cut(pair, "=")
	return strings.TrimSpace(name), strings.TrimSpace(value), ok
}

// unquote strips one pair of surrounding double quotes, which RFC 6265
// allows around a cookie value; quoted tells the caller to put them back.
func unquote(v string) (inner string, quoted bool) {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		return v[1 : len(v)-1], true
	}
	return v, false
}

// EachValue calls fn with the value (quotes removed) of every cookie named
// name in the Cookie header lines, in order, until fn returns false.
func EachValue(lines []string, name string, fn func(value string) bool) {
	for _, line := range lines {
		for from := 0; ; {
			_, eq, e, ok := nextPair(line, name, from)
			if !ok {
				break
			}
			v, _ := unquote(strings.TrimSpace(line[eq+1 : e]))
			if !fn(v) {
				return
			}
			from = e
		}
	}
}

// EditLines applies edit to the value of every cookie named name in the
// Cookie header lines, in place. edit gets the unquoted value and returns
// the new one, keep=false to drop the cookie, or changed=false to leave it.
// Other cookies and their order are untouched; a line left empty is removed.
// It returns the lines (possibly shortened).
func EditLines(lines []string, name string, edit func(value string) (newValue string, keep, changed bool)) []string {
	out := lines[:0]
	for _, line := range lines {
		line = editLine(line, name, edit)
		if strings.TrimSpace(line) != "" {
			out = append(out, line)
		}
	}
	clear(lines[len(out):])
	return out
}

func editLine(line, name string, edit func(string) (string, bool, bool)) string {
	// One pass writes the edited line: a header of many pairs of the name
	// costs what one of as many other pairs does. The rules for the
	// separators around dropped pairs are in the comments below.
	var (
		b       []byte // the edited line so far; nil while nothing changed
		last    int    // line[:last] is accounted for in b
		changes int
		first   struct{ start, end int } // the first change, if a drop
		drop1   bool
		// A run of dropped pairs with nothing but separators between
		// them: if it reaches the end of the line, it goes with the
		// separator before it. runMark is len(b) and runPre is last where
		// the run began; prevEnd is the end of its last pair; inRun tells
		// whether the last change was a drop.
		runMark, runPre, runStart, prevEnd int
		inRun                              bool
	)
	for from := 0; ; {
		s, eq, e, semi, ok := findPair(line, name, from)
		if !ok {
			break
		}
		from = e
		inner, quoted := unquote(strings.TrimSpace(line[eq+1 : e]))
		nv, keep, changed := edit(inner)
		if !changed {
			continue
		}
		if b == nil {
			b = make([]byte, 0, len(line))
		}
		changes++
		if !keep {
			if changes == 1 {
				first.start, first.end, drop1 = s, e, true
			}
			if !inRun || !separators(line[prevEnd:s]) {
				runMark, runPre, runStart, inRun = len(b), last, s, true
			}
			prevEnd = e
			// Remove the pair and the separator that follows it.
			end := semi
			if end < len(line) {
				end++
				for end < len(line) && (line[end] == ' ' || line[end] == '\t') {
					end++
				}
			}
			b = append(b, line[last:s]...)
			last = end
			continue
		}
		inRun = false
		if quoted {
			nv = `"` + nv + `"`
		}
		vs := eq + 1
		for vs < e && (line[vs] == ' ' || line[vs] == '\t') {
			vs++
		}
		b = append(b, line[last:vs]...)
		b = append(b, nv...)
		last = e
	}
	if changes == 0 {
		return line
	}
	// Dropping the first or last pair of a line is a re-slice; only a
	// change in the middle builds a new string.
	if changes == 1 && drop1 {
		if first.start == strings.IndexFunc(line, notSpace) {
			rest := line[first.end:]
			if i := strings.IndexByte(rest, ';'); i >= 0 {
				return strings.TrimLeft(rest[i+1:], " \t")
			}
			return ""
		}
		if strings.TrimSpace(line[first.end:]) == "" {
			prefix := line[:first.start]
			if i := strings.LastIndexByte(prefix, ';'); i >= 0 {
				return strings.TrimRight(prefix[:i], " \t")
			}
			return ""
		}
	}
	if inRun && separators(line[prevEnd:]) {
		pre := strings.TrimRight(line[runPre:runStart], " \t")
		pre = strings.TrimSuffix(pre, ";")
		b = append(b[:runMark], strings.TrimRight(pre, " \t")...)
	} else {
		b = append(b, line[last:]...)
	}
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// separators reports whether s holds nothing but spaces, tabs and
// semicolons.
func separators(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c != ' ' && c != '\t' && c != ';' {
			return false
		}
	}
	return true
}

func notSpace(r rune) bool { return r != ' ' && r != '\t' }

// SplitRouted splits a rewrite-mode cookie value "TOKEN~original" into its
// route token and the backend's original value. ok is false when the value
// does not start with something shaped like a route token.
func SplitRouted(value string) (token, original string, ok bool) {
	n := affinity.RouteLen
	if len(value) <= n || value[n] != Separator || !affinity.LooksLikeToken(affinity.KindRoute, value[:n]) {
		return "", value, false
	}
	return value[:n], value[n+1:], true
}

// SetCookieName returns the cookie name of a Set-Cookie line.
func SetCookieName(line string) string {
	end := strings.IndexByte(line, ';')
	if end < 0 {
		end = len(line)
	}
	n, _, _ := splitPair(line[:end])
	return n
}

// SetCookieValue returns the value (quotes removed) of a Set-Cookie line
// for cookie name, and whether the line deletes the cookie (Max-Age <= 0,
// or an Expires before now); ok is false for a line of another cookie.
func SetCookieValue(line, name string, now time.Time) (value string, deleted, ok bool) {
	end := strings.IndexByte(line, ';')
	if end < 0 {
		end = len(line)
	}
	n, v, found := splitPair(line[:end])
	if !found || n != name {
		return "", false, false
	}
	v, _ = unquote(v)
	return v, deletes(line[end:], now), true
}

// MaxCookieSize is the most bytes of name and value a browser stores in
// one cookie (RFC 6265 asks for at least 4096; Chromium and Firefox refuse
// a longer cookie whole).
const MaxCookieSize = 4096

// RewriteSetCookie returns the Set-Cookie line with the value of cookie
// name prefixed by token and Separator. Every attribute and every byte
// outside the value is kept as the backend wrote it. A line for another
// cookie, or one that deletes the cookie (Max-Age <= 0, or an Expires before
// now), is returned unchanged with ok false. A value that already carries a
// route token has it replaced, never doubled. A cookie whose name and value
// the token would take past MaxCookieSize is returned unchanged, with ok
// false and tooLarge true: a browser would drop the rewritten cookie whole,
// and with it the backend's session.
func RewriteSetCookie(line, name, token string, now time.Time) (out string, ok, tooLarge bool) {
	end := strings.IndexByte(line, ';')
	if end < 0 {
		end = len(line)
	}
	eq := strings.IndexByte(line[:end], '=')
	if eq < 0 || strings.TrimSpace(line[:eq]) != name {
		return line, false, false
	}
	if deletes(line[end:], now) {
		return line, false, false
	}
	vs, ve := eq+1, end
	for vs < ve && (line[vs] == ' ' || line[vs] == '\t') {
		vs++
	}
	for ve > vs && (line[ve-1] == ' ' || line[ve-1] == '\t') {
		ve--
	}
	inner, quoted := unquote(line[vs:ve])
	if _, orig, ok := SplitRouted(inner); ok {
		inner = orig
	}
	q := ""
	if quoted {
		q = `"`
	}
	if eq+len(q)+len(token)+1+len(inner)+len(q) > MaxCookieSize {
		return line, false, true
	}
	return line[:vs] + q + token + string(Separator) + inner + q + line[ve:], true, false
}

// deletes reports whether the attributes of a Set-Cookie line delete the
// cookie. As in RFC 6265 5.2 and 5.3, Max-Age wins over Expires, the last
// valid occurrence of each counts, and an invalid one is ignored.
func deletes(attrs string, now time.Time) bool {
	var maxAgeDel, hasMaxAge, expiresDel, hasExpires bool
	for _, a := range strings.Split(attrs, ";") {
		k, v, _ := strings.Cut(a, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case strings.EqualFold(k, "max-age"):
			if del, ok := maxAgeDeletes(v); ok {
				maxAgeDel, hasMaxAge = del, true
			}
		case strings.EqualFold(k, "expires"):
			t, err := http.ParseTime(v)
			if err != nil {
				t, err = time.Parse("Mon, 02-Jan-2006 15:04:05 MST", v)
			}
			if err == nil {
				expiresDel, hasExpires = !t.After(now), true
			}
		}
	}
	if hasMaxAge {
		return maxAgeDel
	}
	return hasExpires && expiresDel
}

// maxAgeDeletes parses a Max-Age value as RFC 6265 5.2.2 does: an optional
// '-' then digits, any number of them (so no overflow); ok is false for
// anything else. del is true for zero or a negative value.
func maxAgeDeletes(v string) (del, ok bool) {
	digits := strings.TrimPrefix(v, "-")
	if digits == "" {
		return false, false
	}
	zero := true
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		if c < '0' || c > '9' {
			return false, false
		}
		zero = zero && c == '0'
	}
	return zero || len(digits) < len(v), true
}
