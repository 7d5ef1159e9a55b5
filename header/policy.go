// Package header is header affinity: the sticky_header selection policy,
// for clients that carry a header and no cookie jar (MCP clients and their
// Mcp-Session-Id, API clients, agents). Its insert and rewrite modes are
// sticky_cookie's engine with the token in a header (package cookie); its
// hash mode is client-IP affinity's core keyed by the header's value
// (package ipaffinity).
package header

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"golang.org/x/net/http/httpguts"

	"github.com/caddy-affinity/caddy-affinity/affinity"
	"github.com/caddy-affinity/caddy-affinity/cookie"
	"github.com/caddy-affinity/caddy-affinity/internal/caddyutil"
	"github.com/caddy-affinity/caddy-affinity/ipaffinity"
	"github.com/caddy-affinity/caddy-affinity/store"
)

func init() {
	caddy.RegisterModule(new(StickyHeader))
}

// PolicyName labels this policy's counters and metrics.
const PolicyName = "sticky_header"

// Modes of StickyHeader.
const (
	ModeRewrite = "rewrite"
	ModeInsert  = "insert"
	ModeHash    = "hash"
	ModeLearn   = "learn"
)

// StickyHeader is a selection policy that keeps each session on one
// upstream by a request header the client sends on every request.
//
// In rewrite mode (the default) the backend mints the header (an MCP
// server's Mcp-Session-Id) and the affinity handler prefixes its value in
// the response with a signed route token ("TOKEN~VALUE"); requests that
// echo it go to that upstream, and the backend gets its own value back. In
// insert mode Caddy mints the header: a request without a valid one is
// placed by the fallback and its response carries `<name>: TOKEN`, which
// the backend never sees. In hash mode the client chooses the key (a
// tenant or user header): its value is hashed into the consistent table of
// ip_affinity, with bounded loads and an optional session table. Invalid,
// tampered or foreign tokens count as absent: never an error status.
type StickyHeader struct {
	// The header that carries the session, matched case-insensitively.
	// Required.
	Name string `json:"name,omitempty"`

	// How the session is kept: `rewrite` (the backend sets the header,
	// Caddy prefixes a route token; needs the affinity handler), `insert`
	// (Caddy sets the header), `learn` (the backend sets the header, Caddy
	// records its value and routes by it, leaving it unchanged; needs the
	// affinity handler) or `hash` (the client's value is hashed).
	// Default: rewrite.
	Mode string `json:"mode,omitempty"`

	// Keys that sign and verify tokens (insert and rewrite modes), as for
	// sticky_cookie: the first signs, every one verifies. Default: a random
	// key kept in Caddy's storage.
	Secrets []string `json:"secrets,omitempty"`

	// A sliding, server-side idle timeout: in insert mode a token not
	// refreshed within it counts as absent, and the header is re-issued
	// once it has aged a quarter of the timeout (default: none); in learn
	// mode a learned value no request carried for that long is forgotten
	// (default: 30m).
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`

	// The absolute lifetime of a binding, checked against the signed issue
	// time (insert and rewrite modes) or against when the value was
	// learned (learn mode). Default: none.
	MaxLifetime caddy.Duration `json:"max_lifetime,omitempty"`

	// The selection policy for requests without a valid token (or, in hash
	// mode, without the header), and for rebinding. Default: `least_conn`.
	FallbackRaw json.RawMessage `json:"fallback,omitempty" caddy:"namespace=http.reverse_proxy.selection_policies inline_key=policy"`

	// What to do when the session's upstream is unavailable (insert and
	// rewrite modes): `rebind` moves it, on the same request when retries
	// allow; `strict` selects no upstream (503); `temporary` sends its
	// requests to a replacement without moving it, until it recovers.
	// Default: rebind.
	OnFailure string `json:"on_failure,omitempty"`

	// Bounded loads (hash mode), as ip_affinity's balance_factor.
	// Default: 0, off.
	BalanceFactor float64 `json:"balance_factor,omitempty"`

	// How long the session table remembers a key's upstream after its last
	// request (hash mode). Default: 0, no table (pure consistent hashing).
	PersistTimeout caddy.Duration `json:"persist_timeout,omitempty"`

	// Bound of the session table in entries (hash and learn modes).
	// Default: 100000.
	MaxSessions int `json:"max_sessions,omitempty"`

	// Bound of the session table as a memory size in bytes (hash and learn
	// modes); overrides max_sessions.
	MaxSessionsBytes uint64 `json:"max_sessions_bytes,omitempty"`

	// Where the table of learn or hash mode lives: in this process
	// (memory, the default) or in a Redis store that every instance
	// shares, with this process's table as its cache (see package store).
	Store *store.Config `json:"store,omitempty"`

	tokens   *cookie.StickyCookie // insert and rewrite modes
	hash     ipaffinity.Config    // hash mode
	core     ipaffinity.Core[*reverseproxy.Upstream]
	canon    string // Name in canonical form
	fallback reverseproxy.Selector
	static   []string
}

// CaddyModule returns the Caddy module information.
func (*StickyHeader) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.sticky_header",
		New: func() caddy.Module { return new(StickyHeader) },
	}
}

// Provision sets up s.
func (s *StickyHeader) Provision(ctx caddy.Context) error {
	if s.Mode == "" {
		s.Mode = ModeRewrite
	}
	if err := s.validate(); err != nil {
		return err
	}
	s.canon = http.CanonicalHeaderKey(s.Name)
	if s.FallbackRaw == nil {
		s.FallbackRaw = caddyconfig.JSONModuleObject(reverseproxy.LeastConnSelection{}, "policy", "least_conn", nil)
	}
	if s.Mode != ModeHash {
		s.tokens = &cookie.StickyCookie{
			Mode: s.Mode, Name: s.canon, Secrets: s.Secrets,
			IdleTimeout: s.IdleTimeout, MaxLifetime: s.MaxLifetime,
			MaxSessions: s.MaxSessions, MaxSessionsBytes: s.MaxSessionsBytes,
			FallbackRaw: s.FallbackRaw, OnFailure: s.OnFailure, Store: s.Store,
		}
		return s.tokens.ProvisionHeader(ctx, PolicyName)
	}
	mod, err := ctx.LoadModule(s, "FallbackRaw")
	if err != nil {
		return fmt.Errorf("loading fallback selection policy: %v", err)
	}
	s.fallback = mod.(reverseproxy.Selector)
	s.hash = ipaffinity.Config{
		BalanceFactor: s.BalanceFactor, PersistTimeout: s.PersistTimeout,
		MaxSessions: s.MaxSessions, MaxSessionsBytes: s.MaxSessionsBytes,
		Store: s.Store, StoreTable: "hash:" + s.canon,
	}
	if err := s.hash.Provision(ctx, PolicyName, "header="+s.canon); err != nil {
		return err
	}
	if err := affinity.RegisterMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	s.static = caddyutil.RegisterParentUpstreams(ctx, PolicyName)
	s.core.Init(&s.hash, ipaffinity.Adapter[*reverseproxy.Upstream]{
		Policy:   PolicyName,
		Addr:     func(u *reverseproxy.Upstream) string { return u.Dial },
		Fallback: true,
		Once:     !caddyutil.ParentRetries(ctx),
	}, ctx.Logger())
	return nil
}

// validate checks the configuration as given; the Caddyfile adapter runs
// it too, so that an error names the line.
func (s *StickyHeader) validate() error {
	mode := s.Mode
	switch mode {
	case "":
		mode = ModeRewrite
	case ModeRewrite, ModeInsert, ModeHash, ModeLearn:
	default:
		return fmt.Errorf("mode: must be rewrite, insert, learn or hash, got %q", s.Mode)
	}
	if s.Name == "" {
		return fmt.Errorf("name: the header that carries the session is required")
	}
	if !httpguts.ValidHeaderFieldName(s.Name) {
		return fmt.Errorf("name: %q is not a valid header name", s.Name)
	}
	switch strings.ToLower(s.Name) {
	case "cookie", "set-cookie", "host", "connection", "content-length", "transfer-encoding", "upgrade", "te", "trailer":
		return fmt.Errorf("name: %q cannot carry a session (use sticky_cookie for cookies)", s.Name)
	}
	switch s.OnFailure {
	case "", "rebind", "strict", "temporary":
	default:
		return fmt.Errorf("on_failure: must be rebind, strict or temporary, got %q", s.OnFailure)
	}
	for _, d := range []struct {
		name string
		d    caddy.Duration
	}{{"idle_timeout", s.IdleTimeout}, {"max_lifetime", s.MaxLifetime}, {"persist_timeout", s.PersistTimeout}} {
		if d.d < 0 {
			return fmt.Errorf("%s: must not be negative", d.name)
		}
	}
	// Options of another mode are refused, not silently ignored.
	for _, o := range []struct {
		name  string
		set   bool
		modes string
	}{
		{"secret", len(s.Secrets) > 0, "insert rewrite learn"},
		{"idle_timeout", s.IdleTimeout != 0, "insert learn"},
		{"max_lifetime", s.MaxLifetime != 0, "insert rewrite learn"},
		{"on_failure", s.OnFailure != "", "insert rewrite learn"},
		{"balance_factor", s.BalanceFactor != 0, "hash"},
		{"persist_timeout", s.PersistTimeout != 0, "hash"},
		{"max_sessions", s.MaxSessions != 0 || s.MaxSessionsBytes != 0, "hash learn"},
		{"store", s.Store.Backed(), "hash learn"},
	} {
		if o.set && !strings.Contains(o.modes, mode) {
			return fmt.Errorf("%s: applies to %s mode only, not %s", o.name, modeList(o.modes), mode)
		}
	}
	if mode == ModeHash {
		if err := (&ipaffinity.Config{BalanceFactor: s.BalanceFactor, PersistTimeout: s.PersistTimeout,
			MaxSessions: s.MaxSessions, MaxSessionsBytes: s.MaxSessionsBytes, Store: s.Store}).Check(); err != nil {
			return err
		}
	}
	return nil
}

// modeList spells "a b c" as "a, b and c".
func modeList(modes string) string {
	m := strings.Fields(modes)
	if len(m) == 1 {
		return m[0]
	}
	return strings.Join(m[:len(m)-1], ", ") + " and " + m[len(m)-1]
}

// Cleanup releases what Provision took.
func (s *StickyHeader) Cleanup() error {
	if s.tokens != nil {
		return s.tokens.Cleanup()
	}
	s.core.Close()
	affinity.Release(PolicyName, s.static...)
	return s.hash.Cleanup()
}

// Select returns the upstream of the request's session.
func (s *StickyHeader) Select(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	if s.tokens != nil {
		return s.tokens.Select(pool, r, w)
	}
	return s.selectHash(pool, r, w)
}

// selectHash is hash mode: the first non-empty value of the header names
// the session.
func (s *StickyHeader) selectHash(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	value := ""
	for _, v := range r.Header[s.canon] {
		if v != "" {
			value = v
			break
		}
	}
	vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	if value == "" || len(pool) == 0 {
		return caddyutil.PickKeyless(s.fallback, pool, r, w, vars, s.core.KeylessKey())
	}
	up := ipaffinity.Upstreams[*reverseproxy.Upstream]{Available: (*reverseproxy.Upstream).Available}
	if s.BalanceFactor > 0 {
		up.Load = (*reverseproxy.Upstream).NumRequests
	}
	if i := s.core.SelectKey(pool, affinity.NamedKey(value), vars, up); i >= 0 {
		return pool[i]
	}
	return caddyutil.PickKeyless(s.fallback, pool, r, w, vars, s.core.KeylessKey())
}

// Interface guards
var (
	_ reverseproxy.Selector = (*StickyHeader)(nil)
	_ caddy.Provisioner     = (*StickyHeader)(nil)
	_ caddy.CleanerUpper    = (*StickyHeader)(nil)
	_ caddyfile.Unmarshaler = (*StickyHeader)(nil)
)
