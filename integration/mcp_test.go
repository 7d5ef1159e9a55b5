package integration

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/caddy-affinity/caddy-affinity/internal/testutil"
)

// mcpServer is one stateful MCP server of the official Go SDK, serving
// streamable HTTP on loopback: its sessions live in its memory, so a
// request of a session that reaches another server gets a 404.
type mcpServer struct {
	name string
	addr string
	srv  *http.Server
	// DELETEs that ended a session here, and those for a session it did
	// not know.
	deleted, deleteMissed atomic.Int64
}

func startMCPServer(t *testing.T, name string) *mcpServer {
	t.Helper()
	s := mcp.NewServer(&mcp.Implementation{Name: name, Version: "1.0"}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: "whoami", Description: "the server's name"},
		func(ctx context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: name}}}, nil, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "sessionid", Description: "the session id the server minted"},
		func(ctx context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: req.Session.ID()}}}, nil, nil
		})
	type steps struct {
		Steps int `json:"steps"`
	}
	mcp.AddTool(s, &mcp.Tool{Name: "progress", Description: "streams progress, then answers"},
		func(ctx context.Context, req *mcp.CallToolRequest, in steps) (*mcp.CallToolResult, any, error) {
			for i := 1; i <= in.Steps; i++ {
				if err := req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{
					ProgressToken: req.Params.GetProgressToken(), Progress: float64(i), Total: float64(in.Steps),
				}); err != nil {
					return nil, nil, err
				}
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: name}}}, nil, nil
		})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &mcpServer{name: name, addr: ln.Addr().String()}
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, nil)
	m.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodDelete {
			h.ServeHTTP(w, r)
			return
		}
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(sw, r)
		if sw.status < 300 {
			m.deleted.Add(1)
		} else {
			m.deleteMissed.Add(1)
		}
	})}
	go m.srv.Serve(ln)
	t.Cleanup(m.kill)
	return m
}

// statusWriter remembers the status of a response.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// deletes returns the DELETEs the servers took and missed.
func deletes(servers []*mcpServer) (ok, missed int64) {
	for _, s := range servers {
		ok += s.deleted.Load()
		missed += s.deleteMissed.Load()
	}
	return ok, missed
}

// kill stops the server at once, its sessions with it.
func (m *mcpServer) kill() { m.srv.Close() }

// mcpRun is the outcome of a batch of client sessions.
type mcpRun struct {
	sessions, failed, reinitialized int
	// idChanged: sessions whose client saw another id than its server
	// minted (rewrite mode adds a token; learn mode must not).
	idChanged int
	perServer map[string]int
	progress  int64
	firstErr  error
}

// mcpOpts shapes a batch of sessions.
type mcpOpts struct {
	sessions int
	calls    int
	// pause, if set, is called by every session after half its calls; the
	// batch continues once it returns (to kill a server mid-run).
	pause func()
	// recover: a session whose server is gone initializes a new one and
	// carries on, as the specification prescribes after a 404.
	recover bool
	// h2c: the client speaks HTTP/2 without TLS.
	h2c bool
	// fleet: host:port of Caddy instances; each request goes to a random
	// one of them instead of the endpoint's.
	fleet []string
}

// spread sends each request to a random host of a fleet.
type spread struct {
	rt    http.RoundTripper
	hosts []string
}

func (s spread) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.URL.Host = s.hosts[rand.IntN(len(s.hosts))]
	r.Host = ""
	return s.rt.RoundTrip(r)
}

// runMCPSessions runs o.sessions concurrent sessions of the SDK's client
// against endpoint: initialize, list tools, o.calls tool calls that must
// all reach the server the session started on, one tool that streams
// progress notifications before its result, and DELETE.
func runMCPSessions(t *testing.T, endpoint string, o mcpOpts) mcpRun {
	t.Helper()
	run := mcpRun{perServer: map[string]int{}}
	var mu sync.Mutex
	var progress atomic.Int64
	client := mcp.NewClient(&mcp.Implementation{Name: "affinity-test", Version: "1.0"}, &mcp.ClientOptions{
		ProgressNotificationHandler: func(context.Context, *mcp.ProgressNotificationClientRequest) { progress.Add(1) },
	})
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	if o.h2c {
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
	}
	hc := &http.Client{Transport: tr}
	if len(o.fleet) > 0 {
		hc.Transport = spread{tr, o.fleet}
	}
	t.Cleanup(tr.CloseIdleConnections)
	connect := func(ctx context.Context) (*mcp.ClientSession, string, error) {
		// 2025-11-25: the session-based protocol (2026-07-28 is sessionless).
		cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: endpoint, HTTPClient: hc, MaxRetries: -1},
			&mcp.ClientSessionOptions{ProtocolVersion: "2025-11-25"})
		if err != nil {
			return nil, "", fmt.Errorf("initialize: %w", err)
		}
		if tools, err := cs.ListTools(ctx, nil); err != nil || len(tools.Tools) != 3 {
			cs.Close()
			return nil, "", fmt.Errorf("list tools: %v (%v)", err, tools)
		}
		who, err := callText(ctx, cs, &mcp.CallToolParams{Name: "whoami"})
		if err != nil {
			cs.Close()
			return nil, "", err
		}
		return cs, who, nil
	}
	session := func(n int) (reinit bool, server string, err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		arrived := false
		defer func() {
			// A session that ends early still counts as at the pause.
			if o.pause != nil && !arrived {
				o.pause()
			}
		}()
		cs, home, err := connect(ctx)
		if err != nil {
			return false, "", err
		}
		defer func() { cs.Close() }()
		server = home
		if id, err := callText(ctx, cs, &mcp.CallToolParams{Name: "sessionid"}); err != nil {
			return false, server, fmt.Errorf("sessionid: %w", err)
		} else if id != cs.ID() {
			mu.Lock()
			run.idChanged++
			mu.Unlock()
		}
		for i := range o.calls {
			if i == o.calls/2 && o.pause != nil {
				o.pause()
				arrived = true
			}
			who, err := callText(ctx, cs, &mcp.CallToolParams{Name: "whoami"})
			if err != nil && o.recover && !reinit {
				cs.Close()
				if cs, who, err = connect(ctx); err != nil {
					return true, server, fmt.Errorf("re-initialize after %q: %w", home, err)
				}
				reinit, home = true, who
			}
			if err != nil {
				return reinit, server, fmt.Errorf("call %d: %w", i, err)
			}
			if who != home {
				return reinit, server, fmt.Errorf("call %d reached %s, the session is on %s", i, who, home)
			}
		}
		p := &mcp.CallToolParams{Name: "progress", Arguments: map[string]any{"steps": 5}}
		p.SetProgressToken(fmt.Sprintf("session-%d", n))
		if who, err := callText(ctx, cs, p); err != nil || who != home {
			return reinit, server, fmt.Errorf("progress tool: %q, %v", who, err)
		}
		return reinit, server, nil
	}
	var wg sync.WaitGroup
	for n := range o.sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reinit, server, err := session(n)
			mu.Lock()
			defer mu.Unlock()
			run.sessions++
			if server != "" {
				run.perServer[server]++
			}
			if reinit {
				run.reinitialized++
			}
			if err != nil {
				run.failed++
				if run.firstErr == nil {
					run.firstErr = err
				}
			}
		}()
	}
	wg.Wait()
	run.progress = progress.Load()
	return run
}

// callText calls a tool and returns the text it answered.
func callText(ctx context.Context, cs *mcp.ClientSession, p *mcp.CallToolParams) (string, error) {
	res, err := cs.CallTool(ctx, p)
	if err != nil {
		return "", err
	}
	if res.IsError || len(res.Content) != 1 {
		return "", errors.New("tool error")
	}
	text, ok := res.Content[0].(*mcp.TextContent)
	if !ok {
		return "", errors.New("not text")
	}
	return text.Text, nil
}

// mcpSite is a Caddy site proxying to the MCP servers with policy.
func mcpSite(port int, servers []*mcpServer, policy string) string {
	addrs := make([]string, len(servers))
	for i, s := range servers {
		addrs[i] = s.addr
	}
	return fmt.Sprintf(`http://127.0.0.1:%d {
	affinity
	reverse_proxy %s {
		%s
		lb_retries 2
		fail_duration 10s
		flush_interval -1
	}
}
`, port, strings.Join(addrs, " "), policy)
}

// Three stateful MCP servers of the official Go SDK behind the real Caddy,
// 50 concurrent sessions of its client: with sticky_header every session
// completes, each on one server, spread over all three. Killing one server
// mid-run leaves the others' sessions untouched; its clients get a 404,
// initialize again and carry on on a surviving server. Caddy's own header
// and round_robin policies run the same sessions for comparison.
func TestMCPSessionsStickyHeader(t *testing.T) {
	servers := []*mcpServer{startMCPServer(t, "mcp-a"), startMCPServer(t, "mcp-b"), startMCPServer(t, "mcp-c")}
	sticky := `lb_policy sticky_header Mcp-Session-Id {
			secret mcp-test-secret-0123456789
			fallback round_robin
		}`
	ports := []int{freePort(t), freePort(t), freePort(t)}
	sites := mcpSite(ports[0], servers, sticky) +
		mcpSite(ports[1], servers, "lb_policy header Mcp-Session-Id") +
		mcpSite(ports[2], servers, "lb_policy round_robin")
	waits := []string{}
	for _, p := range ports {
		waits = append(waits, fmt.Sprintf("127.0.0.1:%d", p))
	}
	c := startCaddy(t, sites, caddyOpts{wait: waits, level: "WARN", global: "\tservers {\n\t\tprotocols h1 h2c\n\t}"})
	url := func(i int) string { return fmt.Sprintf("http://127.0.0.1:%d/mcp", ports[i]) }

	const sessions, calls = 50, 20
	run := runMCPSessions(t, url(0), mcpOpts{sessions: sessions, calls: calls})
	t.Logf("sticky_header: %d sessions, %d failed, per server %v, %d progress notifications", run.sessions, run.failed, run.perServer, run.progress)
	if run.failed != 0 {
		t.Fatalf("sticky_header: %d of %d sessions failed; first: %v", run.failed, run.sessions, run.firstErr)
	}
	for _, s := range servers {
		if n := run.perServer[s.name]; n*5 < sessions {
			t.Errorf("%s got %d of %d sessions, want at least 20 %%", s.name, n, sessions)
		}
	}
	if run.progress < int64(sessions*5) {
		t.Errorf("%d progress notifications reached the clients, want %d", run.progress, sessions*5)
	}
	if run.idChanged != sessions {
		t.Errorf("%d of %d clients hold a routed id (TOKEN~id); want all", run.idChanged, sessions)
	}
	// Close sends DELETE and does not look at the answer: the servers do.
	if ok, missed := deletes(servers); ok != sessions || missed != 0 {
		t.Errorf("DELETE ended %d sessions on their server and missed %d; want %d and 0", ok, missed, sessions)
	}

	// The same over HTTP/2 without TLS (h2c).
	h2 := runMCPSessions(t, url(0), mcpOpts{sessions: sessions, calls: calls, h2c: true})
	t.Logf("sticky_header over h2c: %d sessions, %d failed, per server %v, %d progress notifications", h2.sessions, h2.failed, h2.perServer, h2.progress)
	if h2.failed != 0 || h2.progress < int64(sessions*5) {
		t.Fatalf("sticky_header over h2c: %d of %d sessions failed (first: %v), %d progress notifications", h2.failed, h2.sessions, h2.firstErr, h2.progress)
	}

	// For the README: Caddy's own policies with the same sessions.
	for i, name := range []string{"header Mcp-Session-Id", "round_robin"} {
		r := runMCPSessions(t, url(i+1), mcpOpts{sessions: sessions, calls: calls})
		t.Logf("MCP sessions failed with lb_policy %s: %d of %d (first: %v)", name, r.failed, r.sessions, r.firstErr)
		fmt.Printf("MCP sessions failed with lb_policy %s: %d of %d\n", name, r.failed, r.sessions)
	}
	fmt.Printf("MCP sessions failed with lb_policy sticky_header: %d of %d\n", run.failed, run.sessions)

	// One server killed mid-run.
	var once sync.Once
	var paused sync.WaitGroup
	paused.Add(sessions)
	release := make(chan struct{})
	victim := servers[1]
	pause := func() {
		paused.Done()
		<-release
	}
	go func() {
		paused.Wait()
		once.Do(victim.kill)
		close(release)
	}()
	run = runMCPSessions(t, url(0), mcpOpts{sessions: sessions, calls: calls, pause: pause, recover: true})
	t.Logf("kill %s: %d sessions, %d failed, %d re-initialized, per server %v", victim.name, run.sessions, run.failed, run.reinitialized, run.perServer)
	if run.failed != 0 {
		t.Fatalf("with %s killed: %d sessions failed; first: %v\n%s", victim.name, run.failed, run.firstErr, c.logTail(20))
	}
	if run.reinitialized != run.perServer[victim.name] || run.reinitialized == 0 {
		t.Fatalf("%d sessions re-initialized; %d were on the killed %s: want those, and only those",
			run.reinitialized, run.perServer[victim.name], victim.name)
	}
}

// Learn mode with the same servers: every session completes on one server,
// and the client holds the id its server minted, byte for byte.
func TestMCPSessionsLearn(t *testing.T) {
	servers := []*mcpServer{startMCPServer(t, "mcp-a"), startMCPServer(t, "mcp-b"), startMCPServer(t, "mcp-c")}
	port := freePort(t)
	startCaddy(t, mcpSite(port, servers, `lb_policy sticky_header Mcp-Session-Id {
			mode learn
			secret mcp-test-secret-0123456789
			fallback round_robin
		}`), caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", port)}, level: "WARN"})
	const sessions = 50
	run := runMCPSessions(t, fmt.Sprintf("http://127.0.0.1:%d/mcp", port), mcpOpts{sessions: sessions, calls: 20})
	t.Logf("learn: %d sessions, %d failed, %d with a changed id, per server %v", run.sessions, run.failed, run.idChanged, run.perServer)
	if run.failed != 0 || run.idChanged != 0 {
		t.Fatalf("learn: %d of %d sessions failed (first: %v), %d saw another id than their server minted", run.failed, run.sessions, run.firstErr, run.idChanged)
	}
	for _, s := range servers {
		if n := run.perServer[s.name]; n*5 < sessions {
			t.Errorf("%s got %d of %d sessions, want at least 20 %%", s.name, n, sessions)
		}
	}
	if ok, missed := deletes(servers); ok != sessions || missed != 0 {
		t.Errorf("DELETE ended %d sessions on their server and missed %d; want %d and 0", ok, missed, sessions)
	}
}

// Learn mode through a fleet: three Caddy instances share one Redis, and
// every request of every session (initialize, calls, the progress stream,
// DELETE) goes to a random instance. Every session completes on the server
// that minted its id, which the client holds byte for byte.
func TestMCPSessionsLearnFleet(t *testing.T) {
	rdb := testutil.StartRedis(t)
	servers := []*mcpServer{startMCPServer(t, "mcp-a"), startMCPServer(t, "mcp-b"), startMCPServer(t, "mcp-c")}
	var fleet []string
	for range 3 {
		port := freePort(t)
		startCaddy(t, mcpSite(port, servers, `lb_policy sticky_header Mcp-Session-Id {
			mode learn
			store redis `+rdb.Addr+`
			fallback round_robin
		}`), caddyOpts{wait: []string{fmt.Sprintf("127.0.0.1:%d", port)}, level: "WARN"})
		fleet = append(fleet, fmt.Sprintf("127.0.0.1:%d", port))
	}
	const sessions = 50
	run := runMCPSessions(t, "http://"+fleet[0]+"/mcp", mcpOpts{sessions: sessions, calls: 20, fleet: fleet})
	t.Logf("learn through 3 instances and Redis: %d sessions, %d failed, %d with a changed id, per server %v, %d progress notifications",
		run.sessions, run.failed, run.idChanged, run.perServer, run.progress)
	if run.failed != 0 || run.idChanged != 0 {
		t.Fatalf("%d of %d sessions failed (first: %v), %d saw another id than their server minted", run.failed, run.sessions, run.firstErr, run.idChanged)
	}
	if ok, missed := deletes(servers); ok != sessions || missed != 0 {
		t.Errorf("DELETE ended %d sessions on their server and missed %d; want %d and 0", ok, missed, sessions)
	}
	// One entry a session (a DELETE ends an MCP session, not a learned
	// entry, which expires after idle_timeout: other APIs DELETE
	// resources within a session).
	if n := rdb.Keys("caddy-affinity:t:header:Mcp-Session-Id:"); n != sessions {
		t.Errorf("Redis holds %d entries, want %d", n, sessions)
	}
}
