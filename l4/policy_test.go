package l4

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/mholt/caddy-l4/layer4"
	"github.com/mholt/caddy-l4/modules/l4proxy"
	"go.uber.org/zap"

	"github.com/caddy-affinity/caddy-affinity/affinity"
	"github.com/caddy-affinity/caddy-affinity/internal/testutil"
	"github.com/caddy-affinity/caddy-affinity/ipaffinity"
)

// fakeConn is a net.Conn with addresses only: selection reads nothing else.
type fakeConn struct {
	net.Conn
	remote net.Addr
}

func (c fakeConn) RemoteAddr() net.Addr { return c.remote }
func (c fakeConn) LocalAddr() net.Addr  { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 443} }

func connFrom(ip string) *layer4.Connection {
	a := netip.MustParseAddr(ip)
	return layer4.WrapConnection(fakeConn{remote: &net.TCPAddr{IP: a.AsSlice(), Port: 40000}}, nil, zap.NewNop())
}

func testPool(n int) l4proxy.UpstreamPool {
	pool := make(l4proxy.UpstreamPool, n)
	for i := range pool {
		pool[i] = &l4proxy.Upstream{Dial: []string{fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250+1)}}
	}
	return pool
}

func provisioned(t testing.TB, p *IPAffinity) *IPAffinity {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := p.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	p.core.SetLogger(zap.NewNop())
	return p
}

// The layer4 policy picks what the shared core picks, which is what the
// HTTP policy picks for the same client and addresses.
func TestLayer4AgreesWithCore(t *testing.T) {
	pool := testPool(7)
	addrs := make([]string, len(pool))
	for i, u := range pool {
		addrs[i] = u.String()
	}
	table := affinity.NewTable(addrs)
	p := provisioned(t, &IPAffinity{})
	for i := 0; i < 500; i++ {
		ip := fmt.Sprintf("198.18.%d.%d", i/250, i%250)
		want := pool[table.Lookup(affinity.MaskClient(netip.MustParseAddr(ip), 32, 64).Hash())]
		if got := p.Select(pool, connFrom(ip)); got != want {
			t.Fatalf("%s: layer4 chose %s, core %s", ip, got, want)
		}
	}
}

func TestLayer4PrefixKeepsNATPoolTogether(t *testing.T) {
	pool := testPool(16)
	p := provisioned(t, &IPAffinity{})
	p24 := provisioned(t, &IPAffinity{Config: ipaffinity.Config{IPv4Prefix: 24}})
	first := p24.Select(pool, connFrom("203.0.113.1"))
	distinct := map[*l4proxy.Upstream]bool{}
	for i := 1; i < 255; i++ {
		ip := fmt.Sprintf("203.0.113.%d", i)
		if got := p24.Select(pool, connFrom(ip)); got != first {
			t.Fatalf("/24: %s went to %s, the prefix is on %s", ip, got, first)
		}
		distinct[p.Select(pool, connFrom(ip))] = true
	}
	if len(distinct) < 8 {
		t.Fatalf("/32: 254 clients reached only %d of 16 upstreams", len(distinct))
	}
}

func TestLayer4RetryMovesToAnotherUpstream(t *testing.T) {
	pool := testPool(4)
	p := provisioned(t, &IPAffinity{})
	conn := connFrom("192.0.2.10")
	seen := map[*l4proxy.Upstream]bool{}
	var own *l4proxy.Upstream
	for try := 0; try < 4; try++ {
		u := p.Select(pool, conn)
		if u == nil || seen[u] {
			t.Fatalf("try %d chose %v again or none", try, u)
		}
		seen[u] = true
		if try == 0 {
			own = u
		}
	}
	// Every upstream failed this connection once: while lb_try_duration
	// allows, the next try goes round again from the client's own upstream,
	// and a new connection goes there too.
	if u := p.Select(pool, conn); u != own {
		t.Fatalf("after every upstream failed, the next try chose %v, want the client's %s", u, own)
	}
	if u := p.Select(pool, connFrom("192.0.2.10")); u != own {
		t.Fatalf("a new connection went to %v, want the client's %s", u, own)
	}
}

// A unix-socket client has no IP: without a fallback it is served at
// random, not refused.
func TestLayer4NonIPClient(t *testing.T) {
	p := provisioned(t, &IPAffinity{})
	conn := layer4.WrapConnection(fakeConn{remote: &net.UnixAddr{Name: "@", Net: "unix"}}, nil, zap.NewNop())
	if u := p.Select(testPool(3), conn); u == nil {
		t.Fatal("no upstream for a unix-socket client")
	}
}

func TestLayer4SessionTable(t *testing.T) {
	pool := testPool(3)
	p := provisioned(t, &IPAffinity{Config: ipaffinity.Config{PersistTimeout: caddy.Duration(time.Minute)}})
	first := p.Select(pool, connFrom("192.0.2.99"))
	if n := p.Sessions().Len(); n != 1 {
		t.Fatalf("session table has %d entries, want 1", n)
	}
	// An added upstream does not move a client in the table.
	bigger := append(testPool(3), &l4proxy.Upstream{Dial: []string{"10.9.9.9:1"}})
	bigger[0], bigger[1], bigger[2] = pool[0], pool[1], pool[2]
	for i := 0; i < 5; i++ {
		if got := p.Select(bigger, connFrom("192.0.2.99")); got != first {
			t.Fatalf("client moved from %s to %s when an upstream was added", first, got)
		}
	}
}

// BenchmarkL4Select compares ip_affinity with caddy-l4's ip_hash in one
// run, each iteration a new connection of the next of 1024 clients.
func BenchmarkL4Select(b *testing.B) {
	for _, n := range []int{4, 16, 64} {
		pool := testPool(n)
		conns := make([]*layer4.Connection, 1024)
		for i := range conns {
			conns[i] = connFrom(fmt.Sprintf("172.%d.%d.%d", 16+i%16, i/16%256, i%251+1))
		}
		ours := provisioned(b, &IPAffinity{})
		for _, p := range []struct {
			name string
			sel  l4proxy.Selector
		}{{"ip_affinity", ours}, {"l4_ip_hash", &l4proxy.IPHashSelection{}}} {
			b.Run(fmt.Sprintf("upstreams=%d/policy=%s", n, p.name), func(b *testing.B) {
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					c := conns[i&1023]
					c.SetVar(ours.core.VarKey(), nil) // a new connection, as far as retries go
					if p.sel.Select(pool, c) == nil {
						b.Fatal("no upstream")
					}
				}
			})
		}
	}
}

// A connection's selection allocates nothing.
func TestL4SelectAllocations(t *testing.T) {
	if testutil.RaceEnabled {
		t.Skip("allocation counts require a build without -race")
	}
	pool := testPool(16)
	ours := provisioned(t, &IPAffinity{})
	c := connFrom("203.0.113.50")
	n := testing.AllocsPerRun(200, func() {
		c.SetVar(ours.core.VarKey(), nil)
		if ours.Select(pool, c) == nil {
			t.Fatal("no upstream")
		}
	})
	if n != 0 {
		t.Fatalf("layer4 ip_affinity Select: %.1f allocations, want 0", n)
	}
}

// caddy-l4 selects again for a connection only within try_duration: only
// then does the policy keep the upstreams of earlier attempts.
func TestCallsOnce(t *testing.T) {
	for _, tc := range []struct {
		h    *l4proxy.Handler
		want bool
	}{
		{nil, false},
		{&l4proxy.Handler{}, true},
		{&l4proxy.Handler{LoadBalancing: &l4proxy.LoadBalancing{}}, true},
		{&l4proxy.Handler{LoadBalancing: &l4proxy.LoadBalancing{TryDuration: caddy.Duration(time.Second)}}, false},
	} {
		if got := callsOnce(tc.h); got != tc.want {
			t.Errorf("callsOnce(%+v) = %v, want %v", tc.h, got, tc.want)
		}
	}
}
