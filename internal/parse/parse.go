// Package parse holds the Caddyfile parsing helpers shared by the
// modules of caddy-affinity, so every option reports bad input the same way:
// an error that names the option, with the file and line (added by the
// dispenser).
package parse

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// Options tracks the options of one block, to reject duplicates and to
// place errors that involve several of them: each option's line.
type Options map[string]int

// Start records that the option under the dispenser's cursor is being
// parsed, and fails if it was given before.
func (o Options) Start(d *caddyfile.Dispenser) error {
	opt := d.Val()
	if o[opt] > 0 {
		return d.Errf("%s: option given more than once", opt)
	}
	o[opt] = d.Line()
	return nil
}

// WrapErr places err, from a check between options whose message starts
// with an option's name ("max_age: ..."), at that option's line, or at the
// cursor (the block's end) when the option was left to its default.
func (o Options) WrapErr(d *caddyfile.Dispenser, module string, err error) error {
	opt, _, _ := strings.Cut(err.Error(), ":")
	if line := o[opt]; line > 0 {
		return fmt.Errorf("%s: %w, at %s:%d", module, err, d.File(), line)
	}
	return d.WrapErr(fmt.Errorf("%s: %w", module, err))
}

// OneArg returns the option's single argument.
func OneArg(d *caddyfile.Dispenser) (string, error) {
	opt := d.Val()
	if !d.NextArg() {
		return "", d.Errf("%s: expected a value", opt)
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.Errf("%s: expected one value, got extra '%s'", opt, d.Val())
	}
	return v, nil
}

// Duration parses the option's single duration argument (Caddy's syntax,
// which also accepts days such as 7d); it must not be negative.
func Duration(d *caddyfile.Dispenser) (caddy.Duration, error) {
	opt := d.Val()
	v, err := OneArg(d)
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("%s: invalid duration '%s': %v", opt, v, err)
	}
	if dur < 0 {
		return 0, d.Errf("%s: duration must not be negative, got '%s'", opt, v)
	}
	return caddy.Duration(dur), nil
}

// OnOff parses an on/off (or true/false) argument.
func OnOff(d *caddyfile.Dispenser) (bool, error) {
	opt := d.Val()
	v, err := OneArg(d)
	if err != nil {
		return false, err
	}
	switch strings.ToLower(v) {
	case "on", "true", "yes":
		return true, nil
	case "off", "false", "no":
		return false, nil
	}
	return false, d.Errf("%s: expected on or off, got '%s'", opt, v)
}

// Enum parses an argument that must be one of allowed.
func Enum(d *caddyfile.Dispenser, allowed ...string) (string, error) {
	opt := d.Val()
	v, err := OneArg(d)
	if err != nil {
		return "", err
	}
	for _, a := range allowed {
		if v == a {
			return v, nil
		}
	}
	return "", d.Errf("%s: expected one of %s, got '%s'", opt, strings.Join(allowed, ", "), v)
}

// Int parses an integer argument within [lo, hi].
func Int(d *caddyfile.Dispenser, lo, hi int) (int, error) {
	opt := d.Val()
	v, err := OneArg(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, d.Errf("%s: expected a whole number from %d to %d, got '%s'", opt, lo, hi, v)
	}
	return n, nil
}

// Float parses a number argument within [lo, hi].
func Float(d *caddyfile.Dispenser, lo, hi float64) (float64, error) {
	opt := d.Val()
	v, err := OneArg(d)
	if err != nil {
		return 0, err
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) || f < lo || f > hi {
		return 0, d.Errf("%s: expected a number from %g to %g, got '%s'", opt, lo, hi, v)
	}
	return f, nil
}

// CountOrSize parses a count such as 100000, 100k or 1M (SI, by
// go-humanize), or a memory size such as 64MiB or 64MB (with a byte unit).
// Exactly one of count and bytes is non-zero.
func CountOrSize(d *caddyfile.Dispenser) (count int, bytes uint64, err error) {
	opt := d.Val()
	v, err := OneArg(d)
	if err != nil {
		return 0, 0, err
	}
	lower := strings.ToLower(v)
	if strings.HasSuffix(lower, "b") {
		n, perr := humanize.ParseBytes(v)
		if perr != nil || n == 0 {
			return 0, 0, d.Errf("%s: invalid size '%s' (use a count like 100k or a size like 64MiB)", opt, v)
		}
		return 0, n, nil
	}
	f, unit, perr := humanize.ParseSI(v)
	if perr != nil || unit != "" || f < 1 || f > 1<<31 || f != float64(int64(f)) {
		return 0, 0, d.Errf("%s: invalid count '%s' (use a count like 100k or a size like 64MiB)", opt, v)
	}
	return int(f), 0, nil
}

// Module parses `<name> [<args...>] [{ ... }]` at the cursor as a guest
// module of namespace (a selection policy, say), as Caddy parses its own
// fallback policies, and returns its JSON with the name under inlineKey.
func Module(d *caddyfile.Dispenser, namespace, inlineKey string) (json.RawMessage, error) {
	opt := d.Val()
	if !d.NextArg() {
		return nil, d.Errf("%s: expected a module name", opt)
	}
	name := d.Val()
	modID := namespace + "." + name
	unm, err := caddyfile.UnmarshalModule(d, modID)
	if err != nil {
		// Caddy's errors already carry their file and line; a guest
		// module's own may not (caddy-l4's random_choose returns a bare
		// strconv error): add them then.
		if !strings.Contains(err.Error(), ", at "+d.File()+":") {
			return nil, d.Errf("%s: %v", opt, err)
		}
		return nil, fmt.Errorf("%s: %w", opt, err)
	}
	return caddyconfig.JSONModuleObject(unm, inlineKey, name, nil), nil
}

// Unknown is the error for an option the block does not have.
func Unknown(d *caddyfile.Dispenser) error {
	return d.Errf("unrecognized option '%s'", d.Val())
}
