package cookie

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-affinity/caddy-affinity/internal/testutil"
)

func parseCaddyfile(input string) (*StickyCookie, error) {
	s := new(StickyCookie)
	err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	return s, err
}

func TestUnmarshalCaddyfileEveryOption(t *testing.T) {
	s, err := parseCaddyfile(`sticky_cookie srv {
		mode           insert
		secret         {env.AFFINITY_KEY} second-secret-0123456789
		max_age        7d
		idle_timeout   30m
		max_lifetime   12h
		path           /app
		domain         example.com
		secure         always
		same_site      strict
		http_only      off
		forward_cookie on
		nocache        on
		fallback       random_choose 3
		on_failure     strict
	}`)
	if err != nil {
		t.Fatal(err)
	}
	off := false
	want := StickyCookie{
		Mode: "insert", Name: "srv",
		Secrets:     []string{"{env.AFFINITY_KEY}", "second-secret-0123456789"},
		MaxAge:      caddy.Duration(7 * 24 * time.Hour),
		IdleTimeout: caddy.Duration(30 * time.Minute),
		MaxLifetime: caddy.Duration(12 * time.Hour),
		Path:        "/app", Domain: "example.com", Secure: "always", SameSite: "strict",
		HTTPOnly: &off, ForwardCookie: true, NoCache: true, OnFailure: "strict",
	}
	testutil.SameJSON(t, "fallback", s.FallbackRaw, `{"policy":"random_choose","choose":3}`)
	s.FallbackRaw = nil
	if !reflect.DeepEqual(*s.HTTPOnly, *want.HTTPOnly) {
		t.Errorf("http_only = %v", *s.HTTPOnly)
	}
	s.HTTPOnly, want.HTTPOnly = nil, nil
	gotJSON, _ := json.Marshal(s)
	wantJSON, _ := json.Marshal(&want)
	if string(gotJSON) != string(wantJSON) {
		t.Fatalf("parsed\n %s\nwant\n %s", gotJSON, wantJSON)
	}
}

func TestUnmarshalCaddyfileOptions(t *testing.T) {
	on, off := true, false
	for _, tc := range []struct {
		input string
		check func(*StickyCookie) bool
	}{
		{"sticky_cookie", func(s *StickyCookie) bool { return reflect.DeepEqual(s, new(StickyCookie)) }},
		{"sticky_cookie {\n}", func(s *StickyCookie) bool { return reflect.DeepEqual(s, new(StickyCookie)) }},
		{"sticky_cookie SESSID", func(s *StickyCookie) bool { return s.Name == "SESSID" }},
		{"sticky_cookie SESSID {\nmode rewrite\n}", func(s *StickyCookie) bool { return s.Mode == "rewrite" }},
		{"sticky_cookie {\nsecret a-secret-of-16-bytes\n}", func(s *StickyCookie) bool { return reflect.DeepEqual(s.Secrets, []string{"a-secret-of-16-bytes"}) }},
		{"sticky_cookie {\nsecrets a-secret-of-16-bytes b-secret-of-16-bytes\n}", func(s *StickyCookie) bool {
			return reflect.DeepEqual(s.Secrets, []string{"a-secret-of-16-bytes", "b-secret-of-16-bytes"})
		}},
		{"sticky_cookie {\nmax_age 90s\n}", func(s *StickyCookie) bool { return s.MaxAge == caddy.Duration(90*time.Second) }},
		{"sticky_cookie {\nmax_age 0\n}", func(s *StickyCookie) bool { return s.MaxAge == 0 }},
		{"sticky_cookie {\nidle_timeout 1h30m\n}", func(s *StickyCookie) bool { return s.IdleTimeout == caddy.Duration(90*time.Minute) }},
		{"sticky_cookie {\nmax_lifetime 1d\n}", func(s *StickyCookie) bool { return s.MaxLifetime == caddy.Duration(24*time.Hour) }},
		{"sticky_cookie {\npath /\n}", func(s *StickyCookie) bool { return s.Path == "/" }},
		{"sticky_cookie {\ndomain .example.com\n}", func(s *StickyCookie) bool { return s.Domain == ".example.com" }},
		{"sticky_cookie {\nsecure never\n}", func(s *StickyCookie) bool { return s.Secure == "never" }},
		{"sticky_cookie {\nsecure auto\n}", func(s *StickyCookie) bool { return s.Secure == "auto" }},
		{"sticky_cookie {\nsame_site none\n}", func(s *StickyCookie) bool { return s.SameSite == "none" }},
		{"sticky_cookie {\nsame_site lax\n}", func(s *StickyCookie) bool { return s.SameSite == "lax" }},
		{"sticky_cookie {\nhttp_only on\n}", func(s *StickyCookie) bool { return s.HTTPOnly != nil && *s.HTTPOnly == on }},
		{"sticky_cookie {\nhttp_only false\n}", func(s *StickyCookie) bool { return s.HTTPOnly != nil && *s.HTTPOnly == off }},
		{"sticky_cookie {\nforward_cookie yes\n}", func(s *StickyCookie) bool { return s.ForwardCookie }},
		{"sticky_cookie {\nforward_cookie off\n}", func(s *StickyCookie) bool { return !s.ForwardCookie }},
		{"sticky_cookie {\non_failure rebind\n}", func(s *StickyCookie) bool { return s.OnFailure == "rebind" }},
	} {
		s, err := parseCaddyfile(tc.input)
		if err != nil {
			t.Errorf("%q: %v", tc.input, err)
			continue
		}
		if !tc.check(s) {
			t.Errorf("%q parsed to %+v", tc.input, s)
		}
	}
}

func TestUnmarshalCaddyfileFallback(t *testing.T) {
	for _, tc := range []struct {
		input, want string
	}{
		{"fallback first", `{"policy":"first"}`},
		{"fallback random_choose 2", `{"policy":"random_choose","choose":2}`},
		{"fallback weighted_round_robin 1 2", `{"policy":"weighted_round_robin","weights":[1,2]}`},
		{"fallback cookie lb2 {\n\t\tfallback first\n\t}", `{"policy":"cookie","name":"lb2","fallback":{"policy":"first"}}`},
		{"fallback sticky_cookie inner {\n\t\tfallback least_conn\n\t\tmax_age 1h\n\t}",
			`{"policy":"sticky_cookie","name":"inner","max_age":3600000000000,"fallback":{"policy":"least_conn"}}`},
	} {
		// The option after the fallback proves the dispenser is left at
		// the end of the fallback's segment, block included.
		input := "sticky_cookie {\n\t" + tc.input + "\n\ton_failure strict\n}"
		s, err := parseCaddyfile(input)
		if err != nil {
			t.Errorf("%q: %v", tc.input, err)
			continue
		}
		testutil.SameJSON(t, "fallback", s.FallbackRaw, tc.want)
		if s.OnFailure != "strict" {
			t.Errorf("%q: the option after fallback was lost", tc.input)
		}
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	testutil.CheckParseErrors(t, func(in string) error { _, err := parseCaddyfile(in); return err }, []testutil.ParseError{
		{Name: "unknown option", Input: "sticky_cookie {\n\tmode insert\n\tbogus 1\n}", Want: []string{"unrecognized option 'bogus'", "Testfile:3"}},
		{Name: "learn without a name", Input: "sticky_cookie {\n\tmode learn\n}", Want: []string{"name: learn mode needs the name of the cookie the backend sets"}},
		{Name: "path in learn mode", Input: "sticky_cookie JSESSIONID {\n\tmode learn\n\tpath /app\n}", Want: []string{"path: applies to insert mode only; in learn mode", "Testfile:3"}},
		{Name: "max_sessions in insert mode", Input: "sticky_cookie {\n\tmax_sessions 10\n}", Want: []string{"max_sessions: applies to learn mode only", "Testfile:2"}},
		{Name: "duplicate option", Input: "sticky_cookie {\n\tmode insert\n\tmode insert\n}", Want: []string{"mode: option given more than once", "Testfile:3"}},
		{Name: "duplicate secret", Input: "sticky_cookie {\n\tsecret a-secret-of-16-bytes\n\tsecret b-secret-of-16-bytes\n}", Want: []string{"secret: option given more than once", "Testfile:3"}},
		{Name: "duplicate secret through its alias", Input: "sticky_cookie {\n\tsecret a-secret-of-16-bytes\n\tsecrets b-secret-of-16-bytes\n}", Want: []string{"more than once", "Testfile:3"}},
		{Name: "missing value", Input: "sticky_cookie {\n\tmax_age\n}", Want: []string{"max_age: expected a value", "Testfile:2"}},
		{Name: "missing enum value", Input: "sticky_cookie {\n\tmode\n}", Want: []string{"mode: expected a value", "Testfile:2"}},
		{Name: "extra value", Input: "sticky_cookie {\n\tpath / /x\n}", Want: []string{"path: expected one value, got extra '/x'", "Testfile:2"}},
		{Name: "extra duration", Input: "sticky_cookie {\n\tidle_timeout 1m 2m\n}", Want: []string{"idle_timeout: expected one value", "Testfile:2"}},
		{Name: "bad mode", Input: "sticky_cookie {\n\tmode prefix\n}", Want: []string{"mode: expected one of insert, rewrite, learn, got 'prefix'", "Testfile:2"}},
		{Name: "bad secure", Input: "sticky_cookie {\n\tsecure maybe\n}", Want: []string{"secure: expected one of auto, always, never", "Testfile:2"}},
		{Name: "bad same_site", Input: "sticky_cookie {\n\tsame_site lenient\n}", Want: []string{"same_site: expected one of", "'lenient'", "Testfile:2"}},
		{Name: "bad on_failure", Input: "sticky_cookie {\n\ton_failure retry\n}", Want: []string{"on_failure: expected one of rebind, strict", "Testfile:2"}},
		{Name: "bad on/off", Input: "sticky_cookie {\n\thttp_only maybe\n}", Want: []string{"http_only: expected on or off", "Testfile:2"}},
		{Name: "bad forward_cookie", Input: "sticky_cookie {\n\tforward_cookie 1\n}", Want: []string{"forward_cookie: expected on or off", "Testfile:2"}},
		{Name: "bad nocache", Input: "sticky_cookie {\n\tnocache maybe\n}", Want: []string{"nocache: expected on or off", "Testfile:2"}},
		{Name: "bad duration", Input: "sticky_cookie {\n\tidle_timeout soon\n}", Want: []string{"idle_timeout: invalid duration 'soon'", "Testfile:2"}},
		{Name: "negative duration", Input: "sticky_cookie {\n\tmax_lifetime -1h\n}", Want: []string{"max_lifetime: duration must not be negative", "Testfile:2"}},
		{Name: "negative max_age", Input: "sticky_cookie {\n\tmax_age -5s\n}", Want: []string{"max_age: duration must not be negative", "Testfile:2"}},
		{Name: "relative path", Input: "sticky_cookie {\n\tpath app\n}", Want: []string{"path: must start with /", "Testfile:2"}},
		{Name: "empty path", Input: "sticky_cookie {\n\tpath \"\"\n}", Want: []string{"path: must start with /", "Testfile:2"}},
		{Name: "bad cookie name", Input: "sticky_cookie \"a b\"", Want: []string{"'a b' is not a valid cookie name", "Testfile:1"}},
		{Name: "cookie name with =", Input: "sticky_cookie a=b", Want: []string{"'a=b' is not a valid cookie name", "Testfile:1"}},
		{Name: "extra argument", Input: "sticky_cookie a b", Want: []string{"at most one argument", "'b'", "Testfile:1"}},
		{Name: "empty secret list", Input: "sticky_cookie {\n\tsecret\n}", Want: []string{"secret: expected at least one key", "Testfile:2"}},
		{Name: "short secret", Input: "sticky_cookie {\n\tsecret ok-secret-of-16-bytes short\n}", Want: []string{"secret: key 2 is 5 bytes, shorter than the 16 required", "openssl rand", "Testfile:2"}},
		{Name: "empty secrets list", Input: "sticky_cookie {\n\tsecrets\n}", Want: []string{"secrets: expected at least one key", "Testfile:2"}},
		{Name: "missing fallback", Input: "sticky_cookie {\n\tfallback\n}", Want: []string{"fallback: expected a module name", "Testfile:2"}},
		{Name: "bad fallback module", Input: "sticky_cookie {\n\tfallback nope\n}", Want: []string{"fallback:", "nope", "Testfile:2"}},
		{Name: "bad fallback arguments", Input: "sticky_cookie {\n\tfallback random_choose two\n}", Want: []string{"fallback:", "Testfile:2"}},
	})
}

// TestValidateRewriteInsertOnly: in rewrite mode the backend's cookie keeps
// its attributes, so options that only shape an inserted cookie are errors.
// Checks between options run when the Caddyfile is adapted, so the error
// names the option and the line; JSON configs get them at provisioning.
func TestValidateRewriteInsertOnly(t *testing.T) {
	for opt, line := range map[string]string{
		"max_age":        "max_age 1h",
		"idle_timeout":   "idle_timeout 10m",
		"domain":         "domain example.com",
		"path":           "path /app",
		"secure":         "secure always",
		"same_site":      "same_site strict",
		"http_only":      "http_only on",
		"forward_cookie": "forward_cookie on",
		"nocache":        "nocache on",
	} {
		_, err := parseCaddyfile("sticky_cookie SESSID {\n\tmode rewrite\n\t" + line + "\n}")
		if err == nil || !strings.HasPrefix(err.Error(), "sticky_cookie: "+opt+":") ||
			!strings.Contains(err.Error(), "insert mode only") || !strings.HasSuffix(err.Error(), ", at Testfile:3") {
			t.Errorf("%s in rewrite mode: %v", opt, err)
		}
		// The same config in JSON fails the check Provision runs.
		s := &StickyCookie{Mode: ModeRewrite, Name: "SESSID"}
		if err := json.Unmarshal([]byte(`{`+jsonOpt(opt)+`}`), s); err != nil {
			t.Fatalf("%s: %v", opt, err)
		}
		if err := s.validate(); err == nil || !strings.HasPrefix(err.Error(), opt+":") {
			t.Errorf("%s in rewrite mode, JSON: Validate = %v", opt, err)
		}
	}
	// What rewrite mode does use is fine.
	s, err := parseCaddyfile("sticky_cookie SESSID {\n\tmode rewrite\n\tmax_lifetime 1h\n\ton_failure strict\n\tsecret a-long-enough-secret-value\n\tfallback first\n}")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.validate(); err != nil {
		t.Fatalf("valid rewrite config: %v", err)
	}
	// Each error is placed at the option it names, or at the block's end
	// when that option was left to its default.
	for input, want := range map[string][2]string{
		// Rewrite mode needs the backend's cookie name.
		"sticky_cookie {\n\tmode rewrite\n}":                   {"sticky_cookie: name: rewrite mode needs", "Testfile:3"},
		"sticky_cookie {\n\tsame_site none\n\tsecure never\n}": {"sticky_cookie: same_site: none requires a Secure cookie", "Testfile:2"},
		"sticky_cookie __Host-s {\n\tpath /app\n}":             {"sticky_cookie: name: a __Host- cookie must be Secure", "Testfile:1"},
	} {
		if _, err := parseCaddyfile(input); err == nil || !strings.HasPrefix(err.Error(), want[0]) || !strings.HasSuffix(err.Error(), ", at "+want[1]) {
			t.Errorf("%q: %v, want %q at %s", input, err, want[0], want[1])
		}
	}
}

// jsonOpt is a JSON member that sets the insert-only option opt.
func jsonOpt(opt string) string {
	switch opt {
	case "max_age", "idle_timeout":
		return `"` + opt + `": 3600000000000`
	case "http_only", "forward_cookie", "nocache":
		return `"` + opt + `": true`
	case "path":
		return `"path": "/app"`
	case "secure":
		return `"secure": "always"`
	case "same_site":
		return `"same_site": "strict"`
	}
	return `"` + opt + `": "example.com"`
}

// TestValidateErrorIsDeterministic: a config with several mistakes must get
// the same error every time it is loaded.
func TestValidateErrorIsDeterministic(t *testing.T) {
	s := &StickyCookie{Mode: ModeRewrite, Name: "SESSID", MaxAge: caddy.Duration(time.Hour), Domain: "example.com", Secure: "always"}
	seen := map[string]bool{}
	for i := 0; i < 50; i++ {
		seen[s.validate().Error()] = true
	}
	if len(seen) != 1 {
		t.Fatalf("Validate reports %d different errors for one config: %v", len(seen), seen)
	}
}

func TestHandlerUnmarshalCaddyfile(t *testing.T) {
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("affinity")); err != nil {
		t.Fatalf("affinity: %v", err)
	}
	for input, want := range map[string]string{
		"affinity foo":          "wrong argument count",
		"affinity {\n\tfoo\n}":  "affinity takes no options, got 'foo'",
		"affinity {\n\tmode\n}": "Testfile:2",
	} {
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error containing %q", input, err, want)
		}
	}
}

func TestValidateCookiePrefixes(t *testing.T) {
	for _, tc := range []struct {
		s  *StickyCookie
		ok bool
	}{
		{&StickyCookie{Name: "__Host-aff", Secure: "auto", Path: "/"}, true},
		{&StickyCookie{Name: "__Host-aff", Secure: "never", Path: "/"}, false},
		{&StickyCookie{Name: "__Host-aff", Domain: "example.com", Path: "/"}, false},
		{&StickyCookie{Name: "__Host-aff", Path: "/app"}, false},
		{&StickyCookie{Name: "__Secure-aff", Secure: "always", Path: "/"}, true},
		{&StickyCookie{Name: "__Secure-aff", Secure: "never", Path: "/"}, false},
	} {
		tc.s.Mode = ModeInsert
		err := tc.s.validate()
		if (err == nil) != tc.ok || (err != nil && !strings.HasPrefix(err.Error(), "name:")) {
			t.Errorf("%s (secure %q, path %q, domain %q): Validate = %v, want ok=%v with an error naming the name",
				tc.s.Name, tc.s.Secure, tc.s.Path, tc.s.Domain, err, tc.ok)
		}
	}
}

// The learn-mode options, and on_failure temporary, parse into their JSON.
func TestUnmarshalCaddyfileLearnOptions(t *testing.T) {
	for _, tc := range []struct{ input, want string }{
		{`sticky_cookie JSESSIONID {
			mode         learn
			idle_timeout 1h
			max_sessions 50k
			on_failure   temporary
		}`, `{"mode":"learn","name":"JSESSIONID","idle_timeout":3600000000000,"max_sessions":50000,"on_failure":"temporary"}`},
		{`sticky_cookie JSESSIONID {
			mode         learn
			max_sessions 16MiB
		}`, `{"mode":"learn","name":"JSESSIONID","max_sessions_bytes":16777216}`},
	} {
		s, err := parseCaddyfile(tc.input)
		if err != nil {
			t.Fatalf("%s: %v", tc.input, err)
		}
		out, _ := json.Marshal(s)
		testutil.SameJSON(t, tc.input, out, tc.want)
	}
}
