package cookie

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Attrs are the attributes of a cookie the proxy inserts.
type Attrs struct {
	Path     string
	Domain   string
	MaxAge   time.Duration // 0: a session cookie
	Secure   string        // auto, always or never
	SameSite string        // auto, lax, strict or none
	HTTPOnly bool
}

// secureRequest reports whether the client reached Caddy over TLS, directly
// or, when the peer is one of the server's trusted_proxies, as told by its
// X-Forwarded-Proto.
func secureRequest(r *http.Request, trustedPeer bool) bool {
	if r.TLS != nil {
		return true
	}
	if !trustedPeer {
		return false
	}
	v := r.Header["X-Forwarded-Proto"]
	return len(v) > 0 && strings.EqualFold(strings.TrimSpace(v[len(v)-1]), "https")
}

// AppendSetCookie appends the Set-Cookie line for name=value with a's
// attributes; secure says whether the request is secure (for auto).
func (a Attrs) AppendSetCookie(b []byte, name, value string, secure bool) []byte {
	b = append(b, name...)
	b = append(b, '=')
	b = append(b, value...)
	return a.AppendAttrs(b, secure)
}

// AppendAttrs appends "; Path=..." and the other attributes.
func (a Attrs) AppendAttrs(b []byte, secure bool) []byte {
	if a.Path != "" {
		b = append(b, "; Path="...)
		b = append(b, a.Path...)
	}
	if a.Domain != "" {
		b = append(b, "; Domain="...)
		b = append(b, a.Domain...)
	}
	if a.MaxAge > 0 {
		b = append(b, "; Max-Age="...)
		b = strconv.AppendInt(b, int64((a.MaxAge+time.Second-1)/time.Second), 10)
	}
	if a.HTTPOnly {
		b = append(b, "; HttpOnly"...)
	}
	isSecure := a.Secure == "always" || a.Secure != "never" && secure
	if isSecure {
		b = append(b, "; Secure"...)
	}
	switch a.SameSite {
	case "lax":
		b = append(b, "; SameSite=Lax"...)
	case "strict":
		b = append(b, "; SameSite=Strict"...)
	case "none":
		b = append(b, "; SameSite=None"...)
	default: // auto
		if isSecure {
			b = append(b, "; SameSite=None"...)
		} else {
			b = append(b, "; SameSite=Lax"...)
		}
	}
	return b
}
