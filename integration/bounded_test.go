package integration

import (
	"fmt"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// holdingBackend answers only when released, and counts requests in flight.
type holdingBackend struct {
	*backend
	inFlight atomic.Int64
	arrived  chan struct{}
	release  chan struct{}
}

func newHoldingBackend(t *testing.T, name string, arrived, release chan struct{}) *holdingBackend {
	h := &holdingBackend{backend: newBackend(t, name), arrived: arrived, release: release}
	h.extra = func(w http.ResponseWriter, r *http.Request) bool {
		h.inFlight.Add(1)
		defer h.inFlight.Add(-1)
		h.arrived <- struct{}{}
		<-h.release
		return false
	}
	return h
}

// TestBoundedLoads sends clients that all hash to one upstream, one at a
// time and each held open, through HTTP and layer4 listeners with
// balance_factor 1.25, and through an HTTP listener without it as the
// control. With the bound, the hot upstream never carries more than
// ceil(1.25 x average); without it, it carries them all.
func TestBoundedLoads(t *testing.T) {
	const clients, factor = 20, 1.25
	arrived := make(chan struct{}, 64)
	release := make(chan struct{})
	var hs []*holdingBackend
	var addrs []string
	for i := 1; i <= 4; i++ {
		h := newHoldingBackend(t, fmt.Sprintf("h%d", i), arrived, release)
		hs = append(hs, h)
		addrs = append(addrs, h.addr)
	}
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	// Source addresses whose consistent-hash upstream is the first backend.
	var hot []string
	for i := 2; i <= 254 && len(hot) < clients; i++ {
		src := fmt.Sprintf("127.0.0.%d", i)
		if expected(addrs, src, 32) == addrs[0] {
			hot = append(hot, src)
		}
	}
	if len(hot) < clients {
		t.Fatalf("only %d loopback sources hash to the first backend", len(hot))
	}

	bounded, control, l4 := freePort(t), freePort(t), freePort(t)
	var ups strings.Builder
	for _, a := range addrs {
		fmt.Fprintf(&ups, "\t\t\t\t\tupstream %s\n", a)
	}
	global := fmt.Sprintf(`	layer4 {
		127.0.0.1:%d {
			route {
				proxy {
					lb_policy ip_affinity {
						balance_factor %g
					}
%s				}
			}
		}
	}`, l4, factor, ups.String())
	sites := fmt.Sprintf(`
http://127.0.0.1:%d {
	reverse_proxy %[3]s {
		lb_policy ip_affinity {
			balance_factor %[4]g
		}
	}
}
http://127.0.0.1:%[2]d {
	reverse_proxy %[3]s {
		lb_policy ip_affinity
	}
}
`, bounded, control, strings.Join(addrs, " "), factor)
	startCaddy(t, sites, caddyOpts{global: global, wait: []string{
		fmt.Sprintf("127.0.0.1:%d", bounded), fmt.Sprintf("127.0.0.1:%d", control), fmt.Sprintf("127.0.0.1:%d", l4)}})

	bound := int(math.Ceil(factor * clients / float64(len(hs))))
	run := func(name string, send func(src string)) []int64 {
		var wg sync.WaitGroup
		for _, src := range hot[:clients] {
			wg.Add(1)
			go func() { defer wg.Done(); send(src) }()
			select { // one at a time: the next chooses with this one counted
			case <-arrived:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: request from %s never reached a backend", name, src)
			}
		}
		loads := make([]int64, len(hs))
		for i, h := range hs {
			loads[i] = h.inFlight.Load()
		}
		for range hot[:clients] {
			release <- struct{}{}
		}
		wg.Wait()
		t.Logf("%s: %d held clients of one hash bucket spread as %v (bound %d)", name, clients, loads, bound)
		return loads
	}

	httpSend := func(port int) func(string) {
		return func(src string) {
			r, err := sourceClient(src).Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
			if err != nil {
				t.Errorf("from %s: %v", src, err)
				return
			}
			r.Body.Close()
		}
	}
	if loads := run("control (no balance_factor)", httpSend(control)); loads[0] != clients {
		t.Fatalf("without bounded loads the hot upstream holds %d of %d: the test cannot tell", loads[0], clients)
	}
	if loads := run("http balance_factor", httpSend(bounded)); loads[0] > int64(bound) || loads[0] == 0 {
		t.Fatalf("HTTP bounded loads: hot upstream holds %d, bound %d", loads[0], bound)
	}
	l4Send := func(src string) { l4Get(t, src, fmt.Sprintf("127.0.0.1:%d", l4)) }
	if loads := run("layer4 balance_factor", l4Send); loads[0] > int64(bound) || loads[0] == 0 {
		t.Fatalf("layer4 bounded loads: hot upstream holds %d, bound %d", loads[0], bound)
	}
}
