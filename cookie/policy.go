// Package cookie is layer-7 cookie affinity for Caddy's reverse_proxy: the
// sticky_cookie selection policy (insert and rewrite modes), the affinity
// handler that lets rewrite mode see the backend's Set-Cookie, and the
// cookie header parsing and rewriting they share.
package cookie

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/cespare/xxhash/v2"
	"go.uber.org/zap"

	"github.com/caddy-affinity/caddy-affinity/affinity"
	"github.com/caddy-affinity/caddy-affinity/internal/caddyutil"
	"github.com/caddy-affinity/caddy-affinity/internal/decisionlog"
	"github.com/caddy-affinity/caddy-affinity/ipaffinity"
	"github.com/caddy-affinity/caddy-affinity/store"
)

func init() {
	caddy.RegisterModule(new(StickyCookie))
}

// PolicyName labels this policy's counters and metrics.
const PolicyName = "sticky_cookie"

// Modes of StickyCookie.
const (
	ModeInsert  = "insert"
	ModeRewrite = "rewrite"
	ModeLearn   = "learn"
)

// DefaultLearnIdle is how long learn mode remembers a value no request
// carried.
const DefaultLearnIdle = 30 * time.Minute

// StickyCookie is a selection policy that keeps each client on one upstream
// with a signed cookie.
//
// In insert mode (the default) Caddy sets its own cookie, whose opaque value
// names the upstream without revealing its address, carries its issue time
// (and last refresh, for idle_timeout) and a truncated HMAC-SHA256. In
// rewrite mode the backend sets its own cookie and Caddy prefixes its value
// with a short signed route token ("TOKEN~original"); the backend gets its
// original value back on later requests. Rewrite mode needs the `affinity`
// handler in the same route, which the Caddyfile orders before
// reverse_proxy.
//
// A request without a valid cookie is load-balanced by the fallback policy.
// An invalid cookie (malformed, tampered, signed by an unknown key, too old,
// idle too long, or naming an upstream no longer in the pool) counts as
// absent: never an error status.
type StickyCookie struct {
	// How the cookie is made: `insert` (Caddy sets its own cookie),
	// `rewrite` (Caddy rewrites the cookie the backend sets) or `learn`
	// (Caddy records the value the backend sets and routes by it, leaving
	// it unchanged). Default: insert.
	Mode string `json:"mode,omitempty"`

	// The cookie name. Default: `affinity` in insert mode; required in
	// rewrite mode, where it is the name of the backend's own cookie.
	Name string `json:"name,omitempty"`

	// Keys that sign and verify cookies. The first signs; every one verifies,
	// so keys rotate without losing sessions, and a cookie verified by an
	// older key is re-issued under the first. Placeholders such as
	// `{env.AFFINITY_SECRET}` are replaced when the config loads. Default: a
	// random key generated once and kept in Caddy's storage, so sessions
	// survive restarts and instances sharing that storage share the key.
	// Keys are never logged.
	Secrets []string `json:"secrets,omitempty"`

	// The cookie's Max-Age (insert mode). Default: none, a session cookie.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// A sliding, server-side idle timeout: in insert mode a cookie not
	// refreshed within it counts as absent, and the cookie is re-issued
	// once it has aged a quarter of the timeout (default: none); in learn
	// mode a learned value no request carried for that long is forgotten
	// (default: 30m).
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`

	// Bound of learn mode's table of learned values, in entries; when it
	// is full the least recently used is forgotten. Default: 100000.
	MaxSessions int `json:"max_sessions,omitempty"`

	// Bound of that table as a memory size in bytes; overrides
	// max_sessions.
	MaxSessionsBytes uint64 `json:"max_sessions_bytes,omitempty"`

	// Where learn mode's table lives: in this process (memory, the
	// default) or in a Redis store that every instance shares, with this
	// process's table as its cache (see package store).
	Store *store.Config `json:"store,omitempty"`

	// The absolute lifetime of a binding, checked on the server: against
	// the signed issue time (insert and rewrite modes), or against when the
	// value was learned (learn mode). Default: none.
	MaxLifetime caddy.Duration `json:"max_lifetime,omitempty"`

	// The cookie's Path attribute (insert mode). Default: `/`.
	Path string `json:"path,omitempty"`

	// The cookie's Domain attribute (insert mode). Default: none (host only).
	Domain string `json:"domain,omitempty"`

	// Whether the cookie gets the Secure attribute (insert mode): `auto`
	// (when the request came over TLS or with `X-Forwarded-Proto: https` from
	// a trusted proxy), `always` or `never`. Default: auto.
	Secure string `json:"secure,omitempty"`

	// The cookie's SameSite attribute (insert mode): `auto` (None when the
	// cookie is Secure, else Lax), `lax`, `strict` or `none`. Default: auto.
	SameSite string `json:"same_site,omitempty"`

	// Whether the cookie gets the HttpOnly attribute (insert mode).
	// Default: true.
	HTTPOnly *bool `json:"http_only,omitempty"`

	// Whether the inserted cookie is also sent on to the upstream (insert
	// mode). Default: false, the cookie is removed from the proxied request
	// (HAProxy's `indirect`), so backends never see it.
	ForwardCookie bool `json:"forward_cookie,omitempty"`

	// Whether a response that inserts the cookie is marked
	// `Cache-Control: private` (insert mode), so that a shared cache in
	// front of Caddy never stores it and hands one client's cookie, and so
	// its upstream, to others (HAProxy's `nocache`). Only responses that set
	// the cookie are marked. Default: false.
	NoCache bool `json:"nocache,omitempty"`

	// The selection policy for requests without a valid cookie, and for
	// rebinding. Any `http.reverse_proxy.selection_policies` module works.
	// Default: `least_conn`.
	FallbackRaw json.RawMessage `json:"fallback,omitempty" caddy:"namespace=http.reverse_proxy.selection_policies inline_key=policy"`

	// What to do when the cookie's upstream is unavailable (unhealthy, full,
	// or already failed for this request): `rebind` picks another with the
	// fallback and re-issues the cookie, on the same request when lb_retries
	// or lb_try_duration allow a retry; `strict` never rebinds, and no
	// upstream is selected (503); `temporary` sends its requests to a
	// replacement (the same one each time) without moving the session: no
	// new cookie, no table update, and they return when it recovers, for
	// backends that replicate sessions. Default: rebind.
	OnFailure string `json:"on_failure,omitempty"`

	policy    string   // label in counters, metrics and logs
	carrier   carrier  // where the token travels: a cookie, or a header
	static    []string // the parent's static upstreams, retained
	fallback  reverseproxy.Selector
	keys      *affinity.Keyring
	life      affinity.Lifetimes
	attrs     Attrs
	rewrite   bool
	learn     bool
	learned   ipaffinity.Config // learn mode's table, kept across reloads
	failure   affinity.Failure
	varKey    string
	pools     affinity.PoolCache[*reverseproxy.Upstream, poolState]
	logger    *zap.Logger
	decisions decisionlog.Logger
	noHandler sync.Once
	now       func() time.Time
}

// poolState is what the policy derives from a pool once.
type poolState struct {
	addrs    []string
	index    *affinity.Index
	counters []*affinity.Counters
	names    map[uint64]int // learn mode: AddrHash -> position
}

// CaddyModule returns the Caddy module information.
func (*StickyCookie) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.sticky_cookie",
		New: func() caddy.Module { return new(StickyCookie) },
	}
}

// Provision sets up s.
func (s *StickyCookie) Provision(ctx caddy.Context) error {
	s.setLogger(ctx.Logger())
	if s.now == nil {
		s.now = time.Now
	}
	if s.Mode == "" {
		s.Mode = ModeInsert
	}
	if s.Name == "" && s.Mode == ModeInsert {
		s.Name = "affinity"
	}
	if s.Path == "" {
		s.Path = "/"
	}
	if s.Secure == "" {
		s.Secure = "auto"
	}
	if s.SameSite == "" {
		s.SameSite = "auto"
	}
	if s.OnFailure == "" {
		s.OnFailure = "rebind"
	}
	if err := s.validate(); err != nil {
		return err
	}
	return s.setup(ctx, PolicyName, cookieCarrier{s})
}

// ProvisionHeader sets up s as the engine of sticky_header's insert and
// rewrite modes: the token travels in the request header s.Name, not a
// cookie. Mode, Name, Secrets, IdleTimeout, MaxLifetime, FallbackRaw and
// OnFailure apply; the cookie attributes do not.
func (s *StickyCookie) ProvisionHeader(ctx caddy.Context, policy string) error {
	s.setLogger(ctx.Logger())
	if s.now == nil {
		s.now = time.Now
	}
	if s.OnFailure == "" {
		s.OnFailure = "rebind"
	}
	return s.setup(ctx, policy, headerCarrier{http.CanonicalHeaderKey(s.Name)})
}

// setup is what both carriers provision alike.
func (s *StickyCookie) setup(ctx caddy.Context, policy string, c carrier) error {
	s.policy, s.carrier = policy, c
	s.rewrite, s.learn = s.Mode == ModeRewrite, s.Mode == ModeLearn
	s.failure = map[string]affinity.Failure{"strict": affinity.Strict, "temporary": affinity.Temporary}[s.OnFailure]
	if s.learn {
		if s.IdleTimeout == 0 {
			s.IdleTimeout = caddy.Duration(DefaultLearnIdle)
		}
		s.learned = ipaffinity.Config{PersistTimeout: s.IdleTimeout, MaxSessions: s.MaxSessions, MaxSessionsBytes: s.MaxSessionsBytes,
			Store: s.Store, StoreTable: c.kind() + ":" + s.Name, Lifetime: time.Duration(s.MaxLifetime)}
		if err := s.learned.Provision(ctx, policy, "learn="+c.kind()+":"+s.Name); err != nil {
			return err
		}
	}
	s.life = affinity.Lifetimes{MaxLifetime: time.Duration(s.MaxLifetime), IdleTimeout: time.Duration(s.IdleTimeout)}
	s.attrs = Attrs{
		Path:     s.Path,
		Domain:   s.Domain,
		MaxAge:   time.Duration(s.MaxAge),
		Secure:   s.Secure,
		SameSite: s.SameSite,
		HTTPOnly: s.HTTPOnly == nil || *s.HTTPOnly,
	}
	s.varKey = affinity.VarKey(policy)

	if s.FallbackRaw == nil {
		s.FallbackRaw = caddyconfig.JSONModuleObject(reverseproxy.LeastConnSelection{}, "policy", "least_conn", nil)
	}
	mod, err := ctx.LoadModule(s, "FallbackRaw")
	if err != nil {
		return fmt.Errorf("loading fallback selection policy: %v", err)
	}
	s.fallback = mod.(reverseproxy.Selector)

	keys, err := loadKeys(ctx, s.Secrets)
	if err != nil {
		return err
	}
	s.keys, err = affinity.NewKeyring(c.domain()+s.Mode+"\x00"+s.Name, keys...)
	if err != nil {
		return fmt.Errorf("secrets: %v", err)
	}
	if err := affinity.RegisterMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	s.static = caddyutil.RegisterParentUpstreams(ctx, policy)
	s.pools.Addr = func(u *reverseproxy.Upstream) string { return u.Dial }
	s.pools.Build = func(addrs []string) poolState {
		affinity.Retain(policy, addrs...)
		ps := poolState{addrs: addrs, index: s.keys.NewIndex(addrs), counters: make([]*affinity.Counters, len(addrs))}
		for i, a := range addrs {
			ps.counters[i] = affinity.CountersFor(policy, a)
		}
		if s.learn {
			ps.names = make(map[uint64]int, len(addrs))
			for i := len(addrs) - 1; i >= 0; i-- { // the first of duplicates wins
				ps.names[affinity.AddrHash(addrs[i])] = i
			}
		}
		return ps
	}
	s.pools.Drop = func(ps *poolState) { affinity.Release(policy, ps.addrs...) }
	return nil
}

// Cleanup releases the upstreams this config made known.
func (s *StickyCookie) Cleanup() error {
	s.pools.Close()
	affinity.Release(s.policy, s.static...)
	return s.learned.Cleanup()
}

// validate checks the configuration as given: unset options count as their
// defaults, so the Caddyfile adapter can run it too and name the line.
// Provision runs it, once per config load (the policy is no
// caddy.Validator, which would check it again).
func (s *StickyCookie) validate() error {
	mode := s.Mode
	switch mode {
	case "":
		mode = ModeInsert
	case ModeInsert, ModeRewrite, ModeLearn:
	default:
		return fmt.Errorf("mode: must be insert, rewrite or learn, got %q", s.Mode)
	}
	if s.Name == "" && mode != ModeInsert {
		return fmt.Errorf("name: %s mode needs the name of the cookie the backend sets", mode)
	}
	if s.Name != "" && !validCookieName(s.Name) {
		return fmt.Errorf("name: %q is not a valid cookie name", s.Name)
	}
	// Browsers drop prefixed cookies that break the prefix's rules.
	if mode == ModeInsert && strings.HasPrefix(s.Name, "__Secure-") && s.Secure == "never" {
		return fmt.Errorf("name: a __Secure- cookie must be Secure; secure never contradicts it")
	}
	if mode == ModeInsert && strings.HasPrefix(s.Name, "__Host-") &&
		(s.Secure == "never" || s.Domain != "" || (s.Path != "" && s.Path != "/")) {
		return fmt.Errorf("name: a __Host- cookie must be Secure, with Path=/ and no Domain")
	}
	if mode != ModeInsert {
		// Attributes are the backend's in rewrite and learn modes;
		// silently ignoring them would mislead.
		for _, o := range []struct {
			name string
			set  bool
		}{
			{"max_age", s.MaxAge != 0}, {"idle_timeout", s.IdleTimeout != 0 && mode == ModeRewrite}, {"path", s.Path != "" && s.Path != "/"},
			{"domain", s.Domain != ""}, {"secure", s.Secure != "" && s.Secure != "auto"},
			{"same_site", s.SameSite != "" && s.SameSite != "auto"}, {"http_only", s.HTTPOnly != nil},
			{"forward_cookie", s.ForwardCookie}, {"nocache", s.NoCache},
		} {
			if o.set {
				return fmt.Errorf("%s: applies to insert mode only; in %s mode the backend's cookie keeps its own attributes", o.name, mode)
			}
		}
	}
	if mode != ModeLearn && (s.MaxSessions != 0 || s.MaxSessionsBytes != 0) {
		return fmt.Errorf("max_sessions: applies to learn mode only, whose table it bounds")
	}
	if mode != ModeLearn && s.Store.Backed() {
		return fmt.Errorf("store: applies to learn mode only, whose table it holds; tokens need no store")
	}
	if err := s.Store.Check(); err != nil {
		return err
	}
	for _, d := range []struct {
		name string
		d    caddy.Duration
	}{{"max_age", s.MaxAge}, {"idle_timeout", s.IdleTimeout}, {"max_lifetime", s.MaxLifetime}} {
		if d.d < 0 {
			return fmt.Errorf("%s: must not be negative", d.name)
		}
	}
	switch s.Secure {
	case "", "auto", "always", "never":
	default:
		return fmt.Errorf("secure: must be auto, always or never, got %q", s.Secure)
	}
	switch s.SameSite {
	case "", "auto", "lax", "strict", "none":
	default:
		return fmt.Errorf("same_site: must be auto, lax, strict or none, got %q", s.SameSite)
	}
	if s.SameSite == "none" && s.Secure == "never" {
		return fmt.Errorf("same_site: none requires a Secure cookie; browsers reject it with secure never")
	}
	switch s.OnFailure {
	case "", "rebind", "strict", "temporary":
	default:
		return fmt.Errorf("on_failure: must be rebind, strict or temporary, got %q", s.OnFailure)
	}
	if s.Path != "" && !strings.HasPrefix(s.Path, "/") {
		return fmt.Errorf("path: must start with /, got %q", s.Path)
	}
	if !validAttrValue(s.Path) {
		return fmt.Errorf("path: %q contains a character a cookie attribute cannot hold (';', a space or a control character)", s.Path)
	}
	if !validAttrValue(s.Domain) {
		return fmt.Errorf("domain: %q contains a character a cookie attribute cannot hold (';', a space or a control character)", s.Domain)
	}
	for i, sec := range s.Secrets {
		if sec == "" {
			return fmt.Errorf("secrets: secret %d is empty", i+1)
		}
	}
	return nil
}

// validAttrValue reports whether v can stand in a Set-Cookie attribute
// without ending it or starting another.
func validAttrValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c == ';' || c == 0x7f {
			return false
		}
	}
	return true
}

// validCookieName reports whether n is an RFC 6265 token.
func validCookieName(n string) bool {
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("()<>@,;:\\\"/[]?={}", c) >= 0 {
			return false
		}
	}
	return true
}

// maxCandidates bounds the cookies of one request whose token is verified.
const maxCandidates = 8

// reqState is what one request's selections share across retries. Caddy
// calls Select again for every retry with the same request, whose Cookie
// header this policy has already edited, so the parsed token lives here.
type reqState struct {
	tok      affinity.Token
	key      int
	valid    bool
	reason   affinity.Reason
	attempts int
	triedArr [2]*reverseproxy.Upstream
	tried    []*reverseproxy.Upstream
	// The backend's own value (rewrite mode), when the request carries
	// it: its hash routes the session while it has no valid token.
	orig    string
	hasOrig bool
	// Set by the last selection, for rewrite mode's handler.
	chosenID uint64
	issued   uint32
	policy   *StickyCookie
	// counters are the chosen upstream's, for what the response does.
	counters *affinity.Counters
	// cookieSet: an attempt of this request set the cookie.
	cookieSet bool
	// While reading the request's tokens.
	now        time.Time
	candidates int
	// Learn mode: the table key of the value that routed the request, or
	// of its first value.
	lkey    affinity.ClientKey
	hasLKey bool
	// session identifies the valid session the request carried (a hash),
	// for the upstream's sessions seen.
	session uint64
}

// Select returns the upstream of the request's session, or binds a new one.
func (s *StickyCookie) Select(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	// One lookup of the vars map serves the retry state, the trusted-proxy
	// flag and the handler: walking the request's context chain is costly.
	vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	now := s.now()
	st, _ := vars[s.varKey].(*reqState)
	if st == nil {
		st = &reqState{policy: s}
		st.tried = st.triedArr[:0]
		s.readCookie(r, st, now)
		if vars != nil {
			vars[s.varKey] = st
		}
		if s.rewrite || s.learn {
			s.attachToHandler(vars, st)
		}
	}
	st.attempts++
	if len(pool) == 0 {
		return nil
	}
	ps := s.pools.Get(pool)
	if st.attempts > 1 && affinity.NewRound(len(pool), func(i int) bool { return pool[i].Available() }, func(i int) bool { return st.triedUp(pool[i]) }) {
		st.tried = st.tried[:0]
	}

	result, reason := affinity.ResultNew, affinity.ReasonNone
	var up *reverseproxy.Upstream
	idx := -1
	home := -1 // on a detour (on_failure temporary): the session's upstream
	issued := affinity.UnixSeconds(now)
	if st.valid {
		i, ok := s.bound(ps, st)
		if ok && ps.addrs[i] != pool[i].Dial {
			// The pool changed in place since the state was built.
			ps = s.pools.Refresh(pool)
			i, ok = s.bound(ps, st)
		}
		if !ok {
			result, reason = affinity.ResultRejected, affinity.ReasonUnknownUpstream
			if s.rewrite || s.learn {
				// The backend may never set its cookie again, so this
				// session stays: move it deterministically.
				result = affinity.ResultRebind
			}
		} else {
			switch u := pool[i]; affinity.OnBound(u.Available(), st.triedUp(u), s.failure, affinity.Evicted(u.Dial, now)) {
			case affinity.Keep:
				up, idx, result = u, i, affinity.ResultHit
				issued = st.tok.Issued
			case affinity.Refuse:
				s.logDecision(r, "", affinity.ResultRebind, affinity.ReasonNone, "strict: session's upstream unavailable")
				return nil
			case affinity.Detour:
				home, result = i, affinity.ResultRebind
				issued = st.tok.Issued
			default:
				result = affinity.ResultRebind
			}
		}
	} else if st.reason != affinity.ReasonNone {
		result, reason = affinity.ResultRejected, st.reason
	}
	if up == nil {
		if st.attempts > 1 {
			result = affinity.ResultRebind
		}
		switch {
		case home >= 0 && s.learn:
			up = s.pickStable(pool, st, st.lkey.Hash())
		case home >= 0:
			// The same replacement on every request of the detour.
			up = s.pickStable(pool, st, st.tok.Upstream)
		case s.rewrite && result == affinity.ResultRebind && st.valid:
			up = s.pickStable(pool, st, st.tok.Upstream)
		case s.learn && result == affinity.ResultRebind && st.valid:
			// From the session's key, so that every instance that sees the
			// failure moves it to the same replacement.
			up = s.pickStable(pool, st, st.lkey.Hash())
		case s.rewrite && !st.valid && st.hasOrig:
			// The backend's cookie without a valid token (expired, an
			// old key, set before this config): the backend may never set
			// it again, so route by its value, the same way each time.
			up = s.pickStable(pool, st, xxhash.Sum64String(st.orig))
		default:
			up = s.pickNew(pool, r, w, st)
		}
		if up == nil {
			return nil
		}
		idx = indexOf(pool, up)
		if idx >= 0 && ps.addrs[idx] != up.Dial {
			ps = s.pools.Refresh(pool)
		}
	}
	st.tried = append(st.tried, up)
	st.counters = nil
	if idx >= 0 {
		st.counters = ps.counters[idx]
		ps.counters[idx].Record(result, reason)
		// A detour leaves the session where it is: what the response
		// re-sets still names its upstream.
		bound := idx
		if home >= 0 {
			bound = home
		}
		st.chosenID = ps.index.SigningID(bound)
		if s.learn {
			st.chosenID = affinity.AddrHash(ps.addrs[bound])
			if st.valid && result == affinity.ResultRebind && home < 0 {
				// Written before the response leaves, for the session's
				// next request, wherever it lands.
				s.learned.Sessions().Put(st.lkey, st.chosenID, now)
			}
		}
	} else {
		// The fallback returned an upstream outside the pool it was given;
		// route the request but bind nothing to it.
		st.chosenID = 0
	}
	st.issued = issued
	s.logDecision(r, up.Dial, result, reason, "")
	if idx >= 0 && home < 0 {
		// The session's request reached its upstream: a hit, or a new or
		// moved token (named as the next request's will be). A learned
		// value is known once the response sets it.
		switch {
		case result == affinity.ResultHit:
			ps.counters[idx].Saw(st.session, now.Unix())
		case !s.learn:
			ps.counters[idx].Saw(tokenSession(st.chosenID, issued), now.Unix())
		}
	}

	if !s.rewrite && !s.learn && idx >= 0 && home < 0 {
		needCookie := result != affinity.ResultHit || st.key != 0 || s.life.NeedsRefresh(st.tok, now)
		// An earlier attempt's cookie must be replaced by this one's.
		if needCookie || st.cookieSet {
			st.cookieSet = true
			trusted, _ := vars[caddyhttp.TrustedProxyVarKey].(bool)
			s.setCookie(w, secureRequest(r, trusted), affinity.Token{
				Kind: affinity.KindInsert, Upstream: st.chosenID,
				Issued: issued, Refreshed: affinity.UnixSeconds(now),
			})
		}
	}
	return up
}

// LearnedSessions returns the entries of learn mode's table (keys are
// HMACs of the values), for tests and the admin API.
func (s *StickyCookie) LearnedSessions() []affinity.Session {
	t := s.learned.Sessions()
	return t.Page(0, t.Len())
}

// bound returns the position in ps of the upstream of the request's
// session.
func (s *StickyCookie) bound(ps *poolState, st *reqState) (int, bool) {
	if s.learn {
		i, ok := ps.names[st.tok.Upstream]
		return i, ok
	}
	return ps.index.Lookup(st.key, st.tok.Upstream)
}

// pickNew asks the fallback for an upstream for a new (or moved) session,
// keeping it away from upstreams that already failed this request and from
// draining upstreams, unless only draining ones are left.
func (s *StickyCookie) pickNew(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter, st *reqState) *reverseproxy.Upstream {
	if len(st.tried) == 0 && !affinity.AnyDraining() {
		// The common case, without the closure PickNew's filter needs.
		return s.fallback.Select(pool, r, w)
	}
	return caddyutil.PickNew(s.fallback, pool, r, w, st.triedUp)
}

// pickStable moves a rewrite-mode session deterministically: the backend
// may not set its cookie again (Apache's mod_usertrack does not when the
// request carries one), so the client keeps its old token, and every request
// of the session must reach the same replacement while its upstream is
// down. Rendezvous hashing on the token's upstream ID does that, and when
// the upstream returns the session goes back to it. It costs O(n), on the
// failure path only.
func (s *StickyCookie) pickStable(pool reverseproxy.UpstreamPool, st *reqState, key uint64) *reverseproxy.Upstream {
	usable := func(u *reverseproxy.Upstream) bool { return u.Available() && !st.triedUp(u) }
	up, _ := affinity.PreferNotDraining(usable, dial, func(ok func(*reverseproxy.Upstream) bool) (*reverseproxy.Upstream, bool) {
		var best *reverseproxy.Upstream
		var bestScore uint64
		for _, u := range pool {
			if !ok(u) {
				continue
			}
			if score := mix64(key ^ xxhash.Sum64String(u.Dial)); best == nil || score > bestScore {
				best, bestScore = u, score
			}
		}
		return best, best != nil
	})
	return up
}

func dial(u *reverseproxy.Upstream) string { return u.Dial }

// mix64 is SplitMix64's finaliser: a cheap, well-spread 64-bit mix.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// triedUp reports whether an earlier attempt of the request used u. It
// compares addresses: dynamic upstreams are new objects on every attempt.
func (st *reqState) triedUp(u *reverseproxy.Upstream) bool {
	for _, t := range st.tried {
		if t == u || t.Dial == u.Dial {
			return true
		}
	}
	return false
}

func indexOf(pool reverseproxy.UpstreamPool, u *reverseproxy.Upstream) int {
	for i, p := range pool {
		if p == u {
			return i
		}
	}
	return -1
}

// readCookie finds the first token of the request that is valid, and edits
// the request for the upstream (see carrier.read).
func (s *StickyCookie) readCookie(r *http.Request, st *reqState, now time.Time) {
	st.now = now
	s.carrier.read(r, st)
}

// consider takes tok as the request's token if it is the first valid one
// (in learn mode: the first value learned).
func (st *reqState) consider(tok string) {
	// A header full of token-shaped values must not buy an HMAC each.
	if st.valid || st.candidates >= maxCandidates {
		return
	}
	st.candidates++
	s := st.policy
	if s.learn {
		st.recall(tok)
		return
	}
	kind := affinity.KindInsert
	if s.rewrite {
		kind = affinity.KindRoute
	}
	t, key, reason := s.keys.ParseToken(kind, tok)
	if reason == affinity.ReasonNone {
		reason = s.life.Check(t, st.now)
	}
	if reason != affinity.ReasonNone {
		if st.reason == affinity.ReasonNone {
			st.reason = reason
		}
		return
	}
	st.tok, st.key, st.valid, st.reason = t, key, true, affinity.ReasonNone
	st.session = tokenSession(t.Upstream, t.Issued)
}

// recall looks value up among the learned ones, under each key of the
// keyring; one found under an older key moves to the signing key's. The
// first value's key is kept for a session to be learned or moved.
func (st *reqState) recall(value string) {
	s, table := st.policy, st.policy.learned.Sessions()
	for i := range s.learnKeys() {
		k := s.learnKey(i, value)
		if i == 0 && !st.hasLKey {
			st.lkey, st.hasLKey = k, true
		}
		id, ok := table.Get(k, st.now)
		if !ok {
			continue
		}
		if i > 0 {
			table.Delete(k)
			k = s.learnKey(0, value)
			table.Put(k, id, st.now)
		}
		st.lkey, st.tok, st.valid = k, affinity.Token{Upstream: id}, true
		st.session = k.Hash()
		return
	}
}

// learn records what the response sets (learn mode): each value now routes
// to the upstream that answered, and a deletion forgets the request's
// value. A value already learned for that upstream is only refreshed.
func (st *reqState) learn(h http.Header, now time.Time) {
	s := st.policy
	table := s.learned.Sessions()
	s.carrier.learned(h, now, func(v string, deleted bool) {
		if deleted {
			// The session the request carried ends, whatever value the
			// deleting line holds (usually none).
			if st.hasLKey {
				table.Delete(st.lkey)
			}
			return
		}
		table.Put(s.learnKey(0, v), st.chosenID, now)
	})
}

// tokenSession names a token's session for the upstream's sessions seen:
// its upstream and issue time, what tell tokens apart.
func tokenSession(upstream uint64, issued uint32) uint64 {
	return xxhash.Sum64(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(make([]byte, 0, 12), upstream), issued))
}

// learnKeys is how many keys a learned value may be under: one per key of
// the keyring, or one with a shared store, which keys entries with its own
// HMAC, the same in every instance.
func (s *StickyCookie) learnKeys() int {
	if s.learned.Sessions().Backing() != nil {
		return 1
	}
	return s.keys.Len()
}

// learnKey is the table key of a learned value under key i: an HMAC under
// the keyring's key i, or with a shared store the value's NamedKey, which
// the store's HMAC keys.
func (s *StickyCookie) learnKey(i int, value string) affinity.ClientKey {
	if s.learned.Sessions().Backing() != nil {
		return affinity.NamedKey(value)
	}
	return s.keys.ValueKey(i, value)
}

// routed notes the backend's own value of a rewrite-mode request (the
// first one): it routes the session while it has no valid token.
func (st *reqState) routed(orig string) {
	if !st.hasOrig {
		st.orig, st.hasOrig = orig, true
	}
}

// setCookie sets the insert-mode token t on the response (a cookie, or a
// header), replacing one an earlier attempt of this request set, so the
// client gets exactly one.
func (s *StickyCookie) setCookie(w http.ResponseWriter, secure bool, t affinity.Token) {
	var buf [64]byte
	s.carrier.insert(w, secure, s.keys.AppendToken(buf[:0], t))
}

// removeSetCookie removes the Set-Cookie lines for cookie name.
func removeSetCookie(h http.Header, name string) {
	lines := h["Set-Cookie"]
	out := lines[:0]
	for _, l := range lines {
		if SetCookieName(l) != name {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		delete(h, "Set-Cookie")
	} else {
		h["Set-Cookie"] = out
	}
}

// routeToken is the rewrite-mode token for the request's last selection.
func (st *reqState) routeToken() string {
	var buf [64]byte
	return string(st.policy.keys.AppendToken(buf[:0], affinity.Token{
		Kind: affinity.KindRoute, Upstream: st.chosenID, Issued: st.issued,
	}))
}

func (s *StickyCookie) setLogger(l *zap.Logger) {
	s.logger, s.decisions = l, decisionlog.New(l)
}

func (s *StickyCookie) logDecision(r *http.Request, upstream string, res affinity.Result, reason affinity.Reason, msg string) {
	// A rebind is news when it re-issues the cookie (insert mode); in
	// rewrite mode it repeats on every request until the backend sets its
	// cookie again.
	c := s.decisions.Check(res == affinity.ResultRebind && !s.rewrite && msg == "")
	if c == nil {
		return
	}
	fields := []zap.Field{
		zap.String("policy", s.policy),
		zap.String(s.carrier.kind(), s.Name),
		zap.String("upstream", upstream),
		zap.String("result", res.String()),
	}
	if reason != affinity.ReasonNone {
		fields = append(fields, zap.String("reason", reason.String()))
	}
	if msg != "" {
		fields = append(fields, zap.String("detail", msg))
	}
	c.Write(fields...)
}

// Interface guards
var (
	_ reverseproxy.Selector = (*StickyCookie)(nil)
	_ caddy.Provisioner     = (*StickyCookie)(nil)
	_ caddy.CleanerUpper    = (*StickyCookie)(nil)
	_ caddyfile.Unmarshaler = (*StickyCookie)(nil)
)
