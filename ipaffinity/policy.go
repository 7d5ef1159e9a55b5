package ipaffinity

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-affinity/caddy-affinity/affinity"
	"github.com/caddy-affinity/caddy-affinity/internal/caddyutil"
	"github.com/caddy-affinity/caddy-affinity/internal/parse"
)

func init() {
	caddy.RegisterModule(new(IPAffinity))
}

// PolicyName labels the HTTP ip_affinity policy's counters and metrics.
const PolicyName = "ip_affinity"

// IPAffinity is a selection policy that keeps each client IP (or prefix)
// on one upstream by consistent hashing, with O(1) lookups, bounded loads
// and an optional session table. It agrees with the layer4 ip_affinity
// policy: the same client and the same upstream addresses give the same
// upstream in both, and in every Caddy instance.
type IPAffinity struct {
	// First, with the core's first fields: what every selection reads,
	// in one cache line.
	remote bool // Source is remote
	core   Core[*reverseproxy.Upstream]

	// Which address identifies the client: `client` (default) is Caddy's
	// client IP, which honours the server's trusted_proxies (so a
	// forwarded-for header counts only from a trusted proxy); `remote` is
	// the TCP peer.
	Source string `json:"source,omitempty"`

	Config

	// The selection policy used when the hash finds no available upstream,
	// or the client address is not an IP (a unix-socket listener). Default:
	// none, so no upstream when none is available, and a random one (with a
	// warning, logged once) for a client address that is not an IP.
	FallbackRaw json.RawMessage `json:"fallback,omitempty" caddy:"namespace=http.reverse_proxy.selection_policies inline_key=policy"`

	fallback reverseproxy.Selector
	static   []string // the parent's static upstreams, retained
}

// CaddyModule returns the Caddy module information.
func (*IPAffinity) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.ip_affinity",
		New: func() caddy.Module { return new(IPAffinity) },
	}
}

// Provision sets up s.
func (s *IPAffinity) Provision(ctx caddy.Context) error {
	switch s.Source {
	case "":
		s.Source = "client"
	case "client", "remote":
	default:
		return fmt.Errorf("source: must be client or remote, got %q", s.Source)
	}
	s.remote = s.Source == "remote"
	if err := s.Config.Provision(ctx, PolicyName, ""); err != nil {
		return err
	}
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv != nil && s.Source == "client" {
		if w := spoofableClientWarning(srv); w != "" {
			ctx.Logger().Warn(w)
		}
	}
	if s.FallbackRaw != nil {
		mod, err := ctx.LoadModule(s, "FallbackRaw")
		if err != nil {
			return fmt.Errorf("loading fallback selection policy: %v", err)
		}
		s.fallback = mod.(reverseproxy.Selector)
	}
	if err := affinity.RegisterMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	s.static = caddyutil.RegisterParentUpstreams(ctx, PolicyName)
	s.core.Init(&s.Config, Adapter[*reverseproxy.Upstream]{
		Policy:   PolicyName,
		Addr:     func(u *reverseproxy.Upstream) string { return u.Dial },
		Fallback: s.fallback != nil,
		Once:     !caddyutil.ParentRetries(ctx),
	}, ctx.Logger())
	return nil
}

// spoofableClientWarning says why source client can be chosen by the client
// on srv, or "". With trusted_proxies but without trusted_proxies_strict,
// Caddy takes the leftmost X-Forwarded-For entry, which a proxy that
// appends (nginx's $proxy_add_x_forwarded_for, cloud load balancers) passes
// on from the client: the client picks its upstream and can fill the
// session table with made-up addresses.
func spoofableClientWarning(srv *caddyhttp.Server) string {
	if len(srv.TrustedProxiesRaw) == 0 || srv.TrustedProxiesStrict > 0 {
		return ""
	}
	return "ip_affinity: source client with trusted_proxies but without trusted_proxies_strict takes the leftmost X-Forwarded-For entry, which clients behind appending proxies choose; add trusted_proxies_strict to the server's options"
}

// Cleanup releases the session table and the upstreams this config made
// known.
func (s *IPAffinity) Cleanup() error {
	s.core.Close()
	affinity.Release(PolicyName, s.static...)
	return s.Config.Cleanup()
}

// Select returns the upstream of the request's client.
func (s *IPAffinity) Select(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	if len(pool) == 0 {
		return nil
	}
	// One lookup of the vars map serves the client IP and the retry state:
	// walking the request's context chain is the costliest step here.
	vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	addr := s.clientAddr(r, vars)
	if s.core.Shortcut() {
		if h, ok := s.core.HashHost(addr); ok {
			if i := s.core.Hit(pool, h, vars, (*reverseproxy.Upstream).Available); i >= 0 {
				return pool[i]
			}
		}
	}
	return s.selectAmong(pool, r, w, vars, addr, nil)
}

// SelectSubset is Select among the upstreams of pool that skip does not
// exclude (nil: all), for a policy whose fallback this is: handing it the
// whole pool with a filter, rather than a new slice for each subset, keeps
// the hash table of the whole pool, where every distinct subset would cost
// a table of its own (a partial outage yields many).
func (s *IPAffinity) SelectSubset(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter, skip func(*reverseproxy.Upstream) bool) *reverseproxy.Upstream {
	if len(pool) == 0 {
		return nil
	}
	vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	return s.selectAmong(pool, r, w, vars, s.clientAddr(r, vars), skip)
}

// selectAmong is SelectSubset for the client at addr.
func (s *IPAffinity) selectAmong(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter, vars map[string]any, addr string, skip func(*reverseproxy.Upstream) bool) *reverseproxy.Upstream {
	client, _ := affinity.ParseHostAddr(addr)
	up := Upstreams[*reverseproxy.Upstream]{Available: (*reverseproxy.Upstream).Available, Skip: skip}
	if s.core.opts.BalanceFactor > 0 {
		up.Load = (*reverseproxy.Upstream).NumRequests
	}
	i := s.core.Select(pool, client, vars, up)
	if i >= 0 {
		return pool[i]
	}
	if skip != nil {
		pool = caddyutil.Without(pool, skip)
	}
	switch {
	case s.fallback != nil:
		return caddyutil.PickKeyless(s.fallback, pool, r, w, vars, s.core.KeylessKey())
	case i == NotIP:
		// No IP to be affine to: serve the request rather than fail it.
		return caddyutil.PickKeyless(reverseproxy.RandomSelection{}, pool, r, w, vars, s.core.KeylessKey())
	}
	return nil
}

// clientAddr is the address that identifies the client.
func (s *IPAffinity) clientAddr(r *http.Request, vars map[string]any) string {
	if !s.remote {
		if v, ok := vars[caddyhttp.ClientIPVarKey].(string); ok && v != "" {
			return v
		}
	}
	return r.RemoteAddr
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy ip_affinity {
//		source          client|remote
//		ipv4_prefix     <bits>
//		ipv6_prefix     <bits>
//		balance_factor  <float>
//		persist_timeout <duration>
//		max_sessions    <count|size>
//		max_sessions_per_network <count>
//		fallback        <policy> [<args...>] [{ ... }]
//	}
func (s *IPAffinity) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return s.Config.ParseBlock(d, func(d *caddyfile.Dispenser) error {
		var err error
		switch d.Val() {
		case "source":
			s.Source, err = parse.Enum(d, "client", "remote")
		case "fallback":
			s.FallbackRaw, err = parse.Module(d, "http.reverse_proxy.selection_policies", "policy")
		default:
			err = parse.Unknown(d)
		}
		return err
	})
}

// Interface guards
var (
	_ reverseproxy.Selector    = (*IPAffinity)(nil)
	_ caddyutil.SubsetSelector = (*IPAffinity)(nil)
	_ caddy.Provisioner        = (*IPAffinity)(nil)
	_ caddy.CleanerUpper       = (*IPAffinity)(nil)
	_ caddyfile.Unmarshaler    = (*IPAffinity)(nil)
)
