package caddyaffinity

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/caddy-affinity/caddy-affinity/affinity"
	parse "github.com/caddy-affinity/caddy-affinity/caddyfile"
	"github.com/caddy-affinity/caddy-affinity/cookie"
	"github.com/caddy-affinity/caddy-affinity/internal/decisionlog"
	"github.com/caddy-affinity/caddy-affinity/ip"
)

func init() {
	caddy.RegisterModule(new(IPAffinity))
}

// IPPolicyName labels the HTTP ip_affinity policy's counters and metrics.
const IPPolicyName = "ip_affinity"

// IPAffinity is a selection policy that keeps each client IP (or prefix)
// on one upstream by consistent hashing, with O(1) lookups, bounded loads
// and an optional session table. It agrees with the layer4 ip_affinity
// policy: the same client and the same upstream addresses give the same
// upstream in both, and in every Caddy instance.
type IPAffinity struct {
	// First, within 32 bytes: what every request reads (in a busy server
	// each cache line a selection touches is likely a miss). One line as
	// long as Go's size class for this struct puts it at a multiple of 32
	// bytes, as its 352 bytes do now.
	last atomic.Pointer[lastPool] // the pool Select saw last (8 bytes)
	// triedKey names the request variable holding the upstreams earlier
	// attempts of a request used, one per instance (a policy may be
	// another's fallback).
	triedKey string
	remote   bool  // Source is remote
	plain    bool  // a pure hash: no session table, no bounded loads
	logHits  bool  // decide logs routine decisions
	v4, v6   uint8 // the prefix lengths

	// Which address identifies the client: `client` (default) is Caddy's
	// client IP, which honours the server's trusted_proxies (so a
	// forwarded-for header counts only from a trusted proxy); `remote` is
	// the TCP peer.
	Source string `json:"source,omitempty"`

	ip.Config

	// The selection policy used when the hash finds no available upstream,
	// or the client address is not an IP (a unix-socket listener). Default:
	// none, so no upstream when none is available, and a random one (with a
	// warning, logged once) for a client address that is not an IP.
	FallbackRaw json.RawMessage `json:"fallback,omitempty" caddy:"namespace=http.reverse_proxy.selection_policies inline_key=policy"`

	decide decisionlog.Logger
	pools  affinity.PoolCache[*reverseproxy.Upstream, *affinity.IPPool]

	fallback reverseproxy.Selector
	static   []string // the parent's static upstreams, retained
	logger   *zap.Logger
	now      func() time.Time
	noIPOnce sync.Once
}

// lastPool is the pool Select saw last, by the identity of the slice, with
// a copy of its state: Caddy passes its static upstreams' slice on every
// request, and one load then finds both.
type lastPool struct {
	first *(*reverseproxy.Upstream) // &pool[0]
	n     int
	affinity.IPPool
}

// poolState returns the state of pool and keeps it as the last one (Select
// checks that first).
func (s *IPAffinity) poolState(pool reverseproxy.UpstreamPool) *affinity.IPPool {
	drops := s.pools.Drops()
	p, same := s.pools.GetSame(pool)
	if same {
		// Dynamic upstreams are a new slice each time: not worth keeping.
		lp := &lastPool{first: &pool[0], n: len(pool), IPPool: *p}
		s.last.Store(lp)
		if s.pools.Drops() != drops {
			// The state may have been dropped before it was kept, where
			// Drop could not see it (its counters are released).
			s.last.CompareAndSwap(lp, nil)
		}
	}
	return p
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
	s.setLogger(ctx.Logger())
	s.triedKey = affinity.VarKey(IPPolicyName)
	if s.now == nil {
		s.now = time.Now
	}
	if s.Source == "" {
		s.Source = "client"
	}
	if err := s.Validate(); err != nil {
		return err
	}
	if err := s.Config.Provision(ctx, IPPolicyName, ""); err != nil {
		return err
	}
	s.remote = s.Source == "remote"
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv != nil && !s.remote {
		if w := spoofableClientWarning(srv); w != "" {
			s.logger.Warn(w)
		}
	}
	s.v4, s.v6 = uint8(s.IPv4Prefix), uint8(s.IPv6Prefix)
	s.plain = s.Sessions() == nil && s.BalanceFactor == 0
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
	s.static = cookie.RegisterParentUpstreams(ctx, IPPolicyName)
	s.pools.Addr = func(u *reverseproxy.Upstream) string { return u.Dial }
	s.pools.Build = func(addrs []string) *affinity.IPPool { return affinity.NewIPPool(IPPolicyName, addrs) }
	s.pools.Drop = func(p *affinity.IPPool) {
		// The copy Select keeps must not outlive the state: its counters
		// are released with it.
		if lp := s.last.Load(); lp != nil && lp.Table == p.Table {
			s.last.CompareAndSwap(lp, nil)
		}
		p.Release(IPPolicyName)
	}
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

func (s *IPAffinity) setLogger(l *zap.Logger) {
	s.logger, s.decide = l, decisionlog.New(l)
	s.logHits = s.decide.Enabled(false)
}

// Validate checks s.
func (s *IPAffinity) Validate() error {
	switch s.Source {
	case "", "client", "remote":
	default:
		return fmt.Errorf("source: must be client or remote, got %q", s.Source)
	}
	return s.Config.Validate()
}

// Cleanup releases the session table and the upstreams this config made
// known.
func (s *IPAffinity) Cleanup() error {
	s.pools.Close()
	affinity.Release(IPPolicyName, s.static...)
	return s.Config.Cleanup()
}

// Select returns the upstream of the request's client.
//
// The common case, a pure hash on a request's first attempt whose upstream
// is available, is written out here in as few instructions and cache lines
// as it takes: in a loaded Caddy this selection measured slower than
// client_ip_hash's until it was (make bench times both inside Caddy, at
// once). It gives what selectFull would; anything else goes there.
func (s *IPAffinity) Select(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	if len(pool) == 0 {
		return nil
	}
	// One lookup of the vars map serves the client IP and the retry state:
	// walking the request's context chain is the costliest step here.
	vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	if !s.plain || affinity.AnyDraining() {
		return s.selectFull(pool, r, w, vars, nil)
	}
	if _, retry := vars[s.triedKey]; retry {
		return s.selectFull(pool, r, w, vars, nil)
	}
	h, ok := affinity.HashHostAddr(s.clientAddr(r, vars), int(s.v4), int(s.v6))
	if !ok {
		return s.selectFull(pool, r, w, vars, nil)
	}
	var p *affinity.IPPool
	if lp := s.last.Load(); lp != nil && lp.n == len(pool) && lp.first == &pool[0] {
		p = &lp.IPPool
	} else {
		p = s.poolState(pool)
	}
	i, c, dial, ok := p.LookupDirect(h)
	if !ok {
		if i = p.Table.Lookup(h); i < 0 {
			return s.selectFull(pool, r, w, vars, nil)
		}
		c, dial = p.Counters[i], p.Addrs[i]
	}
	u := pool[i]
	if dial != u.Dial || !u.Available() {
		// A stale pool state (see IPPool.Stale), or the upstream is down.
		return s.selectFull(pool, r, w, vars, nil)
	}
	c.Record(affinity.ResultHit, affinity.ReasonNone)
	if vars != nil {
		vars[s.triedKey] = u
	}
	if s.logHits {
		s.logHit(r, vars, u)
	}
	return u
}

// logHit logs a decision of Select's common case.
func (s *IPAffinity) logHit(r *http.Request, vars map[string]any, u *reverseproxy.Upstream) {
	addr, _ := affinity.ParseHostAddr(s.clientAddr(r, vars))
	ip.LogDecision(s.decide, IPPolicyName, affinity.MaskClient(addr, int(s.v4), int(s.v6)), u.Dial, affinity.ResultHit, false)
}

// SelectSubset is Select among the upstreams of pool that skip does not
// exclude, for a policy whose fallback this is: handing it the whole pool
// with a filter, rather than a new slice for each subset, keeps the hash
// table of the whole pool, where every distinct subset would cost a table
// of its own (a partial outage yields many).
func (s *IPAffinity) SelectSubset(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter, skip func(*reverseproxy.Upstream) bool) *reverseproxy.Upstream {
	if len(pool) == 0 {
		return nil
	}
	vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	return s.selectFull(pool, r, w, vars, skip)
}

// selectFull is every case: session tables, bounded loads, draining,
// retries, unavailable upstreams, clients without an IP, and the
// upstreams a caller excludes (skip, or nil).
func (s *IPAffinity) selectFull(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter, vars map[string]any, skip func(*reverseproxy.Upstream) bool) *reverseproxy.Upstream {
	addr, ok := affinity.ParseHostAddr(s.clientAddr(r, vars))
	if !ok {
		if skip != nil {
			// Rare (a unix-socket listener): the fallback gets a subset.
			pool = cookie.Without(pool, skip)
		}
		if s.fallback == nil {
			// No IP to be affine to (a unix-socket listener, say): serve
			// the request rather than fail it.
			s.noIPOnce.Do(func() {
				s.logger.Warn("client address is not an IP: choosing upstreams at random; set a fallback policy to choose otherwise",
					zap.String("remote_addr", r.RemoteAddr))
			})
			return reverseproxy.RandomSelection{}.Select(pool, r, w)
		}
		return s.fallback.Select(pool, r, w)
	}
	k := affinity.MaskClient(addr, s.IPv4Prefix, s.IPv6Prefix)
	p := s.pools.Get(pool)
	var load func(int) int
	if s.BalanceFactor > 0 {
		load = func(i int) int { return pool[i].NumRequests() }
	}
	var now time.Time
	if s.Sessions() != nil {
		now = s.now()
	}
	// Caddy calls Select again for each retry of a request: the upstreams
	// that already failed it are passed over (see ChooseIP).
	tried := triedUpstreams(vars, s.triedKey)
	avail := func(i int) bool { return pool[i].Available() }
	if skip != nil {
		avail = func(i int) bool { return pool[i].Available() && !skip(pool[i]) }
	}
	var failed func(i int) bool
	if tried != nil {
		failed = func(i int) bool { return triedDial(tried, pool[i].Dial) }
	}
	i, res := affinity.ChooseIP(s.Options(), s.Sessions(), p, k, now, avail, failed, load)
	if p.Stale(i, pool[max(i, 0)].Dial) {
		p = s.pools.Refresh(pool)
		i, res = affinity.ChooseIP(s.Options(), s.Sessions(), p, k, now, avail, failed, load)
	}
	if i < 0 {
		if skip != nil {
			pool = cookie.Without(pool, skip)
		}
		return s.fallbackSelect(pool, r, w)
	}
	if failed != nil && failed(i) {
		tried = nil // a new round of the pool began
	}
	rememberTried(vars, s.triedKey, tried, pool[i])
	if table := s.Sessions() != nil; s.decide.Enabled(ip.Notable(res, table)) {
		ip.LogDecision(s.decide, IPPolicyName, k, pool[i].Dial, res, table)
	}
	return pool[i]
}

func (s *IPAffinity) fallbackSelect(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	if s.fallback == nil {
		return nil
	}
	return s.fallback.Select(pool, r, w)
}

// triedDial reports whether an earlier attempt used the upstream at dial.
// It compares addresses: dynamic upstreams are new objects on every attempt.
func triedDial(tried []*reverseproxy.Upstream, dial string) bool {
	for _, t := range tried {
		if t.Dial == dial {
			return true
		}
	}
	return false
}

// triedUpstreams returns the upstreams earlier attempts of the request
// used. The first attempt stores the bare pointer (no allocation); only a
// retry makes a slice.
func triedUpstreams(vars map[string]any, key string) []*reverseproxy.Upstream {
	switch v := vars[key].(type) {
	case *reverseproxy.Upstream:
		return []*reverseproxy.Upstream{v}
	case []*reverseproxy.Upstream:
		return v
	}
	return nil
}

func rememberTried(vars map[string]any, key string, tried []*reverseproxy.Upstream, up *reverseproxy.Upstream) {
	if vars == nil {
		return
	}
	if tried == nil {
		vars[key] = up
		return
	}
	vars[key] = append(tried, up)
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
	_ reverseproxy.Selector = (*IPAffinity)(nil)
	_ cookie.SubsetSelector = (*IPAffinity)(nil)
	_ caddy.Provisioner     = (*IPAffinity)(nil)
	_ caddy.Validator       = (*IPAffinity)(nil)
	_ caddy.CleanerUpper    = (*IPAffinity)(nil)
	_ caddyfile.Unmarshaler = (*IPAffinity)(nil)
)
