package cookie

import (
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-affinity/caddy-affinity/internal/parse"
	"github.com/caddy-affinity/caddy-affinity/store"
)

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy sticky_cookie [<name>] {
//		mode           insert|rewrite|learn
//		secret         <key> [<key>...]
//		max_age        <duration>
//		idle_timeout   <duration>
//		max_lifetime   <duration>
//		max_sessions   <count|size>
//		store          memory | redis <address> [{ ... }]
//		path           <path>
//		domain         <domain>
//		secure         auto|always|never
//		same_site      auto|lax|strict|none
//		http_only      on|off
//		forward_cookie on|off
//		nocache        on|off
//		fallback       <policy> [<args...>] [{ ... }]
//		on_failure     rebind|strict|temporary
//	}
func (s *StickyCookie) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume policy name
	seen := parse.Options{}
	if d.NextArg() {
		s.Name = d.Val()
		seen["name"] = d.Line()
		if !validCookieName(s.Name) {
			return d.Errf("sticky_cookie: '%s' is not a valid cookie name", s.Name)
		}
	}
	if d.NextArg() {
		return d.Errf("sticky_cookie: expected at most one argument (the cookie name), got extra '%s'", d.Val())
	}
	for d.NextBlock(0) {
		if err := seen.Start(d); err != nil {
			return err
		}
		var err error
		switch d.Val() {
		case "mode":
			s.Mode, err = parse.Enum(d, ModeInsert, ModeRewrite, ModeLearn)
		case "secret", "secrets":
			s.Secrets, err = ParseSecrets(d, seen)
		case "max_age":
			s.MaxAge, err = parse.Duration(d)
		case "idle_timeout":
			s.IdleTimeout, err = parse.Duration(d)
		case "max_lifetime":
			s.MaxLifetime, err = parse.Duration(d)
		case "path":
			s.Path, err = parse.OneArg(d)
			if err == nil && (s.Path == "" || s.Path[0] != '/') {
				return d.Errf("path: must start with /, got '%s'", s.Path)
			}
		case "domain":
			s.Domain, err = parse.OneArg(d)
		case "secure":
			s.Secure, err = parse.Enum(d, "auto", "always", "never")
		case "same_site":
			s.SameSite, err = parse.Enum(d, "auto", "lax", "strict", "none")
		case "http_only":
			var on bool
			on, err = parse.OnOff(d)
			s.HTTPOnly = &on
		case "forward_cookie":
			s.ForwardCookie, err = parse.OnOff(d)
		case "nocache":
			s.NoCache, err = parse.OnOff(d)
		case "max_sessions":
			s.MaxSessions, s.MaxSessionsBytes, err = parse.CountOrSize(d)
		case "store":
			s.Store, err = store.Parse(d)
		case "fallback":
			s.FallbackRaw, err = parse.Module(d, "http.reverse_proxy.selection_policies", "policy")
		case "on_failure":
			s.OnFailure, err = parse.Enum(d, "rebind", "strict", "temporary")
		default:
			return parse.Unknown(d)
		}
		if err != nil {
			return err
		}
	}
	// Checks between options, here too so that the error names the line.
	if err := s.validate(); err != nil {
		return seen.WrapErr(d, "sticky_cookie", err)
	}
	return nil
}

// ParseSecrets parses a secret (or secrets) option under the dispenser's
// cursor: one or more keys, each at least 16 bytes unless a placeholder,
// whose value is known only when the config loads.
func ParseSecrets(d *caddyfile.Dispenser, seen parse.Options) ([]string, error) {
	opt := d.Val()
	if opt == "secrets" && seen["secret"] > 0 || opt == "secret" && seen["secrets"] > 0 {
		return nil, d.Errf("%s: option given more than once (secret and secrets are the same option)", opt)
	}
	keys := d.RemainingArgs()
	if len(keys) == 0 {
		return nil, d.Errf("%s: expected at least one key", opt)
	}
	for i, sec := range keys {
		if !strings.Contains(sec, "{") && len(sec) < minSecretLen {
			return nil, d.Errf("%s: key %d is %d bytes, shorter than the %d required (generate one with: openssl rand -base64 32)", opt, i+1, len(sec), minSecretLen)
		}
	}
	return keys, nil
}
