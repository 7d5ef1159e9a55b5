package affinity

import (
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func TestClientKeyMaskIPv4(t *testing.T) {
	ip := netip.MustParseAddr("10.1.2.203")
	for _, tc := range []struct {
		bits int
		want string
	}{
		{0, "10.1.2.203/32"}, // default
		{-5, "10.1.2.203/32"},
		{32, "10.1.2.203/32"},
		{40, "10.1.2.203/32"},
		{24, "10.1.2.0/24"},
		{20, "10.1.0.0/20"},
		{25, "10.1.2.128/25"},
		{1, "0.0.0.0/1"},
	} {
		k := MaskClient(ip, tc.bits, 64)
		if got := k.String(); got != tc.want {
			t.Errorf("bits %d: got %s, want %s", tc.bits, got, tc.want)
		}
		if !k.IsValid() || !k.Is4() {
			t.Errorf("bits %d: not a valid IPv4 key", tc.bits)
		}
	}
	a := MaskClient(netip.MustParseAddr("10.1.2.3"), 24, 64)
	b := MaskClient(netip.MustParseAddr("10.1.2.250"), 24, 64)
	c := MaskClient(netip.MustParseAddr("10.1.3.3"), 24, 64)
	if a != b || a.Hash() != b.Hash() {
		t.Errorf("same /24 gave different keys: %v %v", a, b)
	}
	if a == c || a.Hash() == c.Hash() {
		t.Errorf("different /24s gave the same key")
	}
	if a.Bits() != 24 || a.Addr() != netip.MustParseAddr("10.1.2.0") || a.Prefix() != netip.MustParsePrefix("10.1.2.0/24") {
		t.Errorf("accessors: %d %v %v", a.Bits(), a.Addr(), a.Prefix())
	}
}

func TestClientKeyMaskIPv6(t *testing.T) {
	ip := netip.MustParseAddr("2001:db8:1:2:3:4:5:6")
	for _, tc := range []struct {
		bits int
		want string
	}{
		{0, "2001:db8:1:2::/64"}, // default
		{64, "2001:db8:1:2::/64"},
		{48, "2001:db8:1::/48"},
		{61, "2001:db8:1::/61"},
		{128, "2001:db8:1:2:3:4:5:6/128"},
		{200, "2001:db8:1:2:3:4:5:6/128"},
	} {
		k := MaskClient(ip, 32, tc.bits)
		if got := k.String(); got != tc.want {
			t.Errorf("bits %d: got %s, want %s", tc.bits, got, tc.want)
		}
		if !k.IsValid() || k.Is4() {
			t.Errorf("bits %d: not a valid IPv6 key", tc.bits)
		}
	}
	a := MaskClient(netip.MustParseAddr("2001:db8:1:2::1"), 32, 64)
	b := MaskClient(netip.MustParseAddr("2001:db8:1:2:ffff::9"), 32, 64)
	if a != b || a.Hash() != b.Hash() {
		t.Errorf("same /64 gave different keys")
	}
	// The zone is not part of the client.
	z := MaskClient(netip.MustParseAddr("fe80::1%eth0"), 32, 128)
	if z != MaskClient(netip.MustParseAddr("fe80::1"), 32, 128) || z.String() != "fe80::1/128" {
		t.Errorf("zone kept: %v", z)
	}
}

func TestClientKeyMaskV4Mapped(t *testing.T) {
	mapped := MaskClient(netip.MustParseAddr("::ffff:10.1.2.3"), 24, 64)
	plain := MaskClient(netip.MustParseAddr("10.1.2.3"), 24, 64)
	if mapped != plain || mapped.Hash() != plain.Hash() || !mapped.Is4() || mapped.String() != "10.1.2.0/24" {
		t.Errorf("v4-mapped: %v vs %v", mapped, plain)
	}
	// IPv4 and IPv6 keys never collide, even for the all-zero address.
	v4 := MaskClient(netip.MustParseAddr("0.0.0.0"), 32, 128)
	v6 := MaskClient(netip.MustParseAddr("::"), 32, 128)
	if v4 == v6 || v4.Hash() == v6.Hash() {
		t.Errorf("families collide")
	}
}

func TestClientKeyInvalid(t *testing.T) {
	k := MaskClient(netip.Addr{}, 24, 64)
	if k.IsValid() || k != (ClientKey{}) || k.String() != "invalid" || k.Bits() != -1 || k.Addr().IsValid() || k.Prefix().IsValid() {
		t.Errorf("invalid address gave %v", k)
	}
	if k.Hash() != (ClientKey{}).Hash() {
		t.Errorf("invalid key hash not stable")
	}
	if b, err := k.MarshalText(); err != nil || len(b) != 0 {
		t.Errorf("MarshalText of invalid key: %q %v", b, err)
	}
}

func TestClientKeyParse(t *testing.T) {
	for _, s := range []string{"10.1.2.0/24", "2001:db8::/64", "10.1.2.3/32", "::/0", "0.0.0.0/0"} {
		k, err := ParseClientKey(s)
		if err != nil || k.String() != s {
			t.Errorf("ParseClientKey(%q) = %v, %v", s, k, err)
		}
	}
	for in, want := range map[string]string{
		"10.1.2.77/24":         "10.1.2.0/24",
		"::ffff:10.1.2.77/120": "10.1.2.0/24",
		"::ffff:10.1.2.77/64":  "::/64",
		"10.9.8.7":             "10.9.8.7/32",
		"2001:db8::1":          "2001:db8::1/128",
		" 2001:db8:0:1::5/64 ": "2001:db8:0:1::/64",
	} {
		k, err := ParseClientKey(in)
		if err != nil || k.String() != want {
			t.Errorf("ParseClientKey(%q) = %v, %v; want %s", in, k, err, want)
		}
	}
	for _, s := range []string{"", "x", "10.1.2.0/33", "fe80::1%eth0/64", "/", "1.2.3.4/-1"} {
		if _, err := ParseClientKey(s); err == nil {
			t.Errorf("ParseClientKey(%q): no error", s)
		}
	}
	// MaskClient and ParseClientKey agree, so an admin request can name a
	// session by the string the listing showed.
	k := MaskClient(netip.MustParseAddr("192.0.2.77"), 24, 64)
	if p, err := ParseClientKey(k.String()); err != nil || p != k {
		t.Errorf("round trip of %v: %v, %v", k, p, err)
	}

	b, err := json.Marshal(map[string]ClientKey{"c": k})
	if err != nil || string(b) != `{"c":"192.0.2.0/24"}` {
		t.Errorf("JSON: %s, %v", b, err)
	}
	var back map[string]ClientKey
	if err := json.Unmarshal(b, &back); err != nil || back["c"] != k {
		t.Errorf("JSON round trip: %v, %v", back, err)
	}
}

func TestClientKeyParseHostAddr(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":                  "192.0.2.1",
		"192.0.2.1:8080":             "192.0.2.1",
		"192.0.2.1:":                 "192.0.2.1",
		" 192.0.2.1:443 ":            "192.0.2.1",
		"2001:db8::1":                "2001:db8::1",
		"[2001:db8::1]:443":          "2001:db8::1",
		"[2001:db8::1]":              "2001:db8::1",
		"[fe80::1%eth0]:80":          "fe80::1",
		"fe80::1%eth0":               "fe80::1",
		"::ffff:192.0.2.1":           "192.0.2.1",
		"[::ffff:192.0.2.1]:1234":    "192.0.2.1",
		"::1":                        "::1",
		"[::]:0":                     "::",
		"[2001:db8::1]:65535":        "2001:db8::1",
		"[2001:db8::1]:":             "2001:db8::1",
		"2001:db8:1:2:3:4:5:6":       "2001:db8:1:2:3:4:5:6",
		"[::ffff:c000:201%x]:1":      "192.0.2.1",
		"0.0.0.0:1":                  "0.0.0.0",
		"255.255.255.255:65535":      "255.255.255.255",
		"[2001:db8::1%25en0]:65535":  "2001:db8::1",
		"2001:0db8:0000::0001":       "2001:db8::1",
		"[2001:db8::ffff:1.2.3.4]:5": "2001:db8::ffff:102:304",
	} {
		ip, ok := ParseHostAddr(in)
		if !ok || ip.String() != want {
			t.Errorf("ParseHostAddr(%q) = %v, %v; want %s", in, ip, ok, want)
		}
	}
	for _, in := range []string{
		"", " ", "example.com", "example.com:80", "192.0.2.1:http", "192.0.2.1:65536",
		"192.0.2.1:1234567", "[2001:db8::1", "[2001:db8::1]x", "[2001:db8::1]:x",
		"2001:db8::1]:80", "[192.0.2.1:80]", "192.0.2.1%eth0", "192.0.2", "256.0.0.1", "unix//run/caddy.sock",
		"@", "/tmp/sock", ":80", "[]:80", "[]", "[", "]", "%", "1.2.3.4:-1", "1.2.3.4:+1", "\x00", "::1::2",
	} {
		if ip, ok := ParseHostAddr(in); ok {
			t.Errorf("ParseHostAddr(%q) = %v, want failure", in, ip)
		}
	}
}

func FuzzClientKey(f *testing.F) {
	for _, s := range []string{"192.0.2.1:80", "[fe80::1%eth0]:80", "::ffff:1.2.3.4", "garbage", "[", "1.2.3.4/24"} {
		f.Add(s, 24, 64)
	}
	f.Fuzz(func(t *testing.T, s string, v4, v6 int) {
		ParseClientKey(s)
		ip, ok := ParseHostAddr(s)
		if !ok {
			return
		}
		k := MaskClient(ip, v4, v6)
		if !k.IsValid() {
			t.Fatalf("valid address %v gave invalid key", ip)
		}
		p, err := ParseClientKey(k.String())
		if err != nil || p != k || p.Hash() != k.Hash() {
			t.Fatalf("round trip of %v: %v, %v", k, p, err)
		}
	})
}

// The IPv4 fast path of ParseHostAddr must agree with the general path on
// every input.
func FuzzParseHostAddrFastPath(f *testing.F) {
	for _, s := range []string{"192.0.2.1", "192.0.2.1:80", "1.2.3.4:", "01.2.3.4", "1.2.3.256", "1.2.3.4.5",
		"1.2.3", "1.2.3.4:65536", "1.2.3.4:x", "255.255.255.255:0", " 1.2.3.4", "1.2.3.4 ", "1.2.3.0004", "0.0.0.0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, gotOK := ParseHostAddr(s)
		want, wantOK := parseHostAddr(s)
		if got != want || gotOK != wantOK {
			t.Fatalf("ParseHostAddr(%q) = %v, %v; the general path says %v, %v", s, got, gotOK, want, wantOK)
		}
	})
}

func BenchmarkClientKeyMask(b *testing.B) {
	v4 := netip.MustParseAddr("192.0.2.77")
	v6 := netip.MustParseAddr("2001:db8:1:2:3:4:5:6")
	b.Run("IPv4", func(b *testing.B) {
		b.ReportAllocs()
		var h uint64
		for b.Loop() {
			h += MaskClient(v4, 24, 64).Hash()
		}
		_ = h
	})
	b.Run("IPv6", func(b *testing.B) {
		b.ReportAllocs()
		var h uint64
		for b.Loop() {
			h += MaskClient(v6, 24, 64).Hash()
		}
		_ = h
	})
	b.Run("ParseHostAddr", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ParseHostAddr("[2001:db8::1]:443")
		}
	})
}

func TestHashAddrIsKeyHash(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 20000 {
		var b [16]byte
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		var ip netip.Addr
		switch rng.IntN(3) {
		case 0:
			ip = netip.AddrFrom4([4]byte(b[:4]))
		case 1:
			ip = netip.AddrFrom16(b)
		default:
			ip = netip.AddrFrom16(netip.AddrFrom4([4]byte(b[:4])).As16()) // ::ffff:a.b.c.d
		}
		v4, v6 := rng.IntN(36)-2, rng.IntN(132)-2
		if got, want := HashAddr(ip, v4, v6), MaskClient(ip, v4, v6).Hash(); got != want {
			t.Fatalf("HashAddr(%v, %d, %d) = %x, want the key's hash %x", ip, v4, v6, got, want)
		}
	}
}

func TestHashHostAddrIsParseThenHash(t *testing.T) {
	for _, s := range []string{"10.1.2.3", "10.1.2.3:80", "10.1.2.3:", "255.255.255.255:65535", "[2001:db8::1]:443",
		"2001:db8::1", "::ffff:10.1.2.3", "[::ffff:10.1.2.3]:1", "fe80::1%eth0", "10.1.2", "10.1.2.3.4", "010.1.2.3",
		"10.1.2.3:99999", "host:80", "", "@", "/run/caddy.sock"} {
		for _, v4 := range []int{0, 8, 24, 32} {
			got, gotOK := HashHostAddr(s, v4, 48)
			ip, ok := ParseHostAddr(s)
			var want uint64
			if ok {
				want = HashAddr(ip, v4, 48)
			}
			if got != want || gotOK != ok {
				t.Errorf("HashHostAddr(%q, %d) = %x, %v; want %x, %v", s, v4, got, gotOK, want, ok)
			}
		}
	}
}
