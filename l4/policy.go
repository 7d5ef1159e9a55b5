// Package l4 is client-IP affinity for the layer4 app (caddy-l4): the
// layer4.proxy.selection_policies.ip_affinity policy, an adapter over the
// selection core of package ipaffinity. It shares its hash and its options
// with the HTTP ip_affinity policy, so both send a client to the same
// upstream (each keeps its own session table, so after a failover the two
// may remember different upstreams for a client).
package l4

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/mholt/caddy-l4/layer4"
	"github.com/mholt/caddy-l4/modules/l4proxy"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/caddy-affinity/caddy-affinity/affinity"
	"github.com/caddy-affinity/caddy-affinity/internal/caddyutil"
	"github.com/caddy-affinity/caddy-affinity/internal/parse"
	"github.com/caddy-affinity/caddy-affinity/ipaffinity"
)

func init() {
	caddy.RegisterModule(new(IPAffinity))
}

// PolicyName labels the layer4 policy's counters and metrics.
const PolicyName = "layer4_ip_affinity"

// IPAffinity is a layer4 selection policy that keeps each client IP (or
// prefix) on one upstream by consistent hashing, as the HTTP ip_affinity
// policy does and with the same result for the same client and upstreams.
// The client is the connection's remote address, which caddy-l4's
// proxy_protocol handler sets when it runs first.
type IPAffinity struct {
	ipaffinity.Config

	// The selection policy used when the hash finds no available upstream,
	// or the connection's remote address is not an IP (a unix socket).
	// Default: none, so no upstream when none is available, and a random one
	// (with a warning, logged once) for a remote address that is not an IP.
	FallbackRaw json.RawMessage `json:"fallback,omitempty" caddy:"namespace=layer4.proxy.selection_policies inline_key=policy"`

	fallback l4proxy.Selector
	static   []string // the parent's upstreams, retained
	core     ipaffinity.Core[*l4proxy.Upstream]
	// gauges are caddy-l4's open connections per upstream address, for
	// bounded loads; nil without balance_factor.
	conns *prometheus.GaugeVec
}

// CaddyModule returns the Caddy module information.
func (*IPAffinity) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.proxy.selection_policies.ip_affinity",
		New: func() caddy.Module { return new(IPAffinity) },
	}
}

// Provision sets up s.
func (s *IPAffinity) Provision(ctx caddy.Context) error {
	// caddy-l4 gives its servers no identity a policy can see, so policies
	// with the same options are told apart by their upstreams: a reload
	// that changes a proxy's upstreams starts its session table afresh.
	if err := s.Config.Provision(ctx, PolicyName, strings.Join(parentUpstreams(ctx), " ")); err != nil {
		return err
	}
	if s.FallbackRaw != nil {
		mod, err := ctx.LoadModule(s, "FallbackRaw")
		if err != nil {
			return fmt.Errorf("loading fallback selection policy: %v", err)
		}
		s.fallback = mod.(l4proxy.Selector)
	}
	reg := ctx.GetMetricsRegistry()
	if err := affinity.RegisterMetrics(reg); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	if s.BalanceFactor > 0 {
		// caddy-l4 exports no connection count, but its proxy keeps one in
		// this gauge of the config's registry; reuse that very collector.
		g, err := activeConnections(reg)
		if err != nil {
			return fmt.Errorf("balance_factor: %v", err)
		}
		s.conns = g
	}
	s.static = registerParentUpstreams(ctx)
	s.core.Init(&s.Config, ipaffinity.Adapter[*l4proxy.Upstream]{
		Policy:   PolicyName,
		Addr:     (*l4proxy.Upstream).String,
		Fallback: s.fallback != nil,
		Once:     callsOnce(caddyutil.Parent[*l4proxy.Handler](ctx)),
	}, ctx.Logger())
	return nil
}

// activeConnections returns caddy-l4's caddy_layer4_proxy_active_connections
// collector of reg, registering an identical one if the proxy has not yet.
func activeConnections(reg *prometheus.Registry) (*prometheus.GaugeVec, error) {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy",
		Subsystem: "layer4_proxy",
		Name:      "active_connections",
		Help:      "Number of connections currently being proxied, labeled by upstream.",
	}, []string{"upstream"})
	err := reg.Register(g)
	if err == nil {
		return g, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(*prometheus.GaugeVec); ok {
			return existing, nil
		}
	}
	return nil, fmt.Errorf("cannot read layer4 connection counts: %v", err)
}

// callsOnce reports whether the proxy handler h calls its policy once per
// connection: caddy-l4 tries again only within try_duration. Without a
// handler in sight it says no.
func callsOnce(h *l4proxy.Handler) bool {
	return h != nil && (h.LoadBalancing == nil || h.LoadBalancing.TryDuration <= 0)
}

// parentUpstreams lists the proxy handler's static upstreams, sorted: the
// ones whose address has no placeholder, as for the HTTP policies.
func parentUpstreams(ctx caddy.Context) []string {
	var addrs []string
	if h := caddyutil.Parent[*l4proxy.Handler](ctx); h != nil {
		for _, u := range h.Upstreams {
			if u != nil && len(u.Dial) > 0 && !strings.Contains(u.String(), "{") {
				addrs = append(addrs, u.String())
			}
		}
	}
	slices.Sort(addrs)
	return addrs
}

// registerParentUpstreams makes the proxy handler's upstreams known to the
// admin API before any connection, and returns them for Cleanup.
func registerParentUpstreams(ctx caddy.Context) []string {
	addrs := parentUpstreams(ctx)
	affinity.Retain(PolicyName, addrs...)
	return addrs
}

// Cleanup releases the session table and the upstreams this config made
// known.
func (s *IPAffinity) Cleanup() error {
	s.core.Close()
	affinity.Release(PolicyName, s.static...)
	return s.Config.Cleanup()
}

// available reports whether u can take a connection now. caddy-l4 keeps
// its upstreams' health unexported; FirstSelection over a pool of one is a
// public way to ask.
func available(u *l4proxy.Upstream, conn *layer4.Connection) bool {
	var first l4proxy.FirstSelection
	return first.Select(l4proxy.UpstreamPool{u}, conn) != nil
}

// remoteIP returns the IP of a connection's remote address, without the
// allocation of formatting it when it is a TCP or UDP address.
func remoteIP(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip := a.AddrPort().Addr().Unmap()
		return ip, ip.IsValid()
	case *net.UDPAddr:
		ip := a.AddrPort().Addr().Unmap()
		return ip, ip.IsValid()
	case nil:
		return netip.Addr{}, false
	}
	return affinity.ParseHostAddr(a.String())
}

// varsKey is layer4.VarsCtxKey as an interface, converted once: it is a
// variable, and converting it on every connection would allocate.
var varsKey any = layer4.VarsCtxKey

// Select returns the upstream of the connection's client.
func (s *IPAffinity) Select(up l4proxy.UpstreamPool, conn *layer4.Connection) *l4proxy.Upstream {
	if len(up) == 0 {
		return nil
	}
	client, _ := remoteIP(conn.RemoteAddr())
	vars, _ := conn.Context.Value(varsKey).(map[string]any)
	avail := func(u *l4proxy.Upstream) bool { return available(u, conn) }
	if client.IsValid() && s.core.Shortcut() {
		if i := s.core.Hit(up, s.core.HashAddr(client), vars, avail); i >= 0 {
			return up[i]
		}
	}
	ups := ipaffinity.Upstreams[*l4proxy.Upstream]{Available: avail}
	if s.conns != nil {
		ups.Load = func(u *l4proxy.Upstream) int {
			var m dto.Metric
			if s.conns.WithLabelValues(u.String()).Write(&m) != nil || m.Gauge == nil {
				return 0
			}
			return int(m.Gauge.GetValue())
		}
	}
	i := s.core.Select(up, client, vars, ups)
	switch {
	case i >= 0:
		return up[i]
	case s.fallback != nil:
		return s.fallback.Select(up, conn)
	case i == ipaffinity.NotIP:
		// No IP to be affine to (a unix socket): serve the connection
		// rather than fail it.
		return new(l4proxy.RandomSelection).Select(up, conn)
	}
	return nil
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy ip_affinity {
//		ipv4_prefix     <bits>
//		ipv6_prefix     <bits>
//		balance_factor  <float>
//		persist_timeout <duration>
//		max_sessions    <count|size>
//		max_sessions_per_network <count>
//		fallback        <policy> [<args...>] [{ ... }]
//	}
func (s *IPAffinity) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return s.Config.ParseBlock(d, func(d *caddyfile.Dispenser) error {
		switch d.Val() {
		case "fallback":
			raw, err := parse.Module(d, "layer4.proxy.selection_policies", "policy")
			s.FallbackRaw = raw
			return err
		case "source":
			return d.Errf("source: not for layer4; the client is always the connection's remote address (run proxy_protocol first to use the PROXY header's)")
		}
		return parse.Unknown(d)
	})
}

// Interface guards
var (
	_ l4proxy.Selector      = (*IPAffinity)(nil)
	_ caddy.Provisioner     = (*IPAffinity)(nil)
	_ caddy.CleanerUpper    = (*IPAffinity)(nil)
	_ caddyfile.Unmarshaler = (*IPAffinity)(nil)
)
