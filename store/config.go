// Package store puts a policy's session table in a store that several
// Caddy instances share: Redis, or anything that speaks its protocol (such
// as Valkey). Each instance keeps its bounded table as a local cache in
// front of it (see affinity.Backing), so a request whose entry is cached
// costs no round trip; entries are keyed by a keyed hash (HMAC-SHA256) of
// the client's address or session id, never the value.
package store

import (
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-affinity/caddy-affinity/internal/parse"
)

// Config is a policy's `store` option. Without Redis the session table
// lives in the process's memory alone (store memory, the default).
type Config struct {
	// A Redis (or Valkey) server that holds the table, shared by every
	// instance and policy that names it.
	Redis *Redis `json:"redis,omitempty"`
}

// Redis is the `store redis <address>` option.
type Redis struct {
	// The server's host:port. Placeholders such as {env.REDIS_ADDR} are
	// replaced.
	Address string `json:"address,omitempty"`

	// ACL user name; placeholders are replaced.
	Username string `json:"username,omitempty"`

	// Password; placeholders such as {env.REDIS_PASSWORD} are replaced.
	Password string `json:"password,omitempty"`

	// Database number. Default: 0.
	DB int `json:"db,omitempty"`

	// Prefix of every key the plugin writes. Default: "caddy-affinity:".
	KeyPrefix string `json:"key_prefix,omitempty"`

	// Connect with TLS (verifying the server's certificate against the
	// system's roots).
	TLS bool `json:"tls,omitempty"`

	// How long a connection attempt may take. Default: 1s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// The longest a request waits for the store; past it the policy goes
	// on with its local cache and deterministic choice. Default: 250ms.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Name of the table in the store. Policies (and instances) naming the
	// same table share its entries. Default: "ip" for ip_affinity (the HTTP
	// and layer4 policies share it), "cookie:<name>" and "header:<name>"
	// for learn mode. Give sites whose ip_affinity pools differ tables of
	// their own.
	Table string `json:"table,omitempty"`

	// Key of the HMAC that stored keys are made with; placeholders are
	// replaced. Default: a random key the first instance writes to the
	// store, which every other one reads.
	Secret string `json:"secret,omitempty"`
}

// Defaults.
const (
	DefaultKeyPrefix   = "caddy-affinity:"
	DefaultDialTimeout = time.Second
	DefaultTimeout     = 250 * time.Millisecond
)

// Backed reports whether c puts the table in a shared store.
func (c *Config) Backed() bool { return c != nil && c.Redis != nil }

// Check checks the options, before placeholders are replaced.
func (c *Config) Check() error {
	if !c.Backed() {
		return nil
	}
	r := c.Redis
	if r.Address == "" {
		return fmt.Errorf("store redis: needs the server's address (host:port)")
	}
	if !strings.Contains(r.Address, "{") {
		if _, _, err := net.SplitHostPort(r.Address); err != nil {
			return fmt.Errorf("store redis: address %q: expected host:port", r.Address)
		}
	}
	if r.DB < 0 {
		return fmt.Errorf("store redis: db must not be negative, got %d", r.DB)
	}
	if r.DialTimeout < 0 || r.Timeout < 0 {
		return fmt.Errorf("store redis: timeouts must not be negative")
	}
	if strings.ContainsAny(r.Table, " *?[]") {
		return fmt.Errorf("store redis: table %q: may not hold spaces or the pattern characters * ? [ ]", r.Table)
	}
	if strings.ContainsAny(r.KeyPrefix, "*?[]") {
		return fmt.Errorf("store redis: key_prefix %q: may not hold the pattern characters * ? [ ]", r.KeyPrefix)
	}
	return nil
}

// UnmarshalCaddyfile parses the option under the dispenser's cursor:
//
//	store memory
//	store redis <address> {
//		username     <name>
//		password     <password>
//		db           <number>
//		key_prefix   <prefix>
//		tls
//		dial_timeout <duration>
//		timeout      <duration>
//		table        <name>
//		secret       <key>
//	}
func (c *Config) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	switch d.Val() {
	case "memory":
		if d.NextArg() {
			return d.Errf("store memory: takes no arguments, got '%s'", d.Val())
		}
		c.Redis = nil
		return nil
	case "redis":
	default:
		return d.Errf("store: expected memory or redis, got '%s'", d.Val())
	}
	r := &Redis{}
	if !d.NextArg() {
		return d.Errf("store redis: needs the server's address (host:port)")
	}
	r.Address = d.Val()
	if d.NextArg() {
		return d.Errf("store redis: takes one address, got '%s' too; options go in a block", d.Val())
	}
	seen := parse.Options{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := seen.Start(d); err != nil {
			return err
		}
		var err error
		switch d.Val() {
		case "username":
			r.Username, err = parse.OneArg(d)
		case "password":
			r.Password, err = parse.OneArg(d)
		case "db":
			r.DB, err = parse.Int(d, 0, 1<<16)
		case "key_prefix":
			r.KeyPrefix, err = parse.OneArg(d)
		case "tls":
			if d.NextArg() {
				err = d.Errf("tls: takes no arguments, got '%s'", d.Val())
			}
			r.TLS = true
		case "dial_timeout":
			r.DialTimeout, err = parse.Duration(d)
		case "timeout":
			r.Timeout, err = parse.Duration(d)
		case "table":
			r.Table, err = parse.OneArg(d)
		case "secret":
			r.Secret, err = parse.OneArg(d)
		default:
			err = d.Errf("store redis: unknown option '%s'", d.Val())
		}
		if err != nil {
			return err
		}
	}
	c.Redis = r
	if err := c.Check(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// Parse parses a policy's `store` option under the dispenser's cursor: nil
// for store memory.
func Parse(d *caddyfile.Dispenser) (*Config, error) {
	c := &Config{}
	if err := c.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	if !c.Backed() {
		return nil, nil
	}
	return c, nil
}
