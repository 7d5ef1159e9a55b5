package parse_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-affinity/caddy-affinity/internal/parse"
)

// at returns a dispenser over input with its cursor on the first token,
// the option, as a block's loop leaves it.
func at(input string) *caddyfile.Dispenser {
	d := caddyfile.NewTestDispenser(input)
	d.Next()
	return d
}

// wantErr checks that err names the option (as the start of its message),
// says what is wrong, and gives the location exactly once.
func wantErr(t *testing.T, input string, err error, prefix, contains, loc string) {
	t.Helper()
	if err == nil {
		t.Errorf("%q: no error", input)
		return
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, prefix) {
		t.Errorf("%q: error %q does not start with %q", input, msg, prefix)
	}
	if !strings.Contains(msg, contains) {
		t.Errorf("%q: error %q does not contain %q", input, msg, contains)
	}
	if !strings.Contains(msg, loc) || strings.Count(msg, "Testfile:") != 1 {
		t.Errorf("%q: error %q does not name the location %s exactly once", input, msg, loc)
	}
}

func TestOptionsRejectsDuplicates(t *testing.T) {
	d := caddyfile.NewTestDispenser("blk {\n\ta 1\n\tb 2\n\tc 3\n\ta 4\n}")
	d.Next()
	seen := parse.Options{}
	var got []string
	var err error
	for d.NextBlock(0) {
		if err = seen.Start(d); err != nil {
			break
		}
		got = append(got, d.Val())
		d.RemainingArgs()
	}
	if !reflect.DeepEqual(got, []string{"a", "b", "c"}) {
		t.Errorf("options before the duplicate = %v", got)
	}
	wantErr(t, "a twice", err, "a: ", "option given more than once", "Testfile:5")

	// Two blocks keep separate records.
	if err := (parse.Options{}).Start(at("a 1")); err != nil {
		t.Errorf("a fresh Options rejects: %v", err)
	}
}

func TestOneArg(t *testing.T) {
	d := at("opt value")
	v, err := parse.OneArg(d)
	if err != nil || v != "value" {
		t.Fatalf("OneArg = %q, %v", v, err)
	}
	if d.NextArg() {
		t.Errorf("OneArg left an argument: %q", d.Val())
	}
	v, err = parse.OneArg(at(`opt "two words"`))
	if err != nil || v != "two words" {
		t.Errorf("quoted: OneArg = %q, %v", v, err)
	}

	_, err = parse.OneArg(at("opt"))
	wantErr(t, "opt", err, "opt: ", "expected a value", "Testfile:1")
	_, err = parse.OneArg(at("opt a b"))
	wantErr(t, "opt a b", err, "opt: ", "expected one value, got extra 'b'", "Testfile:1")
	// The value on the next line belongs to the next option.
	d = caddyfile.NewTestDispenser("blk {\n\topt\n\tnext 1\n}")
	d.Next()
	d.NextBlock(0)
	_, err = parse.OneArg(d)
	wantErr(t, "opt then next", err, "opt: ", "expected a value", "Testfile:2")
}

func TestDuration(t *testing.T) {
	for input, want := range map[string]time.Duration{
		"opt 90s":    90 * time.Second,
		"opt 1h30m":  90 * time.Minute,
		"opt 7d":     7 * 24 * time.Hour,
		"opt 1d12h":  36 * time.Hour,
		"opt 0":      0,
		"opt 250ms":  250 * time.Millisecond,
		"opt 0.5d":   12 * time.Hour,
		"opt +10m":   10 * time.Minute,
		"opt 1h0m0s": time.Hour,
	} {
		got, err := parse.Duration(at(input))
		if err != nil || got != caddy.Duration(want) {
			t.Errorf("%q: Duration = %v, %v; want %v", input, time.Duration(got), err, want)
		}
	}
	for _, tc := range []struct{ input, contains string }{
		{"ttl -1s", "duration must not be negative, got '-1s'"},
		{"ttl -7d", "duration must not be negative"},
		{"ttl soon", "invalid duration 'soon'"},
		{"ttl 10", "invalid duration '10'"},
		{"ttl 5x", "invalid duration '5x'"},
		{"ttl", "expected a value"},
		{"ttl 1m 2m", "expected one value, got extra '2m'"},
	} {
		_, err := parse.Duration(at(tc.input))
		wantErr(t, tc.input, err, "ttl: ", tc.contains, "Testfile:1")
	}
}

func TestOnOff(t *testing.T) {
	for input, want := range map[string]bool{
		"o on": true, "o true": true, "o yes": true, "o ON": true, "o True": true,
		"o off": false, "o false": false, "o no": false, "o OFF": false,
	} {
		got, err := parse.OnOff(at(input))
		if err != nil || got != want {
			t.Errorf("%q: OnOff = %v, %v; want %v", input, got, err, want)
		}
	}
	for _, input := range []string{"flag maybe", "flag 1", "flag 0", "flag enabled"} {
		_, err := parse.OnOff(at(input))
		wantErr(t, input, err, "flag: ", "expected on or off, got '"+strings.Fields(input)[1]+"'", "Testfile:1")
	}
	_, err := parse.OnOff(at("flag"))
	wantErr(t, "flag", err, "flag: ", "expected a value", "Testfile:1")
}

func TestEnum(t *testing.T) {
	for _, v := range []string{"client", "remote"} {
		got, err := parse.Enum(at("source "+v), "client", "remote")
		if err != nil || got != v {
			t.Errorf("%s: Enum = %q, %v", v, got, err)
		}
	}
	for _, input := range []string{"source peer", "source Client", "source ''"} {
		_, err := parse.Enum(at(input), "client", "remote")
		wantErr(t, input, err, "source: ", "expected one of client, remote, got", "Testfile:1")
	}
	_, err := parse.Enum(at("source"), "client", "remote")
	wantErr(t, "source", err, "source: ", "expected a value", "Testfile:1")
}

func TestInt(t *testing.T) {
	for input, want := range map[string]int{"bits 1": 1, "bits 24": 24, "bits 32": 32, "bits +8": 8} {
		got, err := parse.Int(at(input), 1, 32)
		if err != nil || got != want {
			t.Errorf("%q: Int = %d, %v; want %d", input, got, err, want)
		}
	}
	for _, v := range []string{"0", "33", "-1", "2.5", "x", "0x10", "99999999999999999999"} {
		input := "bits " + v
		_, err := parse.Int(at(input), 1, 32)
		wantErr(t, input, err, "bits: ", "expected a whole number from 1 to 32, got '"+v+"'", "Testfile:1")
	}
	_, err := parse.Int(at("bits"), 1, 32)
	wantErr(t, "bits", err, "bits: ", "expected a value", "Testfile:1")
}

func TestFloat(t *testing.T) {
	for input, want := range map[string]float64{"f 1.5": 1.5, "f 1": 1, "f 100": 100, "f 1e1": 10, "f 2": 2} {
		got, err := parse.Float(at(input), 1, 100)
		if err != nil || got != want {
			t.Errorf("%q: Float = %g, %v; want %g", input, got, err, want)
		}
	}
	for _, v := range []string{"0.99", "100.5", "-3", "x", "Inf", "-Inf", "1,5"} {
		input := "f " + v
		_, err := parse.Float(at(input), 1, 100)
		wantErr(t, input, err, "f: ", "expected a number from 1 to 100, got '"+v+"'", "Testfile:1")
	}
}

// NaN is not within any range, but compares false with both bounds.
func TestFloatRejectsNaN(t *testing.T) {
	for _, v := range []string{"NaN", "nan"} {
		input := "f " + v
		got, err := parse.Float(at(input), 1, 100)
		if err == nil {
			t.Errorf("%q: Float accepted %g", input, got)
			continue
		}
		wantErr(t, input, err, "f: ", "expected a number from 1 to 100", "Testfile:1")
	}
}

func TestCountOrSize(t *testing.T) {
	for _, tc := range []struct {
		input string
		count int
		bytes uint64
	}{
		{"m 1", 1, 0},
		{"m 100000", 100000, 0},
		{"m 100k", 100000, 0},
		{"m 1M", 1000000, 0},
		{"m 1.5k", 1500, 0},
		{"m 2G", 2000000000, 0},
		{"m 64MiB", 0, 64 << 20},
		{"m 64MB", 0, 64_000_000},
		{"m 64mb", 0, 64_000_000},
		{"m 1KiB", 0, 1024},
		{"m 10kB", 0, 10_000},
		{"m 512B", 0, 512},
		{"m 1GiB", 0, 1 << 30},
	} {
		count, bytes, err := parse.CountOrSize(at(tc.input))
		if err != nil || count != tc.count || bytes != tc.bytes {
			t.Errorf("%q: CountOrSize = %d, %d, %v; want %d, %d", tc.input, count, bytes, err, tc.count, tc.bytes)
		}
	}
	for _, tc := range []struct{ input, contains string }{
		{"m 0", "invalid count '0'"},
		{"m -1", "invalid count '-1'"},
		{"m 1.5", "invalid count '1.5'"},
		{"m 1m", "invalid count '1m'"}, // milli
		{"m 10x", "invalid count '10x'"},
		{"m 3G", "invalid count '3G'"},
		{"m lots", "invalid count 'lots'"},
		{"m 0B", "invalid size '0B'"},
		{"m 0MiB", "invalid size '0MiB'"},
		{"m lotsB", "invalid size 'lotsB'"},
		{"m 5XB", "invalid size '5XB'"},
		{"m", "expected a value"},
		{"m 1k 2k", "expected one value, got extra '2k'"},
	} {
		_, _, err := parse.CountOrSize(at(tc.input))
		wantErr(t, tc.input, err, "m: ", tc.contains, "Testfile:1")
	}
	// Both messages say what is accepted.
	_, _, err := parse.CountOrSize(at("m nope"))
	if err == nil || !strings.Contains(err.Error(), "100k") || !strings.Contains(err.Error(), "64MiB") {
		t.Errorf("the error %v does not show the accepted forms", err)
	}
}

func jsonEqual(t *testing.T, input string, got json.RawMessage, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%q: invalid JSON %s: %v", input, got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("invalid expected JSON %s: %v", want, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%q: JSON = %s, want %s", input, got, want)
	}
}

func TestModule(t *testing.T) {
	const ns = "http.reverse_proxy.selection_policies"
	for _, tc := range []struct{ input, want string }{
		{"fallback first", `{"policy":"first"}`},
		{"fallback random_choose 2", `{"policy":"random_choose","choose":2}`},
		{"fallback least_conn", `{"policy":"least_conn"}`},
		{"fallback weighted_round_robin 3 1", `{"policy":"weighted_round_robin","weights":[3,1]}`},
		{"fallback cookie lb {\n\t\tfallback first\n\t}", `{"policy":"cookie","name":"lb","fallback":{"policy":"first"}}`},
	} {
		// The option after the module proves the cursor is left at the
		// end of the module's segment, its block included.
		d := caddyfile.NewTestDispenser("blk {\n\t" + tc.input + "\n\tafter 1\n}")
		d.Next()
		d.NextBlock(0)
		raw, err := parse.Module(d, ns, "policy")
		if err != nil {
			t.Errorf("%q: %v", tc.input, err)
			continue
		}
		jsonEqual(t, tc.input, raw, tc.want)
		if !d.NextBlock(0) || d.Val() != "after" {
			t.Errorf("%q: the next option is %q, want after", tc.input, d.Val())
		}
	}

	for _, tc := range []struct{ input, contains, loc string }{
		{"fallback", "expected a module name", "Testfile:1"},
		{"fallback nope", "'" + ns + ".nope'", "Testfile:1"},
		{"fallback random_choose two", "invalid choice value 'two'", "Testfile:1"},
		{"fallback random_choose", "wrong argument count", "Testfile:1"},
	} {
		_, err := parse.Module(at(tc.input), ns, "policy")
		wantErr(t, tc.input, err, "fallback: ", tc.contains, tc.loc)
	}
	// The location of a guest's error is the guest's line.
	d := caddyfile.NewTestDispenser("blk {\n\tx 1\n\tfallback random_choose two\n}")
	d.Next()
	d.NextBlock(0)
	d.RemainingArgs()
	d.NextBlock(0)
	_, err := parse.Module(d, ns, "policy")
	wantErr(t, "fallback on line 3", err, "fallback: ", "two", "Testfile:3")
}

func TestUnknown(t *testing.T) {
	d := caddyfile.NewTestDispenser("blk {\n\tknown 1\n\tbogus 2\n}")
	d.Next()
	d.NextBlock(0)
	d.RemainingArgs()
	d.NextBlock(0)
	err := parse.Unknown(d)
	wantErr(t, "bogus", err, "unrecognized option 'bogus'", "bogus", "Testfile:3")
}
