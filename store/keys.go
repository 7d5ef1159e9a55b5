package store

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-affinity/caddy-affinity/affinity"
)

// keyer makes stored keys: HMAC-SHA256 under the store's key, of the
// client's key and, for an IP key, of its network.
type keyer struct {
	macs sync.Pool // of hash.Hash, reset before use
}

func newKeyer(secret []byte) *keyer {
	k := &keyer{}
	k.macs.New = func() any { return hmac.New(sha256.New, secret) }
	return k
}

// key returns the stored key of ck: 16 bytes of the HMAC of ck, whose
// first 4 are the HMAC of its network when it has one, so that the table
// caching the store still limits entries per network.
func (k *keyer) key(ck affinity.ClientKey) affinity.ClientKey {
	if ck.Stored() {
		return ck
	}
	mac := k.macs.Get().(hash.Hash)
	defer k.macs.Put(mac)
	var in [32]byte
	var sum, netSum [sha256.Size]byte
	mac.Reset()
	mac.Write(ck.AppendBinary(append(in[:0], 'k')))
	mac.Sum(sum[:0])
	if n, ok := ck.Network(append(in[:0], 'n')); ok {
		mac.Reset()
		mac.Write(n)
		mac.Sum(netSum[:0])
		copy(sum[:4], netSum[:4])
		return affinity.StoredKey(sum[:16], true)
	}
	return affinity.StoredKey(sum[:16], false)
}

// The names of stored keys: the table's prefix, then the stored key's
// network flag and hash in hex, as affinity.ClientKey.String shows them
// after "stored:".
const storedPrefix = "stored:"

func redisName(prefix string, k affinity.ClientKey) string {
	return prefix + k.String()[len(storedPrefix):]
}

// parseName returns the stored key a Redis key names, under prefix.
func parseName(prefix, name string) (affinity.ClientKey, bool) {
	if len(name) <= len(prefix) || name[:len(prefix)] != prefix {
		return affinity.ClientKey{}, false
	}
	k, err := affinity.ParseClientKey(storedPrefix + name[len(prefix):])
	return k, err == nil && k.Stored()
}

// Values are upstream IDs in hex, then, for a table with a lifetime, a
// dot and when the entry was first stored (Unix seconds, hex).
func formatID(id uint64) string { return strconv.FormatUint(id, 16) }

func formatValue(id uint64, born time.Time) string {
	if born.IsZero() {
		return formatID(id)
	}
	return formatID(id) + "." + strconv.FormatInt(born.Unix(), 16)
}

func parseID(v string) (uint64, bool) {
	id, err := strconv.ParseUint(v, 16, 64)
	return id, err == nil
}

func parseValue(v string) (id uint64, born time.Time, ok bool) {
	idPart, bornPart, hasBorn := strings.Cut(v, ".")
	if id, ok = parseID(idPart); !ok {
		return 0, time.Time{}, false
	}
	if hasBorn {
		sec, err := strconv.ParseInt(bornPart, 16, 64)
		if err != nil {
			return 0, time.Time{}, false
		}
		born = time.Unix(sec, 0)
	}
	return id, born, true
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := cryptoRand(b); err != nil {
		panic(err) // crypto/rand does not fail on supported systems
	}
	return hex.EncodeToString(b)
}
