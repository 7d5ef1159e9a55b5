package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

// Table is a session table's place in a Redis store: the affinity.Backing
// of the table, which becomes its local cache.
type Table struct {
	c      *conn
	key    string // of c in conns
	name   string // the table's name in the store
	prefix string // of its entries' names
	ttl    time.Duration
	t      *affinity.SessionTable
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	dirty map[affinity.ClientKey]change // changes the store missed
	count counts                        // the store's counts, briefly kept
}

// maxDirty bounds the changes an outage keeps to write back; past it the
// resync still adds entries the store lacks.
const maxDirty = 1 << 16

type counts struct {
	at    time.Time
	total int
	byID  map[uint64]int
}

// countsFor is how long the store's counts are reused: the admin API and
// every metrics scrape ask for them, and each count scans the table.
const countsFor = 2 * time.Second

// Open puts t, a session table whose entries expire after ttl idle (never
// if 0), in the store cfg names (cfg.Backed()), as name unless cfg names
// its table. Close it when t is no longer used.
func Open(cfg *Config, name string, ttl time.Duration, t *affinity.SessionTable) (*Table, error) {
	r := *cfg.Redis
	repl := caddy.NewReplacer()
	for _, s := range []*string{&r.Address, &r.Username, &r.Password, &r.Secret, &r.KeyPrefix, &r.Table} {
		*s = repl.ReplaceKnown(*s, "")
	}
	if r.KeyPrefix == "" {
		r.KeyPrefix = DefaultKeyPrefix
	}
	if r.DialTimeout == 0 {
		r.DialTimeout = caddy.Duration(DefaultDialTimeout)
	}
	if r.Timeout == 0 {
		r.Timeout = caddy.Duration(DefaultTimeout)
	}
	if r.Table != "" {
		name = r.Table
	}
	if err := (&Config{Redis: &r}).Check(); err != nil {
		return nil, err
	}
	c, key, err := dial(r)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	tb := &Table{c: c, key: key, name: name, prefix: r.KeyPrefix + "t:" + name + ":", ttl: ttl, t: t,
		cancel: cancel, done: make(chan struct{}), dirty: map[affinity.ClientKey]change{}}
	t.Back(tb)
	c.mu.Lock()
	c.tables[name] = append(c.tables[name], tb)
	c.mu.Unlock()
	go tb.refresh(ctx)
	return tb, nil
}

// Close detaches the table from the store.
func (tb *Table) Close() error {
	tb.cancel()
	<-tb.done
	c := tb.c
	c.mu.Lock()
	ts := c.tables[tb.name]
	for i, o := range ts {
		if o == tb {
			ts = append(ts[:i:i], ts[i+1:]...)
			break
		}
	}
	if len(ts) == 0 {
		delete(c.tables, tb.name)
	} else {
		c.tables[tb.name] = ts
	}
	c.mu.Unlock()
	_, err := conns.Delete(tb.key)
	return err
}

func (tb *Table) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), tb.c.timeout)
}

// Shared implements affinity.Backing: the pool's server and the table's
// names in it.
func (tb *Table) Shared() string { return fmt.Sprintf("%s/%d/%s", tb.c.name, tb.c.db, tb.prefix) }

// Key implements affinity.Backing.
func (tb *Table) Key(k affinity.ClientKey) affinity.ClientKey { return tb.c.keyer.Load().key(k) }

func (tb *Table) redisName(k affinity.ClientKey) string { return redisName(tb.prefix, k) }

// Load implements affinity.Backing.
func (tb *Table) Load(k affinity.ClientKey) (uint64, time.Time, bool) {
	c := tb.c
	if !c.ready() {
		return 0, time.Time{}, false
	}
	ctx, cancel := tb.ctx()
	defer cancel()
	c.stats.ops[opGet].Add(1)
	v, err := c.rdb.Get(ctx, tb.redisName(k)).Result()
	if err != nil {
		c.fail(err)
		return 0, time.Time{}, false
	}
	return parseValue(v)
}

// Save implements affinity.Backing: the entry, and an event that brings
// the other instances' cached copies up to date, in one round trip.
func (tb *Table) Save(k affinity.ClientKey, id uint64, born time.Time) {
	now := time.Now()
	tb.c.siblings(tb, func(o *Table) { o.update(k, id, now) })
	tb.write(k, change{id, born})
}

// Remove implements affinity.Backing.
func (tb *Table) Remove(k affinity.ClientKey) {
	tb.c.siblings(tb, func(o *Table) { o.t.Forget(k) })
	tb.write(k, change{})
}

// change is what a write stores: an upstream ID and when the entry was
// first stored, or a deletion (id 0).
type change struct {
	id   uint64
	born time.Time
}

// write stores ch under k and tells the other instances.
func (tb *Table) write(k affinity.ClientKey, ch change) {
	c := tb.c
	id := ch.id
	if !c.ready() {
		tb.missed(k, ch)
		return
	}
	ctx, cancel := tb.ctx()
	defer cancel()
	name, hexKey := tb.redisName(k), k.String()[len(storedPrefix):]
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		if id == 0 {
			c.stats.ops[opDelete].Add(1)
			p.Del(ctx, name)
			p.Publish(ctx, c.channel, c.event('d', tb.name, hexKey, "0"))
		} else {
			c.stats.ops[opSet].Add(1)
			p.Set(ctx, name, formatValue(id, ch.born), tb.ttl)
			p.Publish(ctx, c.channel, c.event('s', tb.name, hexKey, formatID(id)))
		}
		return nil
	})
	if err != nil {
		c.fail(err)
		tb.missed(k, ch)
	}
}

// missed keeps a change the store did not take, to write it back.
func (tb *Table) missed(k affinity.ClientKey, ch change) {
	tb.mu.Lock()
	if _, ok := tb.dirty[k]; ok || len(tb.dirty) < maxDirty {
		tb.dirty[k] = ch
	}
	tb.mu.Unlock()
}

// update changes the cached copy of k, if the table caches k.
func (tb *Table) update(k affinity.ClientKey, id uint64, now time.Time) {
	if old, ok := tb.t.Cache(k); ok && old != id {
		tb.t.Learn(k, id, now)
	}
}

// refresh keeps the store's entries of the sessions in use from expiring:
// each used since the last pass is touched once a quarter of the idle
// timeout, in batches, never once per request.
func (tb *Table) refresh(ctx context.Context) {
	defer close(tb.done)
	if tb.ttl <= 0 {
		<-ctx.Done()
		return
	}
	every := max(tb.ttl/4, time.Second)
	tick := time.NewTicker(every)
	defer tick.Stop()
	since := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			if !tb.c.ready() {
				continue
			}
			// Entry times are whole seconds.
			if tb.sync(since.Add(-time.Second)) {
				since = now
			}
		}
	}
}

// resync writes back what the store missed and checks every cached entry
// against it, after an outage.
func (tb *Table) resync() {
	tb.mu.Lock()
	dirty := tb.dirty
	tb.dirty = map[affinity.ClientKey]change{}
	tb.mu.Unlock()
	for k, ch := range dirty {
		tb.write(k, ch)
	}
	tb.sync(time.Time{})
}

// sync touches the store's entries of the sessions cached and seen since
// then, adding those it lacks; where it holds another upstream (a change
// whose event was lost) the cache takes the store's. It reports whether
// it reached the store.
func (tb *Table) sync(since time.Time) bool {
	var batch []affinity.Session
	for _, s := range tb.t.Local() {
		if !s.LastSeen.Before(since) && s.Key.Stored() {
			batch = append(batch, s)
		}
	}
	const size = 256
	for len(batch) > 0 {
		n := min(len(batch), size)
		if !tb.syncBatch(batch[:n]) {
			return false
		}
		batch = batch[n:]
	}
	return true
}

func (tb *Table) syncBatch(batch []affinity.Session) bool {
	c := tb.c
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout+time.Second)
	defer cancel()
	cmds := make([]*redis.StatusCmd, len(batch))
	c.stats.ops[opRefresh].Add(1)
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, s := range batch {
			name := tb.redisName(s.Key)
			cmds[i] = p.SetArgs(ctx, name, formatValue(s.ID, s.Born), redis.SetArgs{Mode: "NX", Get: true, TTL: tb.ttl})
			if tb.ttl > 0 {
				p.Expire(ctx, name, tb.ttl)
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		c.fail(err)
		return false
	}
	now := time.Now()
	for i, cmd := range cmds {
		v, err := cmd.Result()
		if err != nil {
			continue // redis.Nil: the store lacked it and has it now
		}
		if id, _, ok := parseValue(v); ok && id != batch[i].ID {
			tb.t.Learn(batch[i].Key, id, now)
		}
	}
	return true
}
