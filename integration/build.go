// Package integration drives a real Caddy, built with the plugin through
// xcaddy, over loopback with real clients and real backends.
package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/caddyserver/xcaddy"
)

// CaddyVersion is the Caddy the plugin is built into.
const CaddyVersion = "v2.11.9"

// ModulePath is this plugin's module path.
const ModulePath = "github.com/caddy-affinity/caddy-affinity"

// RepoRoot returns the root of this module's checkout: from this file's
// path, or (when built with -trimpath) from the working directory up.
func RepoRoot() string {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		return filepath.Dir(filepath.Dir(file))
	}
	dir, _ := os.Getwd()
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil &&
			strings.Contains(string(b), "module "+ModulePath+"\n") {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}

// BuildCaddy builds Caddy with the plugin from this checkout into out, with
// xcaddy. The plugin is given a placeholder version and replaced by the
// checkout, so nothing is fetched for it. extra names more modules of this
// repository to build in, by directory (make bench adds bench/selecttimer,
// its instrument): each is a module whose path is the plugin's plus the
// directory, replaced by the checkout likewise.
func BuildCaddy(ctx context.Context, out string, extra ...string) error {
	b := xcaddy.Builder{
		CaddyVersion: CaddyVersion,
		Plugins:      []xcaddy.Dependency{{PackagePath: ModulePath, Version: "v0.0.0"}},
		Replacements: []xcaddy.Replace{xcaddy.NewReplace(ModulePath+"@v0.0.0", RepoRoot())},
		// As the xcaddy command does. Any flags replace xcaddy's
		// defaults (-ldflags "-w -s" -trimpath -tags ...), e.g.
		// "-trimpath -tags nobadger,nomysql,nopgx" keeps the symbols perf
		// needs. The Makefile does not rebuild when it changes.
		BuildFlags: os.Getenv("XCADDY_GO_BUILD_FLAGS"),
	}
	for _, dir := range extra {
		mod := ModulePath + "/" + filepath.ToSlash(dir)
		b.Plugins = append(b.Plugins, xcaddy.Dependency{PackagePath: mod, Version: "v0.0.0"})
		b.Replacements = append(b.Replacements, xcaddy.NewReplace(mod+"@v0.0.0", filepath.Join(RepoRoot(), dir)))
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := b.Build(ctx, out); err != nil {
		return fmt.Errorf("building caddy with xcaddy: %w", err)
	}
	return nil
}
