package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-affinity/caddy-affinity"
)

// TestExamplesAdapt adapts every Caddyfile in examples/ and checks that
// each affinity module it names made it into the JSON.
func TestExamplesAdapt(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(RepoRoot(), "examples", "*", "Caddyfile"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no example Caddyfiles: %v", err)
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	for _, f := range files {
		t.Run(filepath.Base(filepath.Dir(f)), func(t *testing.T) {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			out, warnings, err := adapter.Adapt(src, map[string]any{"filename": f})
			if err != nil {
				t.Fatalf("adapting %s: %v", f, err)
			}
			for _, w := range warnings {
				t.Errorf("%s:%d: %s", w.File, w.Line, w.Message)
			}
			if !json.Valid(out) {
				t.Fatalf("adapted JSON is invalid")
			}
			for _, mod := range []string{"sticky_cookie", "ip_affinity"} {
				if strings.Contains(string(src), "lb_policy "+mod) && !strings.Contains(string(out), `"policy":"`+mod+`"`) {
					t.Errorf("lb_policy %s is in the Caddyfile but not in the JSON", mod)
				}
			}
			if strings.Contains(string(src), "\taffinity\n") && !strings.Contains(string(out), `"handler":"affinity"`) {
				t.Errorf("the affinity directive is in the Caddyfile but not in the JSON")
			}
		})
	}
}
