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
// checkout, so nothing is fetched for it.
func BuildCaddy(ctx context.Context, out string) error {
	b := xcaddy.Builder{
		CaddyVersion: CaddyVersion,
		Plugins:      []xcaddy.Dependency{{PackagePath: ModulePath, Version: "v0.0.0"}},
		Replacements: []xcaddy.Replace{xcaddy.NewReplace(ModulePath+"@v0.0.0", RepoRoot())},
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := b.Build(ctx, out); err != nil {
		return fmt.Errorf("building caddy with xcaddy: %w", err)
	}
	return nil
}
