-- sticky.lua: wrk script for `make bench`, used unchanged by every case so
-- that the client does the same work whatever the proxy does.
--
-- wrk has no per-connection hook, so the script simulates a pool of clients:
-- the first <pool> responses that set cookie <name> each become one
-- client's cookie, and once the pool is full every request carries the
-- cookie of the next client in turn. Until then requests carry no cookie,
-- so each client is balanced afresh exactly once, like a browser's first
-- visit. Cases without a cookie pass an empty name and never fill the pool.
--
-- Every request also names its client in X-Forwarded-For, which the proxy
-- trusts from loopback (all Caddy cases, HAProxy's balance source case):
-- until the pool is full (and for ever in cases
-- without a cookie) the requests take <addresses> client addresses in
-- turn, 10.0.0.1 onwards; each simulated cookie client keeps one. So the
-- IP cases see many clients spread over the backends, as in production,
-- not the one loopback address wrk connects from.
--
-- A name "header:<name>" makes the script do the same with a response
-- header instead: the first <pool> responses that carry it each become one
-- client's, echoed as that header (as an MCP client echoes Mcp-Session-Id).
--
-- Arguments (after --): <cookie name> <pool size> <path> <addresses>
-- done() prints one machine-readable line starting with "BENCH".

local name, prefix, size, path, hname
local plain = {} -- the requests without a cookie, one per client address
local pool = {}  -- one formatted request per simulated cookie client
local n, i, j = 0, 0, 0

-- xff is the a-th client address (a >= 1).
local function xff(a)
	return string.format("10.%d.%d.%d", math.floor(a / 65536) % 256, math.floor(a / 256) % 256, a % 256)
end

-- Thread globals read by done() through thread:get.
responses = 0
late = 0 -- responses setting the cookie after the pool was full

function init(args)
	name = args[1] or ""
	prefix = name .. "="
	if name:sub(1, 7) == "header:" then
		hname = name:sub(8)
	end
	size = tonumber(args[2]) or 32
	path = args[3] or "/"
	for a = 1, tonumber(args[4]) or 256 do
		plain[a] = wrk.format("GET", path, { ["X-Forwarded-For"] = xff(a) })
	end
end

function request()
	if n < size then
		j = j % #plain + 1
		return plain[j]
	end
	i = i % n + 1
	return pool[i]
end

function response(status, headers, body)
	responses = responses + 1
	if name == "" then
		return
	end
	local v, h
	if hname then
		v = headers[hname] or headers[hname:lower()]
		if v == nil then
			return
		end
		h = { [hname] = v, ["X-Forwarded-For"] = xff(n + 1) }
	else
		-- HAProxy writes header names in lower case, Go's servers in
		-- canonical case; wrk keeps the last of repeated headers.
		local sc = headers["Set-Cookie"] or headers["set-cookie"]
		if sc == nil or sc:sub(1, #prefix) ~= prefix then
			return
		end
		h = { Cookie = sc:match("^[^;]*"), ["X-Forwarded-For"] = xff(n + 1) }
	end
	if n >= size then
		late = late + 1
		return
	end
	n = n + 1
	pool[n] = wrk.format("GET", path, h)
end

local threads = {}

function setup(thread)
	table.insert(threads, thread)
end

function done(summary, latency, requests)
	local resp, lt = 0, 0
	for _, t in ipairs(threads) do
		resp = resp + t:get("responses")
		lt = lt + t:get("late")
	end
	local e = summary.errors
	io.write(string.format(
		"BENCH requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
		"connect=%d read=%d write=%d status=%d timeout=%d responses=%d late=%d\n",
		summary.requests, summary.duration,
		latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
		e.connect, e.read, e.write, e.status, e.timeout, resp, lt))
end
