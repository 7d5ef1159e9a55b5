package cookie

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// The header scan and edit before they were made linear: the reference the
// new ones must agree with byte for byte (only their cost changed).

func refNextPair(line, name string, from int) (s, eq, e int, ok bool) {
	for from < len(line) {
		end := strings.IndexByte(line[from:], ';')
		if end < 0 {
			end = len(line)
		} else {
			end += from
		}
		seg := from
		from = end + 1
		// Only a pair long enough to hold the name and '=' can match.
		if end-seg <= len(name) {
			continue
		}
		eq = strings.IndexByte(line[seg:end], '=')
		if eq < 0 {
			continue
		}
		eq += seg
		if strings.TrimSpace(line[seg:eq]) != name {
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

func refEditLine(line, name string, edit func(string) (string, bool, bool)) string {
	type change struct {
		start, end int
		repl       string
		drop       bool
	}
	var changes [4]change
	chs := changes[:0]
	for from := 0; ; {
		s, eq, e, ok := refNextPair(line, name, from)
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

// matchesReference compares nextPair with the reference as callers walk a
// line: from 0, then from the end of the pair found last.
func matchesReference(t *testing.T, line string) {
	t.Helper()
	for from := 0; ; {
		s1, q1, e1, ok1 := nextPair(line, "affinity", from)
		s2, q2, e2, ok2 := refNextPair(line, "affinity", from)
		if ok1 != ok2 || s1 != s2 || q1 != q2 || e1 != e2 {
			t.Fatalf("nextPair(%q, %d) = %d %d %d %v, reference %d %d %d %v", line, from, s1, q1, e1, ok1, s2, q2, e2, ok2)
		}
		if !ok1 {
			return
		}
		from = e1
	}
}

// TestEditLineMatchesReference compares editLine and nextPair with the
// reference over random lines built from the pieces a Cookie header has.
func TestEditLineMatchesReference(t *testing.T) {
	pieces := []string{"affinity", "=", ";", " ", "\t", "a", "b=c", "\"", "affinityx", "xaffinity", "\v", "\u00a0", "T", "~", ";;", " ; "}
	edits := map[string]func(string) (string, bool, bool){
		"drop":    drop,
		"keep":    keep,
		"replace": func(v string) (string, bool, bool) { return "N" + v, true, true },
		"mixed": func(v string) (string, bool, bool) {
			if strings.HasPrefix(v, "T") {
				return "", false, true
			}
			return v + "R", true, len(v)%2 == 0
		},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200000; i++ {
		var b strings.Builder
		for n := rng.IntN(12); n >= 0; n-- {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		line := b.String()
		matchesReference(t, line)
		for name, edit := range edits {
			if got, want := editLine(line, "affinity", edit), refEditLine(line, "affinity", edit); got != want {
				t.Fatalf("%s: editLine(%q) = %q, reference %q", name, line, got, want)
			}
		}
	}
}

// FuzzEditLineReference compares editLine and nextPair with the reference
// on any line, for each kind of edit.
func FuzzEditLineReference(f *testing.F) {
	for _, shape := range hostileShapes {
		f.Add(shape.make("affinity", 256))
	}
	for _, l := range []string{"a=1; affinity=T; b=2", " affinity=T;;", "affinity=\"T\"; affinity = U ;", "x=affinity;affinity=;"} {
		f.Add(l)
	}
	replace := func(v string) (string, bool, bool) { return "N" + v, true, true }
	alternate := func() func(string) (string, bool, bool) {
		n := 0
		return func(v string) (string, bool, bool) {
			n++
			return v + "R", n%3 != 0, n%2 == 0
		}
	}
	f.Fuzz(func(t *testing.T, line string) {
		matchesReference(t, line)
		for name, edit := range map[string]func(string) (string, bool, bool){"drop": drop, "keep": keep, "replace": replace} {
			if got, want := editLine(line, "affinity", edit), refEditLine(line, "affinity", edit); got != want {
				t.Fatalf("%s: editLine(%q) = %q, reference %q", name, line, got, want)
			}
		}
		if got, want := editLine(line, "affinity", alternate()), refEditLine(line, "affinity", alternate()); got != want {
			t.Fatalf("alternating: editLine(%q) = %q, reference %q", line, got, want)
		}
	})
}
