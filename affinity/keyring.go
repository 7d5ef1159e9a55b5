// Package affinity is the engine-agnostic core of caddy-affinity: upstream
// identity, signed tokens, consistent hashing, session tables, draining
// state and counters. It knows nothing of net/http or Caddy's handler
// types, so the HTTP and layer4 glue share it and it is unit-tested alone.
package affinity

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"hash"
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// Keyring signs and verifies tokens with HMAC-SHA256. The first key signs;
// every key verifies, so keys can be rotated without losing sessions: put
// the new key first and keep the old one until its cookies have aged out.
//
// A Keyring is bound to a context string (the cookie name), so a token
// minted for one cookie is not accepted for another even under the same key.
type Keyring struct {
	keys    [][]byte
	context []byte
	pool    sync.Pool // of *macState
	cache   tokenCache
}

// macState is scratch space for one MAC computation. Pooling it keeps the
// request path free of allocations: hash.Hash methods take interface calls,
// so buffers handed to them would otherwise escape to the heap.
type macState struct {
	hs  []hash.Hash // one per key
	buf [tokenMaxBytes + 8]byte
	sum [sha256.Size]byte
	in  [tokenMaxChars]byte
}

// ErrNoKeys is returned by NewKeyring when no usable key is given.
var ErrNoKeys = errors.New("at least one non-empty secret is required")

// NewKeyring returns a keyring over keys, bound to context. Keys are copied.
func NewKeyring(context string, keys ...[]byte) (*Keyring, error) {
	if len(keys) == 0 {
		return nil, ErrNoKeys
	}
	k := &Keyring{context: append([]byte("caddy-affinity\x00"), context...)}
	k.cache.seed = maphash.MakeSeed()
	k.context = append(k.context, 0)
	for _, key := range keys {
		if len(key) == 0 {
			return nil, ErrNoKeys
		}
		k.keys = append(k.keys, append([]byte(nil), key...))
	}
	k.pool.New = func() any {
		st := &macState{hs: make([]hash.Hash, len(k.keys))}
		for i, key := range k.keys {
			st.hs[i] = hmac.New(sha256.New, key)
		}
		return st
	}
	return k, nil
}

// Len is the number of keys.
func (k *Keyring) Len() int { return len(k.keys) }

// UpstreamID is the identity of the upstream at addr under key i: 48 bits
// of HMAC(key, addr). It depends only on the key and the address, so every
// process sharing the key agrees on it, and it reveals nothing of addr.
func (k *Keyring) UpstreamID(i int, addr string) uint64 {
	st := k.pool.Get().(*macState)
	defer k.pool.Put(st)
	h := st.hs[i]
	h.Reset()
	h.Write([]byte("upstream\x00"))
	h.Write([]byte(addr))
	sum := h.Sum(st.sum[:0])
	var b [8]byte
	copy(b[2:], sum[:idBytes])
	return binary.BigEndian.Uint64(b[:])
}

// ValueKey is the session-table key of a value a backend minted (a session
// cookie or header that learn mode records) under key i: 128 bits of
// HMAC(key, context, value). A table, or a store a fleet shares, holds
// that, never the value, which is a credential.
func (k *Keyring) ValueKey(i int, value string) ClientKey {
	st := k.pool.Get().(*macState)
	defer k.pool.Put(st)
	h := st.hs[i]
	h.Reset()
	h.Write(k.context)
	h.Write([]byte("value\x00"))
	h.Write([]byte(value))
	return namedKeyOf(h.Sum(st.sum[:0]))
}

// mac writes the truncated MAC of msg under key i into out, which must hold
// macBytes. msg must be one of st's buffers.
func (k *Keyring) mac(st *macState, i int, msg []byte, out []byte) {
	h := st.hs[i]
	h.Reset()
	h.Write(k.context)
	h.Write(msg)
	sum := h.Sum(st.sum[:0])
	copy(out, sum[:macBytes])
}

// verify reports which key's MAC matches the one at the end of msgWithMAC,
// or -1.
func (k *Keyring) verify(st *macState, msgWithMAC []byte) int {
	n := len(msgWithMAC) - macBytes
	var want [macBytes]byte
	for i := range k.keys {
		h := st.hs[i]
		h.Reset()
		h.Write(k.context)
		h.Write(msgWithMAC[:n])
		sum := h.Sum(st.sum[:0])
		copy(want[:], sum[:macBytes])
		if subtle.ConstantTimeCompare(want[:], msgWithMAC[n:]) == 1 {
			return i
		}
	}
	return -1
}

// tokenCacheSlots is how many verified tokens a keyring remembers: a
// returning client's token is then found by one hash and one comparison
// instead of an HMAC. Only tokens whose MAC verified are cached, by their
// exact text, so a hit is exactly as trustworthy as a verification;
// lifetimes are still checked on every request. At most about 330 KiB.
const tokenCacheSlots = 4096

// tokenCache is a direct-mapped cache of verified tokens; a slot holds the
// last token that hashed to it.
type tokenCache struct {
	seed  maphash.Seed
	slots [tokenCacheSlots]atomic.Pointer[cachedToken]
}

type cachedToken struct {
	text [tokenMaxChars]byte
	n    uint8
	key  uint8
	tok  Token
}

func (c *tokenCache) slot(s string) *atomic.Pointer[cachedToken] {
	return &c.slots[maphash.String(c.seed, s)%tokenCacheSlots]
}

func (c *tokenCache) get(kind Kind, s string) (Token, int, bool) {
	if e := c.slot(s).Load(); e != nil && e.tok.Kind == kind && string(e.text[:e.n]) == s {
		return e.tok, int(e.key), true
	}
	return Token{}, 0, false
}

func (c *tokenCache) put(s string, t Token, key int) {
	if len(s) > tokenMaxChars || key > 255 {
		return
	}
	e := &cachedToken{n: uint8(len(s)), key: uint8(key), tok: t}
	copy(e.text[:], s)
	c.slot(s).Store(e)
}
