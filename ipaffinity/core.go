package ipaffinity

import (
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-affinity/caddy-affinity/affinity"
	"github.com/caddy-affinity/caddy-affinity/internal/decisionlog"
)

// Core is the selection of client-IP affinity, run by the HTTP and the
// layer4 policy alike: it owns the pool state (hash table, counters), the
// session table, the upstreams earlier attempts of a request used, the
// answer for a client that has no IP, and the decision log. U is the
// engine's upstream type; the policies are the adapters that describe a
// request to it (Upstreams) and act on its answer.
//
// A policy embeds its Core and calls Init when provisioned. What the
// common case (hit) reads comes first, copied from the config and with the
// pool cache's hot pointer, so that in a busy server, where each cache
// line a selection touches is likely a miss, it is one line.
type Core[U comparable] struct {
	triedKey string
	v4, v6   uint8 // the prefix lengths (IPv6's may be 128)
	// shortcut: Hit may decide: no session table, no bounded loads, and
	// decisions not logged.
	shortcut bool
	// once: the policy's handler never retries, so the upstreams of a
	// request's earlier attempts are not kept (Adapter.Once).
	once     bool
	fallback bool // the policy has a fallback for clients without an IP
	decision decisionlog.Logger
	addr     func(U) string
	pools    affinity.PoolCache[U, affinity.IPPool] // its first field is what Hot reads
	sessions *affinity.SessionTable
	opts     affinity.IPOptions

	policy   string
	logger   *zap.Logger
	now      func() time.Time
	noIPOnce sync.Once
	// keylessKey names the variable of the upstreams a keyless request's
	// attempts used (caddyutil.PickKeyless); "" when once.
	keylessKey string
}

// Adapter is what a policy tells its Core about itself.
type Adapter[U any] struct {
	// Policy is the policy's kind, its label in counters and metrics.
	Policy string
	// Addr returns an upstream's address, its identity.
	Addr func(U) string
	// Fallback: the policy has a fallback for clients without an IP.
	Fallback bool
	// Once: the policy's handler calls it once per request, never for a
	// retry (reverse_proxy without lb_retries or lb_try_duration, layer4
	// proxy without try_duration), so the upstreams earlier attempts used
	// need not be kept: the core then reads and writes nothing in the
	// request's variables.
	Once bool
}

// Upstreams is what the engine knows of a pool's upstreams now.
type Upstreams[U any] struct {
	// Available reports whether an upstream can take the request now.
	Available func(U) bool
	// Load is an upstream's in-flight requests or connections, for
	// bounded loads; nil without balance_factor.
	Load func(U) int
	// Skip, if not nil, excludes some upstreams (a policy whose fallback
	// this is chooses among part of the pool).
	Skip func(U) bool
}

// Answers of Select other than an index.
const (
	// NoUpstream: no upstream is available; the policy's fallback, if
	// any, chooses.
	NoUpstream = -1
	// NotIP: the client address is not an IP (a unix socket); the
	// fallback chooses, or a random upstream without one.
	NotIP = -2
)

// Init provisions c as the core of the policy a describes, over cfg, which
// is provisioned.
func (c *Core[U]) Init(cfg *Config, a Adapter[U], logger *zap.Logger) {
	policy := a.Policy
	c.opts, c.sessions = *cfg.Options(), cfg.Sessions()
	c.policy, c.addr, c.fallback, c.once, c.now = policy, a.Addr, a.Fallback, a.Once, time.Now
	c.triedKey = affinity.VarKey(policy)
	if !c.once {
		c.keylessKey = c.triedKey + "/keyless"
	}
	c.v4, c.v6 = uint8(c.opts.IPv4Prefix), uint8(c.opts.IPv6Prefix)
	c.SetLogger(logger)
	c.pools.Addr = a.Addr
	c.pools.Build = func(addrs []string) affinity.IPPool { return affinity.NewIPPool(policy, addrs) }
	c.pools.Drop = func(p *affinity.IPPool) { p.Release(policy) }
}

// SetLogger sets the logger of warnings and decisions.
func (c *Core[U]) SetLogger(l *zap.Logger) {
	c.logger, c.decision = l, decisionlog.New(l)
	c.shortcut = c.sessions == nil && c.opts.BalanceFactor <= 0 && !c.decision.Enabled(false)
}

// VarKey names the variable in which the core keeps the upstreams earlier
// attempts of a request used.
func (c *Core[U]) VarKey() string { return c.triedKey }

// KeylessKey names the variable in which a request with no key (no client
// IP, no header) keeps the upstreams its fallback's attempts used, or is
// "" when the policy is called once per request (Adapter.Once).
func (c *Core[U]) KeylessKey() string { return c.keylessKey }

// Close releases the pool states, when the config is unloaded.
func (c *Core[U]) Close() { c.pools.Close() }

// Select returns the index in pool of the upstream of the client at
// client (not valid when the address is not an IP), NoUpstream or NotIP.
// vars keeps the upstreams earlier attempts used: Caddy (and caddy-l4)
// call a policy again for each retry of a request, and those that already
// failed it are passed over (see affinity.ChooseIP). vars may be nil.
func (c *Core[U]) Select(pool []U, client netip.Addr, vars map[string]any, up Upstreams[U]) int {
	if !client.IsValid() {
		if !c.fallback {
			c.noIPOnce.Do(func() {
				c.logger.Warn("client address is not an IP: choosing upstreams at random; set a fallback policy to choose otherwise")
			})
		}
		return NotIP
	}
	return c.selectFor(pool, whom{addr: client}, c.kept(vars), up)
}

// SelectKey is Select for the client whose key is k, which is valid: a
// value's the client chose (NamedKey, for sticky_header's hash mode).
func (c *Core[U]) SelectKey(pool []U, k affinity.ClientKey, vars map[string]any, up Upstreams[U]) int {
	return c.selectFor(pool, whom{key: k}, c.kept(vars), up)
}

// whom is whom a selection is for: a key, or an address whose key (its
// masked prefix) is made only when needed, since the common case hashes
// the address directly.
type whom struct {
	addr netip.Addr
	key  affinity.ClientKey // valid if given
}

func (c *Core[U]) key(w whom) affinity.ClientKey {
	if w.key.IsValid() {
		return w.key
	}
	return affinity.MaskClient(w.addr, c.opts.IPv4Prefix, c.opts.IPv6Prefix)
}

// Shortcut reports whether Hit can decide for this policy (no session
// table, no bounded loads, decisions not logged): a policy hashes the
// client for Hit only then.
func (c *Core[U]) Shortcut() bool { return c.shortcut }

// HashAddr is the hash of the client at ip, for Hit.
func (c *Core[U]) HashAddr(ip netip.Addr) uint64 {
	return affinity.HashAddr(ip, int(c.v4), int(c.v6))
}

// HashHost is HashAddr of the IP address of a "host:port" or bare address
// string, read in one pass for IPv4; false if it holds no IP.
func (c *Core[U]) HashHost(s string) (uint64, bool) {
	return affinity.HashHostAddr(s, int(c.v4), int(c.v6))
}

// Hit is Select's common case, which a policy tries first: a request's
// first attempt by the pure hash (no session table, no bounded loads,
// decisions not logged), in the pool seen last, while nothing drains,
// whose upstream is available. h is the client's hash (HashAddr,
// HashHost). It gives what Select would, counted alike, or -1: then
// Select decides. In a loaded server each function and each structure a
// selection reaches is likely a cache miss, so this one function does all
// of it, reading the pool's state from one snapshot.
func (c *Core[U]) Hit(pool []U, h uint64, vars map[string]any, available func(U) bool) int {
	if !c.shortcut || affinity.AnyDraining() {
		return -1
	}
	p := c.pools.Hot(pool)
	if p == nil {
		return -1
	}
	vars = c.kept(vars)
	if vars != nil && vars[c.triedKey] != nil {
		return -1 // a retry (see tried)
	}
	i := p.Table.Lookup(h)
	if i < 0 {
		return -1
	}
	if !available(pool[i]) || p.Stale(i, c.addr(pool[i])) {
		return -1 // down, or the pool changed in place
	}
	p.Upstreams[i].Counters.Record(affinity.ResultHit, affinity.ReasonNone)
	if vars != nil {
		vars[c.triedKey] = pool[i]
	}
	return i
}

// kept is where the upstreams of a request's attempts are kept: vars, or
// nil when the policy is called once per request.
func (c *Core[U]) kept(vars map[string]any) map[string]any {
	if c.once {
		return nil
	}
	return vars
}

func (c *Core[U]) selectFor(pool []U, w whom, vars map[string]any, up Upstreams[U]) int {
	return c.choose(pool, c.pools.Get(pool), w, c.tried(vars), vars, up)
}

// choose is Select's general case: session tables, bounded loads,
// draining, retries, unavailable upstreams, part of a pool.
func (c *Core[U]) choose(pool []U, p *affinity.IPPool, w whom, tried []U, vars map[string]any, up Upstreams[U]) int {
	k := c.key(w)
	sessions := c.sessions
	var now time.Time
	if sessions != nil {
		now = c.now()
	}
	avail := func(i int) bool { return up.Available(pool[i]) }
	if available, skip := up.Available, up.Skip; skip != nil {
		avail = func(i int) bool { return !skip(pool[i]) && available(pool[i]) }
	}
	var failed func(i int) bool
	if tried != nil {
		failed = func(i int) bool { return c.triedAddr(tried, c.addr(pool[i])) }
	}
	var load func(i int) int
	if up.Load != nil {
		load = func(i int) int { return up.Load(pool[i]) }
	}
	i, res := affinity.ChooseIP(&c.opts, sessions, p, k, now, avail, failed, load)
	if p.Stale(i, c.addr(pool[max(i, 0)])) {
		p = c.pools.Refresh(pool)
		i, res = affinity.ChooseIP(&c.opts, sessions, p, k, now, avail, failed, load)
	}
	if i < 0 {
		return NoUpstream
	}
	if failed != nil && failed(i) {
		tried = nil // a new round of the pool began
	}
	c.done(vars, tried, pool[i], w, res)
	return i
}

// done remembers the upstream chosen for the request's next attempt and
// logs the decision if it is to be logged.
func (c *Core[U]) done(vars map[string]any, tried []U, up U, w whom, res affinity.Result) {
	c.remember(vars, tried, up)
	if table := c.sessions != nil; c.decision.Enabled(Notable(res, table)) {
		LogDecision(c.decision, c.policy, c.key(w), c.addr(up), res, table)
	}
}

// tried returns the upstreams earlier attempts of the request used. The
// first attempt stores the bare upstream (no allocation); only a retry
// makes a slice.
func (c *Core[U]) tried(vars map[string]any) []U {
	v := vars[c.triedKey]
	if v == nil {
		return nil
	}
	switch v := v.(type) {
	case U:
		return []U{v}
	case []U:
		return v
	}
	return nil
}

// triedAddr reports whether an earlier attempt used the upstream at addr.
// It compares addresses: dynamic upstreams are new objects on every attempt.
func (c *Core[U]) triedAddr(tried []U, addr string) bool {
	for _, t := range tried {
		if c.addr(t) == addr {
			return true
		}
	}
	return false
}

func (c *Core[U]) remember(vars map[string]any, tried []U, up U) {
	if vars == nil {
		return
	}
	if tried == nil {
		vars[c.triedKey] = up
		return
	}
	vars[c.triedKey] = append(tried, up)
}
