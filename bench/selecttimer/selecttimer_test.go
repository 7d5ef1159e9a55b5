package selecttimer

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// second always picks the pool's second upstream.
type second struct{}

func (second) Select(pool reverseproxy.UpstreamPool, _ *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	return pool[1]
}

func TestTimerDelegatesAndCounts(t *testing.T) {
	tm := &Timer{Label: t.Name(), policy: second{}, sums: sumsFor(t.Name())}
	pool := reverseproxy.UpstreamPool{{Dial: "a:1"}, {Dial: "b:1"}}
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	for range 3 {
		if got := tm.Select(pool, r, nil); got != pool[1] {
			t.Fatalf("Select = %v, want the timed policy's choice %v", got, pool[1])
		}
	}
	rec := httptest.NewRecorder()
	if err := serve(rec, httptest.NewRequest(http.MethodGet, "/select-timer", nil)); err != nil {
		t.Fatal(err)
	}
	var got map[string]Sums
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("endpoint body %q: %v", rec.Body, err)
	}
	s := got[t.Name()]
	if s.Selections != 3 || s.Nanoseconds == 0 {
		t.Fatalf("endpoint reports %+v for %s, want 3 selections and some time", s, t.Name())
	}
	var n uint64
	for _, c := range s.Histogram {
		n += c
	}
	if n != 3 || len(s.Histogram) == 0 || s.Histogram[len(s.Histogram)-1] == 0 {
		t.Fatalf("histogram %v: want 3 selections, no trailing zeros", s.Histogram)
	}
	if err := serve(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/select-timer", nil)); err == nil {
		t.Fatal("POST accepted, want an error")
	}
}

func TestHistogramBuckets(t *testing.T) {
	var s sums
	for _, d := range []time.Duration{0, 9, 10, 25, 49_999, 50_000, time.Second, -1} {
		s.add(d)
	}
	h := s.snapshot().Histogram
	want := map[int]uint64{0: 3, 1: 1, 2: 1, 4999: 1, 5000: 2}
	for i, c := range h {
		if c != want[i] {
			t.Errorf("bucket %d holds %d, want %d", i, c, want[i])
		}
	}
	if len(h) != Buckets {
		t.Errorf("%d buckets, want %d", len(h), Buckets)
	}
}

func TestTimerCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`select_timer ip {
		policy client_ip_hash
	}`)
	var tm Timer
	if err := tm.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if tm.Label != "ip" || string(tm.PolicyRaw) != `{"policy":"client_ip_hash"}` {
		t.Fatalf("got label %q policy %s", tm.Label, tm.PolicyRaw)
	}
	for _, bad := range []string{"select_timer", "select_timer x {\n\tbogus 1\n}"} {
		if err := new(Timer).UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad)); err == nil {
			t.Errorf("%q accepted, want an error", bad)
		}
	}
}
