package affinity

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// The collector reads the process-wide counters, session tables and
// draining state at scrape time, so the request path only increments
// atomics and nothing is lost when a config reload brings a new registry.
var (
	decisionsDesc = prometheus.NewDesc("caddy_affinity_decisions_total",
		"Routing decisions of affinity policies, by policy, upstream and result (hit, new, rebind, rejected).",
		[]string{"policy", "upstream", "result"}, nil)
	rejectedDesc = prometheus.NewDesc("caddy_affinity_rejected_total",
		"Invalid affinity cookies, by policy, upstream and reason.",
		[]string{"policy", "upstream", "reason"}, nil)
	tooLargeDesc = prometheus.NewDesc("caddy_affinity_cookies_too_large_total",
		"Backend cookies left unrewritten because the route token would take them past the 4096 bytes browsers store, by policy and upstream.",
		[]string{"policy", "upstream"}, nil)
	sessionsDesc = prometheus.NewDesc("caddy_affinity_sessions",
		"Entries in affinity session tables, by upstream.",
		[]string{"upstream"}, nil)
	drainingDesc = prometheus.NewDesc("caddy_affinity_draining",
		"1 if the upstream is draining (no new sessions), else 0.",
		[]string{"upstream"}, nil)
)

type collector struct{}

func (collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- decisionsDesc
	ch <- rejectedDesc
	ch <- tooLargeDesc
	ch <- sessionsDesc
	ch <- drainingDesc
}

func (collector) Collect(ch chan<- prometheus.Metric) {
	addrs := map[string]bool{}
	EachCounters(func(policy, addr string, c *Counters) {
		addrs[addr] = true
		for _, r := range Results() {
			ch <- prometheus.MustNewConstMetric(decisionsDesc, prometheus.CounterValue, float64(c.Count(r)), policy, addr, r.String())
		}
		for _, reason := range Reasons() {
			if n := c.RejectedBy(reason); n > 0 {
				ch <- prometheus.MustNewConstMetric(rejectedDesc, prometheus.CounterValue, float64(n), policy, addr, reason.String())
			}
		}
		if n := c.TooLarge(); n > 0 {
			ch <- prometheus.MustNewConstMetric(tooLargeDesc, prometheus.CounterValue, float64(n), policy, addr)
		}
	})
	sessions := SessionsByUpstream()
	for a := range sessions {
		addrs[a] = true
	}
	for _, a := range DrainingList() {
		addrs[a] = true
	}
	for a := range addrs {
		ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, float64(sessions[a]), a)
		d := 0.0
		if IsDraining(a) {
			d = 1
		}
		ch <- prometheus.MustNewConstMetric(drainingDesc, prometheus.GaugeValue, d, a)
	}
}

// RegisterMetrics registers the affinity collector with reg, the metrics
// registry of the config being loaded. Every policy calls it when it is
// provisioned; registering again with the same registry is a no-op.
func RegisterMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	err := reg.Register(collector{})
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		return nil
	}
	return err
}
