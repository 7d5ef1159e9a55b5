package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

var cryptoRand = rand.Read

// conns holds one connection pool per server and options, kept across
// config reloads while some table uses it.
var conns = caddy.NewUsagePool()

// live lists the pools, for metrics.
var live sync.Map // *conn -> struct{}

// conn is one server's connection pool, its event subscription and its
// health, shared by every table that names the server.
type conn struct {
	name    string // the address, for logs and metrics
	db      int
	rdb     *redis.Client
	prefix  string
	channel string
	timeout time.Duration
	nonce   string // tells this process's events from others'
	secret  string
	logger  *zap.Logger

	keyer  atomic.Pointer[keyer]
	keyed  atomic.Bool // keyer holds the store's key, not a stand-in
	shared string      // the store's key, read from it (no secret)
	runID  string      // the server's, to tell when it restarted
	up     atomic.Bool
	stats  stats
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	tables map[string][]*Table
}

// dial returns the pool for r (placeholders replaced), connecting a new
// one if no table uses it yet, and the key it is held under.
func dial(r Redis) (*conn, string, error) {
	h := sha256.Sum256([]byte(r.Password + "\x00" + r.Secret))
	key := fmt.Sprintf("%s|%s|%x|%d|%s|%t|%d|%d", r.Address, r.Username, h[:8], r.DB, r.KeyPrefix, r.TLS, r.DialTimeout, r.Timeout)
	v, _, err := conns.LoadOrNew(key, func() (caddy.Destructor, error) { return newConn(r), nil })
	if err != nil {
		return nil, "", err
	}
	return v.(*conn), key, nil
}

func newConn(r Redis) *conn {
	timeout := time.Duration(r.Timeout)
	opts := &redis.Options{
		Addr:     r.Address,
		Username: r.Username,
		Password: r.Password,
		DB:       r.DB,
		// One attempt, bounded by the timeout: a request never waits for
		// retries, and the store being down is the health check's to find.
		MaxRetries:            -1,
		DialTimeout:           time.Duration(r.DialTimeout),
		ReadTimeout:           timeout,
		WriteTimeout:          timeout,
		PoolTimeout:           timeout,
		ContextTimeoutEnabled: true,
		MinIdleConns:          2,
		DisableIdentity:       true,
		MaintNotificationsConfig: &maintnotifications.Config{
			Mode: maintnotifications.ModeDisabled,
		},
	}
	if r.TLS {
		host := r.Address
		if i := strings.LastIndexByte(host, ':'); i >= 0 {
			host = host[:i]
		}
		opts.TLSConfig = &tls.Config{ServerName: strings.Trim(host, "[]"), MinVersion: tls.VersionTLS12}
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{
		name:    r.Address,
		db:      r.DB,
		rdb:     redis.NewClient(opts),
		prefix:  r.KeyPrefix,
		channel: r.KeyPrefix + "events",
		timeout: timeout,
		nonce:   randomHex(8),
		secret:  r.Secret,
		logger:  caddy.Log().Named("affinity.store").With(zap.String("store", "redis"), zap.String("address", r.Address)),
		cancel:  cancel,
		done:    make(chan struct{}),
		tables:  map[string][]*Table{},
	}
	if r.Secret != "" {
		c.keyer.Store(newKeyer([]byte(r.Secret)))
		c.keyed.Store(true)
	} else {
		// A stand-in until the store's key is read: entries made with it
		// are forgotten then.
		c.keyer.Store(newKeyer([]byte(randomHex(32))))
	}
	// Connect now, so that the first requests find the store; a store
	// that cannot be reached is retried in the background.
	dctx, dcancel := context.WithTimeout(ctx, time.Duration(r.DialTimeout)+timeout)
	if id, err := c.connect(dctx); err != nil {
		c.logger.Warn("session store unavailable; serving from each instance's own table until it is back", zap.Error(err))
		c.stats.errors.Add(1)
	} else {
		c.runID = id
		c.up.Store(true)
	}
	dcancel()
	live.Store(c, struct{}{})
	go c.run(ctx)
	return c
}

// connect checks the server answers, and returns its run ID, which
// changes when it restarts (empty, or as another server after a
// failover). It makes sure the server holds the store's key.
func (c *conn) connect(ctx context.Context) (string, error) {
	info, err := c.rdb.Info(ctx, "server").Result()
	if err != nil {
		return "", err
	}
	runID := ""
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "run_id:"); ok {
			runID = v
		}
	}
	if c.secret != "" || (c.keyed.Load() && runID == c.runID) {
		return runID, nil
	}
	// The first instance's key, or this one's if the server lost it (it
	// restarted empty), so instances already running keep theirs.
	name := c.prefix + "hmac-key"
	mine := c.shared
	if mine == "" {
		mine = randomHex(32)
	}
	if err := c.rdb.SetNX(ctx, name, mine, 0).Err(); err != nil {
		return "", err
	}
	key, err := c.rdb.Get(ctx, name).Result()
	if err != nil {
		return "", err
	}
	if _, err := hex.DecodeString(key); err != nil || len(key) < 32 {
		return "", fmt.Errorf("%s holds no key of this plugin's", name)
	}
	if key != c.shared {
		c.keyer.Store(newKeyer([]byte(key)))
		c.shared = key
		// Entries cached under another key are under the wrong names.
		c.each(func(t *Table) { t.t.ForgetAll() })
	}
	c.keyed.Store(true)
	return runID, nil
}

// Destruct closes the pool when no table uses it any more.
func (c *conn) Destruct() error {
	c.cancel()
	<-c.done
	live.Delete(c)
	return c.rdb.Close()
}

// run follows the other instances' events and checks the server every
// second: an outage is noticed even when no request needs the store, and a
// restart (the server empty) or the end of an outage (events lost) makes
// every table write back what it holds.
func (c *conn) run(ctx context.Context) {
	defer close(c.done)
	ps := c.rdb.Subscribe(ctx, c.channel)
	defer ps.Close()
	events := ps.Channel(redis.WithChannelHealthCheckInterval(time.Second))
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-events:
			if !ok {
				return
			}
			c.apply(m.Payload)
		case <-tick.C:
			cctx, cancel := context.WithTimeout(ctx, c.timeout+time.Second)
			id, err := c.connect(cctx)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					c.fail(err)
				}
				continue
			}
			restarted := id != c.runID
			c.runID = id
			if c.up.Swap(true) {
				if !restarted {
					continue
				}
				c.logger.Warn("session store restarted; writing back each instance's entries")
			} else {
				c.logger.Info("session store available again; writing back what changed meanwhile")
			}
			c.each(func(t *Table) { t.resync() })
		}
	}
}

// fail notes an error of the server (not a missing key): the first one of
// an outage is logged, and requests skip the store until run finds it
// back.
func (c *conn) fail(err error) {
	if err == nil || errors.Is(err, redis.Nil) {
		return
	}
	c.stats.errors.Add(1)
	if c.up.CompareAndSwap(true, false) {
		c.logger.Warn("session store unavailable; serving from each instance's own table until it is back", zap.Error(err))
	}
}

// ready reports whether requests may use the server.
func (c *conn) ready() bool { return c.up.Load() && c.keyed.Load() }

func (c *conn) each(fn func(*Table)) {
	c.mu.Lock()
	var all []*Table
	for _, ts := range c.tables {
		all = append(all, ts...)
	}
	c.mu.Unlock()
	for _, t := range all {
		fn(t)
	}
}

// siblings calls fn for the other tables of this process with t's name: a
// write of one reaches them without a round trip.
func (c *conn) siblings(t *Table, fn func(*Table)) {
	c.mu.Lock()
	ts := c.tables[t.name]
	if len(ts) < 2 {
		c.mu.Unlock()
		return
	}
	ts = append([]*Table(nil), ts...)
	c.mu.Unlock()
	for _, o := range ts {
		if o != t {
			fn(o)
		}
	}
}

// Events are "<nonce> <op> <table> <key> <id>": op s (set), d (delete), i
// (delete an upstream's entries), c (clear); key and id as in the store.
func (c *conn) event(op byte, table, key, id string) string {
	return c.nonce + " " + string(op) + " " + table + " " + key + " " + id
}

// apply brings the cached copies of an entry another instance changed up
// to date. An entry this instance does not cache stays uncached.
func (c *conn) apply(msg string) {
	f := strings.Split(msg, " ")
	if len(f) != 5 || f[0] == c.nonce || len(f[1]) != 1 {
		return
	}
	c.mu.Lock()
	ts := append([]*Table(nil), c.tables[f[2]]...)
	c.mu.Unlock()
	if len(ts) == 0 {
		return
	}
	var k affinity.ClientKey
	var id uint64
	switch f[1][0] {
	case 's', 'd':
		var ok bool
		if k, ok = parseName("", f[3]); !ok {
			return
		}
		if f[1][0] == 's' {
			if id, ok = parseID(f[4]); !ok {
				return
			}
		}
	case 'i':
		var ok bool
		if id, ok = parseID(f[4]); !ok {
			return
		}
	}
	now := time.Now()
	for _, t := range ts {
		switch f[1][0] {
		case 's':
			t.update(k, id, now)
		case 'd':
			t.t.Forget(k)
		case 'i':
			t.t.ForgetID(id)
		case 'c':
			t.t.ForgetAll()
		}
	}
}

// stats are a pool's counters, for metrics.
type stats struct {
	errors atomic.Uint64
	ops    [opCount]atomic.Uint64 // round trips by op
}

// The round trips a table makes.
const (
	opGet = iota
	opSet
	opDelete
	opRefresh
	opScan
	opCount
)

var opNames = [opCount]string{"get", "set", "delete", "refresh", "scan"}
