package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/caddy-affinity/caddy-affinity/admin"
)

// runUI serves the status page on a local address and forwards its calls
// to the admin API. A browser cannot load the page from the admin endpoint
// itself: the endpoint refuses a request that has Sec-Fetch-Mode but no
// Origin or Referer, which is what a typed address sends. This server
// sends the calls with the origin the admin endpoint allows, as every
// `caddy` command does, and protects itself as the admin endpoint does:
// its own Host only (DNS rebinding), and changes only from its own
// origin (cross-site requests).
func runUI(cmd *cobra.Command, _ []string) error {
	address, _ := cmd.Flags().GetString("address")
	config, _ := cmd.Flags().GetString("config")
	adapter, _ := cmd.Flags().GetString("adapter")
	adminAddr, err := caddycmd.DetermineAdminAPIAddress(address, nil, config, adapter)
	if err != nil {
		return fmt.Errorf("finding the admin endpoint: %v", err)
	}
	listen, _ := cmd.Flags().GetString("listen")
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %v", listen, err)
	}
	self := ln.Addr().String()
	srv := &http.Server{Handler: uiHandler(adminAddr, self), ReadHeaderTimeout: 10 * time.Second}
	fmt.Printf("status page of the Caddy at %s: http://%s/affinity/ui\n", adminAddr, self)
	go func() {
		<-cmd.Context().Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// uiHandler serves the page and forwards the affinity API to adminAddr.
func uiHandler(adminAddr, self string) http.Handler {
	_, port, _ := net.SplitHostPort(self)
	hosts := map[string]bool{self: true, "localhost:" + port: true, "127.0.0.1:" + port: true, "[::1]:" + port: true}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hosts[r.Host] {
			uiError(w, http.StatusForbidden, fmt.Sprintf("host %q not allowed", r.Host))
			return
		}
		switch {
		case r.URL.Path == "/" || r.URL.Path == "/affinity/ui":
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				uiError(w, http.StatusMethodNotAllowed, "method not allowed")
				return
			}
			_ = admin.ServeUI(w)
			return
		case r.URL.Path != "/affinity/upstreams" && r.URL.Path != "/affinity/upstreams/drain" &&
			r.URL.Path != "/affinity/upstreams/undrain" && r.URL.Path != "/affinity/sessions":
			uiError(w, http.StatusNotFound, "not found")
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if o := r.Header.Get("Origin"); o == "" || !hosts[strings.TrimPrefix(o, "http://")] {
				uiError(w, http.StatusForbidden, fmt.Sprintf("origin %q not allowed", o))
				return
			}
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		if err != nil {
			uiError(w, http.StatusBadRequest, err.Error())
			return
		}
		var rd io.Reader
		if len(body) > 0 {
			rd = bytes.NewReader(body)
		}
		resp, err := caddycmd.AdminAPIRequest(adminAddr, r.Method, r.URL.RequestURI(), nil, rd)
		if err != nil {
			uiError(w, statusOf(err), readable(err))
			return
		}
		defer resp.Body.Close()
		for _, h := range []string{"Content-Type", "X-Total-Count", "Allow"} {
			if v := resp.Header.Get(h); v != "" {
				w.Header().Set(h, v)
			}
		}
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	})
}

// statusOf is the HTTP status of an admin API error as caddycmd reports
// it ("... HTTP 404: ..."), or 502 when the endpoint was not reached.
func statusOf(err error) int {
	msg := err.Error()
	if i := strings.Index(msg, "HTTP "); i >= 0 {
		if n, e := strconv.Atoi(strings.TrimRight(strings.Fields(msg[i+5:])[0], ":")); e == nil && n >= 400 {
			return n
		}
	}
	return http.StatusBadGateway
}

func uiError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}
