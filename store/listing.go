package store

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

// The admin API's views of the store scan it (SCAN, never KEYS), in pages
// of scanCount names, within adminTimeout.
const (
	scanCount    = 1000
	adminTimeout = 10 * time.Second
)

// scan calls fn with the names of the table's entries, a page at a time,
// until fn returns false. It reports whether it reached the store.
func (tb *Table) scan(ctx context.Context, fn func(names []string) bool) bool {
	c := tb.c
	if !c.ready() {
		return false
	}
	var cursor uint64
	for {
		c.stats.ops[opScan].Add(1)
		names, next, err := c.rdb.Scan(ctx, cursor, tb.prefix+"*", scanCount).Result()
		if err != nil {
			c.fail(err)
			return false
		}
		if len(names) > 0 && !fn(names) {
			return true
		}
		if cursor = next; cursor == 0 {
			return true
		}
	}
}

// values returns the upstream IDs stored under names (0 where gone).
func (tb *Table) values(ctx context.Context, names []string) ([]uint64, bool) {
	vs, err := tb.c.rdb.MGet(ctx, names...).Result()
	if err != nil {
		tb.c.fail(err)
		return nil, false
	}
	ids := make([]uint64, len(names))
	for i, v := range vs {
		if s, ok := v.(string); ok {
			ids[i], _, _ = parseValue(s)
		}
	}
	return ids, true
}

// counts returns the store's entries, in all and per upstream, scanning
// the store at most once per countsFor; the local cache's while the store
// cannot be reached.
func (tb *Table) counts() (int, map[uint64]int) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if time.Since(tb.count.at) < countsFor && tb.count.byID != nil {
		return tb.count.total, copyCounts(tb.count.byID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	total, byID := 0, map[uint64]int{}
	ok := tb.scan(ctx, func(names []string) bool {
		ids, ok := tb.values(ctx, names)
		if !ok {
			return false
		}
		for _, id := range ids {
			if id != 0 {
				total++
				byID[id]++
			}
		}
		return true
	})
	if !ok {
		tb.t.Sweep(time.Now())
		return tb.t.Cached(), tb.localCounts()
	}
	tb.count = counts{at: time.Now(), total: total, byID: byID}
	return total, copyCounts(byID)
}

func copyCounts(m map[uint64]int) map[uint64]int {
	out := make(map[uint64]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (tb *Table) localCounts() map[uint64]int {
	out := map[uint64]int{}
	tb.t.Range(0, 0, func(_ affinity.ClientKey, id uint64, _ time.Time) { out[id]++ })
	return out
}

// Len implements affinity.Backing.
func (tb *Table) Len() int {
	n, _ := tb.counts()
	return n
}

// CountByID implements affinity.Backing.
func (tb *Table) CountByID() map[uint64]int {
	_, m := tb.counts()
	return m
}

// Page implements affinity.Backing: the entries at [offset, offset+limit)
// of the store's scan order, each last seen when its idle time began (the
// store refreshes them a quarter of the timeout at a time, so this is
// within that of the truth).
func (tb *Table) Page(offset, limit int) []affinity.Session {
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	var names []string
	seen := map[string]bool{} // SCAN may return a name twice
	ok := tb.scan(ctx, func(page []string) bool {
		for _, n := range page {
			if seen[n] {
				continue
			}
			seen[n] = true
			if offset > 0 {
				offset--
				continue
			}
			if limit > 0 && len(names) >= limit {
				return false
			}
			names = append(names, n)
		}
		return limit <= 0 || len(names) < limit
	})
	if !ok {
		var out []affinity.Session
		tb.t.Range(offset, limit, func(k affinity.ClientKey, id uint64, seen time.Time) {
			out = append(out, affinity.Session{Key: k, ID: id, LastSeen: seen})
		})
		return out
	}
	if len(names) == 0 {
		return nil
	}
	gets := make([]*redis.StringCmd, len(names))
	ttls := make([]*redis.DurationCmd, len(names))
	_, err := tb.c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, n := range names {
			gets[i] = p.Get(ctx, n)
			ttls[i] = p.PTTL(ctx, n)
		}
		return nil
	})
	if err != nil && err != redis.Nil {
		tb.c.fail(err)
	}
	now := time.Now()
	out := make([]affinity.Session, 0, len(names))
	for i, n := range names {
		k, ok := parseName(tb.prefix, n)
		id, born, ok2 := parseValue(gets[i].Val())
		if !ok || !ok2 {
			continue
		}
		seen := now
		if left := ttls[i].Val(); tb.ttl > 0 && left > 0 && left <= tb.ttl {
			seen = now.Add(left - tb.ttl).Truncate(time.Second)
		}
		out = append(out, affinity.Session{Key: k, ID: id, LastSeen: seen, Born: born})
	}
	return out
}

// RemoveID implements affinity.Backing.
func (tb *Table) RemoveID(id uint64) int {
	tb.t.ForgetID(id)
	tb.c.siblings(tb, func(o *Table) { o.t.ForgetID(id) })
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	removed := 0
	tb.scan(ctx, func(names []string) bool {
		ids, ok := tb.values(ctx, names)
		if !ok {
			return false
		}
		var del []string
		for i, v := range ids {
			if v == id {
				del = append(del, names[i])
			}
		}
		if len(del) > 0 {
			n, err := tb.c.rdb.Del(ctx, del...).Result()
			if err != nil {
				tb.c.fail(err)
				return false
			}
			removed += int(n)
		}
		return true
	})
	tb.publish(ctx, 'i', formatID(id))
	tb.forgetCounts()
	return removed
}

// Clear implements affinity.Backing.
func (tb *Table) Clear() {
	tb.c.siblings(tb, func(o *Table) { o.t.ForgetAll() })
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	tb.scan(ctx, func(names []string) bool {
		if err := tb.c.rdb.Unlink(ctx, names...).Err(); err != nil {
			tb.c.fail(err)
			return false
		}
		return true
	})
	tb.publish(ctx, 'c', "0")
	tb.forgetCounts()
}

func (tb *Table) publish(ctx context.Context, op byte, id string) {
	if !tb.c.ready() {
		return
	}
	if err := tb.c.rdb.Publish(ctx, tb.c.channel, tb.c.event(op, tb.name, "-", id)).Err(); err != nil {
		tb.c.fail(err)
	}
}

func (tb *Table) forgetCounts() {
	tb.mu.Lock()
	tb.count = counts{}
	tb.mu.Unlock()
}
