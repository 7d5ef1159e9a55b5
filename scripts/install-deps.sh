#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks drive (the seed's
# Apache, nginx and lighttpd, redis-server for the session store, chromium
# for the status page; wrk and HAProxy for `make bench`) when one is
# missing and this runs as root with apt-get. Otherwise it says what is
# missing and the tests that need it skip with the same message (CI sets
# AFFINITY_REQUIRE_SERVERS, under which they fail instead).
set -u
want=(apache2:/usr/sbin/apache2 nginx:/usr/sbin/nginx lighttpd:/usr/sbin/lighttpd redis-server:/usr/bin/redis-server chromium:/usr/bin/chromium)
if [ "${1:-}" = "--bench" ]; then
	want+=(wrk:/usr/bin/wrk haproxy:/usr/sbin/haproxy)
fi
missing=()
for w in "${want[@]}"; do
	[ -x "${w#*:}" ] || missing+=("${w%%:*}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "installing ${missing[*]} from Debian's packages"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null || {
		echo "apt-get install ${missing[*]} failed" >&2
		exit 1
	}
	exit 0
fi
echo "not installed: ${missing[*]} (apt-get install ${missing[*]}); the tests that need them will skip"
exit 0
