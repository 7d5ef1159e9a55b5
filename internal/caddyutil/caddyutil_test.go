package caddyutil

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-affinity/caddy-affinity/affinity"
	"github.com/caddy-affinity/caddy-affinity/internal/testutil"
)

// first is a fallback that always takes the first upstream it is handed:
// without PickKeyless's bookkeeping every retry would go there again.
type first struct{}

func (first) Select(pool reverseproxy.UpstreamPool, _ *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	for _, u := range pool {
		if u.Available() {
			return u
		}
	}
	return nil
}

func pool(n int) reverseproxy.UpstreamPool {
	var p reverseproxy.UpstreamPool
	for i := range n {
		p = append(p, &reverseproxy.Upstream{Host: new(reverseproxy.Host), Dial: fmt.Sprintf("10.9.0.%d:80", i+1)})
	}
	return p
}

// A request without a session key retries on an upstream its earlier
// attempts did not use, then, once all have failed it, starts a new round.
func TestPickKeylessRetries(t *testing.T) {
	p := pool(3)
	r, w := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
	vars := map[string]any{}
	var got []string
	for range 4 {
		got = append(got, PickKeyless(first{}, p, r, w, vars, "k").Dial)
	}
	want := []string{"10.9.0.1:80", "10.9.0.2:80", "10.9.0.3:80", "10.9.0.1:80"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("attempts went to %v, want %v", got, want)
	}
	// Another request starts afresh.
	if u := PickKeyless(first{}, p, r, w, map[string]any{}, "k"); u != p[0] {
		t.Fatalf("a new request went to %v", u.Dial)
	}
	// Without vars (no Caddy server): no memory, no panic.
	if u := PickKeyless(first{}, p, r, w, nil, "k"); u != p[0] {
		t.Fatalf("without vars: %v", u.Dial)
	}
	// Without a key (a policy its handler calls once per request): the
	// fallback's choice, nothing kept.
	vars = map[string]any{}
	if u := PickKeyless(first{}, p, r, w, vars, ""); u != p[0] || len(vars) != 0 {
		t.Fatalf("without a key: %v, kept %v", u.Dial, vars)
	}
}

// A draining upstream gets no keyless request while another can take it.
func TestPickKeylessAvoidsDraining(t *testing.T) {
	p := pool(2)
	affinity.Retain("test", p[0].Dial, p[1].Dial)
	defer affinity.Release("test", p[0].Dial, p[1].Dial)
	if !affinity.SetDraining(p[0].Dial, true) {
		t.Fatal("could not drain a known upstream")
	}
	defer affinity.SetDraining(p[0].Dial, false)
	r, w := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
	if u := PickKeyless(first{}, p, r, w, map[string]any{}, "k"); u != p[1] {
		t.Fatalf("went to %s, which drains", u.Dial)
	}
}

// A keyless request's first attempt, nothing draining, costs no
// allocation (Caddy's vars map has room for a variable or two).
func TestPickKeylessAllocations(t *testing.T) {
	if testutil.RaceEnabled {
		t.Skip("allocation counts require a build without -race (make test runs Allocations tests without it)")
	}
	p := pool(3)
	r, w := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
	vars := make(map[string]any, 8)
	if n := testing.AllocsPerRun(100, func() {
		clear(vars)
		PickKeyless(first{}, p, r, w, vars, "k")
	}); n != 0 {
		t.Fatalf("%.1f allocations per first attempt, want 0", n)
	}
}
