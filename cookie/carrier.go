package cookie

import (
	"net/http"
	"slices"
	"time"
)

// A carrier is where a session's token travels: a cookie (sticky_cookie)
// or a request header (sticky_header). The decisions are the policy's and
// the same for both; a carrier only reads, writes and rewrites its token.
type carrier interface {
	// read passes each candidate token of the request to st.consider (in
	// rewrite mode, also the backend's own value to st.routed) and edits
	// the request for the upstream: insert mode removes the token, rewrite
	// mode strips it so the backend gets its own value.
	read(r *http.Request, st *reqState)
	// insert sets token on the response (insert mode), replacing one an
	// earlier attempt of the request set. secure: the client came over TLS.
	insert(w http.ResponseWriter, secure bool, token []byte)
	// rewrite prefixes the backend's value in the response header h with
	// the route token of st's last selection (rewrite mode).
	rewrite(h http.Header, st *reqState, now time.Time)
	// learned calls fn with each value the response header h sets, and
	// whether it deletes it (learn mode).
	learned(h http.Header, now time.Time, fn func(value string, deleted bool))
	// kind names the carrier in logs ("cookie" or "header"); domain
	// separates its keys from the other's.
	kind() string
	domain() string
}

// cookieCarrier carries the token in the cookie s.Name.
type cookieCarrier struct{ s *StickyCookie }

func (cookieCarrier) kind() string   { return "cookie" }
func (cookieCarrier) domain() string { return "" }

func (c cookieCarrier) read(r *http.Request, st *reqState) {
	lines := r.Header["Cookie"]
	if len(lines) == 0 {
		return
	}
	s := c.s
	switch {
	case s.learn:
		// The value is the backend's and stays as it is.
		EachValue(lines, s.Name, func(v string) bool {
			st.consider(v)
			return !st.valid
		})
		return
	case s.rewrite:
		lines = EditLines(lines, s.Name, func(v string) (string, bool, bool) {
			tok, orig, ok := SplitRouted(v)
			st.routed(orig)
			if !ok {
				return v, true, false
			}
			st.consider(tok)
			return orig, true, true
		})
	case s.ForwardCookie:
		EachValue(lines, s.Name, func(v string) bool {
			st.consider(v)
			return !st.valid
		})
	default:
		// One pass reads the cookie and removes it from the request.
		lines = EditLines(lines, s.Name, func(v string) (string, bool, bool) {
			st.consider(v)
			return "", false, true
		})
	}
	if len(lines) == 0 {
		delete(r.Header, "Cookie")
	} else {
		r.Header["Cookie"] = lines
	}
}

func (c cookieCarrier) insert(w http.ResponseWriter, secure bool, token []byte) {
	s := c.s
	h := w.Header()
	removeSetCookie(h, s.Name)
	var buf [256]byte
	line := append(buf[:0], s.Name...)
	line = append(line, '=')
	line = append(line, token...)
	line = s.attrs.AppendAttrs(line, secure)
	h["Set-Cookie"] = append(h["Set-Cookie"], string(line))
	if s.NoCache && !slices.Contains(h["Cache-Control"], "private") {
		h["Cache-Control"] = append(h["Cache-Control"], "private")
	}
}

func (c cookieCarrier) learned(h http.Header, now time.Time, fn func(string, bool)) {
	for _, l := range h["Set-Cookie"] {
		if v, deleted, ok := SetCookieValue(l, c.s.Name, now); ok {
			fn(v, deleted)
		}
	}
}

func (c cookieCarrier) rewrite(h http.Header, st *reqState, now time.Time) {
	lines := h["Set-Cookie"]
	token := ""
	for i, l := range lines {
		if SetCookieName(l) != c.s.Name {
			continue
		}
		if token == "" {
			token = st.routeToken()
		}
		switch nl, ok, tooLarge := RewriteSetCookie(l, c.s.Name, token, now); {
		case ok:
			lines[i] = nl
		case tooLarge:
			st.counters.NoteTooLarge()
		}
	}
}

// headerCarrier carries the token in a request header; name is in
// canonical form (header names match case-insensitively).
type headerCarrier struct{ name string }

func (headerCarrier) kind() string   { return "header" }
func (headerCarrier) domain() string { return "header\x00" }

func (c headerCarrier) read(r *http.Request, st *reqState) {
	values := r.Header[c.name]
	if len(values) == 0 {
		return
	}
	switch {
	case st.policy.learn:
		// The value is the backend's and stays as it is.
		for _, v := range values {
			st.consider(v)
		}
		return
	case !st.policy.rewrite:
		for _, v := range values {
			st.consider(v)
		}
		// The header is Caddy's: the backend never sees it.
		delete(r.Header, c.name)
		return
	}
	for i, v := range values {
		tok, orig, ok := SplitRouted(v)
		st.routed(orig)
		if ok {
			st.consider(tok)
			values[i] = orig
		}
	}
}

func (c headerCarrier) insert(w http.ResponseWriter, _ bool, token []byte) {
	w.Header()[c.name] = []string{string(token)}
}

func (c headerCarrier) learned(h http.Header, _ time.Time, fn func(string, bool)) {
	for _, v := range h[c.name] {
		if v != "" {
			fn(v, false)
		}
	}
}

func (c headerCarrier) rewrite(h http.Header, st *reqState, _ time.Time) {
	values := h[c.name]
	token := ""
	for i, v := range values {
		if v == "" {
			continue
		}
		if token == "" {
			token = st.routeToken()
		}
		values[i] = RewriteHeaderValue(v, token)
	}
}

// RewriteHeaderValue returns a response header's value prefixed by token
// and Separator. A value that already carries a route token has it
// replaced, never doubled.
func RewriteHeaderValue(value, token string) string {
	if _, orig, ok := SplitRouted(value); ok {
		value = orig
	}
	return token + string(Separator) + value
}
