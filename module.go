// Package caddyaffinity is session affinity for Caddy: cookie and header
// affinity for reverse_proxy (insert and rewrite modes) and client-IP affinity for
// reverse_proxy and the layer4 app, observable and controllable through
// Caddy's admin API and metrics.
//
// Importing this package registers every module, and the layer4 app with
// all of caddy-l4's modules, so one
// `xcaddy build --with github.com/caddy-affinity/caddy-affinity` is enough.
package caddyaffinity

import (
	// The admin API: /affinity/upstreams, drain, sessions.
	_ "github.com/caddy-affinity/caddy-affinity/admin"
	// The `caddy affinity` command.
	_ "github.com/caddy-affinity/caddy-affinity/cli"
	// Cookie affinity: sticky_cookie and the affinity handler.
	_ "github.com/caddy-affinity/caddy-affinity/cookie"
	// Header affinity: sticky_header.
	_ "github.com/caddy-affinity/caddy-affinity/header"
	// Client-IP affinity for reverse_proxy.
	_ "github.com/caddy-affinity/caddy-affinity/ipaffinity"
	// Client-IP affinity for the layer4 app.
	_ "github.com/caddy-affinity/caddy-affinity/l4"
	// The layer4 app itself, with every caddy-l4 module.
	_ "github.com/mholt/caddy-l4"
)
