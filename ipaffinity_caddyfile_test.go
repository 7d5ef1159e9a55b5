package caddyaffinity

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-affinity/caddy-affinity/ip"
)

func parseIPAffinity(input string) (*IPAffinity, error) {
	s := new(IPAffinity)
	err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	return s, err
}

// sameJSON compares two JSON documents semantically.
func sameJSON(t *testing.T, what string, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: invalid JSON %s: %v", what, got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("%s: invalid expected JSON %s: %v", what, want, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s: JSON = %s, want %s", what, got, want)
	}
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
	want := ip.Config{
		IPv4Prefix: 24, IPv6Prefix: 56, BalanceFactor: 1.5,
		PersistTimeout: caddy.Duration(10 * time.Minute), MaxSessions: 100000,
	}
	if s.Source != "remote" {
		t.Errorf("source = %q", s.Source)
	}
	if !reflect.DeepEqual(s.Config, want) {
		t.Errorf("options = %+v, want %+v", s.Config, want)
	}
	sameJSON(t, "fallback", s.FallbackRaw, `{"policy":"random_choose","choose":3}`)
	// The JSON the adapter writes: embedded options at the top level.
	out, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	sameJSON(t, "policy", out, `{"source":"remote","ipv4_prefix":24,"ipv6_prefix":56,"balance_factor":1.5,
		"persist_timeout":600000000000,"max_sessions":100000,"fallback":{"policy":"random_choose","choose":3}}`)
	if err := s.Validate(); err != nil {
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
		sameJSON(t, tc.input, out, tc.json)
	}
}

func TestIPAffinityCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input string
		want  []string // each must appear in the error
	}{
		{"argument", "ip_affinity 24", []string{"ip_affinity: takes no arguments, got '24'", "Testfile:1"}},
		{"unknown option", "ip_affinity {\n\tsource client\n\tbogus 1\n}", []string{"unrecognized option 'bogus'", "Testfile:3"}},
		{"layer4-only spelling", "ip_affinity {\n\tupstream 10.0.0.1:80\n}", []string{"unrecognized option 'upstream'", "Testfile:2"}},
		{"duplicate source", "ip_affinity {\n\tsource client\n\tsource remote\n}", []string{"source: option given more than once", "Testfile:3"}},
		{"duplicate prefix", "ip_affinity {\n\tipv4_prefix 24\n\tipv6_prefix 48\n\tipv4_prefix 16\n}", []string{"ipv4_prefix: option given more than once", "Testfile:4"}},
		{"duplicate max_sessions", "ip_affinity {\n\tmax_sessions 1k\n\tmax_sessions 1MiB\n}", []string{"max_sessions: option given more than once", "Testfile:3"}},
		{"duplicate fallback", "ip_affinity {\n\tfallback first\n\tfallback least_conn\n}", []string{"fallback: option given more than once", "Testfile:3"}},
		{"missing source", "ip_affinity {\n\tsource\n}", []string{"source: expected a value", "Testfile:2"}},
		{"missing ipv4_prefix", "ip_affinity {\n\tipv4_prefix\n}", []string{"ipv4_prefix: expected a value", "Testfile:2"}},
		{"missing ipv6_prefix", "ip_affinity {\n\tipv6_prefix\n}", []string{"ipv6_prefix: expected a value", "Testfile:2"}},
		{"missing persist_timeout", "ip_affinity {\n\tpersist_timeout\n}", []string{"persist_timeout: expected a value", "Testfile:2"}},
		{"missing max_sessions", "ip_affinity {\n\tmax_sessions\n}", []string{"max_sessions: expected a value", "Testfile:2"}},
		{"missing fallback", "ip_affinity {\n\tfallback\n}", []string{"fallback: expected a module name", "Testfile:2"}},
		{"extra source", "ip_affinity {\n\tsource client remote\n}", []string{"source: expected one value, got extra 'remote'", "Testfile:2"}},
		{"extra ipv4_prefix", "ip_affinity {\n\tipv4_prefix 24 16\n}", []string{"ipv4_prefix: expected one value, got extra '16'", "Testfile:2"}},
		{"extra persist_timeout", "ip_affinity {\n\tpersist_timeout 1m 2m\n}", []string{"persist_timeout: expected one value, got extra '2m'", "Testfile:2"}},
		{"extra max_sessions", "ip_affinity {\n\tmax_sessions 1k 2k\n}", []string{"max_sessions: expected one value, got extra '2k'", "Testfile:2"}},
		{"bad source", "ip_affinity {\n\tsource header\n}", []string{"source: expected one of client, remote, got 'header'", "Testfile:2"}},
		{"ipv4_prefix 0", "ip_affinity {\n\tipv4_prefix 0\n}", []string{"ipv4_prefix: expected a whole number from 1 to 32, got '0'", "Testfile:2"}},
		{"ipv4_prefix 33", "ip_affinity {\n\tipv4_prefix 33\n}", []string{"ipv4_prefix: expected a whole number from 1 to 32, got '33'", "Testfile:2"}},
		{"ipv4_prefix CIDR", "ip_affinity {\n\tipv4_prefix /24\n}", []string{"ipv4_prefix:", "'/24'", "Testfile:2"}},
		{"ipv6_prefix 129", "ip_affinity {\n\tipv6_prefix 129\n}", []string{"ipv6_prefix: expected a whole number from 1 to 128, got '129'", "Testfile:2"}},
		{"ipv6_prefix word", "ip_affinity {\n\tipv6_prefix wide\n}", []string{"ipv6_prefix:", "'wide'", "Testfile:2"}},
		{"balance_factor 1", "ip_affinity {\n\tbalance_factor 1\n}", []string{"balance_factor: expected a number greater than 1", "'1'", "Testfile:2"}},
		{"balance_factor 0.5", "ip_affinity {\n\tbalance_factor 0.5\n}", []string{"balance_factor:", "'0.5'", "Testfile:2"}},
		{"balance_factor word", "ip_affinity {\n\tbalance_factor high\n}", []string{"balance_factor:", "'high'", "Testfile:2"}},
		{"bad duration", "ip_affinity {\n\tpersist_timeout soon\n}", []string{"persist_timeout: invalid duration 'soon'", "Testfile:2"}},
		{"negative duration", "ip_affinity {\n\tpersist_timeout -10m\n}", []string{"persist_timeout: duration must not be negative", "Testfile:2"}},
		{"bad count", "ip_affinity {\n\tmax_sessions many\n}", []string{"max_sessions: invalid count 'many'", "Testfile:2"}},
		{"zero count", "ip_affinity {\n\tmax_sessions 0\n}", []string{"max_sessions: invalid count '0'", "Testfile:2"}},
		{"fractional count", "ip_affinity {\n\tmax_sessions 2.5\n}", []string{"max_sessions: invalid count '2.5'", "Testfile:2"}},
		{"bad size", "ip_affinity {\n\tmax_sessions 64QB\n}", []string{"max_sessions: invalid size '64QB'", "Testfile:2"}},
		{"unknown fallback module", "ip_affinity {\n\tsource client\n\tfallback nope\n}", []string{"fallback:", "selection_policies.nope", "Testfile:3"}},
		{"bad fallback arguments", "ip_affinity {\n\tfallback random_choose two\n}", []string{"fallback:", "'two'", "Testfile:2"}},
		{"fallback block error", "ip_affinity {\n\tfallback cookie lb {\n\t\tbogus\n\t}\n}", []string{"fallback:", "Testfile:3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseIPAffinity(tc.input)
			if err == nil {
				t.Fatalf("%q parsed without error", tc.input)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if n := strings.Count(err.Error(), "Testfile:"); n != 1 {
				t.Errorf("error %q names the location %d times", err, n)
			}
		})
	}
}

// Validation after parsing catches what one option alone cannot.
func TestIPAffinityCaddyfileValidate(t *testing.T) {
	s, err := parseIPAffinity("ip_affinity {\n\tmax_sessions 10k\n}")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err == nil || !strings.HasPrefix(err.Error(), "max_sessions:") || !strings.Contains(err.Error(), "persist_timeout") {
		t.Errorf("max_sessions without persist_timeout: Validate = %v", err)
	}
	s = &IPAffinity{Source: "header"}
	if err := s.Validate(); err == nil || !strings.HasPrefix(err.Error(), "source:") {
		t.Errorf("source header: Validate = %v", err)
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
