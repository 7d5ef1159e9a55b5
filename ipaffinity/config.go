// Package ipaffinity is client-IP affinity: the HTTP ip_affinity policy,
// and what it shares with the layer4 one (package l4): the options, the
// session tables kept across config reloads, the Caddyfile syntax of those
// options, and the selection core both run (Core). The hashing itself is
// in package affinity.
package ipaffinity

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-affinity/caddy-affinity/affinity"
	"github.com/caddy-affinity/caddy-affinity/internal/decisionlog"
	"github.com/caddy-affinity/caddy-affinity/internal/parse"
	"github.com/caddy-affinity/caddy-affinity/store"
)

// Config holds the options both ip_affinity policies have. It is embedded
// in each policy, so its fields are theirs in JSON.
type Config struct {
	// Prefix length that groups IPv4 clients: clients in one prefix share an
	// upstream. 32 (the default) is per address; 24 keeps a NAT pool
	// together.
	IPv4Prefix int `json:"ipv4_prefix,omitempty"`

	// Prefix length that groups IPv6 clients. Default: 64.
	IPv6Prefix int `json:"ipv6_prefix,omitempty"`

	// Bounded loads: with factor c, no upstream takes a new client while it
	// carries ceil(c × average) or more in-flight requests (HTTP) or
	// connections (layer4) and another has room. 1.25 to 2 are usual
	// values. Default: 0, off.
	BalanceFactor float64 `json:"balance_factor,omitempty"`

	// How long the session table remembers a client's upstream after its
	// last request: while it keeps coming back it stays there, even when
	// upstreams are added or the hash would choose differently. Default: 0,
	// no table (pure consistent hashing).
	PersistTimeout caddy.Duration `json:"persist_timeout,omitempty"`

	// Bound of the session table in entries; when it is full the least
	// recently seen client is evicted. Default: 100000.
	MaxSessions int `json:"max_sessions,omitempty"`

	// Bound of the session table as a memory size in bytes, converted to
	// entries at the table's measured cost per entry; when set it overrides
	// max_sessions.
	MaxSessionsBytes uint64 `json:"max_sessions_bytes,omitempty"`

	// The most entries the clients of one network (an IPv4 /24, an IPv6
	// /48) may hold in the session table, so that one network's many
	// addresses (a /48 holds 65536 /64s) cannot evict every other client.
	// A client of a network at its limit is routed by the hash alone.
	// Default: 1 % of the table, at least 512. It may not be below 1/1024
	// of the table.
	MaxSessionsPerNetwork int `json:"max_sessions_per_network,omitempty"`

	// Where the session table lives: in this process (memory, the default)
	// or in a Redis store every instance shares, with this process's table
	// as its cache. Needs persist_timeout, after which the store expires
	// an idle entry.
	Store *store.Config `json:"store,omitempty"`

	// The table's name in a shared store when the store names none: "ip"
	// for the ip_affinity policies; learn mode sets its own.
	StoreTable string `json:"-"`

	// Lifetime bounds each entry's age since it was first stored (learn
	// mode's max_lifetime); 0: none.
	Lifetime time.Duration `json:"-"`

	opts     affinity.IPOptions
	sessions *affinity.SessionTable
	poolKey  string
}

// DefaultMaxSessions bounds a session table when no bound is configured.
const DefaultMaxSessions = 100_000

// Options returns the provisioned options.
func (c *Config) Options() *affinity.IPOptions { return &c.opts }

// Sessions returns the session table, or nil without persist_timeout.
func (c *Config) Sessions() *affinity.SessionTable { return c.sessions }

// Check checks the options. Provision runs it; Caddyfile parsing too, so
// that an error names the line. (It is not Validate: a policy embedding
// Config would be checked again by Caddy.)
func (c *Config) Check() error {
	if c.IPv4Prefix < 0 || c.IPv4Prefix > 32 {
		return fmt.Errorf("ipv4_prefix: must be from 1 to 32, got %d", c.IPv4Prefix)
	}
	if c.IPv6Prefix < 0 || c.IPv6Prefix > 128 {
		return fmt.Errorf("ipv6_prefix: must be from 1 to 128, got %d", c.IPv6Prefix)
	}
	if c.BalanceFactor != 0 && (c.BalanceFactor <= 1 || math.IsInf(c.BalanceFactor, 0) || math.IsNaN(c.BalanceFactor)) {
		return fmt.Errorf("balance_factor: must be greater than 1 (e.g. 1.25), got %g", c.BalanceFactor)
	}
	if c.PersistTimeout < 0 {
		return fmt.Errorf("persist_timeout: must not be negative")
	}
	if c.MaxSessions < 0 {
		return fmt.Errorf("max_sessions: must not be negative")
	}
	if (c.MaxSessions > 0 || c.MaxSessionsBytes > 0) && c.PersistTimeout == 0 {
		return fmt.Errorf("max_sessions: bounds the session table, which persist_timeout turns on; set persist_timeout")
	}
	if c.MaxSessionsPerNetwork < 0 {
		return fmt.Errorf("max_sessions_per_network: must not be negative")
	}
	if c.MaxSessionsPerNetwork > 0 && c.PersistTimeout == 0 {
		return fmt.Errorf("max_sessions_per_network: bounds the session table, which persist_timeout turns on; set persist_timeout")
	}
	if c.Store.Backed() && c.PersistTimeout == 0 {
		return fmt.Errorf("store: holds the session table, which persist_timeout turns on; set persist_timeout")
	}
	if err := c.Store.Check(); err != nil {
		return err
	}
	if c.MaxSessionsPerNetwork > 0 {
		if err := affinity.CheckNetworkLimit(c.tableSize(), c.MaxSessionsPerNetwork); err != nil {
			return fmt.Errorf("max_sessions_per_network: %v", err)
		}
	}
	return nil
}

// tableSize is the bound of the session table in entries.
func (c *Config) tableSize() int {
	max := c.MaxSessions
	if c.MaxSessionsBytes > 0 {
		max = affinity.EntriesForBytes(c.MaxSessionsBytes)
	}
	if max <= 0 && c.MaxSessionsBytes == 0 {
		max = DefaultMaxSessions
	}
	return max
}

// tables keeps session tables alive across config reloads: a reload
// provisions the new config before the old one is cleaned up, so a table
// loaded again under the same key keeps its entries.
var tables = caddy.NewUsagePool()

type tableValue struct {
	policy string
	t      *affinity.SessionTable
	store  *store.Table // nil in memory
}

// Destruct unregisters the table when no config uses it any more.
func (v *tableValue) Destruct() error {
	affinity.UnregisterTable(v.t)
	if v.store != nil {
		return v.store.Close()
	}
	return nil
}

// ordinals numbers the policies of one config load that have the same
// options in the same scope, so each gets a table of its own and the same
// one again on the next load of the same config. A load is identified by
// its metrics registry, which Caddy makes anew for every load.
var ordinals struct {
	sync.Mutex
	m map[any]map[string]int
}

func ordinal(load any, key string) int {
	ordinals.Lock()
	defer ordinals.Unlock()
	if ordinals.m == nil {
		ordinals.m = make(map[any]map[string]int)
	}
	if ordinals.m[load] == nil {
		ordinals.m[load] = make(map[string]int)
	}
	ordinals.m[load][key]++
	return ordinals.m[load][key]
}

func forgetOrdinals(load any) {
	ordinals.Lock()
	defer ordinals.Unlock()
	delete(ordinals.m, load)
}

// Provision fills defaults and, with persist_timeout, loads or creates the
// session table of this policy, once its options pass Check. policy is the policy kind ("ip_affinity"
// or "layer4_ip_affinity"). Policies with the same options are told apart
// across reloads by their HTTP server (its listen addresses), by scope
// (which the caller may add), and by their order among such policies.
// Call Cleanup when the config is unloaded.
func (c *Config) Provision(ctx caddy.Context, policy, scope string) error {
	if c.IPv4Prefix == 0 {
		c.IPv4Prefix = affinity.DefaultIPv4Prefix
	}
	if c.IPv6Prefix == 0 {
		c.IPv6Prefix = affinity.DefaultIPv6Prefix
	}
	if err := c.Check(); err != nil {
		return err
	}
	c.opts = affinity.IPOptions{
		IPv4Prefix: c.IPv4Prefix, IPv6Prefix: c.IPv6Prefix,
		BalanceFactor: c.BalanceFactor, PersistTimeout: time.Duration(c.PersistTimeout),
	}
	if c.PersistTimeout == 0 {
		return nil
	}
	max := c.tableSize()
	if max == 0 {
		return fmt.Errorf("max_sessions: %d bytes hold no session; each takes up to %d bytes", c.MaxSessionsBytes, affinity.SessionEntryBytes)
	}
	c.opts.MaxSessions = max
	perNet := c.MaxSessionsPerNetwork
	if perNet == 0 {
		perNet = affinity.DefaultNetworkLimit(max)
	}
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv != nil {
		scope = strings.Join(srv.Listen, ",") + "|" + scope
	}
	key := fmt.Sprintf("%s/scope=%s/v4=%d/v6=%d/ttl=%s/max=%d/net=%d/life=%s", policy, scope, c.IPv4Prefix, c.IPv6Prefix, time.Duration(c.PersistTimeout), max, perNet, c.Lifetime)
	if c.Store.Backed() {
		r, err := json.Marshal(c.Store.Redis)
		if err != nil {
			return err
		}
		key += "/store=" + string(r)
		if err := store.RegisterMetrics(ctx.GetMetricsRegistry()); err != nil {
			return err
		}
	}
	load := any(ctx.GetMetricsRegistry())
	key = fmt.Sprintf("%s#%d", key, ordinal(load, key))
	context.AfterFunc(ctx, func() { forgetOrdinals(load) })
	v, _, err := tables.LoadOrNew(key, func() (caddy.Destructor, error) {
		t := affinity.NewSessionTableLimit(max, time.Duration(c.PersistTimeout), perNet)
		t.SetLifetime(c.Lifetime)
		v := &tableValue{policy: policy, t: t}
		if c.Store.Backed() {
			name := c.StoreTable
			if name == "" {
				name = "ip"
			}
			st, err := store.Open(c.Store, name, time.Duration(c.PersistTimeout), t)
			if err != nil {
				return nil, fmt.Errorf("store: %v", err)
			}
			v.store = st
		}
		affinity.RegisterTable(policy, t)
		return v, nil
	})
	if err != nil {
		return err
	}
	c.sessions = v.(*tableValue).t
	c.poolKey = key
	go c.sweep(ctx)
	return nil
}

// sweep drops expired entries in the background, so an idle table gives
// its memory back and the admin API counts only live sessions.
func (c *Config) sweep(ctx caddy.Context) {
	every := time.Duration(c.PersistTimeout) / 2
	every = min(max(every, time.Second), time.Minute)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			c.sessions.Sweep(now)
		}
	}
}

// Cleanup releases the session table.
func (c *Config) Cleanup() error {
	if c.poolKey != "" {
		_, err := tables.Delete(c.poolKey)
		return err
	}
	return nil
}

// UnmarshalOption parses the shared option under the dispenser's cursor. It
// reports whether the option is one of them.
func (c *Config) UnmarshalOption(d *caddyfile.Dispenser) (bool, error) {
	var err error
	switch d.Val() {
	case "ipv4_prefix":
		c.IPv4Prefix, err = parse.Int(d, 1, 32)
	case "ipv6_prefix":
		c.IPv6Prefix, err = parse.Int(d, 1, 128)
	case "balance_factor":
		c.BalanceFactor, err = parse.Float(d, 1, 100)
		if err == nil && c.BalanceFactor == 1 {
			err = d.Errf("balance_factor: expected a number greater than 1 (e.g. 1.25), got '1'")
		}
	case "persist_timeout":
		c.PersistTimeout, err = parse.Duration(d)
	case "max_sessions":
		c.MaxSessions, c.MaxSessionsBytes, err = parse.CountOrSize(d)
	case "max_sessions_per_network":
		c.MaxSessionsPerNetwork, err = parse.Int(d, 1, math.MaxInt32)
	case "store":
		c.Store, err = store.Parse(d)
	default:
		return false, nil
	}
	return true, err
}

// ParseBlock parses the block of an ip_affinity policy whose name is under
// the dispenser's cursor: the shared options here, and the policy's own
// (fallback, source) through own, which reports an unknown option as such.
func (c *Config) ParseBlock(d *caddyfile.Dispenser, own func(d *caddyfile.Dispenser) error) error {
	d.Next() // consume policy name
	if d.NextArg() {
		return d.Errf("ip_affinity: takes no arguments, got '%s'; options go in a block", d.Val())
	}
	seen := parse.Options{}
	for d.NextBlock(0) {
		if err := seen.Start(d); err != nil {
			return err
		}
		if ok, err := c.UnmarshalOption(d); ok {
			if err != nil {
				return err
			}
			continue
		}
		if err := own(d); err != nil {
			return err
		}
	}
	// Checks between options, here too so that the error names the line.
	if err := c.Check(); err != nil {
		return seen.WrapErr(d, "ip_affinity", err)
	}
	return nil
}

// Notable reports whether a decision is logged at info level rather than
// debug: a rebind that changed a session table entry (without a table,
// every request of a client whose upstream is down moves again, which is
// not news).
func Notable(res affinity.Result, table bool) bool { return res == affinity.ResultRebind && table }

// LogDecision logs one decision of an IP policy. Callers check
// d.Enabled(Notable(res, table)) first, inline, so that a request whose
// decision is not logged pays for no call.
func LogDecision(d decisionlog.Logger, policy string, client affinity.ClientKey, upstream string, res affinity.Result, table bool) {
	if c := d.Check(Notable(res, table)); c != nil {
		c.Write(zap.String("policy", policy), zap.String("client", client.String()),
			zap.String("upstream", upstream), zap.String("result", res.String()))
	}
}
