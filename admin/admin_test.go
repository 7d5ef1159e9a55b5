package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

// The affinity package's state is process-wide: every test uses addresses
// of its own (new ones on each -count run) and undoes what it sets.
var adminSeq atomic.Int64

func uniqueAddr(label string) string {
	return fmt.Sprintf("%s-%d.admin.test:%d", label, adminSeq.Add(1), 8000+adminSeq.Load()%1000)
}

// adminCall runs the handler the admin module routes pattern to.
func adminCall(t *testing.T, pattern, method, target, body string) (*httptest.ResponseRecorder, error) {
	t.Helper()
	var h caddy.AdminHandler
	for _, r := range (adminAffinity{}).Routes() {
		if r.Pattern == pattern {
			h = r.Handler
		}
	}
	if h == nil {
		t.Fatalf("no admin route %s", pattern)
	}
	var req *http.Request
	if body == "" {
		req = httptest.NewRequest(method, target, nil)
	} else {
		req = httptest.NewRequest(method, target, strings.NewReader(body))
	}
	w := httptest.NewRecorder()
	return w, h.ServeHTTP(w, req)
}

// mustOK runs a call that must succeed with JSON, and decodes it into v.
func mustOK(t *testing.T, pattern, method, target, body string, v any) *httptest.ResponseRecorder {
	t.Helper()
	w, err := adminCall(t, pattern, method, target, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	if w.Code != http.StatusOK {
		t.Fatalf("%s %s: status %d", method, target, w.Code)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, target, ct)
	}
	if err := json.Unmarshal(w.Body.Bytes(), v); err != nil {
		t.Fatalf("%s %s: body %q: %v", method, target, w.Body, err)
	}
	return w
}

// apiStatus is the status of the caddy.APIError err, or 0.
func apiStatus(err error) int {
	var ae caddy.APIError
	if errors.As(err, &ae) {
		return ae.HTTPStatus
	}
	return 0
}

func getUpstreams(t *testing.T) []UpstreamStatus {
	t.Helper()
	var out []UpstreamStatus
	mustOK(t, "/affinity/upstreams", http.MethodGet, "/affinity/upstreams", "", &out)
	return out
}

func findUpstream(list []UpstreamStatus, addr string) *UpstreamStatus {
	for i := range list {
		if list[i].Address == addr {
			return &list[i]
		}
	}
	return nil
}

func TestAdminUpstreams(t *testing.T) {
	const p1, p2 = "admin_test_a", "admin_test_b"
	busy, idle, drained := uniqueAddr("busy"), uniqueAddr("idle"), uniqueAddr("drained")

	c := affinity.CountersFor(p1, busy)
	for range 3 {
		c.Record(affinity.ResultHit, affinity.ReasonNone)
	}
	c.Record(affinity.ResultNew, affinity.ReasonNone)
	c.Record(affinity.ResultRebind, affinity.ReasonNone)
	c.Record(affinity.ResultRejected, affinity.ReasonExpired)
	c2 := affinity.CountersFor(p2, busy)
	c2.Record(affinity.ResultHit, affinity.ReasonNone)
	c2.Record(affinity.ResultNew, affinity.ReasonNone)
	c2.Record(affinity.ResultRejected, affinity.ReasonExpired)
	c2.Record(affinity.ResultRejected, affinity.ReasonSignature)
	affinity.CountersFor(p1, idle)
	affinity.CountersFor(p1, drained)
	affinity.SetDraining(drained, true)
	t.Cleanup(func() { affinity.SetDraining(drained, false) })

	table := affinity.NewSessionTable(100, time.Hour)
	affinity.RegisterTable(p1, table)
	t.Cleanup(func() { affinity.UnregisterTable(table) })
	id := affinity.NameUpstream(busy)
	now := time.Now()
	for i := range 4 {
		table.Put(affinity.MaskClient(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}), 32, 64), id, now)
	}

	list := getUpstreams(t)
	if !slices.IsSortedFunc(list, func(a, b UpstreamStatus) int { return strings.Compare(a.Address, b.Address) }) {
		t.Error("upstreams are not sorted by address")
	}
	u := findUpstream(list, busy)
	if u == nil {
		t.Fatalf("%s is not listed", busy)
	}
	if !slices.Equal(u.Policies, []string{p1, p2}) {
		t.Errorf("policies = %v", u.Policies)
	}
	if u.Hits != 4 || u.New != 2 || u.Rebinds != 1 || u.Sessions != 4 || u.Draining {
		t.Errorf("busy upstream = %+v; want 4 hits, 2 new, 1 rebind, 4 sessions, not draining", *u)
	}
	if u.Rejected["total"] != float64(3) || u.Rejected["expired"] != float64(2) || u.Rejected["signature"] != float64(1) {
		t.Errorf("rejected = %v; want total 3, expired 2, signature 1", u.Rejected)
	}
	if _, ok := u.Rejected["idle"]; ok {
		t.Errorf("a reason without rejections is listed: %v", u.Rejected)
	}

	u = findUpstream(list, idle)
	if u == nil {
		t.Fatalf("%s (known, no decisions) is not listed", idle)
	}
	if u.Hits != 0 || u.New != 0 || u.Sessions != 0 || u.Draining || !slices.Equal(u.Policies, []string{p1}) ||
		u.Rejected["total"] != float64(0) || len(u.Rejected) != 1 {
		t.Errorf("idle upstream = %+v", *u)
	}
	if u = findUpstream(list, drained); u == nil || !u.Draining {
		t.Errorf("draining upstream = %+v", u)
	}

	// The JSON shape: every field present, with an empty policies list
	// as [] rather than null.
	w, err := adminCall(t, "/affinity/upstreams", http.MethodGet, "/affinity/upstreams", "")
	if err != nil {
		t.Fatal(err)
	}
	var raw []map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	for _, m := range raw {
		if m["address"] != idle {
			continue
		}
		for _, k := range []string{"address", "policies", "draining", "sessions", "hits", "new", "rebinds", "rejected"} {
			if _, ok := m[k]; !ok {
				t.Errorf("field %q missing from %v", k, m)
			}
		}
	}

	// An address draining before any policy knew it is listed too.
	orphan := uniqueAddr("orphan")
	affinity.SetDraining(orphan, true)
	t.Cleanup(func() { affinity.SetDraining(orphan, false) })
	u = findUpstream(getUpstreams(t), orphan)
	if u == nil || !u.Draining || u.Policies == nil || len(u.Policies) != 0 {
		t.Errorf("draining, unknown upstream = %+v", u)
	}
}

func TestAdminDrain(t *testing.T) {
	addr := uniqueAddr("drain")
	affinity.CountersFor("admin_test_drain", addr)
	t.Cleanup(func() { affinity.SetDraining(addr, false) })

	type reply struct {
		Address  string `json:"address"`
		Draining bool   `json:"draining"`
		Changed  bool   `json:"changed"`
	}
	var r reply
	mustOK(t, "/affinity/upstreams/drain", http.MethodPost, "/affinity/upstreams/drain", `{"address":"`+addr+`"}`, &r)
	if r != (reply{addr, true, true}) {
		t.Errorf("drain reply = %+v", r)
	}
	if !affinity.IsDraining(addr) {
		t.Fatal("POST drain did not drain")
	}
	if u := findUpstream(getUpstreams(t), addr); u == nil || !u.Draining {
		t.Errorf("GET upstreams after drain: %+v", u)
	}
	// Again: no change. Surrounding spaces are ignored.
	mustOK(t, "/affinity/upstreams/drain", http.MethodPost, "/affinity/upstreams/drain", `{"address":"  `+addr+`\t"}`, &r)
	if r != (reply{addr, true, false}) {
		t.Errorf("second drain reply = %+v", r)
	}

	mustOK(t, "/affinity/upstreams/undrain", http.MethodPost, "/affinity/upstreams/undrain", `{"address":"`+addr+`"}`, &r)
	if r != (reply{addr, false, true}) {
		t.Errorf("undrain reply = %+v", r)
	}
	if affinity.IsDraining(addr) {
		t.Fatal("POST undrain did not undrain")
	}
	mustOK(t, "/affinity/upstreams/undrain", http.MethodPost, "/affinity/upstreams/undrain", `{"address":"`+addr+`"}`, &r)
	if r != (reply{addr, false, false}) {
		t.Errorf("second undrain reply = %+v", r)
	}
}

func TestAdminDrainUnknownAddress(t *testing.T) {
	unknown := uniqueAddr("unknown")
	t.Cleanup(func() { affinity.SetDraining(unknown, false) })
	for _, pattern := range []string{"/affinity/upstreams/drain", "/affinity/upstreams/undrain"} {
		_, err := adminCall(t, pattern, http.MethodPost, pattern, `{"address":"`+unknown+`"}`)
		if apiStatus(err) != http.StatusNotFound {
			t.Errorf("%s of an unknown address: %v, want a 404 APIError", pattern, err)
		} else if !strings.Contains(err.Error(), unknown) {
			t.Errorf("%s: the error %q does not name the address", pattern, err)
		}
		if affinity.IsDraining(unknown) {
			t.Fatalf("%s of an unknown address drained it", pattern)
		}
	}

	// An address that drains although no policy knows it (any more) can
	// still be undrained.
	affinity.SetDraining(unknown, true)
	var r map[string]any
	mustOK(t, "/affinity/upstreams/undrain", http.MethodPost, "/affinity/upstreams/undrain", `{"address":"`+unknown+`"}`, &r)
	if affinity.IsDraining(unknown) || r["changed"] != true {
		t.Errorf("undrain of a draining, unknown address: %v, still draining %v", r, affinity.IsDraining(unknown))
	}
}

func TestAdminDrainBadBodies(t *testing.T) {
	known := uniqueAddr("body")
	affinity.CountersFor("admin_test_body", known)
	t.Cleanup(func() { affinity.SetDraining(known, false) })
	for _, tc := range []struct{ name, body, want string }{
		{"empty", "", "body must be JSON"},
		{"malformed", `{"address":`, "body must be JSON"},
		{"not an object", `["` + known + `"]`, "body must be JSON"},
		{"wrong type", `{"address":5}`, "body must be JSON"},
		{"unknown field", `{"address":"` + known + `","force":true}`, "body must be JSON"},
		{"misspelt field", `{"addr":"` + known + `"}`, "body must be JSON"},
		{"too large", `{"address":"` + strings.Repeat("a", 70<<10) + `"}`, "body must be JSON"},
		{"no address", `{}`, `"address" is required`},
		{"empty address", `{"address":""}`, `"address" is required`},
		{"blank address", `{"address":"  "}`, `"address" is required`},
		{"trailing garbage", `{"address":"` + known + `"} x`, "trailing data"},
		{"second object", `{"address":"` + known + `"}{}`, "trailing data"},
		{"other letter case", `{"Address":"` + known + `"}`, `unknown field "Address"`},
		{"duplicate key", `{"address":"` + known + `","address":"` + known + `"}`, "more than once"},
		{"null", `null`, "expected an object"},
	} {
		for _, pattern := range []string{"/affinity/upstreams/drain", "/affinity/upstreams/undrain"} {
			_, err := adminCall(t, pattern, http.MethodPost, pattern, tc.body)
			if apiStatus(err) != http.StatusBadRequest {
				t.Errorf("%s %s: %v, want a 400 APIError", pattern, tc.name, err)
				continue
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s %s: error %q does not contain %q", pattern, tc.name, err, tc.want)
			}
		}
	}
	if affinity.IsDraining(known) {
		t.Error("a rejected request drained an upstream")
	}
}

func TestAdminMethodNotAllowed(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		methods []string
		allow   string
	}{
		{"/affinity/upstreams", []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch}, "GET"},
		{"/affinity/upstreams/drain", []string{http.MethodGet, http.MethodPut, http.MethodDelete}, "POST"},
		{"/affinity/upstreams/undrain", []string{http.MethodGet, http.MethodPut, http.MethodDelete}, "POST"},
		{"/affinity/sessions", []string{http.MethodPost, http.MethodPut, http.MethodPatch}, "GET, DELETE"},
	} {
		for _, m := range tc.methods {
			w, err := adminCall(t, tc.pattern, m, tc.pattern, "")
			if apiStatus(err) != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: %v, want a 405 APIError", m, tc.pattern, err)
				continue
			}
			if got := w.Header().Get("Allow"); got != tc.allow {
				t.Errorf("%s %s: Allow %q, want %q", m, tc.pattern, got, tc.allow)
			}
		}
	}
}

// sessionTotal is the number of entries in every registered table.
func sessionTotal() int {
	n := 0
	affinity.EachTable(func(_ string, t *affinity.SessionTable) { n += t.Len() })
	return n
}

func getSessions(t *testing.T, query string) ([]SessionEntry, int) {
	t.Helper()
	var out []SessionEntry
	w := mustOK(t, "/affinity/sessions", http.MethodGet, "/affinity/sessions"+query, "", &out)
	total, err := strconv.Atoi(w.Header().Get("X-Total-Count"))
	if err != nil {
		t.Fatalf("X-Total-Count %q: %v", w.Header().Get("X-Total-Count"), err)
	}
	if out == nil {
		t.Fatalf("GET sessions%s: body %q is not a JSON array", query, w.Body)
	}
	return out, total
}

func TestAdminSessions(t *testing.T) {
	const policy = "admin_test_sessions"
	upA, upB := uniqueAddr("sess-a"), uniqueAddr("sess-b")
	idA, idB := affinity.NameUpstream(upA), affinity.NameUpstream(upB)
	// Tables registered earlier (by other tests of this process) come
	// first in the listing; ours is last.
	base := sessionTotal()

	table := affinity.NewSessionTable(1000, time.Hour)
	affinity.RegisterTable(policy, table)
	t.Cleanup(func() { affinity.UnregisterTable(table) })
	seen := time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC)
	want := map[string]string{} // client -> upstream
	for i := range 25 {
		k := affinity.MaskClient(netip.AddrFrom4([4]byte{203, 0, 113, byte(i + 1)}), 32, 64)
		id, up := idA, upA
		if i%3 == 0 {
			id, up = idB, upB
		}
		table.Put(k, id, seen)
		want[k.String()] = up
	}

	// Pages of 10 from our first entry: 10, 10, 5, then none.
	got := map[string]string{}
	for page, size := range []int{10, 10, 5, 0} {
		list, total := getSessions(t, fmt.Sprintf("?limit=10&offset=%d", base+10*page))
		if total != base+25 {
			t.Errorf("X-Total-Count = %d, want %d", total, base+25)
		}
		if len(list) != size {
			t.Fatalf("page %d has %d entries, want %d", page, len(list), size)
		}
		for _, e := range list {
			if e.Policy != policy {
				t.Errorf("entry %+v: policy %q", e, e.Policy)
			}
			if _, dup := got[e.Client]; dup {
				t.Errorf("client %s listed twice", e.Client)
			}
			got[e.Client] = e.Upstream
			if !e.LastSeen.Equal(seen) || e.LastSeen.Location() != time.UTC {
				t.Errorf("entry %+v: last_seen %v, want %v", e, e.LastSeen, seen)
			}
		}
	}
	if len(got) != len(want) {
		t.Errorf("paging listed %d clients, want %d", len(got), len(want))
	}
	for c, up := range want {
		if got[c] != up {
			t.Errorf("client %s: upstream %q, want %q", c, got[c], up)
		}
	}

	// A page that starts inside our table and asks for more than is left.
	list, _ := getSessions(t, fmt.Sprintf("?offset=%d&limit=100", base+20))
	if len(list) != 5 {
		t.Errorf("offset 20 of 25 gives %d entries", len(list))
	}
	// The default limit is 100.
	list, total := getSessions(t, "")
	if len(list) != min(total, 100) {
		t.Errorf("no limit: %d entries of %d", len(list), total)
	}
	// Far beyond the end: an empty array, not null.
	w := mustOK(t, "/affinity/sessions", http.MethodGet, "/affinity/sessions?offset=1000000", "", new([]SessionEntry))
	if strings.TrimSpace(w.Body.String()) != "[]" {
		t.Errorf("beyond the end: body %q, want []", w.Body)
	}

	for _, q := range []string{"limit=0", "limit=10001", "limit=-1", "limit=ten", "limit=1.5"} {
		_, err := adminCall(t, "/affinity/sessions", http.MethodGet, "/affinity/sessions?"+q, "")
		if apiStatus(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "limit") {
			t.Errorf("%s: %v, want a 400 APIError about limit", q, err)
		}
	}
	for _, q := range []string{"offset=-1", "offset=x", "offset=1e3"} {
		_, err := adminCall(t, "/affinity/sessions", http.MethodGet, "/affinity/sessions?"+q, "")
		if apiStatus(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "offset") {
			t.Errorf("%s: %v, want a 400 APIError about offset", q, err)
		}
	}

	// Sessions show in the upstream listing too.
	ups := getUpstreams(t)
	if u := findUpstream(ups, upA); u == nil || u.Sessions != 16 {
		t.Errorf("%s: %+v, want 16 sessions", upA, u)
	}
	if u := findUpstream(ups, upB); u == nil || u.Sessions != 9 {
		t.Errorf("%s: %+v, want 9 sessions", upB, u)
	}

	// DELETE flushes every table.
	var flushed map[string]int
	mustOK(t, "/affinity/sessions", http.MethodDelete, "/affinity/sessions", "", &flushed)
	if flushed["flushed"] != base+25 {
		t.Errorf("DELETE flushed %v, want %d", flushed, base+25)
	}
	if table.Len() != 0 {
		t.Errorf("after DELETE the table has %d entries", table.Len())
	}
	if list, total := getSessions(t, ""); total != 0 || len(list) != 0 {
		t.Errorf("after DELETE: %d entries, X-Total-Count %d", len(list), total)
	}
	// The table still works after a flush.
	table.Put(affinity.MaskClient(netip.MustParseAddr("203.0.113.200"), 32, 64), idA, seen)
	if _, total := getSessions(t, ""); total != 1 {
		t.Errorf("after a flush and a Put: X-Total-Count %d, want 1", total)
	}
}

// A drain with a deadline: the reply and GET /affinity/upstreams show it;
// a bad deadline, or one given to undrain, is a 400 naming the problem.
func TestAdminDrainDeadline(t *testing.T) {
	addr := uniqueAddr("deadline")
	affinity.CountersFor("admin_test_deadline", addr)
	t.Cleanup(func() { affinity.SetDraining(addr, false) })
	var r struct {
		Draining bool      `json:"draining"`
		Deadline time.Time `json:"deadline"`
	}
	before := time.Now()
	mustOK(t, "/affinity/upstreams/drain", http.MethodPost, "/affinity/upstreams/drain", `{"address":"`+addr+`","deadline":"10m"}`, &r)
	if !r.Draining || r.Deadline.Before(before.Add(10*time.Minute-time.Second)) || r.Deadline.After(time.Now().Add(10*time.Minute)) {
		t.Fatalf("drain reply %+v, want a deadline 10 minutes on", r)
	}
	u := findUpstream(getUpstreams(t), addr)
	if u == nil || u.Deadline == nil || !u.Deadline.Equal(r.Deadline) {
		t.Fatalf("GET upstreams: %+v, want the deadline %v", u, r.Deadline)
	}
	if d, ok := affinity.DrainDeadline(addr); !ok || !d.Equal(r.Deadline) {
		t.Fatalf("engine deadline %v %v", d, ok)
	}
	// Draining again without one clears it.
	mustOK(t, "/affinity/upstreams/drain", http.MethodPost, "/affinity/upstreams/drain", `{"address":"`+addr+`"}`, &r)
	if u := findUpstream(getUpstreams(t), addr); u == nil || !u.Draining || u.Deadline != nil {
		t.Fatalf("after a drain without deadline: %+v", u)
	}
	for _, tc := range []struct{ pattern, body, want string }{
		{"/affinity/upstreams/drain", `{"address":"` + addr + `","deadline":"soon"}`, `"deadline" must be a positive duration`},
		{"/affinity/upstreams/drain", `{"address":"` + addr + `","deadline":"-5m"}`, `"deadline" must be a positive duration`},
		{"/affinity/upstreams/drain", `{"address":"` + addr + `","deadline":600}`, "body must be JSON"},
		{"/affinity/upstreams/undrain", `{"address":"` + addr + `","deadline":"5m"}`, `unknown field "deadline"`},
	} {
		_, err := adminCall(t, tc.pattern, http.MethodPost, tc.pattern, tc.body)
		if apiStatus(err) != http.StatusBadRequest || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %s: %v, want a 400 with %q", tc.pattern, tc.body, err, tc.want)
		}
	}
}

// drained: false while a table-backed policy's entries are bound to the
// draining upstream (whatever its deadline), or a session's request reached
// it in the last minute without a deadline; true once neither holds.
func TestAdminDrainedTableSessions(t *testing.T) {
	const policy = "admin_test_drained"
	addr, other := uniqueAddr("drained-table"), uniqueAddr("drained-other")
	c := affinity.CountersFor(policy, addr)
	affinity.CountersFor(policy, other)
	table := affinity.NewSessionTable(100, time.Hour)
	affinity.RegisterTable(policy, table)
	t.Cleanup(func() { affinity.UnregisterTable(table) })
	id, otherID := affinity.NameUpstream(addr), affinity.NameUpstream(other)
	now := time.Now()
	keys := []affinity.ClientKey{
		affinity.MaskClient(netip.MustParseAddr("198.51.100.1"), 32, 64),
		affinity.MaskClient(netip.MustParseAddr("198.51.100.2"), 32, 64),
	}
	for _, k := range keys {
		table.Put(k, id, now)
	}
	affinity.SetDraining(addr, true)
	t.Cleanup(func() { affinity.SetDraining(addr, false) })

	check := func(what string, sessions int, drained bool) {
		t.Helper()
		u := findUpstream(getUpstreams(t), addr)
		if u == nil || !u.Draining || u.Sessions != sessions || u.Drained != drained {
			t.Fatalf("%s: %+v; want draining, %d sessions, drained %v", what, u, sessions, drained)
		}
	}
	check("two entries bound", 2, false)

	// A deadline that has passed moves sessions on their next request; until
	// then they are still bound.
	affinity.DrainUntil(addr, time.Now().Add(-time.Second))
	check("two entries bound after the deadline", 2, false)

	// One moves: one is still bound.
	table.Put(keys[0], otherID, now)
	check("one entry moved", 1, false)
	table.Put(keys[1], otherID, now)
	check("both entries moved", 0, true)

	// Without a deadline, a session's request in the last minute keeps it
	// from being drained, though no entry is bound.
	affinity.DrainUntil(addr, time.Time{})
	check("no entries, no sightings", 0, true)
	c.Saw(12345, time.Now().Unix())
	check("a session seen just now", 0, false)
}
