package admin

import (
	_ "embed"
	"net/http"
)

// The status page: one file, no external assets, so it works offline and
// under the admin endpoint's origin checks (it calls the same origin).
//
//go:embed ui/index.html
var uiPage []byte

// handleUI serves GET /affinity/ui.
func handleUI(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return methodNotAllowed(w, http.MethodGet, http.MethodHead)
	}
	return ServeUI(w)
}

// ServeUI writes the status page, for the admin endpoint and for
// `caddy affinity ui`, which serves it to browsers.
func ServeUI(w http.ResponseWriter) error {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	// The page's own inline script and style and calls to this endpoint,
	// nothing else; and no framing, so no other page can click its
	// buttons.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	_, err := w.Write(uiPage)
	return err
}
