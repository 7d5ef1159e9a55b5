package header

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-affinity/caddy-affinity/cookie"
	"github.com/caddy-affinity/caddy-affinity/internal/parse"
	"github.com/caddy-affinity/caddy-affinity/store"
)

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy sticky_header <header-name> {
//		mode            rewrite|insert|learn|hash
//		secret          <key> [<key>...]
//		idle_timeout    <duration>
//		max_lifetime    <duration>
//		fallback        <policy> [<args...>] [{ ... }]
//		on_failure      rebind|strict|temporary
//		balance_factor  <float>
//		persist_timeout <duration>
//		max_sessions    <count|size>
//		store           memory | redis <address> [{ ... }]
//	}
func (s *StickyHeader) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume policy name
	seen := parse.Options{}
	if !d.NextArg() {
		return d.Err("sticky_header: expected the name of the header that carries the session")
	}
	s.Name = d.Val()
	seen["name"] = d.Line()
	if d.NextArg() {
		return d.Errf("sticky_header: expected one argument (the header name), got extra '%s'", d.Val())
	}
	for d.NextBlock(0) {
		if err := seen.Start(d); err != nil {
			return err
		}
		var err error
		switch d.Val() {
		case "mode":
			s.Mode, err = parse.Enum(d, ModeRewrite, ModeInsert, ModeLearn, ModeHash)
		case "secret", "secrets":
			s.Secrets, err = cookie.ParseSecrets(d, seen)
		case "idle_timeout":
			s.IdleTimeout, err = parse.Duration(d)
		case "max_lifetime":
			s.MaxLifetime, err = parse.Duration(d)
		case "fallback":
			s.FallbackRaw, err = parse.Module(d, "http.reverse_proxy.selection_policies", "policy")
		case "on_failure":
			s.OnFailure, err = parse.Enum(d, "rebind", "strict", "temporary")
		case "balance_factor":
			s.BalanceFactor, err = parse.Float(d, 1, 100)
			if err == nil && s.BalanceFactor == 1 {
				err = d.Errf("balance_factor: expected a number greater than 1 (e.g. 1.25), got '1'")
			}
		case "persist_timeout":
			s.PersistTimeout, err = parse.Duration(d)
		case "max_sessions":
			s.MaxSessions, s.MaxSessionsBytes, err = parse.CountOrSize(d)
		case "store":
			s.Store, err = store.Parse(d)
		default:
			return parse.Unknown(d)
		}
		if err != nil {
			return err
		}
	}
	if err := s.validate(); err != nil {
		if seen["secrets"] > 0 && seen["secret"] == 0 {
			seen["secret"] = seen["secrets"]
		}
		return seen.WrapErr(d, "sticky_header", err)
	}
	return nil
}
