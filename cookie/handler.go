package cookie

import (
	"io"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("affinity", parseHandler)
	httpcaddyfile.RegisterDirectiveOrder("affinity", httpcaddyfile.Before, "reverse_proxy")
}

// handlerVarKey holds the *rewriter of the request, which rewrite-mode
// policies find and attach to.
const handlerVarKey = "caddy_affinity.handler"

// Handler lets sticky_cookie policies in rewrite mode rewrite the cookie the
// backend sets: it wraps the response writer, and when the response headers
// are written it prefixes the backend's cookie with the route token of the
// upstream that served the response. It does nothing to requests whose
// policies are in insert mode, and costs one small allocation per request.
//
// In the Caddyfile, the `affinity` directive (no arguments) is ordered
// before `reverse_proxy`, so no `route` block is needed.
type Handler struct{}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.affinity",
		New: func() caddy.Module { return new(Handler) },
	}
}

// ServeHTTP wraps w and calls next.
func (Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	rw := &rewriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	caddyhttp.SetVar(r.Context(), handlerVarKey, rw)
	return next.ServeHTTP(rw, r)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	affinity
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("affinity takes no options, got '%s'", d.Val())
	}
	return nil
}

func parseHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var m Handler
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// rewriter is the response writer of one request.
type rewriter struct {
	caddyhttp.ResponseWriterWrapper
	states      []*reqState
	wroteHeader bool
}

// attachToHandler registers st with the request's affinity handler, or logs
// once that rewrite mode cannot work without it.
func (s *StickyCookie) attachToHandler(vars map[string]any, st *reqState) {
	if rw, ok := vars[handlerVarKey].(*rewriter); ok {
		rw.states = append(rw.states, st)
		return
	}
	s.noHandler.Do(func() {
		s.logger.Error(s.policy+" in "+s.Mode+" mode needs the affinity handler before reverse_proxy; "+
			"add the 'affinity' directive to the block that holds reverse_proxy (the handle or route block, if it is in one), "+
			"or an http.handlers.affinity handler to its route. "+
			"Proxying without stickiness until then",
			zap.String(s.carrier.kind(), s.Name))
	})
}

// WriteHeader rewrites the backend's cookie, then writes the header. It runs
// for 1xx responses too (101 Switching Protocols carries cookies), and the
// rewrite never doubles a token, so repeated calls are harmless.
func (rw *rewriter) WriteHeader(status int) {
	if rw.wroteHeader {
		rw.ResponseWriter.WriteHeader(status)
		return
	}
	if status >= 200 || status == http.StatusSwitchingProtocols {
		rw.wroteHeader = true
	}
	rw.rewrite()
	rw.ResponseWriter.WriteHeader(status)
}

func (rw *rewriter) rewrite() {
	if len(rw.states) == 0 {
		return
	}
	h, now := rw.Header(), time.Now()
	for _, st := range rw.states {
		switch {
		case st.chosenID == 0:
		case st.policy.learn:
			st.learn(h, st.policy.now())
		default:
			st.policy.carrier.rewrite(h, st, now)
		}
	}
}

// Write writes the header first if needed, so the rewrite is never skipped.
func (rw *rewriter) Write(b []byte) (int, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	return rw.ResponseWriter.Write(b)
}

// ReadFrom writes the header first if needed, then copies.
func (rw *rewriter) ReadFrom(r io.Reader) (int64, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	return rw.ResponseWriterWrapper.ReadFrom(r)
}

// FlushError writes the header first if needed, then flushes;
// http.ResponseController prefers it to Flush.
func (rw *rewriter) FlushError() error {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(rw.ResponseWriter).Flush()
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
	_ http.ResponseWriter         = (*rewriter)(nil)
	_ io.ReaderFrom               = (*rewriter)(nil)
)
