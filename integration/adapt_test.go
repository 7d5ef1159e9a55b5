package integration

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-affinity/caddy-affinity"
)

var update = flag.Bool("update", false, "rewrite the expected JSON of caddyfile_adapt/*.caddytest from the adapter's output")

// TestCaddyfileAdapt adapts every caddyfile_adapt/*.caddytest (a Caddyfile,
// a line of ten dashes, the expected JSON) and compares the result with the
// expected JSON semantically: key order and whitespace do not matter. Any
// adapter warning fails the test too. Run with -update to rewrite the
// expected JSON from the adapter's output (then read it before committing).
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("caddyfile_adapt", "*.caddytest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no caddyfile_adapt/*.caddytest files")
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		t.Fatal("the caddyfile adapter is not registered")
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".caddytest"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			text := strings.ReplaceAll(string(data), "\r\n", "\n")
			caddyfile, want, ok := strings.Cut(text, "\n----------\n")
			if !ok {
				t.Fatalf("%s: no line of ten dashes between the Caddyfile and the JSON", file)
			}
			caddyfile = strings.TrimSpace(caddyfile) + "\n"

			got, warnings, err := adapter.Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
			if err != nil {
				t.Fatalf("adapting %s: %v", file, err)
			}
			for _, w := range warnings {
				t.Errorf("%s: warning: %s:%d: %s: %s", file, w.File, w.Line, w.Directive, w.Message)
			}
			gotPretty := indentJSON(t, got)

			if *update {
				out := strings.TrimSpace(caddyfile) + "\n----------\n" + gotPretty + "\n"
				if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}

			var gotV, wantV any
			if err := json.Unmarshal(got, &gotV); err != nil {
				t.Fatalf("adapter output is not JSON: %v", err)
			}
			if err := json.Unmarshal([]byte(want), &wantV); err != nil {
				t.Fatalf("%s: expected JSON is invalid: %v", file, err)
			}
			if !reflect.DeepEqual(gotV, wantV) {
				t.Errorf("%s: adapted JSON differs from the expected (- expected, + adapted):\n%s",
					file, lineDiff(indentJSON(t, []byte(want)), gotPretty))
			}

			// The adapted config must also load: provision and validate
			// every module (nothing is started), with storage in a
			// temporary directory for the generated key.
			t.Setenv("AFFINITY_SECRET", "adapt-test-secret-0123456789")
			cfg := gotV.(map[string]any)
			cfg["storage"] = map[string]any{"module": "file_system", "root": t.TempDir()}
			raw, err := json.Marshal(cfg)
			if err != nil {
				t.Fatal(err)
			}
			var config caddy.Config
			if err := json.Unmarshal(raw, &config); err != nil {
				t.Fatalf("adapted JSON is not a Caddy config: %v", err)
			}
			if err := caddy.Validate(&config); err != nil {
				t.Errorf("%s: the adapted config does not load: %v", file, err)
			}
		})
	}
}

// indentJSON normalises JSON to sorted keys and tab indentation, so diffs
// show only real differences.
func indentJSON(t *testing.T, raw []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("invalid JSON: %v", err)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "\t")
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(buf.String())
}

// lineDiff is a unified-style line diff (longest common subsequence) of a
// and b, with unchanged lines as context.
func lineDiff(a, b string) string {
	x, y := strings.Split(a, "\n"), strings.Split(b, "\n")
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out strings.Builder
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			fmt.Fprintf(&out, "  %s\n", x[i])
			i, j = i+1, j+1
		case i < len(x) && (j == len(y) || lcs[i+1][j] >= lcs[i][j+1]):
			fmt.Fprintf(&out, "- %s\n", x[i])
			i++
		default:
			fmt.Fprintf(&out, "+ %s\n", y[j])
			j++
		}
	}
	return out.String()
}
