package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

func init() {
	caddy.RegisterModule(adminAffinity{})
}

// adminAffinity serves the affinity endpoints of Caddy's admin API. Admin
// modules get no config and are made anew on every load, so everything they
// show lives in package affinity, which policies write to.
type adminAffinity struct{}

// CaddyModule returns the Caddy module information.
func (adminAffinity) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.affinity",
		New: func() caddy.Module { return new(adminAffinity) },
	}
}

// Routes returns the admin routes of the affinity endpoints.
func (a adminAffinity) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/affinity/upstreams", Handler: caddy.AdminHandlerFunc(a.handleUpstreams)},
		{Pattern: "/affinity/upstreams/drain", Handler: caddy.AdminHandlerFunc(a.handleDrain(true))},
		{Pattern: "/affinity/upstreams/undrain", Handler: caddy.AdminHandlerFunc(a.handleDrain(false))},
		{Pattern: "/affinity/sessions", Handler: caddy.AdminHandlerFunc(a.handleSessions)},
		{Pattern: "/affinity/ui", Handler: caddy.AdminHandlerFunc(handleUI)},
	}
}

// UpstreamStatus is one element of GET /affinity/upstreams.
type UpstreamStatus struct {
	Address  string   `json:"address"`
	Policies []string `json:"policies"`
	Draining bool     `json:"draining"`
	// Deadline of the drain, after which bound sessions move; absent
	// without one.
	Deadline *time.Time `json:"deadline,omitempty"`
	// Entries of the session tables (ip_affinity, learn and hash modes)
	// bound to the upstream.
	Sessions int `json:"sessions"`
	// Distinct sessions (tokens, learned values, table entries) whose
	// requests reached the upstream in the last minute, an estimate.
	SessionsSeen int `json:"sessions_seen"`
	// When a session's request last reached the upstream; absent if none
	// did.
	LastSession *time.Time `json:"last_session,omitempty"`
	// Requests in flight to the upstream, from reverse_proxy's own count
	// (layer4 connections are not included).
	InFlight int `json:"in_flight"`
	// Draining, with nothing bound (no table entry, no session seen in the
	// last minute) and nothing in flight: it can be taken down.
	Drained bool   `json:"drained"`
	Hits    uint64 `json:"hits"`
	New     uint64 `json:"new"`
	Rebinds uint64 `json:"rebinds"`
	// CookiesTooLarge counts backend cookies left as they came because
	// the route token would have taken them past 4096 bytes (rewrite mode).
	CookiesTooLarge uint64         `json:"cookies_too_large"`
	Rejected        map[string]any `json:"rejected"`
}

func (adminAffinity) handleUpstreams(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return methodNotAllowed(w, http.MethodGet)
	}
	byAddr := map[string]*UpstreamStatus{}
	get := func(addr string) *UpstreamStatus {
		u := byAddr[addr]
		if u == nil {
			u = &UpstreamStatus{Address: addr, Policies: []string{}, Rejected: map[string]any{"total": uint64(0)}}
			byAddr[addr] = u
		}
		return u
	}
	counters := map[string][]*affinity.Counters{}
	affinity.EachCounters(func(policy, addr string, c *affinity.Counters) {
		u := get(addr)
		u.Policies = append(u.Policies, policy)
		counters[addr] = append(counters[addr], c)
		if last := c.LastSession(); last > 0 && (u.LastSession == nil || u.LastSession.Unix() < last) {
			t := time.Unix(last, 0).UTC()
			u.LastSession = &t
		}
		u.Hits += c.Count(affinity.ResultHit)
		u.New += c.Count(affinity.ResultNew)
		u.Rebinds += c.Count(affinity.ResultRebind)
		u.CookiesTooLarge += c.TooLarge()
		u.Rejected["total"] = u.Rejected["total"].(uint64) + c.Count(affinity.ResultRejected)
		for _, reason := range affinity.Reasons() {
			if n := c.RejectedBy(reason); n > 0 {
				prev, _ := u.Rejected[reason.String()].(uint64)
				u.Rejected[reason.String()] = prev + n
			}
		}
	})
	for addr, n := range affinity.SessionsByUpstream() {
		get(addr).Sessions = n
	}
	for _, addr := range affinity.DrainingList() {
		u := get(addr)
		u.Draining = true
		if d, ok := affinity.DrainDeadline(addr); ok {
			d = d.UTC()
			u.Deadline = &d
		}
	}
	now := time.Now().Unix()
	flying := inFlight()
	out := make([]*UpstreamStatus, 0, len(byAddr))
	for addr, u := range byAddr {
		u.SessionsSeen = affinity.SessionsSeen(now, counters[addr]...)
		u.InFlight = flying[addr]
		// Quiet: no session's request in the last minute, or none since
		// the deadline passed (after it every one moves on arrival).
		quiet := u.SessionsSeen == 0
		if u.Deadline != nil && now >= u.Deadline.Unix() && (u.LastSession == nil || u.LastSession.Unix() <= u.Deadline.Unix()) {
			quiet = true
		}
		u.Drained = u.Draining && u.Sessions == 0 && u.InFlight == 0 && quiet
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return writeJSON(w, out)
}

// drainRequest is the body of the drain and undrain endpoints.
type drainRequest struct {
	Address string `json:"address"`
	// Deadline (drain only), a duration such as "10m": until it passes,
	// bound sessions keep reaching the upstream; after it, they move on
	// their next request. Default: none, they stay until they end.
	Deadline string `json:"deadline,omitempty"`
}

func (adminAffinity) handleDrain(on bool) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodPost {
			return methodNotAllowed(w, http.MethodPost)
		}
		var req drainRequest
		fields := map[string]any{"address": &req.Address}
		example := `{"address": "10.0.0.1:8080"}`
		if on {
			fields["deadline"] = &req.Deadline
			example = `{"address": "10.0.0.1:8080", "deadline": "10m"}`
		}
		if err := decodeStrict(io.LimitReader(r.Body, 64<<10), fields); err != nil {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest,
				Err: fmt.Errorf(`body must be JSON like %s: %v`, example, err)}
		}
		var deadline time.Time
		if d := strings.TrimSpace(req.Deadline); d != "" {
			dur, err := caddy.ParseDuration(d)
			if err != nil || dur <= 0 {
				return caddy.APIError{HTTPStatus: http.StatusBadRequest,
					Err: fmt.Errorf(`"deadline" must be a positive duration such as "10m" or "1h30m", got %q`, req.Deadline)}
			}
			deadline = time.Now().Add(dur)
		}
		req.Address = strings.TrimSpace(req.Address)
		if req.Address == "" {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New(`"address" is required`)}
		}
		if !affinity.KnownUpstream(req.Address) && !affinity.IsDraining(req.Address) {
			return caddy.APIError{HTTPStatus: http.StatusNotFound,
				Err: fmt.Errorf("no affinity policy knows upstream %q; addresses are the upstreams' dial addresses as GET /affinity/upstreams lists them", req.Address)}
		}
		var changed bool
		if on {
			changed = affinity.DrainUntil(req.Address, deadline)
		} else {
			changed = affinity.SetDraining(req.Address, false)
		}
		out := map[string]any{"address": req.Address, "draining": on, "changed": changed}
		logged := []zap.Field{zap.String("upstream", req.Address), zap.Bool("draining", on)}
		if !deadline.IsZero() {
			out["deadline"] = deadline.UTC()
			logged = append(logged, zap.Time("deadline", deadline))
		}
		if changed {
			caddy.Log().Named("admin.api.affinity").Info("upstream draining changed", logged...)
		}
		return writeJSON(w, out)
	}
}

// SessionEntry is one element of GET /affinity/sessions.
type SessionEntry struct {
	Policy   string    `json:"policy"`
	Client   string    `json:"client"`
	Upstream string    `json:"upstream"`
	LastSeen time.Time `json:"last_seen"`
}

func (adminAffinity) handleSessions(w http.ResponseWriter, r *http.Request) error {
	switch r.Method {
	case http.MethodGet:
		limit, offset := 100, 0
		var err error
		if v := r.URL.Query().Get("limit"); v != "" {
			if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > 10000 {
				return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("limit must be a whole number from 1 to 10000, got %q", v)}
			}
		}
		if v := r.URL.Query().Get("offset"); v != "" {
			if offset, err = strconv.Atoi(v); err != nil || offset < 0 {
				return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("offset must be a whole number from 0, got %q", v)}
			}
		}
		out := []SessionEntry{}
		total := 0
		entry := func(policy string, s affinity.Session) SessionEntry {
			return SessionEntry{Policy: policy, Client: s.Key.String(), Upstream: affinity.UpstreamName(s.ID), LastSeen: s.LastSeen.UTC()}
		}
		if upstream := strings.TrimSpace(r.URL.Query().Get("upstream")); upstream != "" {
			// Entries bound to one upstream: a walk of every table, a chunk
			// at a time, for the matches at [offset, offset+limit).
			id := affinity.AddrHash(upstream)
			affinity.EachTable(func(policy string, t *affinity.SessionTable) {
				visit := func(page []affinity.Session) {
					for _, s := range page {
						if s.ID != id {
							continue
						}
						if total >= offset && len(out) < limit {
							out = append(out, entry(policy, s))
						}
						total++
					}
				}
				if t.Backing() != nil {
					visit(t.Page(0, 0)) // one scan of the store
					return
				}
				const chunk = 10000
				for from := 0; ; from += chunk {
					page := t.Page(from, chunk)
					visit(page)
					if len(page) < chunk {
						return
					}
				}
			})
			w.Header().Set("X-Total-Count", strconv.Itoa(total))
			return writeJSON(w, out)
		}
		affinity.EachTable(func(policy string, t *affinity.SessionTable) {
			n := t.Len()
			total += n
			if len(out) >= limit {
				return
			}
			if offset >= n {
				offset -= n
				return
			}
			for _, s := range t.Page(offset, limit-len(out)) {
				out = append(out, entry(policy, s))
			}
			offset = 0
		})
		w.Header().Set("X-Total-Count", strconv.Itoa(total))
		return writeJSON(w, out)
	case http.MethodDelete:
		flushed := 0
		affinity.EachTable(func(_ string, t *affinity.SessionTable) {
			flushed += t.Len()
			t.Flush()
		})
		caddy.Log().Named("admin.api.affinity").Info("session tables flushed", zap.Int("entries", flushed))
		return writeJSON(w, map[string]int{"flushed": flushed})
	default:
		return methodNotAllowed(w, http.MethodGet, http.MethodDelete)
	}
}

// decodeStrict decodes one JSON object from body into fields, by key: each
// key must be one of fields, spelled exactly so, at most once, and nothing
// but white space may follow the object. encoding/json alone would accept
// any letter case, keep the last of duplicate keys and ignore what follows.
func decodeStrict(body io.Reader, fields map[string]any) error {
	dec := json.NewDecoder(body)
	if tok, err := dec.Token(); err != nil {
		return err
	} else if tok != json.Delim('{') {
		return fmt.Errorf("expected an object, got %v", tok)
	}
	seen := make(map[string]bool, len(fields))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		dst, ok := fields[key]
		if !ok {
			return fmt.Errorf("unknown field %q", key)
		}
		if seen[key] {
			return fmt.Errorf("field %q given more than once", key)
		}
		seen[key] = true
		if err := dec.Decode(dst); err != nil {
			return fmt.Errorf("field %q: %v", key, err)
		}
	}
	if _, err := dec.Token(); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the object")
	}
	return nil
}

func methodNotAllowed(w http.ResponseWriter, allowed ...string) error {
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed,
		Err: fmt.Errorf("method not allowed; use %s", strings.Join(allowed, " or "))}
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	return nil
}

// Interface guards
var _ caddy.AdminRouter = (*adminAffinity)(nil)
