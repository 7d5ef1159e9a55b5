package affinity

import (
	"time"
)

// Defaults of IP affinity.
const (
	DefaultIPv4Prefix = 32
	DefaultIPv6Prefix = 64
)

// IPOptions configure client-IP affinity, the same for HTTP and layer4.
type IPOptions struct {
	IPv4Prefix     int
	IPv6Prefix     int
	BalanceFactor  float64 // bounded loads; 0 disables
	PersistTimeout time.Duration
	MaxSessions    int
}

// IPPool is what IP affinity derives from one pool of upstreams: the
// consistent-hash table and, by index, what it keeps of each upstream. It
// is immutable. A selection reads the upstreams' header and the table's
// small pool first, inline, and then one upstream's entry.
type IPPool struct {
	Upstreams []PoolUpstream // by index in the pool
	Table     Table
}

// PoolUpstream is what IP affinity keeps of one upstream of a pool,
// together: a selection reads it at once.
type PoolUpstream struct {
	Counters *Counters
	Addr     string
	ID       uint64 // its session ID (NameUpstream)
}

// NewIPPool builds the state of a pool for policy kind policy.
func NewIPPool(policy string, addrs []string) IPPool {
	p := IPPool{Table: *NewTable(addrs), Upstreams: make([]PoolUpstream, len(addrs))}
	Retain(policy, addrs...)
	for i, a := range addrs {
		p.Upstreams[i] = PoolUpstream{Counters: CountersFor(policy, a), Addr: a, ID: NameUpstream(a)}
	}
	return p
}

func (p *IPPool) addr(i int) string { return p.Upstreams[i].Addr }

// Release gives back what NewIPPool retained for policy.
func (p *IPPool) Release(policy string) {
	for _, u := range p.Upstreams {
		Release(policy, u.Addr)
	}
}

// Stale reports whether the upstream at position i of the caller's pool is
// not the one p has there: the pool was changed in place, and the caller
// must refresh p and choose again.
func (p *IPPool) Stale(i int, addr string) bool { return i >= 0 && p.Upstreams[i].Addr != addr }

// ChooseIP picks the upstream for client k: its session's upstream while
// that is available, else the consistent-hash choice among available
// upstreams that are not draining (with bounded loads when configured),
// which is then remembered. avail reports whether the upstream at index i
// can take a request now; tried, if not nil, whether it already failed this
// request (Caddy calls the policy again for each retry): those are passed
// over while another is available, and once every available upstream has
// failed the request, a new round starts from the client's hash choice, its
// table entry forgotten, so that a retry within lb_try_duration reaches a
// backend that restarts, as with Caddy's own policies. load gives an
// upstream's in-flight count (nil when bounded loads are off). It returns
// -1 when no upstream is available.
func ChooseIP(o *IPOptions, sessions *SessionTable, p *IPPool, k ClientKey, now time.Time,
	avail, tried func(i int) bool, load func(i int) int) (int, Result) {
	if tried == nil {
		return chooseIP(o, sessions, p, k, now, avail, load, false)
	}
	if NewRound(len(p.Upstreams), avail, tried) {
		if sessions != nil {
			sessions.Delete(k)
		}
		// Still a retry of a failed request: it counts as a rebind.
		return chooseIP(o, sessions, p, k, now, avail, load, true)
	}
	untried := func(i int) bool { return avail(i) && !tried(i) }
	if i, res := chooseIP(o, sessions, p, k, now, untried, load, false); i >= 0 {
		return i, res
	}
	return -1, ResultRebind
}

// chooseIP is one choice of ChooseIP; moved says the client is known to
// be moving (a new round of retries), so the choice is a rebind.
func chooseIP(o *IPOptions, sessions *SessionTable, p *IPPool, k ClientKey, now time.Time,
	avail func(i int) bool, load func(i int) int, moved bool) (int, Result) {
	had := moved
	if sessions != nil {
		if id, ok := sessions.Get(k, now); ok {
			had = true
			if i := p.Table.IndexOf(id); i >= 0 && OnBound(avail(i), false, Rebind, Evicted(p.addr(i), now)) == Keep {
				c := p.Upstreams[i].Counters
				c.Record(ResultHit, ReasonNone)
				c.Saw(k.Hash(), now.Unix())
				return i, ResultHit
			}
		}
	}
	h := k.Hash()
	bounded := o.BalanceFactor > 0 && load != nil
	lookup := func(ok func(i int) bool) int {
		if bounded {
			return p.Table.LookupBounded(h, o.BalanceFactor, load, ok)
		}
		return p.Table.LookupFunc(h, ok)
	}
	// The drain rule (see Undrained).
	i := lookup(Undrained(avail, p.addr))
	if i < 0 && AnyDraining() {
		i = lookup(avail)
	}
	if i < 0 {
		return -1, ResultRebind
	}
	res := ResultNew
	switch {
	case had:
		res = ResultRebind
	case sessions == nil && i == p.Table.Lookup(h):
		// Without a table every request is a fresh hash; landing on the
		// key's own upstream is its "session".
		res = ResultHit
	case sessions == nil:
		res = ResultRebind
	}
	if sessions != nil {
		sessions.Put(k, p.Upstreams[i].ID, now)
		p.Upstreams[i].Counters.Saw(h, now.Unix())
	}
	p.Upstreams[i].Counters.Record(res, ReasonNone)
	return i, res
}
