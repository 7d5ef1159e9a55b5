// Package caddyaffinity is session affinity for Caddy: cookie affinity for
// reverse_proxy (insert and rewrite modes) and client-IP affinity for
// reverse_proxy and the layer4 app, observable and controllable through
// Caddy's admin API and metrics.
//
// Importing this package registers every module, so one
// `xcaddy build --with github.com/caddy-affinity/caddy-affinity` is enough.
package caddyaffinity

import (
	// Cookie affinity: sticky_cookie and the affinity handler.
	_ "github.com/caddy-affinity/caddy-affinity/cookie"
)
