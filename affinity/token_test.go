package affinity

import (
	"encoding/base64"
	"encoding/binary"
	"github.com/caddy-affinity/caddy-affinity/internal/testutil"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	testKey  = []byte("0123456789abcdef0123456789abcdef")
	otherKey = []byte("fedcba9876543210fedcba9876543210")
)

func mustKeyring(t testing.TB, context string, keys ...[]byte) *Keyring {
	t.Helper()
	k, err := NewKeyring(context, keys...)
	if err != nil {
		t.Fatalf("NewKeyring: %v", err)
	}
	return k
}

func TestNewKeyringRejectsMissingKeys(t *testing.T) {
	for name, keys := range map[string][][]byte{
		"none":        nil,
		"empty":       {{}},
		"empty later": {testKey, nil},
	} {
		if k, err := NewKeyring("c", keys...); err != ErrNoKeys || k != nil {
			t.Errorf("%s: NewKeyring = %v, %v; want nil, ErrNoKeys", name, k, err)
		}
	}
	k := mustKeyring(t, "c", testKey, otherKey)
	if k.Len() != 2 {
		t.Errorf("Len = %d, want 2", k.Len())
	}
}

func TestNewKeyringCopiesKeys(t *testing.T) {
	key := append([]byte(nil), testKey...)
	k := mustKeyring(t, "c", key)
	tok := string(k.AppendToken(nil, Token{Kind: KindRoute, Upstream: 7, Issued: 9}))
	key[0] ^= 0xff
	if _, _, r := k.ParseToken(KindRoute, tok); r != ReasonNone {
		t.Fatalf("changing the caller's key slice changed the keyring: %v", r)
	}
}

func TestTokenLengths(t *testing.T) {
	if InsertLen != 34 || RouteLen != 28 {
		t.Fatalf("InsertLen, RouteLen = %d, %d; want 34, 28", InsertLen, RouteLen)
	}
	if KindInsert.Len() != 34 || KindRoute.Len() != 28 {
		t.Fatalf("Kind.Len = %d, %d; want 34, 28", KindInsert.Len(), KindRoute.Len())
	}
	k := mustKeyring(t, "c", testKey)
	for _, kind := range []Kind{KindInsert, KindRoute} {
		got := k.AppendToken([]byte("prefix"), Token{Kind: kind, Upstream: 1<<48 - 1, Issued: ^uint32(0), Refreshed: ^uint32(0)})
		if !strings.HasPrefix(string(got), "prefix") {
			t.Errorf("kind %d: AppendToken dropped dst: %q", kind, got)
		}
		if n := len(got) - len("prefix"); n != kind.Len() {
			t.Errorf("kind %d: token has %d chars, want %d", kind, n, kind.Len())
		}
	}
}

func TestTokenRoundTrip(t *testing.T) {
	k := mustKeyring(t, "cookie", testKey)
	for _, tc := range []Token{
		{Kind: KindInsert, Upstream: 0, Issued: 0, Refreshed: 0},
		{Kind: KindInsert, Upstream: 0x123456789abc, Issued: 1700000000, Refreshed: 1700000123},
		{Kind: KindInsert, Upstream: 1<<48 - 1, Issued: ^uint32(0), Refreshed: ^uint32(0)},
		{Kind: KindRoute, Upstream: 42, Issued: 1700000000},
		{Kind: KindRoute, Upstream: 1<<48 - 1, Issued: ^uint32(0)},
	} {
		s := string(k.AppendToken(nil, tc))
		got, key, reason := k.ParseToken(tc.Kind, s)
		if reason != ReasonNone || key != 0 {
			t.Errorf("%+v: ParseToken(%q) = key %d, %v", tc, s, key, reason)
			continue
		}
		if got != tc {
			t.Errorf("round trip: got %+v, want %+v", got, tc)
		}
		if !LooksLikeToken(tc.Kind, s) {
			t.Errorf("LooksLikeToken(%d, %q) = false", tc.Kind, s)
		}
		other := KindRoute
		if tc.Kind == KindRoute {
			other = KindInsert
		}
		if LooksLikeToken(other, s) {
			t.Errorf("LooksLikeToken(%d, %q) = true for a token of kind %d", other, s, tc.Kind)
		}
		if _, _, r := k.ParseToken(other, s); r != ReasonMalformed {
			t.Errorf("ParseToken of kind %d as kind %d: %v, want malformed", tc.Kind, other, r)
		}
	}
}

func TestRouteTokenIgnoresRefreshed(t *testing.T) {
	k := mustKeyring(t, "c", testKey)
	a := string(k.AppendToken(nil, Token{Kind: KindRoute, Upstream: 5, Issued: 77, Refreshed: 1}))
	b := string(k.AppendToken(nil, Token{Kind: KindRoute, Upstream: 5, Issued: 77, Refreshed: 2}))
	if a != b {
		t.Fatalf("route tokens differ by Refreshed: %q vs %q", a, b)
	}
	got, _, _ := k.ParseToken(KindRoute, a)
	if got.Refreshed != 0 {
		t.Fatalf("route token Refreshed = %d, want 0", got.Refreshed)
	}
}

// signRaw returns the text form of raw (header and fields, MAC space at the
// end) signed with key 0, bypassing AppendToken's own header.
func signRaw(k *Keyring, raw []byte) string {
	st := k.pool.Get().(*macState)
	defer k.pool.Put(st)
	n := copy(st.buf[:], raw)
	k.mac(st, 0, st.buf[:n-macBytes], st.buf[n-macBytes:n])
	return b64.EncodeToString(st.buf[:n])
}

func decodeRaw(t *testing.T, s string) []byte {
	t.Helper()
	b, err := b64.DecodeString(s)
	if err != nil {
		t.Fatalf("decoding %q: %v", s, err)
	}
	return b
}

func TestParseTokenMalformed(t *testing.T) {
	k := mustKeyring(t, "c", testKey)
	ins := string(k.AppendToken(nil, Token{Kind: KindInsert, Upstream: 99, Issued: 1000, Refreshed: 1000}))
	route := string(k.AppendToken(nil, Token{Kind: KindRoute, Upstream: 99, Issued: 1000}))

	// A validly signed token whose header byte says another version or
	// kind: the header check must reject it, not the MAC.
	withHeader := func(kind Kind, hdr byte) string {
		raw := decodeRaw(t, map[Kind]string{KindInsert: ins, KindRoute: route}[kind])
		raw[0] = hdr
		return signRaw(k, raw)
	}
	// Insert tokens are 25 bytes in 34 characters: the last character
	// carries 2 bits of data and 4 bits that must be zero.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, ins[len(ins)-1])
	if last&0xf != 0 {
		t.Fatalf("canonical insert token %q has trailing bits set", ins)
	}
	nonCanonical := ins[:len(ins)-1] + string(alphabet[last|1])
	// Base64 with padding is a different length; standard-alphabet
	// characters are outside the URL alphabet.
	std := base64.StdEncoding.EncodeToString(decodeRaw(t, route))

	for _, tc := range []struct {
		name string
		kind Kind
		s    string
	}{
		{"empty insert", KindInsert, ""},
		{"empty route", KindRoute, ""},
		{"insert truncated", KindInsert, ins[:len(ins)-1]},
		{"insert truncated to route length", KindInsert, ins[:RouteLen]},
		{"route truncated", KindRoute, route[:len(route)-1]},
		{"insert too long", KindInsert, ins + "A"},
		{"route too long", KindRoute, route + "A"},
		{"route padded std base64", KindRoute, std},
		{"insert bad alphabet +", KindInsert, ins[:5] + "+" + ins[6:]},
		{"insert bad alphabet /", KindInsert, ins[:5] + "/" + ins[6:]},
		{"route bad alphabet =", KindRoute, route[:27] + "="},
		{"route bad alphabet .", KindRoute, "." + route[1:]},
		{"route bad alphabet space", KindRoute, route[:10] + " " + route[11:]},
		{"insert non-canonical trailing bits", KindInsert, nonCanonical},
		{"insert wrong version", KindInsert, withHeader(KindInsert, 2<<4|byte(KindInsert))},
		{"insert version zero", KindInsert, withHeader(KindInsert, byte(KindInsert))},
		{"route wrong version", KindRoute, withHeader(KindRoute, 0xf<<4|byte(KindRoute))},
		{"insert-length token with route kind", KindInsert, withHeader(KindInsert, tokenVersion<<4|byte(KindRoute))},
		{"route-length token with insert kind", KindRoute, withHeader(KindRoute, tokenVersion<<4|byte(KindInsert))},
		{"unknown kind", KindRoute, withHeader(KindRoute, tokenVersion<<4|3)},
		{"insert token as route", KindRoute, ins},
		{"route token as insert", KindInsert, route},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, key, reason := k.ParseToken(tc.kind, tc.s)
			if reason != ReasonMalformed || key != -1 || got != (Token{}) {
				t.Errorf("ParseToken(%d, %q) = %+v, %d, %v; want malformed", tc.kind, tc.s, got, key, reason)
			}
			if LooksLikeToken(tc.kind, tc.s) && tc.name != "insert non-canonical trailing bits" {
				// LooksLikeToken checks shape only (length, alphabet,
				// header); everything above fails one of those except
				// the trailing bits.
				t.Errorf("LooksLikeToken(%d, %q) = true", tc.kind, tc.s)
			}
		})
	}
}

func TestParseTokenSignature(t *testing.T) {
	k := mustKeyring(t, "SESSID", testKey)
	for _, kind := range []Kind{KindInsert, KindRoute} {
		tok := string(k.AppendToken(nil, Token{Kind: kind, Upstream: 0xabcdef, Issued: 1234, Refreshed: 5678}))
		raw := decodeRaw(t, tok)

		// Flip every bit of every byte after the header: the MAC must
		// catch each one, wherever it is (ID, times or the MAC itself).
		for i := 1; i < len(raw); i++ {
			for bit := 0; bit < 8; bit++ {
				bad := append([]byte(nil), raw...)
				bad[i] ^= 1 << bit
				s := b64.EncodeToString(bad)
				if _, key, r := k.ParseToken(kind, s); r != ReasonSignature || key != -1 {
					t.Fatalf("kind %d: byte %d bit %d flipped: %v (key %d), want signature", kind, i, bit, r, key)
				}
			}
		}
		// Change every character: never accepted.
		for i := 0; i < len(tok); i++ {
			for _, c := range []byte("AQgw_-9z") {
				if c == tok[i] {
					continue
				}
				s := tok[:i] + string(c) + tok[i+1:]
				if _, _, r := k.ParseToken(kind, s); r != ReasonSignature && r != ReasonMalformed {
					t.Fatalf("kind %d: char %d changed to %c: accepted (%v)", kind, i, c, r)
				}
			}
		}

		for name, other := range map[string]*Keyring{
			"unknown key":              mustKeyring(t, "SESSID", otherKey),
			"other cookie name":        mustKeyring(t, "SESSIDX", testKey),
			"other context, case":      mustKeyring(t, "sessid", testKey),
			"context prefix collision": mustKeyring(t, "SESSI", testKey),
		} {
			if _, key, r := other.ParseToken(kind, tok); r != ReasonSignature || key != -1 {
				t.Errorf("kind %d, %s: ParseToken = key %d, %v; want signature", kind, name, key, r)
			}
		}
	}
}

func TestKeyRotation(t *testing.T) {
	old := mustKeyring(t, "c", otherKey)
	rotated := mustKeyring(t, "c", testKey, otherKey)
	fresh := mustKeyring(t, "c", testKey)

	want := Token{Kind: KindInsert, Upstream: old.UpstreamID(0, "10.0.0.1:80"), Issued: 100, Refreshed: 200}
	tok := string(old.AppendToken(nil, want))
	got, key, r := rotated.ParseToken(KindInsert, tok)
	if r != ReasonNone || key != 1 || got != want {
		t.Fatalf("old token under [new, old]: %+v key %d %v; want %+v key 1", got, key, r, want)
	}
	// The old key's upstream IDs are index 1's IDs in the rotated ring.
	if rotated.UpstreamID(1, "10.0.0.1:80") != got.Upstream {
		t.Fatal("upstream ID under the old key differs between keyrings")
	}
	x := rotated.NewIndex([]string{"10.0.0.9:80", "10.0.0.1:80"})
	if i, ok := x.Lookup(key, got.Upstream); !ok || i != 1 {
		t.Fatalf("Lookup(1, id) = %d, %v; want 1, true", i, ok)
	}
	// New tokens are signed by the first key only.
	newTok := string(rotated.AppendToken(nil, want))
	if _, key, r := fresh.ParseToken(KindInsert, newTok); r != ReasonNone || key != 0 {
		t.Fatalf("token from [new, old] under [new]: key %d %v; want key 0", key, r)
	}
	if _, _, r := old.ParseToken(KindInsert, newTok); r != ReasonSignature {
		t.Fatalf("token from [new, old] under [old]: %v; want signature", r)
	}
	// Once the old key is dropped its tokens fail.
	if _, _, r := fresh.ParseToken(KindInsert, tok); r != ReasonSignature {
		t.Fatalf("old token under [new]: %v; want signature", r)
	}
}

func TestUpstreamIDs(t *testing.T) {
	addrs := []string{"10.0.0.1:80", "10.0.0.2:80", "backend.internal:8443", "unix//run/app.sock", ""}
	k1 := mustKeyring(t, "a", testKey)
	k2 := mustKeyring(t, "a", testKey) // built separately, same key
	k3 := mustKeyring(t, "another context", testKey)
	k4 := mustKeyring(t, "a", otherKey)
	seen := map[uint64]string{}
	for _, a := range addrs {
		id := k1.UpstreamID(0, a)
		if id >= 1<<48 {
			t.Errorf("ID of %q = %#x, wider than 48 bits", a, id)
		}
		if k2.UpstreamID(0, a) != id {
			t.Errorf("ID of %q differs between two keyrings with the same key", a)
		}
		if k3.UpstreamID(0, a) != id {
			t.Errorf("ID of %q depends on the keyring's context", a)
		}
		if k4.UpstreamID(0, a) == id {
			t.Errorf("ID of %q is the same under another key", a)
		}
		if k1.UpstreamID(0, a) != id {
			t.Errorf("ID of %q is not stable", a)
		}
		if prev, dup := seen[id]; dup {
			t.Errorf("%q and %q share ID %#x", a, prev, id)
		}
		seen[id] = a
	}

	// Order-independent: position in the pool does not matter.
	fwd := k1.NewIndex(addrs)
	rev := make([]string, len(addrs))
	for i, a := range addrs {
		rev[len(addrs)-1-i] = a
	}
	back := k2.NewIndex(rev)
	for i := range addrs {
		if fwd.SigningID(i) != back.SigningID(len(addrs)-1-i) {
			t.Errorf("ID of %q depends on its position", addrs[i])
		}
		if fwd.SigningID(i) != k1.UpstreamID(0, addrs[i]) {
			t.Errorf("SigningID(%d) != UpstreamID(0, %q)", i, addrs[i])
		}
	}
}

// TestTokenHidesAddress checks that a cookie's text reveals nothing of its
// upstream's address: not the host, not the port, not their base64.
func TestTokenHidesAddress(t *testing.T) {
	k := mustKeyring(t, "c", testKey)
	for _, addr := range []string{"10.0.0.1:8080", "backend.example.internal:31337", "192.168.100.200:65001"} {
		host, port, _ := strings.Cut(addr, ":")
		for _, kind := range []Kind{KindInsert, KindRoute} {
			tok := string(k.AppendToken(nil, Token{Kind: kind, Upstream: k.UpstreamID(0, addr), Issued: 1700000000, Refreshed: 1700000000}))
			forbidden := []string{host, port, addr}
			for _, s := range []string{host, port, addr} {
				forbidden = append(forbidden, base64Fragments(s)...)
			}
			for _, f := range forbidden {
				if strings.Contains(tok, f) {
					t.Errorf("token %q for %s contains %q", tok, addr, f)
				}
			}
			raw := decodeRaw(t, tok)
			var p [2]byte
			n := 0
			for _, c := range port {
				n = n*10 + int(c-'0')
			}
			binary.BigEndian.PutUint16(p[:], uint16(n))
			if strings.Contains(string(raw), host) || strings.Contains(string(raw), port) || strings.Contains(string(raw), string(p[:])) {
				t.Errorf("token bytes for %s contain its host or port", addr)
			}
		}
	}
}

// base64Fragments returns the parts of s's base64 encodings (standard and
// URL alphabets, each of the three byte alignments) that do not depend on
// the bytes around s.
func base64Fragments(s string) []string {
	var out []string
	for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
		for pad := 0; pad < 3; pad++ {
			e := enc.EncodeToString(append(make([]byte, pad), s...))
			// Characters spanning the padding or the unknown next byte
			// vary; keep the stable middle.
			lo := (pad*8 + 5) / 6
			hi := len(e) - 1
			if hi-lo >= 3 {
				out = append(out, e[lo:hi])
			}
		}
	}
	return out
}

func TestLifetimesCheck(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	sec := UnixSeconds(now)
	ins := func(issuedAgo, refreshedAgo time.Duration) Token {
		return Token{Kind: KindInsert, Issued: sec - uint32(issuedAgo/time.Second), Refreshed: sec - uint32(refreshedAgo/time.Second)}
	}
	route := func(issuedAgo time.Duration) Token {
		return Token{Kind: KindRoute, Issued: sec - uint32(issuedAgo/time.Second)}
	}
	for _, tc := range []struct {
		name string
		l    Lifetimes
		t    Token
		want Reason
	}{
		{"no limits, ancient", Lifetimes{}, ins(100*24*time.Hour, 100*24*time.Hour), ReasonNone},
		{"within max lifetime", Lifetimes{MaxLifetime: time.Hour}, ins(59*time.Minute, 0), ReasonNone},
		{"at max lifetime", Lifetimes{MaxLifetime: time.Hour}, ins(time.Hour, 0), ReasonNone},
		{"past max lifetime", Lifetimes{MaxLifetime: time.Hour}, ins(time.Hour+time.Second, 0), ReasonExpired},
		{"route past max lifetime", Lifetimes{MaxLifetime: time.Hour}, route(2 * time.Hour), ReasonExpired},
		{"within idle timeout", Lifetimes{IdleTimeout: 10 * time.Minute}, ins(time.Hour, 10*time.Minute), ReasonNone},
		{"past idle timeout", Lifetimes{IdleTimeout: 10 * time.Minute}, ins(time.Hour, 10*time.Minute+time.Second), ReasonIdle},
		{"route tokens have no idle timeout", Lifetimes{IdleTimeout: time.Minute}, route(time.Hour), ReasonNone},
		{"expiry is checked before idleness", Lifetimes{MaxLifetime: time.Hour, IdleTimeout: time.Minute}, ins(2*time.Hour, 2*time.Hour), ReasonExpired},
		{"idle within max lifetime", Lifetimes{MaxLifetime: time.Hour, IdleTimeout: time.Minute}, ins(30*time.Minute, 2*time.Minute), ReasonIdle},
		// Clock skew between instances: up to MaxClockSkew ahead counts as
		// now; further ahead, the token would never age where a lifetime
		// applies, so it is rejected.
		{"issue time within the skew counts as now", Lifetimes{MaxLifetime: time.Second}, ins(-MaxClockSkew, 0), ReasonNone},
		{"refresh time within the skew counts as now", Lifetimes{IdleTimeout: time.Second}, ins(0, -MaxClockSkew), ReasonNone},
		{"issue time past the skew", Lifetimes{MaxLifetime: time.Hour}, ins(-MaxClockSkew-time.Second, 0), ReasonFuture},
		{"refresh time past the skew", Lifetimes{IdleTimeout: time.Hour}, ins(0, -time.Hour), ReasonFuture},
		{"route issue time past the skew", Lifetimes{MaxLifetime: time.Hour}, route(-time.Hour), ReasonFuture},
		{"far future issue time", Lifetimes{MaxLifetime: time.Second, IdleTimeout: time.Second}, Token{Kind: KindInsert, Issued: ^uint32(0), Refreshed: ^uint32(0)}, ReasonFuture},
		{"future times without lifetimes", Lifetimes{}, Token{Kind: KindInsert, Issued: ^uint32(0), Refreshed: ^uint32(0)}, ReasonNone},
		{"future refresh, route token (no idle timeout)", Lifetimes{IdleTimeout: time.Second}, Token{Kind: KindRoute, Issued: sec, Refreshed: ^uint32(0)}, ReasonNone},
	} {
		if got := tc.l.Check(tc.t, now); got != tc.want {
			t.Errorf("%s: Check = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestNeedsRefresh(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	sec := UnixSeconds(now)
	tok := func(refreshedAgo time.Duration) Token {
		return Token{Kind: KindInsert, Issued: sec - 86400, Refreshed: sec - uint32(refreshedAgo/time.Second)}
	}
	l := Lifetimes{IdleTimeout: time.Hour}
	for _, tc := range []struct {
		name string
		l    Lifetimes
		t    Token
		want bool
	}{
		{"just refreshed", l, tok(0), false},
		{"before a quarter", l, tok(15*time.Minute - time.Second), false},
		{"at a quarter", l, tok(15 * time.Minute), true},
		{"past a quarter", l, tok(40 * time.Minute), true},
		{"refreshed in the future", l, tok(-time.Hour), false},
		{"no idle timeout", Lifetimes{MaxLifetime: time.Minute}, tok(24 * time.Hour), false},
	} {
		if got := tc.l.NeedsRefresh(tc.t, now); got != tc.want {
			t.Errorf("%s: NeedsRefresh = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestUnixSeconds(t *testing.T) {
	if got := UnixSeconds(time.Unix(-5, 0)); got != 0 {
		t.Errorf("UnixSeconds(before 1970) = %d, want 0", got)
	}
	if got := UnixSeconds(time.Unix(1_700_000_000, 999_999_999)); got != 1_700_000_000 {
		t.Errorf("UnixSeconds = %d, want 1700000000", got)
	}
}

func TestReasonAndKindNames(t *testing.T) {
	want := map[Reason]string{ReasonNone: "", ReasonMalformed: "malformed", ReasonSignature: "signature",
		ReasonExpired: "expired", ReasonIdle: "idle", ReasonUnknownUpstream: "unknown_upstream", 200: "unknown"}
	for r, s := range want {
		if r.String() != s {
			t.Errorf("Reason(%d).String() = %q, want %q", r, r.String(), s)
		}
	}
	rs := Reasons()
	if len(rs) != int(numReasons)-1 {
		t.Errorf("Reasons() has %d entries, want %d", len(rs), numReasons-1)
	}
	for i, r := range rs {
		if r != Reason(i+1) {
			t.Errorf("Reasons()[%d] = %v, want %v", i, r, Reason(i+1))
		}
	}
}

func TestLooksLikeToken(t *testing.T) {
	k := mustKeyring(t, "c", testKey)
	route := string(k.AppendToken(nil, Token{Kind: KindRoute, Upstream: 1}))
	// Shape only: a token under an unknown key still looks like one.
	foreign := string(mustKeyring(t, "c", otherKey).AppendToken(nil, Token{Kind: KindRoute, Upstream: 1}))
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{route, true},
		{foreign, true},
		{strings.Repeat("A", RouteLen), false}, // header byte 0
		{route[:RouteLen-1], false},
		{route + "x", false},
		{route[:3] + "~" + route[4:], false},
		{"", false},
	} {
		if got := LooksLikeToken(KindRoute, tc.s); got != tc.want {
			t.Errorf("LooksLikeToken(route, %q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}

// TestParseTokenConcurrent exercises the pooled MAC state from many
// goroutines; run with -race.
func TestParseTokenConcurrent(t *testing.T) {
	k := mustKeyring(t, "c", testKey, otherKey)
	old := mustKeyring(t, "c", otherKey)
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				want := Token{Kind: KindInsert, Upstream: uint64(g*1000 + i), Issued: uint32(i), Refreshed: uint32(g)}
				signer, wantKey := k, 0
				if i%2 == 1 {
					signer, wantKey = old, 1
				}
				s := string(signer.AppendToken(nil, want))
				got, key, r := k.ParseToken(KindInsert, s)
				if r != ReasonNone || key != wantKey || got != want {
					errs <- "concurrent round trip failed"
					return
				}
				_ = k.UpstreamID(i%2, s)
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
}

func TestTokenCodecAllocations(t *testing.T) {
	if testutil.RaceEnabled {
		t.Skip("allocation counts require a build without -race")
	}
	k := mustKeyring(t, "c", testKey, otherKey)
	tok := string(mustKeyring(t, "c", otherKey).AppendToken(nil, Token{Kind: KindInsert, Upstream: 3}))
	buf := make([]byte, 0, 64)
	if n := testing.AllocsPerRun(100, func() {
		if _, key, r := k.ParseToken(KindInsert, tok); r != ReasonNone || key != 1 {
			t.Fatal("parse failed")
		}
	}); n != 0 {
		t.Errorf("ParseToken allocates %.1f times per call, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() {
		buf = k.AppendToken(buf[:0], Token{Kind: KindRoute, Upstream: 3})
	}); n != 0 {
		t.Errorf("AppendToken allocates %.1f times per call, want 0", n)
	}
}

// The cache of verified tokens returns exactly what verification gave, and
// never lets a variant of a cached token through.
func TestTokenCache(t *testing.T) {
	k := mustKeyring(t, "cache", []byte("cache-key-0123456789abcdef"))
	tok := Token{Kind: KindInsert, Upstream: 0xabcdef123456, Issued: 1000, Refreshed: 2000}
	s := string(k.AppendToken(nil, tok))
	first, key1, r1 := k.ParseToken(KindInsert, s)
	again, key2, r2 := k.ParseToken(KindInsert, s)
	if r1 != ReasonNone || r2 != ReasonNone || first != tok || again != tok || key1 != 0 || key2 != 0 {
		t.Fatalf("parse %v/%v %d/%d %v/%v, want %v twice", first, again, key1, key2, r1, r2, tok)
	}
	if _, _, ok := k.cache.get(KindInsert, s); !ok {
		t.Fatalf("a verified token is not cached")
	}
	if _, _, ok := k.cache.get(KindRoute, s); ok {
		t.Fatalf("the cache answers for another kind")
	}
	for i := 0; i < len(s); i++ {
		b := []byte(s)
		b[i] ^= 1
		if _, _, r := k.ParseToken(KindInsert, string(b)); r == ReasonNone {
			t.Fatalf("a variant of a cached token (byte %d) was accepted", i)
		}
	}
	// Another keyring (a reload with other keys) does not share the cache.
	other := mustKeyring(t, "cache", []byte("another-key-0123456789abcdef"))
	if _, _, r := other.ParseToken(KindInsert, s); r != ReasonSignature {
		t.Fatalf("another keyring accepted a token cached by the first: %v", r)
	}
}

// BenchmarkParseToken: a returning client's token (cached) against one
// seen for the first time (the HMAC).
func BenchmarkParseToken(b *testing.B) {
	k := mustKeyring(b, "bench", []byte("bench-key-0123456789abcdef"))
	b.Run("cached", func(b *testing.B) {
		s := string(k.AppendToken(nil, Token{Kind: KindInsert, Upstream: 42, Issued: 1, Refreshed: 1}))
		k.ParseToken(KindInsert, s)
		b.ReportAllocs()
		for b.Loop() {
			if _, _, r := k.ParseToken(KindInsert, s); r != ReasonNone {
				b.Fatal(r)
			}
		}
	})
	b.Run("first_seen", func(b *testing.B) {
		toks := make([]string, 1<<16)
		for i := range toks {
			toks[i] = string(k.AppendToken(nil, Token{Kind: KindInsert, Upstream: uint64(i), Issued: 1, Refreshed: 1}))
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			// Clear the slot so every parse verifies the MAC.
			k.cache.slot(toks[i&(1<<16-1)]).Store(nil)
			if _, _, r := k.ParseToken(KindInsert, toks[i&(1<<16-1)]); r != ReasonNone {
				b.Fatal(r)
			}
			i++
		}
	})
}
