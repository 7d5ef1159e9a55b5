package cookie

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// StorageKey is where the generated key lives in Caddy's storage.
const StorageKey = "caddy-affinity/secret.key"

// minSecretLen is the shortest secret accepted: a cookie lets anyone try
// secrets offline, and a known secret forges sessions and lifetimes.
const minSecretLen = 16

// shortSecret is the error for secret number i (from 1) of n bytes.
func shortSecret(i, n int) error {
	return fmt.Errorf("secrets: secret %d is %d bytes, shorter than the %d required (generate one with: openssl rand -base64 32)", i, n, minSecretLen)
}

// loadKeys returns the configured secrets with placeholders replaced, or,
// when none is configured, the key kept in Caddy's storage, created on first
// use. Error messages name the secret by position, never by value.
func loadKeys(ctx caddy.Context, secrets []string) ([][]byte, error) {
	if len(secrets) == 0 {
		key, err := storedKey(ctx)
		if err != nil {
			return nil, fmt.Errorf("secrets: none configured and the generated key could not be loaded from storage: %v", err)
		}
		return [][]byte{key}, nil
	}
	repl := caddy.NewReplacer()
	keys := make([][]byte, 0, len(secrets))
	for i, s := range secrets {
		// Only known placeholders ({env.*}, {system.*}, ...) are replaced,
		// so a literal secret may contain braces.
		v := repl.ReplaceKnown(s, "")
		if v == "" {
			return nil, fmt.Errorf("secrets: secret %d is empty (after replacing placeholders such as {env.NAME}; is the variable set?)", i+1)
		}
		if len(v) < minSecretLen {
			return nil, shortSecret(i+1, len(v))
		}
		keys = append(keys, []byte(v))
	}
	return keys, nil
}

// storedKey loads the generated key from storage, creating it under the
// storage lock so that instances sharing the storage agree on one key.
func storedKey(ctx caddy.Context) ([]byte, error) {
	st := ctx.Storage()
	if st == nil {
		return nil, errors.New("no storage configured")
	}
	if key, err := parseStoredKey(st.Load(ctx, StorageKey)); err == nil {
		return key, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err := st.Lock(ctx, StorageKey); err != nil {
		return nil, fmt.Errorf("locking %s: %v", StorageKey, err)
	}
	defer func() { _ = st.Unlock(ctx, StorageKey) }()
	if key, err := parseStoredKey(st.Load(ctx, StorageKey)); err == nil {
		return key, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	text := base64.RawStdEncoding.EncodeToString(raw)
	if err := st.Store(ctx, StorageKey, []byte(text+"\n")); err != nil {
		return nil, fmt.Errorf("storing %s: %v", StorageKey, err)
	}
	ctx.Logger().Info("generated a new affinity key and stored it", zap.String("storage_key", StorageKey))
	return []byte(text), nil
}

func parseStoredKey(data []byte, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	text := strings.TrimSpace(string(data))
	if len(text) < minSecretLen {
		return nil, fmt.Errorf("%s in storage is too short or corrupt", StorageKey)
	}
	return []byte(text), nil
}
