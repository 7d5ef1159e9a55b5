package affinity

import (
	"encoding/base64"
	"encoding/binary"
)

// Kind is the kind of a token.
type Kind uint8

// Token kinds. Each has its own fixed length, so a token can be found at the
// start of a cookie value without a delimiter search.
const (
	// KindInsert is the whole value of a cookie the proxy inserts. It carries
	// its issue time and its last refresh (for the idle timeout).
	KindInsert Kind = 1
	// KindRoute prefixes a backend's own cookie value in rewrite mode.
	KindRoute Kind = 2
)

// Binary layout, before base64url (no padding):
//
//	header(1) upstreamID(6) issued(4) [refreshed(4), insert only] mac(10)
//
// The header holds the format version and the kind, the MAC covers
// everything before it plus the keyring's context (the cookie name).
const (
	tokenVersion = 1
	idBytes      = 6
	macBytes     = 10

	insertBytes = 1 + idBytes + 4 + 4 + macBytes
	routeBytes  = 1 + idBytes + 4 + macBytes

	tokenMaxBytes = insertBytes
	tokenMaxChars = 34
)

// Token lengths in characters, as they appear in a cookie value.
var (
	InsertLen = b64.EncodedLen(insertBytes) // 34
	RouteLen  = b64.EncodedLen(routeBytes)  // 28
)

var b64 = base64.RawURLEncoding.Strict()

// Len is the length in characters of a token of kind k.
func (k Kind) Len() int {
	if k == KindRoute {
		return RouteLen
	}
	return InsertLen
}

func (k Kind) bytes() int {
	if k == KindRoute {
		return routeBytes
	}
	return insertBytes
}

// Token is the decoded content of a signed token.
type Token struct {
	Kind Kind
	// Upstream is the upstream's ID under the key that signed the token.
	Upstream uint64
	// Issued is when the session was bound to its upstream (Unix seconds).
	Issued uint32
	// Refreshed is when the cookie was last re-issued (Unix seconds); insert
	// tokens only, for the idle timeout.
	Refreshed uint32
}

// Reason says why a token was rejected. The zero Reason means accepted.
type Reason uint8

// Rejection reasons, in the order they are checked.
const (
	ReasonNone Reason = iota
	// ReasonMalformed: wrong length, alphabet, version or kind (this covers
	// truncated values).
	ReasonMalformed
	// ReasonSignature: the MAC matches no key: tampered, or signed by a key
	// no longer configured.
	ReasonSignature
	// ReasonExpired: older than the maximum lifetime.
	ReasonExpired
	// ReasonIdle: not refreshed within the idle timeout.
	ReasonIdle
	// ReasonUnknownUpstream: names no upstream of the current pool.
	ReasonUnknownUpstream
	// ReasonFuture: issued or refreshed more than MaxClockSkew ahead of
	// the clock, where a lifetime applies.
	ReasonFuture

	numReasons
)

var reasonNames = [numReasons]string{"", "malformed", "signature", "expired", "idle", "unknown_upstream", "future"}

func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Reasons lists every rejection reason, for reporting.
func Reasons() []Reason {
	return []Reason{ReasonMalformed, ReasonSignature, ReasonExpired, ReasonIdle, ReasonUnknownUpstream, ReasonFuture}
}

// AppendToken signs t with the first key and appends its text form to dst.
func (k *Keyring) AppendToken(dst []byte, t Token) []byte {
	st := k.pool.Get().(*macState)
	defer k.pool.Put(st)
	n := t.Kind.bytes()
	b := st.buf[:n]
	b[0] = tokenVersion<<4 | byte(t.Kind)
	var id [8]byte
	binary.BigEndian.PutUint64(id[:], t.Upstream)
	copy(b[1:1+idBytes], id[8-idBytes:])
	binary.BigEndian.PutUint32(b[1+idBytes:], t.Issued)
	if t.Kind == KindInsert {
		binary.BigEndian.PutUint32(b[1+idBytes+4:], t.Refreshed)
	}
	k.mac(st, 0, b[:n-macBytes], b[n-macBytes:])
	var out [tokenMaxChars]byte
	b64.Encode(out[:], b)
	return append(dst, out[:t.Kind.Len()]...)
}

// ParseToken decodes and verifies s as a token of kind kind. It returns the
// token and the index of the key that verified it, or a reason for
// rejection. It checks form and signature only; lifetimes are checked by
// Policy.Check.
func (k *Keyring) ParseToken(kind Kind, s string) (Token, int, Reason) {
	if len(s) != kind.Len() {
		return Token{}, -1, ReasonMalformed
	}
	if t, key, ok := k.cache.get(kind, s); ok {
		return t, key, ReasonNone
	}
	st := k.pool.Get().(*macState)
	defer k.pool.Put(st)
	n := copy(st.in[:], s)
	m, err := b64.Decode(st.buf[:], st.in[:n])
	if err != nil || m != kind.bytes() || st.buf[0] != tokenVersion<<4|byte(kind) {
		return Token{}, -1, ReasonMalformed
	}
	b := st.buf[:m]
	key := k.verify(st, b)
	if key < 0 {
		return Token{}, -1, ReasonSignature
	}
	var id [8]byte
	copy(id[8-idBytes:], b[1:1+idBytes])
	t := Token{
		Kind:     kind,
		Upstream: binary.BigEndian.Uint64(id[:]),
		Issued:   binary.BigEndian.Uint32(b[1+idBytes:]),
	}
	if kind == KindInsert {
		t.Refreshed = binary.BigEndian.Uint32(b[1+idBytes+4:])
	}
	k.cache.put(s, t, key)
	return t, key, ReasonNone
}

// LooksLikeToken reports whether s has the exact shape of a token of kind
// kind (length, alphabet, header), without checking its signature. Rewrite
// mode uses it to strip a token the client sent even when it no longer
// verifies, so the backend always gets its own value back.
func LooksLikeToken(kind Kind, s string) bool {
	if len(s) != kind.Len() {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	// The first character encodes the top six bits of the header byte.
	var hdr [3]byte
	var in [4]byte
	copy(in[:], s[:4])
	if _, err := base64.RawURLEncoding.Decode(hdr[:], in[:]); err != nil {
		return false
	}
	return hdr[0] == tokenVersion<<4|byte(kind)
}
