package header

import (
	"encoding/json"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-affinity/caddy-affinity/internal/testutil"
)

func parseHeader(input string) (*StickyHeader, error) {
	s := new(StickyHeader)
	err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	return s, err
}

// Every option of each mode parses into the JSON the adapter writes.
func TestCaddyfileEveryOption(t *testing.T) {
	for _, tc := range []struct{ input, want string }{
		{`sticky_header Mcp-Session-Id {
			mode         rewrite
			secret       0123456789abcdef0123
			max_lifetime 1h
			fallback     round_robin
			on_failure   strict
		}`, `{"name":"Mcp-Session-Id","mode":"rewrite","secrets":["0123456789abcdef0123"],"max_lifetime":3600000000000,
			"fallback":{"policy":"round_robin"},"on_failure":"strict"}`},
		{`sticky_header Mcp-Session-Id {
			mode         learn
			max_lifetime 8h
			on_failure   temporary
		}`, `{"name":"Mcp-Session-Id","mode":"learn","max_lifetime":28800000000000,"on_failure":"temporary"}`},
		{`sticky_header X-Affinity {
			mode         insert
			secrets      0123456789abcdef0123 {env.OLD_AFFINITY_KEY}
			idle_timeout 30m
			max_lifetime 8h
		}`, `{"name":"X-Affinity","mode":"insert","secrets":["0123456789abcdef0123","{env.OLD_AFFINITY_KEY}"],
			"idle_timeout":1800000000000,"max_lifetime":28800000000000}`},
		{`sticky_header X-Tenant-ID {
			mode            hash
			balance_factor  1.5
			persist_timeout 10m
			max_sessions    64MiB
			fallback        least_conn
		}`, `{"name":"X-Tenant-ID","mode":"hash","fallback":{"policy":"least_conn"},"balance_factor":1.5,
			"persist_timeout":600000000000,"max_sessions_bytes":67108864}`},
		{`sticky_header Mcp-Session-Id`, `{"name":"Mcp-Session-Id"}`},
	} {
		s, err := parseHeader(tc.input)
		if err != nil {
			t.Fatalf("%s: %v", tc.input, err)
		}
		out, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		testutil.SameJSON(t, tc.input, out, tc.want)
	}
}

// Errors name the option and its line; options of another mode are refused.
func TestCaddyfileErrors(t *testing.T) {
	testutil.CheckParseErrors(t, func(in string) error { _, err := parseHeader(in); return err }, []testutil.ParseError{
		{Name: "no name", Input: "sticky_header", Want: []string{"expected the name of the header", "Testfile:1"}},
		{Name: "two names", Input: "sticky_header A B", Want: []string{"got extra 'B'", "Testfile:1"}},
		{Name: "bad name", Input: "sticky_header X:Y", Want: []string{`name: "X:Y" is not a valid header name`, "Testfile:1"}},
		{Name: "cookie", Input: "sticky_header Cookie", Want: []string{"use sticky_cookie for cookies", "Testfile:1"}},
		{Name: "unknown option", Input: "sticky_header X {\n\tmode hash\n\tbogus 1\n}", Want: []string{"unrecognized option 'bogus'", "Testfile:3"}},
		{Name: "bad mode", Input: "sticky_header X {\n\tmode lean\n}", Want: []string{"mode", "lean", "Testfile:2"}},
		{Name: "duplicate", Input: "sticky_header X {\n\tmode hash\n\tmode insert\n}", Want: []string{"mode: option given more than once", "Testfile:3"}},
		{Name: "short secret", Input: "sticky_header X {\n\tsecret short\n}", Want: []string{"secret: key 1 is 5 bytes", "Testfile:2"}},
		{Name: "secret and secrets", Input: "sticky_header X {\n\tsecret 0123456789abcdef0\n\tsecrets 0123456789abcdef0\n}", Want: []string{"secret and secrets are the same option", "Testfile:3"}},
		{Name: "idle_timeout in rewrite", Input: "sticky_header X {\n\tidle_timeout 5m\n}", Want: []string{"idle_timeout: applies to insert and learn mode only, not rewrite", "Testfile:2"}},
		{Name: "secret in hash", Input: "sticky_header X {\n\tmode hash\n\tsecret 0123456789abcdef0\n}", Want: []string{"secret: applies to insert, rewrite and learn mode only, not hash", "Testfile:3"}},
		{Name: "on_failure in hash", Input: "sticky_header X {\n\tmode hash\n\ton_failure strict\n}", Want: []string{"on_failure: applies to insert, rewrite and learn mode only", "Testfile:3"}},
		{Name: "balance_factor in insert", Input: "sticky_header X {\n\tmode insert\n\tbalance_factor 2\n}", Want: []string{"balance_factor: applies to hash mode only, not insert", "Testfile:3"}},
		{Name: "persist_timeout in rewrite", Input: "sticky_header X {\n\tpersist_timeout 1m\n\tmode rewrite\n}", Want: []string{"persist_timeout: applies to hash mode only", "Testfile:2"}},
		{Name: "max_sessions in insert", Input: "sticky_header X {\n\tmode insert\n\tmax_sessions 10\n}", Want: []string{"max_sessions: applies to hash and learn mode only", "Testfile:3"}},
		{Name: "balance_factor 1", Input: "sticky_header X {\n\tmode hash\n\tbalance_factor 1\n}", Want: []string{"balance_factor: expected a number greater than 1", "Testfile:3"}},
		{Name: "bad on_failure", Input: "sticky_header X {\n\ton_failure later\n}", Want: []string{"on_failure", "later", "Testfile:2"}},
		{Name: "missing fallback", Input: "sticky_header X {\n\tfallback\n}", Want: []string{"fallback", "Testfile:2"}},
	})
}
