#!/usr/bin/env bash
# The selection benchmarks of every policy beside the ones they are compared
# with, in one `go test -bench` run, reported as medians and ratios:
#   cookie/  sticky_cookie vs Caddy's cookie policy (a valid cookie)
#   ipaffinity/ ip_affinity vs Caddy's ip_hash and client_ip_hash
#   l4/      layer4 ip_affinity vs caddy-l4's ip_hash
# Usage: scripts/bench-go.sh [count]   (default 5 runs of each)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-5}
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT
go test -run '^$' -bench 'Benchmark(Select|IPSelect|L4Select)$' -benchmem -count "$count" \
	./cookie/ ./ipaffinity/ ./l4/ | tee "$raw" | grep -E '^(goos|goarch|cpu):' | sort -u
awk '
/^Benchmark(Select|IPSelect|L4Select)\// {
	split($1, parts, "/")
	suite = parts[1]; sub(/^Benchmark/, "", suite)
	n = parts[2]; sub(/upstreams=/, "", n)
	pol = parts[3]; sub(/policy=/, "", pol); sub(/-[0-9]+$/, "", pol)
	key = suite SUBSEP n SUBSEP pol
	cnt[key]++; ns[key, cnt[key]] = $3; allocs[key] = $7
	if (!(suite SUBSEP n in seenN)) { seenN[suite SUBSEP n] = 1 }
	if (!(suite SUBSEP pol in seenP)) { seenP[suite SUBSEP pol] = 1; order[suite] = order[suite] " " pol }
	suites[suite] = 1; ns_list[suite] = ns_list[suite] " " n
}
function median(key,   i, j, t, m, a) {
	m = cnt[key]
	for (i = 1; i <= m; i++) a[i] = ns[key, i] + 0
	for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
	return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
}
END {
	split("Select IPSelect L4Select", S, " ")
	for (si = 1; si <= 3; si++) {
		s = S[si]; if (!(s in suites)) continue
		np = split(substr(order[s], 2), P, " ")
		printf "\n%s (median ns/op of %d runs; ratio = other policy / ours)\n", s, cnt[s SUBSEP 4 SUBSEP P[1]]
		printf "| upstreams |"; for (p = 1; p <= np; p++) printf " %s |", P[p]
		for (p = 2; p <= np; p++) printf " %s / %s |", P[p], P[1]
		printf "\n|---|"; for (p = 1; p < 2 * np; p++) printf "---|"; printf "\n"
		split("4 16 64", N, " ")
		for (ni = 1; ni <= 3; ni++) {
			n = N[ni]; ours = median(s SUBSEP n SUBSEP P[1])
			printf "| %s |", n
			for (p = 1; p <= np; p++) printf " %.0f ns, %s allocs |", median(s SUBSEP n SUBSEP P[p]), allocs[s SUBSEP n SUBSEP P[p]]
			for (p = 2; p <= np; p++) printf " %.1fx |", median(s SUBSEP n SUBSEP P[p]) / ours
			printf "\n"
		}
	}
}' "$raw"
