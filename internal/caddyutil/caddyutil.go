// Package caddyutil holds the small pieces of Caddy glue that the policies
// of several packages share.
package caddyutil

import (
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

// RegisterParentUpstreams makes the static upstreams of the reverse_proxy
// handler that loads a policy known to the admin API at once (so they can
// be drained before any traffic), under policy kind policy, and returns
// them for the policy's Cleanup to release. The handler is the
// provisioning context's parent module.
func RegisterParentUpstreams(ctx caddy.Context, policy string) []string {
	var addrs []string
	if h := Parent[*reverseproxy.Handler](ctx); h != nil {
		for _, u := range h.Upstreams {
			if u != nil && u.Dial != "" && !strings.Contains(u.Dial, "{") {
				addrs = append(addrs, u.Dial)
			}
		}
	}
	affinity.Retain(policy, addrs...)
	return addrs
}

// ParentRetries reports whether the reverse_proxy handler that loads a
// policy may call it more than once for a request: with lb_retries or
// lb_try_duration (a negative one: without limit), it calls the policy
// again for each retry; with neither, once. Without a handler in sight it
// says it may.
func ParentRetries(ctx caddy.Context) bool {
	if h := Parent[*reverseproxy.Handler](ctx); h != nil && h.LoadBalancing != nil {
		return h.LoadBalancing.Retries != 0 || h.LoadBalancing.TryDuration != 0
	}
	return true
}

// Parent returns the nearest of the provisioning context's modules (the
// module being provisioned and those that loaded it) of type T, such as
// the proxy handler that loads a selection policy, or T's zero value.
func Parent[T caddy.Module](ctx caddy.Context) T {
	mods := ctx.Modules()
	for i := len(mods) - 1; i >= 0; i-- {
		if h, ok := mods[i].(T); ok {
			return h
		}
	}
	var zero T
	return zero
}

// A SubsetSelector is a selection policy that can choose among part of a
// pool handed to it whole. A policy that keeps state per pool (ip_affinity
// builds a hash table) implements it, so that a policy whose fallback it is
// does not hand it a new slice for each subset of failed or draining
// upstreams: during a partial outage there are many.
type SubsetSelector interface {
	// SelectSubset is Select among the upstreams of pool for which skip
	// is false.
	SelectSubset(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter, skip func(*reverseproxy.Upstream) bool) *reverseproxy.Upstream
}

// SelectAmong asks sel for an upstream of pool that skip does not exclude.
func SelectAmong(sel reverseproxy.Selector, pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter, skip func(*reverseproxy.Upstream) bool) *reverseproxy.Upstream {
	if ss, ok := sel.(SubsetSelector); ok {
		return ss.SelectSubset(pool, r, w, skip)
	}
	sub := Without(pool, skip)
	if len(sub) == 0 {
		return nil
	}
	return sel.Select(sub, r, w)
}

// Without returns the upstreams of pool for which skip is false, in a new
// slice.
func Without(pool reverseproxy.UpstreamPool, skip func(*reverseproxy.Upstream) bool) reverseproxy.UpstreamPool {
	out := make(reverseproxy.UpstreamPool, 0, len(pool))
	for _, u := range pool {
		if !skip(u) {
			out = append(out, u)
		}
	}
	return out
}

// PickNew asks fallback for an upstream for a new (or moved) session: not
// one that tried reports an earlier attempt of the request used, nor a
// draining one, unless only draining ones are left.
func PickNew(fallback reverseproxy.Selector, pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter, tried func(*reverseproxy.Upstream) bool) *reverseproxy.Upstream {
	if !affinity.AnyDraining() && !slices.ContainsFunc(pool, tried) {
		return fallback.Select(pool, r, w)
	}
	untried := func(u *reverseproxy.Upstream) bool { return !tried(u) }
	up, _ := affinity.PreferNotDraining(untried, dial, func(ok func(*reverseproxy.Upstream) bool) (*reverseproxy.Upstream, bool) {
		up := SelectAmong(fallback, pool, r, w, func(u *reverseproxy.Upstream) bool { return !ok(u) })
		return up, up != nil
	})
	return up
}

// PickKeyless is PickNew for a request with no session key (no header, no
// IP), which the fallback places on every attempt: the upstreams earlier
// attempts used are kept in vars under key (unless key is "": a policy
// called once per request), and a new round tries them again once every
// available one has failed (affinity.NewRound). A first attempt with
// nothing draining costs no allocation.
func PickKeyless(fallback reverseproxy.Selector, pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter, vars map[string]any, key string) *reverseproxy.Upstream {
	if key == "" {
		vars = nil
	}
	prev := vars[key]
	if prev == nil && !affinity.AnyDraining() {
		up := fallback.Select(pool, r, w)
		if up != nil && vars != nil {
			vars[key] = up
		}
		return up
	}
	var tried []string
	switch v := prev.(type) {
	case *reverseproxy.Upstream:
		tried = []string{v.Dial}
	case []string:
		tried = v
	}
	used := func(u *reverseproxy.Upstream) bool { return slices.Contains(tried, u.Dial) }
	if affinity.NewRound(len(pool), func(i int) bool { return pool[i].Available() }, func(i int) bool { return used(pool[i]) }) {
		tried = tried[:0]
	}
	up := PickNew(fallback, pool, r, w, used)
	if up != nil && vars != nil {
		vars[key] = append(tried, up.Dial)
	}
	return up
}

func dial(u *reverseproxy.Upstream) string { return u.Dial }
