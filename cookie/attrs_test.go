package cookie

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestAppendSetCookieSecureSameSite(t *testing.T) {
	for _, tc := range []struct {
		secure, sameSite string
		tlsRequest       bool
		want             string
	}{
		{"auto", "auto", false, "; SameSite=Lax"},
		{"auto", "auto", true, "; Secure; SameSite=None"},
		{"always", "auto", false, "; Secure; SameSite=None"},
		{"always", "auto", true, "; Secure; SameSite=None"},
		{"never", "auto", false, "; SameSite=Lax"},
		{"never", "auto", true, "; SameSite=Lax"},
		{"auto", "lax", false, "; SameSite=Lax"},
		{"auto", "lax", true, "; Secure; SameSite=Lax"},
		{"auto", "strict", false, "; SameSite=Strict"},
		{"auto", "strict", true, "; Secure; SameSite=Strict"},
		{"auto", "none", false, "; SameSite=None"},
		{"auto", "none", true, "; Secure; SameSite=None"},
		{"always", "lax", false, "; Secure; SameSite=Lax"},
		{"always", "strict", true, "; Secure; SameSite=Strict"},
		{"always", "none", false, "; Secure; SameSite=None"},
		{"never", "lax", true, "; SameSite=Lax"},
		{"never", "strict", true, "; SameSite=Strict"},
		{"", "", true, "; Secure; SameSite=None"}, // unset means auto
		{"", "", false, "; SameSite=Lax"},
	} {
		a := Attrs{Secure: tc.secure, SameSite: tc.sameSite}
		got := string(a.AppendSetCookie(nil, "n", "v", tc.tlsRequest))
		if got != "n=v"+tc.want {
			t.Errorf("secure %q same_site %q tls %v: %q, want %q", tc.secure, tc.sameSite, tc.tlsRequest, got, "n=v"+tc.want)
		}
	}
}

func TestAppendSetCookieAttributes(t *testing.T) {
	for _, tc := range []struct {
		name string
		a    Attrs
		want string
	}{
		{"minimal", Attrs{Secure: "never", SameSite: "lax"}, "aff=VAL; SameSite=Lax"},
		{"path", Attrs{Path: "/", Secure: "never", SameSite: "lax"}, "aff=VAL; Path=/; SameSite=Lax"},
		{"domain", Attrs{Domain: "example.com", Secure: "never", SameSite: "lax"}, "aff=VAL; Domain=example.com; SameSite=Lax"},
		{"http only", Attrs{HTTPOnly: true, Secure: "never", SameSite: "lax"}, "aff=VAL; HttpOnly; SameSite=Lax"},
		{"max age whole seconds", Attrs{MaxAge: time.Hour, Secure: "never", SameSite: "lax"}, "aff=VAL; Max-Age=3600; SameSite=Lax"},
		{"max age rounds up", Attrs{MaxAge: 1500 * time.Millisecond, Secure: "never", SameSite: "lax"}, "aff=VAL; Max-Age=2; SameSite=Lax"},
		{"max age under a second is one", Attrs{MaxAge: time.Nanosecond, Secure: "never", SameSite: "lax"}, "aff=VAL; Max-Age=1; SameSite=Lax"},
		{"max age just over a minute", Attrs{MaxAge: time.Minute + time.Millisecond, Secure: "never", SameSite: "lax"}, "aff=VAL; Max-Age=61; SameSite=Lax"},
		{"zero max age is a session cookie", Attrs{MaxAge: 0, Secure: "never", SameSite: "lax"}, "aff=VAL; SameSite=Lax"},
		{"everything", Attrs{Path: "/app", Domain: "example.com", MaxAge: 7 * 24 * time.Hour, HTTPOnly: true, Secure: "always", SameSite: "strict"},
			"aff=VAL; Path=/app; Domain=example.com; Max-Age=604800; HttpOnly; Secure; SameSite=Strict"},
	} {
		got := string(tc.a.AppendSetCookie([]byte("X"), "aff", "VAL", false))
		if got != "X"+tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, "X"+tc.want)
		}
		// What we write must read back as the same cookie.
		h := http.Header{"Set-Cookie": {got[1:]}}
		cs := (&http.Response{Header: h}).Cookies()
		if len(cs) != 1 || cs[0].Name != "aff" || cs[0].Value != "VAL" || cs[0].Path != tc.a.Path || cs[0].HttpOnly != tc.a.HTTPOnly {
			t.Errorf("%s: net/http reads %q as %+v", tc.name, got[1:], cs)
		}
	}
}

func TestSecureRequest(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tls     bool
		trusted bool
		xfp     []string
		want    bool
	}{
		{"plain", false, false, nil, false},
		{"tls", true, false, nil, true},
		{"tls, untrusted xfp http", true, false, []string{"http"}, true},
		{"untrusted xfp https", false, false, []string{"https"}, false},
		{"trusted xfp https", false, true, []string{"https"}, true},
		{"trusted xfp HTTPS", false, true, []string{" HTTPS "}, true},
		{"trusted xfp http", false, true, []string{"http"}, false},
		{"trusted, no xfp", false, true, nil, false},
		{"trusted, last xfp wins (https)", false, true, []string{"http", "https"}, true},
		{"trusted, last xfp wins (http)", false, true, []string{"https", "http"}, false},
		{"trusted, bogus xfp", false, true, []string{"httpsx"}, false},
	} {
		r := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
		if tc.tls {
			r.TLS = &tls.ConnectionState{}
		}
		for _, v := range tc.xfp {
			r.Header.Add("X-Forwarded-Proto", v)
		}
		if got := secureRequest(r, tc.trusted); got != tc.want {
			t.Errorf("%s: secureRequest = %v, want %v", tc.name, got, tc.want)
		}
	}
}
