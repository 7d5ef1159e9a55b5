package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-affinity/caddy-affinity"
)

// TestExamplesAdapt adapts every Caddyfile in examples/ and checks that
// each affinity module it names made it into the JSON, and that the README
// shows each one as it is (see checkReadmeExamples).
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
			for _, mod := range []string{"sticky_cookie", "sticky_header", "ip_affinity"} {
				if strings.Contains(string(src), "lb_policy "+mod) && !strings.Contains(string(out), `"policy":"`+mod+`"`) {
					t.Errorf("lb_policy %s is in the Caddyfile but not in the JSON", mod)
				}
			}
			if strings.Contains(string(src), "\taffinity\n") && !strings.Contains(string(out), `"handler":"affinity"`) {
				t.Errorf("the affinity directive is in the Caddyfile but not in the JSON")
			}
		})
	}
	t.Run("README", func(t *testing.T) { checkReadmeExamples(t, files) })
}

// readmeExampleRef is the path of an example Caddyfile, as the README names
// it on the line before the recipe's block.
var readmeExampleRef = regexp.MustCompile("examples/[A-Za-z0-9_.-]+/Caddyfile")

// checkReadmeExamples checks README.md against the example Caddyfiles:
//   - every example is referenced (examples/<name>/ or its Caddyfile);
//   - a caddyfile block whose preceding line names examples/<name>/Caddyfile
//     is that file, byte for byte;
//   - every caddyfile block under "## Recipes" names its file so, so that no
//     recipe goes untested.
func checkReadmeExamples(t *testing.T, files []string) {
	data, err := os.ReadFile(filepath.Join(RepoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := strings.ReplaceAll(string(data), "\r\n", "\n")
	for _, f := range files {
		dir := "examples/" + filepath.Base(filepath.Dir(f)) + "/"
		if !strings.Contains(readme, dir) {
			t.Errorf("README.md does not reference %s", dir)
		}
	}

	lines := strings.Split(readme, "\n")
	section, prev, shown := "", "", 0
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if strings.HasPrefix(line, "## ") {
			section = line
		}
		if !strings.HasPrefix(line, "```") {
			if strings.TrimSpace(line) != "" {
				prev = line
			}
			continue
		}
		lang := strings.TrimPrefix(line, "```")
		start := i + 1
		end := start
		for end < len(lines) && !strings.HasPrefix(lines[end], "```") {
			end++
		}
		if end == len(lines) {
			t.Fatalf("README.md:%d: code block never closed", i+1)
		}
		i = end
		ref := readmeExampleRef.FindString(prev)
		prev = ""
		if lang != "caddyfile" {
			continue
		}
		if ref == "" {
			if section == "## Recipes" {
				t.Errorf("README.md:%d: a caddyfile block under Recipes without its examples/<name>/Caddyfile on the line before", start)
			}
			continue
		}
		want, err := os.ReadFile(filepath.Join(RepoRoot(), filepath.FromSlash(ref)))
		if err != nil {
			t.Errorf("README.md:%d: the block names %s: %v", start, ref, err)
			continue
		}
		if got := strings.Join(lines[start:end], "\n") + "\n"; got != string(want) {
			t.Errorf("README.md:%d: the block differs from %s; copy the file into the README", start, ref)
		}
		shown++
	}
	if shown == 0 {
		t.Errorf("README.md shows no example Caddyfile")
	}
}
