package affinity

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"

	"github.com/cespare/xxhash/v2"
)

// Default prefix lengths of client keys: each IPv4 address is its own
// client, and an IPv6 client is its /64, the usual size of one subscriber's
// network (privacy addresses rotate within it).
const (
	DefaultIPv4Bits = 32
	DefaultIPv6Bits = 64
)

// ClientKey identifies a client for affinity: its address masked to a
// prefix. It is a small comparable value, usable as a map key. The zero
// value is the invalid key that MaskClient returns for an invalid address.
type ClientKey struct {
	addr [16]byte // masked address; an IPv4 one in addr[:4]
	bits uint8    // prefix length
	fam  uint8    // 4, 6, famNamed, or 0 for invalid
}

// famNamed marks the key of a value the client chose (a header's), held as
// a 128-bit hash of the value, never the value.
const famNamed = 'n'

// famStored marks the key a shared store (a Backing) keeps an entry under:
// a keyed hash of the client's key. bits is 1 when its first four bytes
// tag the client's network, 0 when it has none.
const famStored = 's'

// NamedKey returns the key of a session named by value, such as the value
// of a header sticky_header hashes: two 64-bit xxHash digests of it, the
// same in every process (every instance routes a value alike), so the
// value itself is never kept.
func NamedKey(value string) ClientKey {
	k := ClientKey{fam: famNamed, bits: 128}
	d := xxhash.NewWithSeed(namedSeed)
	_, _ = d.WriteString(value)
	binary.BigEndian.PutUint64(k.addr[:8], xxhash.Sum64String(value))
	binary.BigEndian.PutUint64(k.addr[8:], d.Sum64())
	return k
}

const namedSeed = 0x6166_6669_6e69_7479 // "affinity"

// StoredKey returns the key a Backing keeps an entry under, made of the
// first 16 bytes of digest (a keyed hash of the client's key). With network
// set, the first four bytes are a keyed hash of the client's network, so
// the per-network limit of the table caching the store still holds.
func StoredKey(digest []byte, network bool) ClientKey {
	k := ClientKey{fam: famStored}
	if network {
		k.bits = 1
	}
	copy(k.addr[:], digest)
	return k
}

// Stored reports whether k is a StoredKey.
func (k ClientKey) Stored() bool { return k.fam == famStored }

// AppendBinary appends k's family, prefix length and the 16 bytes of its address
// or hash to b: the input of a store's keyed hash.
func (k ClientKey) AppendBinary(b []byte) []byte {
	b = append(b, k.fam, k.bits)
	return append(b, k.addr[:]...)
}

// Network appends the network of an IP key (its IPv4 /24 or IPv6 /48 and
// family) to b and reports whether k has one; named and stored keys have
// none of their own.
func (k ClientKey) Network(b []byte) ([]byte, bool) {
	var n [8]byte
	if !k.network(&n) {
		return b, false
	}
	return append(b, n[:]...), true
}

// network writes the network of an IP key to n.
func (k ClientKey) network(n *[8]byte) bool {
	switch k.fam {
	case 4:
		a := binary.BigEndian.Uint32(k.addr[:4]) & ^(^uint32(0) >> min(k.bits, networkBitsV4))
		binary.BigEndian.PutUint32(n[:4], a)
		n[4] = 4
	case 6:
		hi := binary.BigEndian.Uint64(k.addr[:8]) & ^(^uint64(0) >> min(k.bits, networkBitsV6))
		binary.BigEndian.PutUint64(n[:], hi)
		// The low 16 bits of a /48 are zero: room for the family.
		n[7] = 6
	default:
		return false
	}
	return true
}

// namedKeyOf is the named key made of the first 16 bytes of digest.
func namedKeyOf(digest []byte) ClientKey {
	k := ClientKey{fam: famNamed, bits: 128}
	copy(k.addr[:], digest)
	return k
}

// MaskClient returns the key of the client at ip: the address masked to
// v4bits if it is IPv4 (including IPv4-mapped IPv6, ::ffff:a.b.c.d) or to
// v6bits otherwise. Its zone is ignored. A prefix length of zero or less
// selects the default (DefaultIPv4Bits, DefaultIPv6Bits); one beyond the
// address length means the whole address.
func MaskClient(ip netip.Addr, v4bits, v6bits int) ClientKey {
	switch {
	case !ip.IsValid():
		return ClientKey{}
	case ip.Is4() || ip.Is4In6():
		return makeKey4(ip.Unmap().As4(), clampBits(v4bits, DefaultIPv4Bits, 32))
	default:
		return makeKey6(ip.As16(), clampBits(v6bits, DefaultIPv6Bits, 128))
	}
}

func clampBits(b, def, max int) int {
	if b <= 0 {
		return def
	}
	return min(b, max)
}

// makeKey4 returns the key of a masked to its first n bits (0 <= n <= 32).
func makeKey4(a [4]byte, n int) ClientKey {
	k := ClientKey{bits: uint8(n), fam: 4}
	v := binary.BigEndian.Uint32(a[:]) & ^(^uint32(0) >> n) // >> 32 is 0 in Go
	binary.BigEndian.PutUint32(k.addr[:4], v)
	return k
}

// makeKey6 returns the key of a masked to its first n bits (0 <= n <= 128).
func makeKey6(a [16]byte, n int) ClientKey {
	k := ClientKey{bits: uint8(n), fam: 6}
	hi, lo := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])
	if n <= 64 {
		hi &= ^(^uint64(0) >> n)
		lo = 0
	} else {
		lo &= ^(^uint64(0) >> (n - 64))
	}
	binary.BigEndian.PutUint64(k.addr[:8], hi)
	binary.BigEndian.PutUint64(k.addr[8:], lo)
	return k
}

// ClientKeyFromPrefix returns the key of the clients in p: its address
// masked to its length. An IPv4-mapped IPv6 prefix of length 96 or more is
// taken as the IPv4 prefix it maps. It returns the invalid key if p is
// invalid.
func ClientKeyFromPrefix(p netip.Prefix) ClientKey {
	if !p.IsValid() {
		return ClientKey{}
	}
	ip, n := p.Addr(), p.Bits()
	if ip.Is4In6() && n >= 96 {
		ip, n = ip.Unmap(), n-96
	}
	if ip.Is4() {
		return makeKey4(ip.As4(), n)
	}
	return makeKey6(ip.As16(), n)
}

// ParseClientKey parses the form String returns, a prefix like
// "10.1.2.0/24" or "2001:db8::/64" (host bits are cleared), or a bare
// address, taken as a full-length prefix. It is meant for admin requests
// naming a session.
func ParseClientKey(s string) (ClientKey, error) {
	s = strings.TrimSpace(s)
	if h, ok := strings.CutPrefix(s, namedPrefix); ok {
		var k ClientKey
		if n, err := hex.Decode(k.addr[:], []byte(h)); err != nil || n != len(k.addr) || len(h) != 2*len(k.addr) {
			return ClientKey{}, errors.New("affinity: invalid named key " + quoteShort(s))
		}
		k.fam, k.bits = famNamed, 128
		return k, nil
	}
	if h, ok := strings.CutPrefix(s, storedPrefix); ok {
		var b [17]byte
		if n, err := hex.Decode(b[:], []byte(h)); err != nil || n != len(b) || len(h) != 2*len(b) || b[0] > 1 {
			return ClientKey{}, errors.New("affinity: invalid stored key " + quoteShort(s))
		}
		return StoredKey(b[1:], b[0] == 1), nil
	}
	if strings.IndexByte(s, '/') >= 0 {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return ClientKey{}, err
		}
		return ClientKeyFromPrefix(p), nil
	}
	ip, ok := ParseHostAddr(s)
	if !ok {
		return ClientKey{}, errors.New("affinity: invalid client key " + quoteShort(s))
	}
	return ClientKeyFromPrefix(netip.PrefixFrom(ip, ip.BitLen())), nil
}

// quoteShort quotes s for an error message, shortened so garbage input
// cannot blow up logs.
func quoteShort(s string) string {
	const maxLen = 64
	if len(s) > maxLen {
		s = s[:maxLen] + "..."
	}
	return `"` + strings.ToValidUTF8(s, "?") + `"`
}

// IsValid reports whether k is the key of a client address.
func (k ClientKey) IsValid() bool { return k.fam != 0 }

// Is4 reports whether k is an IPv4 key.
func (k ClientKey) Is4() bool { return k.fam == 4 }

// Named reports whether k is a NamedKey.
func (k ClientKey) Named() bool { return k.fam == famNamed }

// Bits returns the prefix length of k, or -1 if it is invalid.
func (k ClientKey) Bits() int {
	if k.fam == 0 {
		return -1
	}
	return int(k.bits)
}

// Addr returns the masked address of k (the zero Addr if k is invalid).
func (k ClientKey) Addr() netip.Addr {
	switch k.fam {
	case 4:
		return netip.AddrFrom4([4]byte(k.addr[:4]))
	case 6:
		return netip.AddrFrom16(k.addr)
	}
	return netip.Addr{}
}

// Prefix returns k as a prefix, such as 10.1.2.0/24 (the zero Prefix if k
// is invalid or named).
func (k ClientKey) Prefix() netip.Prefix {
	if k.fam == 0 || k.fam == famNamed || k.fam == famStored {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(k.Addr(), int(k.bits))
}

// String returns k as a prefix, such as "10.1.2.0/24" or "2001:db8::/64",
// or "invalid" for the invalid key.
func (k ClientKey) String() string {
	switch k.fam {
	case 0:
		return "invalid"
	case famNamed:
		return namedPrefix + hex.EncodeToString(k.addr[:])
	case famStored:
		return storedPrefix + hex.EncodeToString(append([]byte{k.bits}, k.addr[:]...))
	}
	return k.Prefix().String()
}

// storedPrefix starts the String of a StoredKey: its network flag and hash
// in hex (34 digits), as a store names the entry.
const storedPrefix = "stored:"

// namedPrefix starts the String of a NamedKey: its hash in hex.
const namedPrefix = "key:"

// MarshalText implements encoding.TextMarshaler (JSON uses it, so keys
// print as prefixes in admin responses).
func (k ClientKey) MarshalText() ([]byte, error) {
	switch k.fam {
	case 0:
		return []byte{}, nil
	case famNamed, famStored:
		return []byte(k.String()), nil
	}
	return k.Prefix().AppendTo(nil), nil
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseClientKey;
// empty text is the invalid key.
func (k *ClientKey) UnmarshalText(text []byte) error {
	if len(text) == 0 {
		*k = ClientKey{}
		return nil
	}
	v, err := ParseClientKey(string(text))
	if err != nil {
		return err
	}
	*k = v
	return nil
}

// Hash returns the hash to look k up in a Table: xxHash64 with fixed seeds
// of k's masked address, prefix length and family. It is the same in every
// process, so every instance and both proxies route k alike.
func (k ClientKey) Hash() uint64 {
	// Whole 64-bit words through the inlined xxh64: no call, no buffer.
	meta := uint64(k.bits)<<8 | uint64(k.fam)
	switch k.fam {
	case 4:
		return hash4(binary.BigEndian.Uint32(k.addr[:4]), k.bits)
	case 6, famNamed, famStored:
		hi, lo := binary.BigEndian.Uint64(k.addr[:8]), binary.BigEndian.Uint64(k.addr[8:])
		return xxh64Uint64(lo, xxh64Uint64(hi, meta))
	}
	return xxh64Uint64(0, 0)
}

// hash4 is the Hash of an IPv4 key: masked address a, prefix length bits.
func hash4(a uint32, bits uint8) uint64 {
	return xxh64Uint64(uint64(a)<<16|uint64(bits)<<8|4, 0)
}

// HashAddr is MaskClient(ip, v4bits, v6bits).Hash(), without building the
// key for an IPv4 address: the request path of a pure hash needs no more.
func HashAddr(ip netip.Addr, v4bits, v6bits int) uint64 {
	if ip.Is4() {
		n := clampBits(v4bits, DefaultIPv4Bits, 32)
		a := ip.As4()
		return hash4(binary.BigEndian.Uint32(a[:]) & ^(^uint32(0)>>n), uint8(n))
	}
	return MaskClient(ip, v4bits, v6bits).Hash()
}

// HashHostAddr is HashAddr of ParseHostAddr(s), in one pass for an IPv4
// address, the common case on the request path.
func HashHostAddr(s string, v4bits, v6bits int) (uint64, bool) {
	if a, rest, ok := parseIPv4(s); ok && (rest == "" || validPort(rest, true)) {
		n := clampBits(v4bits, DefaultIPv4Bits, 32)
		return hash4(binary.BigEndian.Uint32(a[:]) & ^(^uint32(0)>>n), uint8(n)), true
	}
	ip, ok := parseHostAddr(s)
	if !ok {
		return 0, false
	}
	return HashAddr(ip, v4bits, v6bits), true
}

// ParseHostAddr parses the IP address of a "host:port", "[host]:port",
// "[host]" or bare address string, such as a connection's remote address.
// It strips an IPv6 zone and unmaps IPv4-mapped IPv6 addresses. It reports
// false for anything else: host names, Unix socket paths, garbage.
func ParseHostAddr(s string) (netip.Addr, bool) {
	// Most client addresses are IPv4, with or without a port: read those
	// in one pass (this is on every request of an IP policy).
	if a, rest, ok := parseIPv4(s); ok && validPort(rest, true) {
		return netip.AddrFrom4(a), true
	}
	return parseHostAddr(s)
}

// parseIPv4 reads a dotted-quad IPv4 address at the start of s, as strictly
// as netip.ParseAddr (four fields, no leading zeros, each at most 255), and
// returns what follows it.
func parseIPv4(s string) (a [4]byte, rest string, ok bool) {
	i := 0
	for f := range 4 {
		if f > 0 {
			if i >= len(s) || s[i] != '.' {
				return a, "", false
			}
			i++
		}
		start, v := i, 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' && i-start < 3 {
			v = v*10 + int(s[i]-'0')
			i++
		}
		if n := i - start; n == 0 || v > 255 || (n > 1 && s[start] == '0') {
			return a, "", false
		}
		a[f] = byte(v)
	}
	return a, s[i:], true
}

// parseHostAddr is ParseHostAddr for every other form.
func parseHostAddr(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Addr{}, false
	}
	host := s
	switch {
	case s[0] == '[':
		end := strings.IndexByte(s, ']')
		if end < 0 || !validPort(s[end+1:], true) {
			return netip.Addr{}, false
		}
		host = s[1:end]
	case strings.Count(s, ":") == 1:
		// IPv4 (or a name) with a port; IPv6 has at least two colons.
		i := strings.IndexByte(s, ':')
		if !validPort(s[i:], false) {
			return netip.Addr{}, false
		}
		host = s[:i]
	}
	if strings.IndexByte(host, ':') >= 0 {
		if i := strings.IndexByte(host, '%'); i >= 0 {
			host = host[:i]
		}
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	return ip.Unmap(), true
}

// validPort reports whether rest is ":" followed by a decimal port of at
// most 65535 (an empty port is accepted, as net.SplitHostPort does), or is
// empty when optional.
func validPort(rest string, optional bool) bool {
	if rest == "" {
		return optional
	}
	if rest[0] != ':' || len(rest) > 6 {
		return false
	}
	n := 0
	for _, c := range rest[1:] {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n <= 65535
}
