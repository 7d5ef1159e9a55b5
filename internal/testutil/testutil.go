// Package testutil holds the helpers the tests of several packages share:
// comparing JSON, and checking the errors of Caddyfile parsers.
package testutil

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// SameJSON fails t unless got and want are the same JSON document.
func SameJSON(t testing.TB, what string, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: invalid JSON %s: %v", what, got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("%s: invalid expected JSON %s: %v", what, want, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s: JSON = %s, want %s", what, got, want)
	}
}

// ParseError is a bad Caddyfile input and the texts its error must hold.
type ParseError struct {
	Name  string
	Input string
	Want  []string // each must appear in the error
}

// CheckParseErrors runs each case through parse as a subtest: parsing must
// fail with an error that holds every Want and names its location
// (Testfile:N, added by the dispenser) exactly once; a second copy means an
// error was wrapped with its location twice.
func CheckParseErrors(t *testing.T, parse func(input string) error, cases []ParseError) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			err := parse(tc.Input)
			if err == nil {
				t.Fatalf("%q parsed without error", tc.Input)
			}
			for _, w := range tc.Want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if n := strings.Count(err.Error(), "Testfile:"); n != 1 {
				t.Errorf("error %q names the location %d times", err, n)
			}
		})
	}
}
