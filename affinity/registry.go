package affinity

import (
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
)

// The registry lets the admin API and the metrics see every session table
// and name every upstream ID, whichever policy or config load made them.
var registry struct {
	mu     sync.Mutex
	tables map[*SessionTable]tableInfo
	seq    uint64
	names  sync.Map // upstream ID (AddrHash) -> address
}

type tableInfo struct {
	policy string
	seq    uint64 // registration order, for stable listings
}

// RegisterTable makes t visible to the admin API and metrics under policy.
func RegisterTable(policy string, t *SessionTable) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if registry.tables == nil {
		registry.tables = make(map[*SessionTable]tableInfo)
	}
	if _, ok := registry.tables[t]; !ok {
		registry.seq++
		registry.tables[t] = tableInfo{policy, registry.seq}
	}
}

// UnregisterTable removes t, when no config uses it any more.
func UnregisterTable(t *SessionTable) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	delete(registry.tables, t)
}

// EachTable calls fn for every registered table, in a stable order, and
// for one of the tables backed by the same table of a shared store.
func EachTable(fn func(policy string, t *SessionTable)) {
	type entry struct {
		tableInfo
		t *SessionTable
	}
	registry.mu.Lock()
	list := make([]entry, 0, len(registry.tables))
	for t, info := range registry.tables {
		list = append(list, entry{info, t})
	}
	registry.mu.Unlock()
	sort.Slice(list, func(i, j int) bool { return list[i].seq < list[j].seq })
	shared := map[string]bool{}
	for _, e := range list {
		if b := e.t.Backing(); b != nil {
			// The HTTP and layer4 tables of one store table: its entries
			// once.
			if shared[b.Shared()] {
				continue
			}
			shared[b.Shared()] = true
		}
		fn(e.policy, e.t)
	}
}

// NameUpstream records addr as the name of its ID and returns the ID.
// Session tables store IDs; the admin API shows addresses. A name lasts
// while some config retains its address (see Retain), so entries a reload
// carries over keep their names before the new config routes anything.
func NameUpstream(addr string) uint64 {
	id := AddrHash(addr)
	registry.names.Store(id, addr)
	return id
}

// UpstreamName returns the address of an upstream ID, or "".
func UpstreamName(id uint64) string {
	if v, ok := registry.names.Load(id); ok {
		return v.(string)
	}
	return ""
}

// SessionsByUpstream counts the entries of every session table per
// upstream address.
func SessionsByUpstream() map[string]int {
	out := map[string]int{}
	EachTable(func(_ string, t *SessionTable) {
		for id, n := range t.CountByID() {
			if name := UpstreamName(id); name != "" {
				out[name] += n
			}
		}
	})
	return out
}

var instances atomic.Uint64

// VarKey returns a request (or layer4 connection) variable name for the
// per-request state of one policy instance, in the plugin's namespace of a
// map the user's vars share: unique in the process, since one policy may be
// another's fallback on the same request.
func VarKey(policy string) string {
	return "caddy_affinity." + policy + "#" + strconv.FormatUint(instances.Add(1), 10)
}
