package main

import (
	"fmt"
	"slices"
	"strings"
)

// kind is what a case's pre-check expects of it.
type kind int

const (
	kindBalance kind = iota // no affinity: requests spread over the backends
	kindInsert              // the proxy sets its own cookie
	kindRewrite             // the proxy rewrites the backend's cookie
	kindIP                  // one client address, one backend
	kindHeader              // the proxy rewrites the header the backend sets
)

// benchCase is one load-balancer configuration under test.
type benchCase struct {
	ID     string // short name, for -cases
	Name   string // name in the tables
	Server string // "caddy" or "haproxy"
	Kind   kind
	Cookie string // cookie wrk sends back, "" for none; "header:<name>" for a header
	Path   string // request path; the backends set their cookie under /app
	// Policy is the case's part of the configuration: the lines inside
	// reverse_proxy for Caddy, of the backend section for HAProxy.
	Policy string
	// Frontend is extra configuration of the case's HAProxy frontend.
	Frontend string
	// Expect, if set, gives the index of the backend a client address must
	// reach, computed the way the policy hashes (for the IP cases).
	Expect func(addrs []string, ip string) int

	addr    string   // listener, assigned at start
	pid     int      // the proxy process serving it
	checked string   // what the pre-check saw
	samples []sample // one per round
}

// sessionHeader is the header the backends set under /hdr, as an MCP
// server sets Mcp-Session-Id.
const sessionHeader = "X-Session"

// redisEnv names the variable that gives Caddy the address of the
// redis-server the benchmark starts for sticky_learn_redis.
const redisEnv = "AFFINITY_BENCH_REDIS"

// baselineID is the case every ratio is computed against.
const baselineID = "round_robin"

// secret is shared by both Caddy cookie policies so they sign alike; a
// fixed one keeps Caddy's storage out of the measurement.
const secret = "bench-secret-0123456789abcdef"

// allCases returns the cases in report order.
func allCases() []*benchCase {
	return []*benchCase{
		{ID: "round_robin", Name: "Caddy round_robin", Server: "caddy", Kind: kindBalance, Path: "/",
			Policy: "lb_policy round_robin"},
		{ID: "cookie", Name: "Caddy cookie", Server: "caddy", Kind: kindInsert, Cookie: "lb", Path: "/",
			Policy: "lb_policy cookie lb " + secret},
		{ID: "sticky_insert", Name: "sticky_cookie insert", Server: "caddy", Kind: kindInsert, Cookie: "affinity", Path: "/",
			Policy: "lb_policy sticky_cookie affinity {\n\t\t\tsecret " + secret + "\n\t\t}"},
		{ID: "sticky_rewrite", Name: "sticky_cookie rewrite", Server: "caddy", Kind: kindRewrite, Cookie: "name", Path: "/app",
			Policy: "lb_policy sticky_cookie name {\n\t\t\tmode rewrite\n\t\t\tsecret " + secret + "\n\t\t}"},
		{ID: "sticky_learn", Name: "sticky_cookie learn", Server: "caddy", Kind: kindRewrite, Cookie: "name", Path: "/app",
			Policy: "lb_policy sticky_cookie name {\n\t\t\tmode learn\n\t\t}"},
		{ID: "sticky_learn_redis", Name: "sticky_cookie learn, Redis", Server: "caddy", Kind: kindRewrite, Cookie: "name", Path: "/app",
			Policy: "lb_policy sticky_cookie name {\n\t\t\tmode learn\n\t\t\tstore redis {env." + redisEnv + "}\n\t\t}"},
		{ID: "sticky_header", Name: "sticky_header rewrite", Server: "caddy", Kind: kindHeader, Cookie: "header:" + sessionHeader, Path: "/hdr",
			Policy: "lb_policy sticky_header " + sessionHeader + " {\n\t\t\tsecret " + secret + "\n\t\t}"},
		{ID: "client_ip_hash", Name: "Caddy client_ip_hash", Server: "caddy", Kind: kindIP, Path: "/",
			Policy: "lb_policy client_ip_hash", Expect: rendezvous},
		{ID: "ip_affinity", Name: "ip_affinity", Server: "caddy", Kind: kindIP, Path: "/",
			Policy: "lb_policy ip_affinity", Expect: tableIndex},
		{ID: "haproxy_cookie", Name: "HAProxy cookie insert", Server: "haproxy", Kind: kindInsert, Cookie: "SERVERID", Path: "/",
			Policy: "balance roundrobin\n\tcookie SERVERID insert indirect nocache"},
		{ID: "haproxy_source", Name: "HAProxy balance source", Server: "haproxy", Kind: kindIP, Path: "/",
			Policy: "balance source\n\thash-type consistent", Frontend: "http-request set-src hdr(x-forwarded-for) if { src 127.0.0.1 }"},
	}
}

// selectCases returns the cases named in list (all if empty), in report
// order and always with the baseline.
func selectCases(list string) ([]*benchCase, error) {
	all := allCases()
	if strings.TrimSpace(list) == "" {
		return all, nil
	}
	want := map[string]bool{baselineID: true}
	for _, id := range strings.Split(list, ",") {
		id = strings.TrimSpace(id)
		if !slices.ContainsFunc(all, func(k *benchCase) bool { return k.ID == id }) {
			var ids []string
			for _, k := range all {
				ids = append(ids, k.ID)
			}
			return nil, fmt.Errorf("unknown case %q (cases: %s)", id, strings.Join(ids, ", "))
		}
		want[id] = true
	}
	var out []*benchCase
	for _, k := range all {
		if want[k.ID] {
			out = append(out, k)
		}
	}
	return out, nil
}

func splitCases(cases []*benchCase) (caddy, haproxy []*benchCase) {
	for _, k := range cases {
		if k.Server == "haproxy" {
			haproxy = append(haproxy, k)
		} else {
			caddy = append(caddy, k)
		}
	}
	return caddy, haproxy
}

// caseByID returns the case with the given ID, or nil.
func caseByID(cases []*benchCase, id string) *benchCase {
	for _, k := range cases {
		if k.ID == id {
			return k
		}
	}
	return nil
}
