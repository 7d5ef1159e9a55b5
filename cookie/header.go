package cookie

import (
	"net/http"
	"strings"
	"time"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

// Separator stands between the route token and the backend's own value in
// rewrite mode, as HAProxy's "prefix" does: "TOKEN~original".
const Separator = '~'

// The functions below work on raw header text, so that every byte the
// client or the backend wrote outside the one cookie they touch is kept as
// it came, and so the request path allocates only when it changes a line.

// nextPair finds the next pair named name in a Cookie header line at or
// after byte from, by searching for the name rather than splitting every
// pair: the request path calls it for every request. s and e bound the pair
// (the text between semicolons, spaces and tabs trimmed), eq is its first
// '='. It matches exactly the pairs for which splitPair gives name.
func nextPair(line, name string, from int) (s, eq, e int, ok bool) {
	for from < len(line) {
		j := strings.Index(line[from:], name)
		if j < 0 {
			return 0, 0, 0, false
		}
		j += from
		from = j + 1
		seg := strings.LastIndexByte(line[:j], ';') + 1
		if strings.TrimSpace(line[seg:j]) != "" {
			continue // inside a value or a longer name
		}
		end := strings.IndexByte(line[j:], ';')
		if end < 0 {
			end = len(line)
		} else {
			end += j
		}
		eq = strings.IndexByte(line[j:end], '=')
		if eq < 0 {
			continue
		}
		eq += j
		if strings.TrimSpace(line[j+len(name):eq]) != "" {
			continue
		}
		s, e = seg, end
		for s < e && (line[s] == ' ' || line[s] == '\t') {
			s++
		}
		for e > s && (line[e-1] == ' ' || line[e-1] == '\t') {
			e--
		}
		return s, eq, e, true
	}
	return 0, 0, 0, false
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
	type change struct {
		start, end int
		repl       string
		drop       bool
	}
	var changes [4]change
	chs := changes[:0]
	for from := 0; ; {
		s, eq, e, ok := nextPair(line, name, from)
		if !ok {
			break
		}
		from = e
		inner, quoted := unquote(strings.TrimSpace(line[eq+1 : e]))
		nv, keep, changed := edit(inner)
		if !changed {
			continue
		}
		if !keep {
			chs = append(chs, change{start: s, end: e, drop: true})
			continue
		}
		if quoted {
			nv = `"` + nv + `"`
		}
		vs := eq + 1
		for vs < e && (line[vs] == ' ' || line[vs] == '\t') {
			vs++
		}
		chs = append(chs, change{start: vs, end: e, repl: nv})
	}
	if len(chs) == 0 {
		return line
	}
	// Dropping the first or last pair of a line is a re-slice; only a
	// change in the middle builds a new string.
	if len(chs) == 1 && chs[0].drop {
		c := chs[0]
		if c.start == strings.IndexFunc(line, notSpace) {
			rest := line[c.end:]
			if i := strings.IndexByte(rest, ';'); i >= 0 {
				return strings.TrimLeft(rest[i+1:], " \t")
			}
			return ""
		}
		if strings.TrimSpace(line[c.end:]) == "" {
			prefix := line[:c.start]
			if i := strings.LastIndexByte(prefix, ';'); i >= 0 {
				return strings.TrimRight(prefix[:i], " \t")
			}
			return ""
		}
	}
	// The trailing run of dropped pairs (nothing but separators between
	// them and the end of the line) goes with the separator before it.
	tail := len(chs)
	for tail > 0 && chs[tail-1].drop {
		next := len(line)
		if tail < len(chs) {
			next = chs[tail].start
		}
		if strings.Trim(line[chs[tail-1].end:next], " \t;") != "" {
			break
		}
		tail--
	}
	var b strings.Builder
	b.Grow(len(line))
	last := 0
	for _, c := range chs[:tail] {
		if c.drop {
			// Remove the pair and the separator that follows it.
			end := c.end
			if i := strings.IndexByte(line[end:], ';'); i >= 0 {
				end += i + 1
				for end < len(line) && (line[end] == ' ' || line[end] == '\t') {
					end++
				}
			}
			b.WriteString(line[last:c.start])
			last = end
			continue
		}
		b.WriteString(line[last:c.start])
		b.WriteString(c.repl)
		last = c.end
	}
	if tail < len(chs) {
		pre := strings.TrimRight(line[last:chs[tail].start], " \t")
		pre = strings.TrimSuffix(pre, ";")
		b.WriteString(strings.TrimRight(pre, " \t"))
		return b.String()
	}
	b.WriteString(line[last:])
	return b.String()
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

// RewriteSetCookie returns the Set-Cookie line with the value of cookie
// name prefixed by token and Separator. Every attribute and every byte
// outside the value is kept as the backend wrote it. A line for another
// cookie, or one that deletes the cookie (Max-Age <= 0, or an Expires before
// now), is returned unchanged with ok false. A value that already carries a
// route token has it replaced, never doubled.
func RewriteSetCookie(line, name, token string, now time.Time) (string, bool) {
	end := strings.IndexByte(line, ';')
	if end < 0 {
		end = len(line)
	}
	eq := strings.IndexByte(line[:end], '=')
	if eq < 0 || strings.TrimSpace(line[:eq]) != name {
		return line, false
	}
	if deletes(line[end:], now) {
		return line, false
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
	return line[:vs] + q + token + string(Separator) + inner + q + line[ve:], true
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
