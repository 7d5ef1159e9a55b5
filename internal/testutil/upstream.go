package testutil

import (
	"reflect"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// SetAvailable marks u healthy or unhealthy as an active health check
// would. Upstream.setHealthy is unexported in Caddy v2.11.9, and so is the
// request count that makes an upstream Full, so this sets the flag behind
// Healthy directly, and checks that it took.
func SetAvailable(t testing.TB, u *reverseproxy.Upstream, on bool) {
	t.Helper()
	f := reflect.ValueOf(u).Elem().FieldByName("unhealthy")
	if !f.IsValid() || f.Type() != reflect.TypeOf(atomic.Int32{}) {
		t.Fatal("reverseproxy.Upstream has no 'unhealthy atomic.Int32' field; update SetAvailable for this Caddy version")
	}
	flag := (*atomic.Int32)(unsafe.Pointer(f.UnsafeAddr()))
	if on {
		flag.Store(0)
	} else {
		flag.Store(1)
	}
	if u.Available() != on {
		t.Fatalf("Available() = %v after SetAvailable(%v)", u.Available(), on)
	}
}
