// Package selecttimer is a measuring instrument for make bench, not part of
// the plugin: a reverse_proxy selection policy that delegates to another
// and adds up the wall time its Select takes inside a loaded Caddy, and an
// admin endpoint that reports the sums.
//
// Profiles of a loaded Caddy sample a selection a few dozen times a minute,
// too coarsely to compare two policies that each take about 1 % of the CPU.
// Timing every call counts what a benchmark loop cannot: the cache misses
// and cross-core traffic of a server doing everything else between
// selections. Its clock reads cost every policy alike (about one read,
// some 25 ns, falls inside the interval timed). It keeps a histogram, not only a sum: on a machine where
// the load generator and the backends share the CPUs with Caddy, a few
// selections are descheduled midway and take milliseconds of wall time,
// which would swamp a plain mean.
//
// It is a module of its own, so that only the bench's Caddy build (make
// bench, integration.BuildCaddy with extra modules) has it.
package selecttimer

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-affinity/caddy-affinity/internal/parse"
)

func init() {
	caddy.RegisterModule(new(Timer))
	caddy.RegisterModule(adminTimer{})
}

// Timer is a selection policy that times another.
type Timer struct {
	// Label under which the admin endpoint reports the timings; policies
	// with the same label add to the same sums, across config reloads.
	Label string `json:"label,omitempty"`

	// The selection policy timed. (Not "policy": that key names this
	// module in its parent.)
	PolicyRaw json.RawMessage `json:"timed,omitempty" caddy:"namespace=http.reverse_proxy.selection_policies inline_key=policy"`

	policy reverseproxy.Selector
	sums   *sums
}

// CaddyModule returns the Caddy module information.
func (*Timer) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.select_timer",
		New: func() caddy.Module { return new(Timer) },
	}
}

// Provision loads the timed policy.
func (t *Timer) Provision(ctx caddy.Context) error {
	if t.Label == "" {
		return fmt.Errorf("label: required")
	}
	if t.PolicyRaw == nil {
		return fmt.Errorf("timed: required (the policy to time)")
	}
	mod, err := ctx.LoadModule(t, "PolicyRaw")
	if err != nil {
		return fmt.Errorf("loading policy: %v", err)
	}
	t.policy = mod.(reverseproxy.Selector)
	t.sums = sumsFor(t.Label)
	return nil
}

// Select times the policy's Select.
func (t *Timer) Select(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	start := time.Now()
	u := t.policy.Select(pool, r, w)
	t.sums.add(time.Since(start))
	return u
}

// UnmarshalCaddyfile sets up the timer. Syntax:
//
//	lb_policy select_timer <label> {
//		policy <policy> [<args...>] [{ ... }]
//	}
func (t *Timer) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // policy name
	if !d.NextArg() {
		return d.ArgErr()
	}
	t.Label = d.Val()
	for d.NextBlock(0) {
		if d.Val() != "policy" {
			return parse.Unknown(d)
		}
		var err error
		if t.PolicyRaw, err = parse.Module(d, "http.reverse_proxy.selection_policies", "policy"); err != nil {
			return err
		}
	}
	return nil
}

// Histogram layout: Buckets buckets of BucketNanos each, the last one
// holding every longer selection.
const (
	BucketNanos = 10
	Buckets     = 5001 // up to 50 µs, then the overflow
)

// Sums is what the admin endpoint reports per label.
type Sums struct {
	Selections  uint64 `json:"selections"`
	Nanoseconds uint64 `json:"nanoseconds"`
	// Histogram counts the selections by duration: Histogram[i] those
	// that took from i*BucketNanos up to (i+1)*BucketNanos, the last all
	// longer ones. Trailing zeros are left out.
	Histogram []uint64 `json:"histogram"`
}

// sums are one label's running totals. Their counters are written by
// every CPU; that cost falls outside the timed interval.
type sums struct {
	n, ns atomic.Uint64
	hist  [Buckets]atomic.Uint64
}

func (s *sums) add(d time.Duration) {
	s.n.Add(1)
	s.ns.Add(uint64(d))
	s.hist[min(max(int(d/BucketNanos), 0), Buckets-1)].Add(1)
}

func (s *sums) snapshot() Sums {
	out := Sums{Selections: s.n.Load(), Nanoseconds: s.ns.Load()}
	last := -1
	h := make([]uint64, Buckets)
	for i := range s.hist {
		if h[i] = s.hist[i].Load(); h[i] > 0 {
			last = i
		}
	}
	out.Histogram = h[:last+1]
	return out
}

var labels sync.Map // label -> *sums

func sumsFor(label string) *sums {
	s, _ := labels.LoadOrStore(label, new(sums))
	return s.(*sums)
}

// Snapshot returns the sums of every label.
func Snapshot() map[string]Sums {
	out := map[string]Sums{}
	labels.Range(func(k, v any) bool {
		out[k.(string)] = v.(*sums).snapshot()
		return true
	})
	return out
}

// adminTimer serves GET /select-timer: the sums of every label, as JSON.
type adminTimer struct{}

// CaddyModule returns the Caddy module information.
func (adminTimer) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.select_timer",
		New: func() caddy.Module { return new(adminTimer) },
	}
}

// Routes returns the endpoint.
func (adminTimer) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/select-timer", Handler: caddy.AdminHandlerFunc(serve)}}
}

func serve(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(Snapshot())
}

// Interface guards
var (
	_ reverseproxy.Selector = (*Timer)(nil)
	_ caddy.Provisioner     = (*Timer)(nil)
	_ caddyfile.Unmarshaler = (*Timer)(nil)
	_ caddy.AdminRouter     = adminTimer{}
)
