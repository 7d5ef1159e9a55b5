package ipaffinity

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-affinity/caddy-affinity/internal/testutil"
	"github.com/caddy-affinity/caddy-affinity/store"
)

func parseIPAffinity(input string) (*IPAffinity, error) {
	s := new(IPAffinity)
	err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	return s, err
}

func TestIPAffinityCaddyfileEveryOption(t *testing.T) {
	s, err := parseIPAffinity(`ip_affinity {
		source          remote
		ipv4_prefix     24
		ipv6_prefix     56
		balance_factor  1.5
		persist_timeout 10m
		max_sessions    100k
		fallback        random_choose 3
	}`)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		IPv4Prefix: 24, IPv6Prefix: 56, BalanceFactor: 1.5,
		PersistTimeout: caddy.Duration(10 * time.Minute), MaxSessions: 100000,
	}
	if s.Source != "remote" {
		t.Errorf("source = %q", s.Source)
	}
	if !reflect.DeepEqual(s.Config, want) {
		t.Errorf("options = %+v, want %+v", s.Config, want)
	}
	testutil.SameJSON(t, "fallback", s.FallbackRaw, `{"policy":"random_choose","choose":3}`)
	// The JSON the adapter writes: embedded options at the top level.
	out, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	testutil.SameJSON(t, "policy", out, `{"source":"remote","ipv4_prefix":24,"ipv6_prefix":56,"balance_factor":1.5,
		"persist_timeout":600000000000,"max_sessions":100000,"fallback":{"policy":"random_choose","choose":3}}`)
	if err := s.Check(); err != nil {
		t.Errorf("the parsed policy does not validate: %v", err)
	}
}

func TestIPAffinityCaddyfileOptions(t *testing.T) {
	for _, tc := range []struct {
		input string
		json  string // the policy as JSON
	}{
		{"ip_affinity", `{}`},
		{"ip_affinity {\n}", `{}`},
		{"ip_affinity {\n\tsource client\n}", `{"source":"client"}`},
		{"ip_affinity {\n\tsource remote\n}", `{"source":"remote"}`},
		{"ip_affinity {\n\tipv4_prefix 32\n}", `{"ipv4_prefix":32}`},
		{"ip_affinity {\n\tipv4_prefix 1\n}", `{"ipv4_prefix":1}`},
		{"ip_affinity {\n\tipv6_prefix 128\n}", `{"ipv6_prefix":128}`},
		{"ip_affinity {\n\tbalance_factor 1.25\n}", `{"balance_factor":1.25}`},
		{"ip_affinity {\n\tpersist_timeout 7d\n}", `{"persist_timeout":604800000000000}`},
		{"ip_affinity {\n\tpersist_timeout 30s\n\tmax_sessions 1M\n}", `{"persist_timeout":30000000000,"max_sessions":1000000}`},
		{"ip_affinity {\n\tpersist_timeout 30s\n\tmax_sessions 64MiB\n}", `{"persist_timeout":30000000000,"max_sessions_bytes":67108864}`},
		{"ip_affinity {\n\tpersist_timeout 30s\n\tmax_sessions 64MB\n}", `{"persist_timeout":30000000000,"max_sessions_bytes":64000000}`},
		{"ip_affinity {\n\tpersist_timeout 30s\n\tmax_sessions_per_network 500\n}", `{"persist_timeout":30000000000,"max_sessions_per_network":500}`},
		{"ip_affinity {\n\tfallback first\n}", `{"fallback":{"policy":"first"}}`},
		{"ip_affinity {\n\tfallback least_conn\n\tsource remote\n}", `{"fallback":{"policy":"least_conn"},"source":"remote"}`},
		{"ip_affinity {\n\tfallback cookie lb {\n\t\tfallback first\n\t}\n\tipv4_prefix 16\n}",
			`{"fallback":{"policy":"cookie","name":"lb","fallback":{"policy":"first"}},"ipv4_prefix":16}`},
	} {
		s, err := parseIPAffinity(tc.input)
		if err != nil {
			t.Errorf("%q: %v", tc.input, err)
			continue
		}
		out, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("%q: %v", tc.input, err)
		}
		testutil.SameJSON(t, tc.input, out, tc.json)
	}
}

func TestIPAffinityCaddyfileErrors(t *testing.T) {
	testutil.CheckParseErrors(t, func(in string) error { _, err := parseIPAffinity(in); return err }, []testutil.ParseError{
		{Name: "argument", Input: "ip_affinity 24", Want: []string{"ip_affinity: takes no arguments, got '24'", "Testfile:1"}},
		{Name: "unknown option", Input: "ip_affinity {\n\tsource client\n\tbogus 1\n}", Want: []string{"unrecognized option 'bogus'", "Testfile:3"}},
		{Name: "layer4-only spelling", Input: "ip_affinity {\n\tupstream 10.0.0.1:80\n}", Want: []string{"unrecognized option 'upstream'", "Testfile:2"}},
		{Name: "duplicate source", Input: "ip_affinity {\n\tsource client\n\tsource remote\n}", Want: []string{"source: option given more than once", "Testfile:3"}},
		{Name: "duplicate prefix", Input: "ip_affinity {\n\tipv4_prefix 24\n\tipv6_prefix 48\n\tipv4_prefix 16\n}", Want: []string{"ipv4_prefix: option given more than once", "Testfile:4"}},
		{Name: "duplicate max_sessions", Input: "ip_affinity {\n\tmax_sessions 1k\n\tmax_sessions 1MiB\n}", Want: []string{"max_sessions: option given more than once", "Testfile:3"}},
		{Name: "duplicate fallback", Input: "ip_affinity {\n\tfallback first\n\tfallback least_conn\n}", Want: []string{"fallback: option given more than once", "Testfile:3"}},
		{Name: "missing source", Input: "ip_affinity {\n\tsource\n}", Want: []string{"source: expected a value", "Testfile:2"}},
		{Name: "missing ipv4_prefix", Input: "ip_affinity {\n\tipv4_prefix\n}", Want: []string{"ipv4_prefix: expected a value", "Testfile:2"}},
		{Name: "missing ipv6_prefix", Input: "ip_affinity {\n\tipv6_prefix\n}", Want: []string{"ipv6_prefix: expected a value", "Testfile:2"}},
		{Name: "missing persist_timeout", Input: "ip_affinity {\n\tpersist_timeout\n}", Want: []string{"persist_timeout: expected a value", "Testfile:2"}},
		{Name: "missing max_sessions", Input: "ip_affinity {\n\tmax_sessions\n}", Want: []string{"max_sessions: expected a value", "Testfile:2"}},
		{Name: "missing fallback", Input: "ip_affinity {\n\tfallback\n}", Want: []string{"fallback: expected a module name", "Testfile:2"}},
		{Name: "extra source", Input: "ip_affinity {\n\tsource client remote\n}", Want: []string{"source: expected one value, got extra 'remote'", "Testfile:2"}},
		{Name: "extra ipv4_prefix", Input: "ip_affinity {\n\tipv4_prefix 24 16\n}", Want: []string{"ipv4_prefix: expected one value, got extra '16'", "Testfile:2"}},
		{Name: "extra persist_timeout", Input: "ip_affinity {\n\tpersist_timeout 1m 2m\n}", Want: []string{"persist_timeout: expected one value, got extra '2m'", "Testfile:2"}},
		{Name: "extra max_sessions", Input: "ip_affinity {\n\tmax_sessions 1k 2k\n}", Want: []string{"max_sessions: expected one value, got extra '2k'", "Testfile:2"}},
		{Name: "bad source", Input: "ip_affinity {\n\tsource header\n}", Want: []string{"source: expected one of client, remote, got 'header'", "Testfile:2"}},
		{Name: "ipv4_prefix 0", Input: "ip_affinity {\n\tipv4_prefix 0\n}", Want: []string{"ipv4_prefix: expected a whole number from 1 to 32, got '0'", "Testfile:2"}},
		{Name: "ipv4_prefix 33", Input: "ip_affinity {\n\tipv4_prefix 33\n}", Want: []string{"ipv4_prefix: expected a whole number from 1 to 32, got '33'", "Testfile:2"}},
		{Name: "ipv4_prefix CIDR", Input: "ip_affinity {\n\tipv4_prefix /24\n}", Want: []string{"ipv4_prefix:", "'/24'", "Testfile:2"}},
		{Name: "ipv6_prefix 129", Input: "ip_affinity {\n\tipv6_prefix 129\n}", Want: []string{"ipv6_prefix: expected a whole number from 1 to 128, got '129'", "Testfile:2"}},
		{Name: "ipv6_prefix word", Input: "ip_affinity {\n\tipv6_prefix wide\n}", Want: []string{"ipv6_prefix:", "'wide'", "Testfile:2"}},
		{Name: "balance_factor 1", Input: "ip_affinity {\n\tbalance_factor 1\n}", Want: []string{"balance_factor: expected a number greater than 1", "'1'", "Testfile:2"}},
		{Name: "balance_factor 0.5", Input: "ip_affinity {\n\tbalance_factor 0.5\n}", Want: []string{"balance_factor:", "'0.5'", "Testfile:2"}},
		{Name: "balance_factor word", Input: "ip_affinity {\n\tbalance_factor high\n}", Want: []string{"balance_factor:", "'high'", "Testfile:2"}},
		{Name: "bad duration", Input: "ip_affinity {\n\tpersist_timeout soon\n}", Want: []string{"persist_timeout: invalid duration 'soon'", "Testfile:2"}},
		{Name: "negative duration", Input: "ip_affinity {\n\tpersist_timeout -10m\n}", Want: []string{"persist_timeout: duration must not be negative", "Testfile:2"}},
		{Name: "bad count", Input: "ip_affinity {\n\tmax_sessions many\n}", Want: []string{"max_sessions: invalid count 'many'", "Testfile:2"}},
		{Name: "zero count", Input: "ip_affinity {\n\tmax_sessions 0\n}", Want: []string{"max_sessions: invalid count '0'", "Testfile:2"}},
		{Name: "zero per network", Input: "ip_affinity {\n\tpersist_timeout 1m\n\tmax_sessions_per_network 0\n}", Want: []string{"max_sessions_per_network:", "'0'", "Testfile:3"}},
		{Name: "fractional count", Input: "ip_affinity {\n\tmax_sessions 2.5\n}", Want: []string{"max_sessions: invalid count '2.5'", "Testfile:2"}},
		{Name: "bad size", Input: "ip_affinity {\n\tmax_sessions 64QB\n}", Want: []string{"max_sessions: invalid size '64QB'", "Testfile:2"}},
		{Name: "unknown fallback module", Input: "ip_affinity {\n\tsource client\n\tfallback nope\n}", Want: []string{"fallback:", "selection_policies.nope", "Testfile:3"}},
		{Name: "bad fallback arguments", Input: "ip_affinity {\n\tfallback random_choose two\n}", Want: []string{"fallback:", "'two'", "Testfile:2"}},
		{Name: "fallback block error", Input: "ip_affinity {\n\tfallback cookie lb {\n\t\tbogus\n\t}\n}", Want: []string{"fallback:", "Testfile:3"}},
	})
}

// Validation after parsing catches what one option alone cannot.
func TestIPAffinityCaddyfileValidate(t *testing.T) {
	// In a Caddyfile, at adaptation, with the line.
	_, err := parseIPAffinity("ip_affinity {\n\tmax_sessions 10k\n}")
	if err == nil || !strings.HasPrefix(err.Error(), "ip_affinity: max_sessions:") || !strings.Contains(err.Error(), "persist_timeout") ||
		!strings.HasSuffix(err.Error(), ", at Testfile:2") {
		t.Errorf("max_sessions without persist_timeout: %v", err)
	}
	_, err = parseIPAffinity("ip_affinity {\n\tpersist_timeout 1m\n\tmax_sessions 1M\n\tmax_sessions_per_network 10\n}")
	if err == nil || !strings.Contains(err.Error(), "max_sessions_per_network: 10 is below the least") || !strings.HasSuffix(err.Error(), ", at Testfile:4") {
		t.Errorf("max_sessions_per_network below 1/1024 of the table: %v", err)
	}
	_, err = parseIPAffinity("ip_affinity {\n\tmax_sessions_per_network 100\n}")
	if err == nil || !strings.Contains(err.Error(), "max_sessions_per_network:") || !strings.Contains(err.Error(), "persist_timeout") {
		t.Errorf("max_sessions_per_network without persist_timeout: %v", err)
	}
	// In JSON, at provisioning.
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	s := &IPAffinity{}
	s.MaxSessions = 10000
	if err := s.Provision(ctx); err == nil || !strings.HasPrefix(err.Error(), "max_sessions:") {
		t.Errorf("max_sessions without persist_timeout: Provision = %v", err)
	}
	s = &IPAffinity{Source: "header"}
	if err := s.Provision(ctx); err == nil || !strings.HasPrefix(err.Error(), "source:") {
		t.Errorf("source header: Provision = %v", err)
	}
}

// A balance_factor that cannot be written as JSON must be a parse error:
// reverse_proxy drops a selection policy whose JSON fails to encode,
// silently (caddyconfig.JSONModuleObject with no warnings), so the site
// would load with Caddy's default policy instead of ip_affinity.
func TestIPAffinityCaddyfileNaNBalanceFactor(t *testing.T) {
	var h reverseproxy.Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(
		"reverse_proxy 10.0.0.1:80 10.0.0.2:80 {\n\tlb_policy ip_affinity {\n\t\tbalance_factor NaN\n\t}\n}"))
	if err != nil {
		if !strings.Contains(err.Error(), "balance_factor") {
			t.Fatalf("error %q does not name balance_factor", err)
		}
		return
	}
	var raw []byte
	if h.LoadBalancing != nil {
		raw = h.LoadBalancing.SelectionPolicyRaw
	}
	if !strings.Contains(string(raw), `"ip_affinity"`) {
		t.Fatalf("balance_factor NaN: no error, and the ip_affinity policy vanished from the config (selection policy %q)", raw)
	}
}

func TestIPAffinityCaddyfileStore(t *testing.T) {
	s, err := parseIPAffinity(`ip_affinity {
		persist_timeout 10m
		store redis 127.0.0.1:6379 {
			username     caddy
			password     {env.REDIS_PASSWORD}
			db           2
			key_prefix   edge:
			tls
			dial_timeout 2s
			timeout      100ms
			table        shop
			secret       {env.STORE_KEY}
		}
		ipv4_prefix 24
	}`)
	if err != nil {
		t.Fatal(err)
	}
	want := &store.Redis{Address: "127.0.0.1:6379", Username: "caddy", Password: "{env.REDIS_PASSWORD}", DB: 2,
		KeyPrefix: "edge:", TLS: true, DialTimeout: caddy.Duration(2 * time.Second),
		Timeout: caddy.Duration(100 * time.Millisecond), Table: "shop", Secret: "{env.STORE_KEY}"}
	if s.Store == nil || !reflect.DeepEqual(s.Store.Redis, want) {
		t.Errorf("store = %+v, want %+v", s.Store, want)
	}
	if s.IPv4Prefix != 24 {
		t.Errorf("the option after the store block was lost: ipv4_prefix = %d", s.IPv4Prefix)
	}
	if s, err := parseIPAffinity("ip_affinity {\n\tpersist_timeout 1m\n\tstore memory\n}"); err != nil || s.Store != nil {
		t.Errorf("store memory: %+v, %v", s.Store, err)
	}
	testutil.CheckParseErrors(t, func(in string) error { _, err := parseIPAffinity(in); return err }, []testutil.ParseError{
		{Name: "no kind", Input: "ip_affinity {\n\tpersist_timeout 1m\n\tstore\n}", Want: []string{"Testfile:3"}},
		{Name: "unknown kind", Input: "ip_affinity {\n\tpersist_timeout 1m\n\tstore etcd 1.2.3.4:1\n}", Want: []string{"store: expected memory or redis, got 'etcd'", "Testfile:3"}},
		{Name: "no address", Input: "ip_affinity {\n\tpersist_timeout 1m\n\tstore redis\n}", Want: []string{"store redis: needs the server's address", "Testfile:3"}},
		{Name: "bad address", Input: "ip_affinity {\n\tpersist_timeout 1m\n\tstore redis localhost\n}", Want: []string{`address "localhost": expected host:port`, "Testfile:3"}},
		{Name: "two addresses", Input: "ip_affinity {\n\tpersist_timeout 1m\n\tstore redis a:1 b:2\n}", Want: []string{"takes one address, got 'b:2' too", "Testfile:3"}},
		{Name: "unknown option", Input: "ip_affinity {\n\tpersist_timeout 1m\n\tstore redis a:1 {\n\t\tcluster on\n\t}\n}", Want: []string{"store redis: unknown option 'cluster'", "Testfile:4"}},
		{Name: "duplicate option", Input: "ip_affinity {\n\tpersist_timeout 1m\n\tstore redis a:1 {\n\t\tdb 1\n\t\tdb 2\n\t}\n}", Want: []string{"db: option given more than once", "Testfile:5"}},
		{Name: "bad db", Input: "ip_affinity {\n\tpersist_timeout 1m\n\tstore redis a:1 {\n\t\tdb -1\n\t}\n}", Want: []string{"db", "Testfile:4"}},
		{Name: "pattern table", Input: "ip_affinity {\n\tpersist_timeout 1m\n\tstore redis a:1 {\n\t\ttable a*\n\t}\n}", Want: []string{`table "a*": may not hold`, "Testfile:"}},
		{Name: "no table", Input: "ip_affinity {\n\tstore redis a:1\n}", Want: []string{"store: holds the session table, which persist_timeout turns on", "Testfile:2"}},
	})
}
