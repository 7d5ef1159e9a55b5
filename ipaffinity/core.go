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
// A policy embeds its Core and calls Init when provisioned. The fields a
// selection reads come first, copied from the config, so that in a busy
// server, where each cache line a selection touches is likely a miss, they
// are a line or two beside the policy's own.
type Core[U comparable] struct {
	sessions *affinity.SessionTable
	triedKey string
	opts     affinity.IPOptions
	pools    affinity.PoolCache[U, affinity.IPPool] // its first field is what Get reads
	decision decisionlog.Logger
	addr     func(U) string
	// fallback: the policy has a fallback for clients without an IP.
	fallback bool

	policy   string
	logger   *zap.Logger
	now      func() time.Time
	noIPOnce sync.Once
	// keylessKey names the variable of the upstreams a keyless request's
	// attempts used (caddyutil.PickKeyless).
	keylessKey string
}

// Upstreams is what the engine knows of a pool's upstreams now, by index.
type Upstreams struct {
	// Available reports whether upstream i can take the request now.
	Available func(i int) bool
	// Load is upstream i's in-flight requests or connections, for bounded
	// loads; nil without balance_factor.
	Load func(i int) int
	// Skip, if not nil, excludes upstream i (a policy whose fallback this
	// is chooses among part of the pool).
	Skip func(i int) bool
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

// Init provisions c as the core of a policy of kind policy (its label in
// counters and metrics) over cfg, which is provisioned: addr is an
// upstream's address (its identity), fallback whether the policy has a
// fallback.
func (c *Core[U]) Init(cfg *Config, policy string, addr func(U) string, logger *zap.Logger, fallback bool) {
	c.opts, c.sessions = *cfg.Options(), cfg.Sessions()
	c.policy, c.addr, c.triedKey, c.fallback, c.now = policy, addr, affinity.VarKey(policy), fallback, time.Now
	c.keylessKey = c.triedKey + "/keyless"
	c.SetLogger(logger)
	c.pools.Addr = addr
	c.pools.Build = func(addrs []string) affinity.IPPool { return affinity.NewIPPool(policy, addrs) }
	c.pools.Drop = func(p *affinity.IPPool) { p.Release(policy) }
}

// SetLogger sets the logger of warnings and decisions.
func (c *Core[U]) SetLogger(l *zap.Logger) {
	c.logger, c.decision = l, decisionlog.New(l)
}

// VarKey names the variable in which the core keeps the upstreams earlier
// attempts of a request used.
func (c *Core[U]) VarKey() string { return c.triedKey }

// KeylessKey names the variable in which a request with no key (no client
// IP, no header) keeps the upstreams its fallback's attempts used.
func (c *Core[U]) KeylessKey() string { return c.keylessKey }

// Close releases the pool states, when the config is unloaded.
func (c *Core[U]) Close() { c.pools.Close() }

// Select returns the index in pool of the upstream of the client at
// client (not valid when the address is not an IP), NoUpstream or NotIP.
// vars keeps the upstreams earlier attempts used: Caddy (and caddy-l4)
// call a policy again for each retry of a request, and those that already
// failed it are passed over (see affinity.ChooseIP). vars may be nil.
func (c *Core[U]) Select(pool []U, client netip.Addr, vars map[string]any, up Upstreams) int {
	if !client.IsValid() {
		if !c.fallback {
			c.noIPOnce.Do(func() {
				c.logger.Warn("client address is not an IP: choosing upstreams at random; set a fallback policy to choose otherwise")
			})
		}
		return NotIP
	}
	return c.selectFor(pool, whom{addr: client}, vars, up)
}

// SelectKey is Select for the client whose key is k, which is valid: a
// value's the client chose (NamedKey, for sticky_header's hash mode).
func (c *Core[U]) SelectKey(pool []U, k affinity.ClientKey, vars map[string]any, up Upstreams) int {
	return c.selectFor(pool, whom{key: k}, vars, up)
}

// whom is whom a selection is for: a key, or an address whose key (its
// masked prefix) is made only when needed, since the common case hashes
// the address directly.
type whom struct {
	addr netip.Addr
	key  affinity.ClientKey // valid if given
}

func (c *Core[U]) hash(w whom) uint64 {
	if w.key.IsValid() {
		return w.key.Hash()
	}
	return affinity.HashAddr(w.addr, c.opts.IPv4Prefix, c.opts.IPv6Prefix)
}

func (c *Core[U]) key(w whom) affinity.ClientKey {
	if w.key.IsValid() {
		return w.key
	}
	return affinity.MaskClient(w.addr, c.opts.IPv4Prefix, c.opts.IPv6Prefix)
}

func (c *Core[U]) selectFor(pool []U, w whom, vars map[string]any, up Upstreams) int {
	p := c.pools.Get(pool)
	tried := c.tried(vars)
	if tried == nil && c.sessions == nil && up.Skip == nil && up.Load == nil && !affinity.AnyDraining() {
		// A first attempt by the pure hash whose upstream is available:
		// what affinity.ChooseIP gives, without its general walk, which in
		// a loaded server costs cache misses on every request.
		if i := p.Table.Lookup(c.hash(w)); i >= 0 && up.Available(i) && !p.Stale(i, c.addr(pool[i])) {
			p.Counters[i].Record(affinity.ResultHit, affinity.ReasonNone)
			c.done(vars, nil, pool[i], w, affinity.ResultHit)
			return i
		}
	}
	return c.choose(pool, p, w, tried, vars, up)
}

// choose is Select's general case: session tables, bounded loads,
// draining, retries, unavailable upstreams, part of a pool.
func (c *Core[U]) choose(pool []U, p *affinity.IPPool, w whom, tried []U, vars map[string]any, up Upstreams) int {
	k := c.key(w)
	sessions := c.sessions
	var now time.Time
	if sessions != nil {
		now = c.now()
	}
	avail := up.Available
	if available, skip := up.Available, up.Skip; skip != nil {
		avail = func(i int) bool { return !skip(i) && available(i) }
	}
	var failed func(i int) bool
	if tried != nil {
		failed = func(i int) bool { return c.triedAddr(tried, c.addr(pool[i])) }
	}
	i, res := affinity.ChooseIP(&c.opts, sessions, p, k, now, avail, failed, up.Load)
	if p.Stale(i, c.addr(pool[max(i, 0)])) {
		p = c.pools.Refresh(pool)
		i, res = affinity.ChooseIP(&c.opts, sessions, p, k, now, avail, failed, up.Load)
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
