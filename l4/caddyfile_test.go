package l4

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/mholt/caddy-l4/modules/l4proxy"

	"github.com/caddy-affinity/caddy-affinity/internal/testutil"
	"github.com/caddy-affinity/caddy-affinity/ipaffinity"
)

func parseL4(input string) (*IPAffinity, error) {
	s := new(IPAffinity)
	err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	return s, err
}

func TestLayer4CaddyfileEveryOption(t *testing.T) {
	s, err := parseL4(`ip_affinity {
		ipv4_prefix     24
		ipv6_prefix     48
		balance_factor  1.25
		persist_timeout 10m
		max_sessions    64MiB
		fallback        random_choose 3
	}`)
	if err != nil {
		t.Fatal(err)
	}
	want := ipaffinity.Config{
		IPv4Prefix: 24, IPv6Prefix: 48, BalanceFactor: 1.25,
		PersistTimeout: caddy.Duration(10 * time.Minute), MaxSessionsBytes: 64 << 20,
	}
	if !reflect.DeepEqual(s.Config, want) {
		t.Errorf("options = %+v, want %+v", s.Config, want)
	}
	out, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	testutil.SameJSON(t, "policy", out, `{"ipv4_prefix":24,"ipv6_prefix":48,"balance_factor":1.25,
		"persist_timeout":600000000000,"max_sessions_bytes":67108864,"fallback":{"policy":"random_choose","choose":3}}`)
	if err := s.Config.Check(); err != nil {
		t.Errorf("the parsed policy does not validate: %v", err)
	}
}

func TestLayer4CaddyfileOptions(t *testing.T) {
	for _, tc := range []struct{ input, json string }{
		{"ip_affinity", `{}`},
		{"ip_affinity {\n}", `{}`},
		{"ip_affinity {\n\tipv4_prefix 32\n}", `{"ipv4_prefix":32}`},
		{"ip_affinity {\n\tipv6_prefix 128\n}", `{"ipv6_prefix":128}`},
		{"ip_affinity {\n\tbalance_factor 2\n}", `{"balance_factor":2}`},
		{"ip_affinity {\n\tpersist_timeout 7d\n}", `{"persist_timeout":604800000000000}`},
		{"ip_affinity {\n\tpersist_timeout 1m\n\tmax_sessions 100k\n}", `{"persist_timeout":60000000000,"max_sessions":100000}`},
		{"ip_affinity {\n\tpersist_timeout 1m\n\tmax_sessions 64MB\n}", `{"persist_timeout":60000000000,"max_sessions_bytes":64000000}`},
		{"ip_affinity {\n\tfallback first\n}", `{"fallback":{"policy":"first"}}`},
		{"ip_affinity {\n\tfallback least_conn\n}", `{"fallback":{"policy":"least_conn"}}`},
		{"ip_affinity {\n\tfallback round_robin\n\tipv4_prefix 16\n}", `{"fallback":{"policy":"round_robin"},"ipv4_prefix":16}`},
	} {
		s, err := parseL4(tc.input)
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

func TestLayer4CaddyfileErrors(t *testing.T) {
	testutil.CheckParseErrors(t, func(in string) error { _, err := parseL4(in); return err }, []testutil.ParseError{
		{Name: "argument", Input: "ip_affinity 24", Want: []string{"ip_affinity: takes no arguments, got '24'", "Testfile:1"}},
		{Name: "source", Input: "ip_affinity {\n\tipv4_prefix 24\n\tsource remote\n}", Want: []string{"source: not for layer4", "remote address", "proxy_protocol", "Testfile:3"}},
		{Name: "source client", Input: "ip_affinity {\n\tsource client\n}", Want: []string{"source: not for layer4", "Testfile:2"}},
		{Name: "unknown option", Input: "ip_affinity {\n\tbogus 1\n}", Want: []string{"unrecognized option 'bogus'", "Testfile:2"}},
		{Name: "duplicate", Input: "ip_affinity {\n\tipv6_prefix 48\n\tipv6_prefix 56\n}", Want: []string{"ipv6_prefix: option given more than once", "Testfile:3"}},
		{Name: "duplicate fallback", Input: "ip_affinity {\n\tfallback first\n\tfallback first\n}", Want: []string{"fallback: option given more than once", "Testfile:3"}},
		{Name: "missing ipv4_prefix", Input: "ip_affinity {\n\tipv4_prefix\n}", Want: []string{"ipv4_prefix: expected a value", "Testfile:2"}},
		{Name: "missing persist_timeout", Input: "ip_affinity {\n\tpersist_timeout\n}", Want: []string{"persist_timeout: expected a value", "Testfile:2"}},
		{Name: "missing max_sessions", Input: "ip_affinity {\n\tmax_sessions\n}", Want: []string{"max_sessions: expected a value", "Testfile:2"}},
		{Name: "missing fallback", Input: "ip_affinity {\n\tfallback\n}", Want: []string{"fallback: expected a module name", "Testfile:2"}},
		{Name: "extra ipv6_prefix", Input: "ip_affinity {\n\tipv6_prefix 48 56\n}", Want: []string{"ipv6_prefix: expected one value, got extra '56'", "Testfile:2"}},
		{Name: "extra persist_timeout", Input: "ip_affinity {\n\tpersist_timeout 1m 2m\n}", Want: []string{"persist_timeout: expected one value, got extra '2m'", "Testfile:2"}},
		{Name: "ipv4_prefix 33", Input: "ip_affinity {\n\tipv4_prefix 33\n}", Want: []string{"ipv4_prefix: expected a whole number from 1 to 32, got '33'", "Testfile:2"}},
		{Name: "ipv6_prefix 0", Input: "ip_affinity {\n\tipv6_prefix 0\n}", Want: []string{"ipv6_prefix: expected a whole number from 1 to 128, got '0'", "Testfile:2"}},
		{Name: "balance_factor 1", Input: "ip_affinity {\n\tbalance_factor 1\n}", Want: []string{"balance_factor: expected a number greater than 1", "Testfile:2"}},
		{Name: "balance_factor word", Input: "ip_affinity {\n\tbalance_factor lots\n}", Want: []string{"balance_factor:", "'lots'", "Testfile:2"}},
		{Name: "bad duration", Input: "ip_affinity {\n\tpersist_timeout 5 minutes\n}", Want: []string{"persist_timeout:", "Testfile:2"}},
		{Name: "negative duration", Input: "ip_affinity {\n\tpersist_timeout -1h\n}", Want: []string{"persist_timeout: duration must not be negative", "Testfile:2"}},
		{Name: "bad count", Input: "ip_affinity {\n\tmax_sessions 10q\n}", Want: []string{"max_sessions: invalid count '10q'", "Testfile:2"}},
		{Name: "bad size", Input: "ip_affinity {\n\tmax_sessions 0KiB\n}", Want: []string{"max_sessions: invalid size '0KiB'", "Testfile:2"}},
		{Name: "unknown fallback module", Input: "ip_affinity {\n\tfallback cookie\n}", Want: []string{"fallback:", "layer4.proxy.selection_policies.cookie", "Testfile:2"}},
		{Name: "fallback with a block", Input: "ip_affinity {\n\tfallback random {\n\t\tx\n\t}\n}", Want: []string{"fallback:", "blocks are not supported", "Testfile:"}},
	})
}

// caddy-l4's own policies return some argument errors without a location
// (random_choose: the bare strconv error); the fallback option must still
// say where in the Caddyfile the mistake is.
func TestLayer4CaddyfileFallbackArgumentErrorHasLocation(t *testing.T) {
	input := "ip_affinity {\n\tipv4_prefix 24\n\tfallback random_choose two\n}"
	_, err := parseL4(input)
	if err == nil {
		t.Fatalf("%q parsed without error", input)
	}
	if !strings.HasPrefix(err.Error(), "fallback:") || !strings.Contains(err.Error(), "Testfile:3") {
		t.Fatalf("error %q does not name fallback and Testfile:3", err)
	}
}

// Through caddy-l4's proxy: the policy is found by its name and its JSON
// is what the proxy handler stores.
func TestLayer4CaddyfileInProxy(t *testing.T) {
	var h l4proxy.Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(
		"proxy {\n\tlb_policy ip_affinity {\n\t\tipv4_prefix 24\n\t\tpersist_timeout 1m\n\t}\n\tupstream 10.0.0.1:5432\n}"))
	if err != nil {
		t.Fatal(err)
	}
	if h.LoadBalancing == nil {
		t.Fatal("no load_balancing")
	}
	testutil.SameJSON(t, "selection_policy", h.LoadBalancing.SelectionPolicyRaw,
		`{"policy":"ip_affinity","ipv4_prefix":24,"persist_timeout":60000000000}`)

	err = h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(
		"proxy {\n\tlb_policy ip_affinity {\n\t\tsource remote\n\t}\n}"))
	if err == nil || !strings.Contains(err.Error(), "source: not for layer4") {
		t.Fatalf("source in a layer4 proxy: %v", err)
	}
}
