// Package cli is the `caddy affinity` command: caddy-affinity's admin API
// (upstreams, drains, sessions) from the command line, reaching the admin
// endpoint the way `caddy reload` does.
package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/caddy-affinity/caddy-affinity/admin"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "affinity",
		Usage: "status|drain|undrain|sessions|flush|ui [--address <interface>] [--config <path> [--adapter <name>]] [--json]",
		Short: "Shows and controls caddy-affinity's upstreams and sessions",
		Long: `
Shows and controls the upstreams and session tables of caddy-affinity's
policies through Caddy's admin API (the /affinity/... endpoints). The admin
endpoint is found as for 'caddy reload': --address, or the admin address of
--config (with --adapter), or the default.

  caddy affinity status                       the upstreams: state, sessions, counters
  caddy affinity drain <address> [--deadline 10m] [--wait [--timeout 30m]]
  caddy affinity undrain <address>
  caddy affinity sessions [--policy p] [--upstream a] [--limit n]
  caddy affinity flush                        empty every session table
  caddy affinity ui [--listen 127.0.0.1:2020]  the status page, for a browser

--json prints the admin API's JSON instead of a table.`,
		CobraFunc: build,
	})
}

// build sets up the command and its subcommands.
func build(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.String("address", "", "The address to use to reach the admin API endpoint, if not the default")
	pf.StringP("config", "c", "", "Configuration file to use to parse the admin address, if --address is not used")
	pf.StringP("adapter", "a", "", "Name of config adapter to apply (when --config is used)")
	pf.Bool("json", false, "Print JSON instead of a table")

	status := &cobra.Command{Use: "status", Short: "Show the upstreams: state, sessions, counters", Args: cobra.NoArgs, RunE: runStatus}
	drain := &cobra.Command{Use: "drain <address>", Short: "Give an upstream no new sessions", Args: cobra.ExactArgs(1), RunE: runDrain(true)}
	drain.Flags().String("deadline", "", "After this long (e.g. 10m), sessions bound to the upstream move too")
	drain.Flags().Bool("wait", false, "Show the drain's progress and return once the upstream is drained (nothing bound or in flight)")
	drain.Flags().Duration("timeout", 30*time.Minute, "With --wait, fail if the upstream is not drained after this long")
	drain.Flags().Duration("interval", time.Second, "With --wait, how often to check")
	undrain := &cobra.Command{Use: "undrain <address>", Short: "End an upstream's drain", Args: cobra.ExactArgs(1), RunE: runDrain(false)}
	sessions := &cobra.Command{Use: "sessions", Short: "List session-table entries", Args: cobra.NoArgs, RunE: runSessions}
	sessions.Flags().String("policy", "", "Only entries of this policy (e.g. ip_affinity)")
	sessions.Flags().String("upstream", "", "Only entries bound to this upstream address")
	sessions.Flags().Int("limit", 100, "At most this many entries (1 to 10000)")
	flush := &cobra.Command{Use: "flush", Short: "Empty every session table", Args: cobra.NoArgs, RunE: runFlush}
	ui := &cobra.Command{Use: "ui", Short: "Serve the status page to a browser, forwarding its calls to the admin API", Args: cobra.NoArgs, RunE: runUI}
	ui.Flags().String("listen", "127.0.0.1:2020", "The address to serve the page on")
	for _, c := range []*cobra.Command{status, drain, undrain, sessions, flush, ui} {
		c.SilenceUsage = true
		cmd.AddCommand(c)
	}
	cmd.Args = cobra.NoArgs
	cmd.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
}

// call sends a request to the admin API and decodes its JSON reply into v
// (nil: discard). Errors name what failed: the admin endpoint not reached,
// or its answer.
func call(cmd *cobra.Command, method, uri string, body any, v any) (http.Header, error) {
	address, _ := cmd.Flags().GetString("address")
	config, _ := cmd.Flags().GetString("config")
	adapter, _ := cmd.Flags().GetString("adapter")
	admin, err := caddycmd.DetermineAdminAPIAddress(address, nil, config, adapter)
	if err != nil {
		return nil, fmt.Errorf("finding the admin endpoint: %v", err)
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	resp, err := caddycmd.AdminAPIRequest(admin, method, uri, nil, rd)
	if err != nil {
		return nil, fmt.Errorf("admin endpoint %s: %s", admin, readable(err))
	}
	defer resp.Body.Close()
	if v == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return resp.Header, err
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return nil, fmt.Errorf("admin endpoint %s: reading %s: %v", admin, uri, err)
	}
	return resp.Header, nil
}

// readable turns the admin API's JSON error body, as caddycmd reports it
// ("caddy responded with error: HTTP 404: {"error":"..."}"), into its
// message.
func readable(err error) string {
	msg := err.Error()
	i := strings.Index(msg, ": {")
	if i < 0 {
		return msg
	}
	head, body := msg[:i], msg[i+2:]
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
		return msg
	}
	if j := strings.Index(head, "HTTP "); j >= 0 {
		return head[j:] + ": " + e.Error
	}
	return e.Error
}

func jsonOut(cmd *cobra.Command) bool {
	j, _ := cmd.Flags().GetBool("json")
	return j
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runStatus(cmd *cobra.Command, _ []string) error {
	var ups []admin.UpstreamStatus
	if _, err := call(cmd, http.MethodGet, "/affinity/upstreams", nil, &ups); err != nil {
		return err
	}
	if jsonOut(cmd) {
		return printJSON(ups)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UPSTREAM\tSTATE\tSESSIONS\tSEEN 1m\tIN FLIGHT\tHITS\tNEW\tREBINDS\tREJECTED\tPOLICIES")
	for _, u := range ups {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%v\t%s\n", u.Address, state(u), u.Sessions, u.SessionsSeen, u.InFlight,
			u.Hits, u.New, u.Rebinds, u.Rejected["total"], strings.Join(u.Policies, ","))
	}
	return tw.Flush()
}

// state is an upstream's drain state in words.
func state(u admin.UpstreamStatus) string {
	switch {
	case u.Drained:
		return "drained"
	case u.Draining && u.Deadline != nil:
		return "draining until " + u.Deadline.Local().Format(time.TimeOnly)
	case u.Draining:
		return "draining"
	}
	return "active"
}

// waitDrained polls the upstream at addr until it is drained, printing
// each change of its progress, or fails after timeout.
func waitDrained(cmd *cobra.Command, addr string) error {
	timeout, _ := cmd.Flags().GetDuration("timeout")
	every, _ := cmd.Flags().GetDuration("interval")
	if every <= 0 {
		return fmt.Errorf("--interval must be positive, got %v", every)
	}
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		var ups []admin.UpstreamStatus
		if _, err := call(cmd, http.MethodGet, "/affinity/upstreams", nil, &ups); err != nil {
			return err
		}
		var u *admin.UpstreamStatus
		for i := range ups {
			if ups[i].Address == addr {
				u = &ups[i]
			}
		}
		if u == nil {
			return fmt.Errorf("upstream %s is no longer known to any affinity policy", addr)
		}
		if !u.Draining {
			return fmt.Errorf("%s is no longer draining (undrained meanwhile)", addr)
		}
		line := fmt.Sprintf("%s: %s, %d sessions in tables, %d seen in the last minute, %d requests in flight",
			addr, state(*u), u.Sessions, u.SessionsSeen, u.InFlight)
		if jsonOut(cmd) {
			b, _ := json.Marshal(u)
			line = string(b)
		}
		if line != last {
			fmt.Println(line)
			last = line
		}
		if u.Drained {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not drained after %v: %d sessions in tables, %d seen in the last minute, %d requests in flight",
				addr, timeout, u.Sessions, u.SessionsSeen, u.InFlight)
		}
		select {
		case <-cmd.Context().Done():
			return cmd.Context().Err()
		case <-time.After(every):
		}
	}
}

func runDrain(on bool) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		path, body := "/affinity/upstreams/undrain", map[string]any{"address": args[0]}
		if on {
			path = "/affinity/upstreams/drain"
			if d, _ := cmd.Flags().GetString("deadline"); d != "" {
				body["deadline"] = d
			}
		}
		var reply map[string]any
		if _, err := call(cmd, http.MethodPost, path, body, &reply); err != nil {
			return err
		}
		wait := false
		if on {
			wait, _ = cmd.Flags().GetBool("wait")
		}
		if jsonOut(cmd) {
			if err := printJSON(reply); err != nil || !wait {
				return err
			}
			return waitDrained(cmd, args[0])
		}
		what := "undrained"
		if on {
			what = "draining"
			if d, ok := reply["deadline"].(string); ok {
				what += ", sessions move after " + d
			}
		}
		if changed, _ := reply["changed"].(bool); !changed {
			what += " (unchanged)"
		}
		fmt.Printf("%s: %s\n", args[0], what)
		if wait {
			return waitDrained(cmd, args[0])
		}
		return nil
	}
}

func runSessions(cmd *cobra.Command, _ []string) error {
	limit, _ := cmd.Flags().GetInt("limit")
	policy, _ := cmd.Flags().GetString("policy")
	upstreamAddr, _ := cmd.Flags().GetString("upstream")
	if limit < 1 || limit > 10000 {
		return fmt.Errorf("--limit must be from 1 to 10000, got %d", limit)
	}
	// The admin API pages the whole list; filters apply here.
	out := []admin.SessionEntry{}
	total := 0
	for offset := 0; len(out) < limit; offset += 10000 {
		var page []admin.SessionEntry
		h, err := call(cmd, http.MethodGet, "/affinity/sessions?"+url.Values{
			"limit": {"10000"}, "offset": {strconv.Itoa(offset)}}.Encode(), nil, &page)
		if err != nil {
			return err
		}
		total, _ = strconv.Atoi(h.Get("X-Total-Count"))
		for _, s := range page {
			if (policy == "" || s.Policy == policy) && (upstreamAddr == "" || s.Upstream == upstreamAddr) && len(out) < limit {
				out = append(out, s)
			}
		}
		if len(page) < 10000 {
			break
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].LastSeen.After(out[j].LastSeen) })
	if jsonOut(cmd) {
		return printJSON(out)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POLICY\tCLIENT\tUPSTREAM\tLAST SEEN")
	for _, s := range out {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s ago\n", s.Policy, s.Client, s.Upstream, time.Since(s.LastSeen).Round(time.Second))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Printf("%d shown; %d in all tables\n", len(out), total)
	return nil
}

func runFlush(cmd *cobra.Command, _ []string) error {
	var reply struct {
		Flushed int `json:"flushed"`
	}
	if _, err := call(cmd, http.MethodDelete, "/affinity/sessions", nil, &reply); err != nil {
		return err
	}
	if jsonOut(cmd) {
		return printJSON(reply)
	}
	fmt.Printf("every session table flushed (%d entries)\n", reply.Flushed)
	return nil
}
