#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (default 10m) and
# prints the executions of each. Usage: scripts/fuzz.sh [fuzztime]
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-${FUZZTIME:-10m}}
summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
for pkg in $(go list ./...); do
	for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		echo "== $pkg $target ($fuzztime)"
		log=$(mktemp)
		if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" >"$log" 2>&1; then
			cat "$log"
			rm -f "$log"
			echo "FAIL: $target found a failing input (see testdata/fuzz in its package)" >&2
			exit 1
		fi
		# The last progress line: "fuzz: elapsed: 10m0s, execs: 12345678 (20576/sec), ..."
		line=$(grep -E '^fuzz: elapsed: .*execs: ' "$log" | tail -1)
		rm -f "$log"
		execs=$(sed -E 's/.*execs: ([0-9]+).*/\1/' <<<"$line")
		# The rate over the whole run: the last line's own rate is that of
		# its last interval.
		elapsed=$(sed -E 's/^fuzz: elapsed: ([^,]+),.*/\1/' <<<"$line")
		secs=$(awk -v d="$elapsed" 'BEGIN { t = 0
			while (match(d, /[0-9.]+[hms]/)) {
				v = substr(d, RSTART, RLENGTH); u = substr(v, length(v)); n = substr(v, 1, length(v) - 1) + 0
				t += (u == "h") ? n * 3600 : (u == "m") ? n * 60 : n; d = substr(d, RSTART + RLENGTH)
			}
			printf "%d", t }')
		printf '%s\t%s\t%s\t%s\n' "${pkg#github.com/caddy-affinity/caddy-affinity}" "$target" "$execs" "$((execs / (secs > 0 ? secs : 1)))" >>"$summary"
		echo "$line"
	done
done
echo
echo "| package | fuzz target | executions | per second |"
echo "|---|---|---|---|"
awk -F'\t' '{ p = ($1 == "") ? "." : substr($1, 2); printf "| %s | %s | %\047d | %\047d |\n", p, $2, $3, $4 }' "$summary"
