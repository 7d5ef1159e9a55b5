package main

import (
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"slices"
	"strings"
	"time"
)

// Pre-check sizes: enough clients that a balancing case reaches more than
// one backend (all of 12 landing on one of 3 by chance: 3^-11), and enough
// requests per client to see it stay.
const (
	checkClients  = 12
	checkRequests = 4
)

// checkClient is one browser-like client: its own cookie jar and a new
// connection per request, so that what keeps it on a backend is the cookie
// or its address, never a reused connection.
type checkClient struct {
	http *http.Client
}

func newCheckClient() *checkClient {
	jar, _ := cookiejar.New(nil)
	return &checkClient{http: &http.Client{
		Jar:       jar,
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true},
	}}
}

// reply is what the pre-check needs of a response.
type reply struct {
	backend    string
	setCookie  []string
	seen       string // Cookie header the backend received (with ?echo)
	session    string // the X-Session header of the response
	seenHeader string // X-Session header the backend received (with ?echo)
}

func (c *checkClient) get(url string) (reply, error) { return c.getFrom(url, "", "") }

// getFrom is get from the client address xff, sent in X-Forwarded-For as
// wrk sends it ("" for none), with the X-Session header session ("" for
// none).
func (c *checkClient) getFrom(url, xff, session string) (reply, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return reply{}, err
	}
	if xff != "" {
		req.Header.Set("X-Forwarded-For", xff)
	}
	if session != "" {
		req.Header.Set(sessionHeader, session)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		return reply{}, fmt.Errorf("GET %s: status %s", url, resp.Status)
	}
	r := reply{backend: resp.Header.Get("X-Backend"), setCookie: resp.Header.Values("Set-Cookie"), seen: resp.Header.Get("X-Cookie-Seen"),
		session: resp.Header.Get(sessionHeader), seenHeader: resp.Header.Get("X-Header-Seen")}
	if r.backend == "" {
		return reply{}, fmt.Errorf("GET %s: no X-Backend header", url)
	}
	return r, nil
}

// precheck makes sure case k balances and sticks as configured, so that a
// misconfigured case fails loudly instead of being measured. It records
// what it saw in k.checked.
func precheck(k *benchCase, bs *backends) error {
	url := "http://" + k.addr + k.Path + "?echo"
	seen := map[string]int{}
	switch k.Kind {
	case kindBalance:
		c := newCheckClient()
		for range checkClients {
			r, err := c.get(url)
			if err != nil {
				return err
			}
			seen[r.backend]++
		}
		if len(seen) < 2 {
			return fmt.Errorf("%d requests all went to %v: not balancing", checkClients, seen)
		}
		k.checked = fmt.Sprintf("%d requests over %d backends", checkClients, len(seen))

	case kindInsert, kindRewrite:
		for range checkClients {
			c := newCheckClient()
			first, err := c.get(url)
			if err != nil {
				return err
			}
			if !slices.ContainsFunc(first.setCookie, func(s string) bool { return strings.HasPrefix(s, k.Cookie+"=") }) {
				return fmt.Errorf("first response from %s sets no cookie %q (Set-Cookie: %q)", first.backend, k.Cookie, first.setCookie)
			}
			for i := 1; i < checkRequests; i++ {
				r, err := c.get(url)
				if err != nil {
					return err
				}
				if r.backend != first.backend {
					return fmt.Errorf("client moved from %s to %s on request %d despite its cookie %q", first.backend, r.backend, i+1, k.Cookie)
				}
				if err := checkSeen(k, r); err != nil {
					return err
				}
			}
			seen[first.backend]++
		}
		if len(seen) < 2 {
			return fmt.Errorf("%d new clients all went to %v: not balancing", checkClients, seen)
		}
		k.checked = fmt.Sprintf("%d clients x %d requests stuck, over %d backends", checkClients, checkRequests, len(seen))

	case kindHeader:
		c := newCheckClient()
		for range checkClients {
			first, err := c.get(url)
			if err != nil {
				return err
			}
			want := first.backend + "xxxx"
			if !strings.HasSuffix(first.session, "~"+want) {
				return fmt.Errorf("first response from %s has %s %q, want TOKEN~%s", first.backend, sessionHeader, first.session, want)
			}
			for i := 1; i < checkRequests; i++ {
				r, err := c.getFrom(url, "", first.session)
				if err != nil {
					return err
				}
				if r.backend != first.backend {
					return fmt.Errorf("client moved from %s to %s on request %d despite its header %q", first.backend, r.backend, i+1, first.session)
				}
				if r.seenHeader != want {
					return fmt.Errorf("backend %s received %s %q, want %q (rewrite not undone)", r.backend, sessionHeader, r.seenHeader, want)
				}
			}
			seen[first.backend]++
		}
		if len(seen) < 2 {
			return fmt.Errorf("%d new clients all went to %v: not balancing", checkClients, seen)
		}
		k.checked = fmt.Sprintf("%d clients x %d requests stuck by their header, over %d backends", checkClients, checkRequests, len(seen))

	case kindIP:
		// The clients wrk simulates, by X-Forwarded-For from loopback.
		c := newCheckClient()
		for a := 1; a <= checkClients; a++ {
			ip := fmt.Sprintf("10.0.0.%d", a)
			want := ""
			if k.Expect != nil {
				want = bs.names[k.Expect(bs.addrs(), ip)]
			}
			first := ""
			for range checkRequests {
				r, err := c.getFrom(url, ip, "")
				if err != nil {
					return err
				}
				if want != "" && r.backend != want {
					return fmt.Errorf("client %s reached %s, the policy's hash says %s", ip, r.backend, want)
				}
				if first == "" {
					first = r.backend
				} else if r.backend != first {
					return fmt.Errorf("client %s moved from %s to %s", ip, first, r.backend)
				}
			}
			seen[first]++
		}
		if len(seen) < 2 {
			return fmt.Errorf("%d client addresses all went to %v: X-Forwarded-For not trusted, or not hashing", checkClients, seen)
		}
		k.checked = fmt.Sprintf("%d clients (X-Forwarded-For) x %d requests stuck, over %d backends", checkClients, checkRequests, len(seen))
		if k.Expect != nil {
			k.checked += ", each on the backend its hash predicts"
		}
	}
	return nil
}

// checkSeen checks the Cookie header a backend received from a client
// holding the proxy's cookie.
func checkSeen(k *benchCase, r reply) error {
	switch {
	case k.Kind == kindRewrite:
		// Rewrite mode must hand the backend back its own cookie.
		if want := "name=" + r.backend + "xxxx"; r.seen != want {
			return fmt.Errorf("backend %s received Cookie %q, want %q (rewrite not undone)", r.backend, r.seen, want)
		}
	case k.Server == "haproxy":
		// indirect: HAProxy removes its cookie before the backend.
		if strings.Contains(r.seen, k.Cookie+"=") {
			return fmt.Errorf("backend %s received HAProxy's cookie (%q) despite indirect", r.backend, r.seen)
		}
	}
	return nil
}
