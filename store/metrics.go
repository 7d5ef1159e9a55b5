package store

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	upDesc = prometheus.NewDesc("caddy_affinity_store_up",
		"1 while the session store answers, else 0 (each instance serves from its own table meanwhile).",
		[]string{"address"}, nil)
	errorsDesc = prometheus.NewDesc("caddy_affinity_store_errors_total",
		"Session store requests that failed or timed out.",
		[]string{"address"}, nil)
	requestsDesc = prometheus.NewDesc("caddy_affinity_store_requests_total",
		"Round trips to the session store, by operation (get, set, delete, refresh, scan).",
		[]string{"address", "op"}, nil)
)

type collector struct{}

func (collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- upDesc
	ch <- errorsDesc
	ch <- requestsDesc
}

func (collector) Collect(ch chan<- prometheus.Metric) {
	live.Range(func(k, _ any) bool {
		c := k.(*conn)
		up := 0.0
		if c.ready() {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, up, c.name)
		ch <- prometheus.MustNewConstMetric(errorsDesc, prometheus.CounterValue, float64(c.stats.errors.Load()), c.name)
		for op := range opCount {
			ch <- prometheus.MustNewConstMetric(requestsDesc, prometheus.CounterValue, float64(c.stats.ops[op].Load()), c.name, opNames[op])
		}
		return true
	})
}

// RegisterMetrics registers the store's collector with reg, the metrics
// registry of the config being loaded; again with the same one is a no-op.
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
