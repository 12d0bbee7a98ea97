-- dhsm.net: the network path between a client and an appliance.
--
--   net.tcp{host=, port=1792, timeout=2}        --> {open=true, ms=, local_port=} | {open=false, reason=, ms=}
--   net.tcp_many(endpoints, {timeout=, limit=128}) --> answers in input order, probed at once
--   net.tls{host=, port=, timeout=, ca_file=, client_cert=, client_key=, client_key_passphrase=, server_name=, strict=}
--       (client_key may be PKCS#8 encrypted, as `vtl createCert` writes it: its
--       passphrase is a dhsm.secret, read in C, never a Lua string)
--       --> {ok=, protocol=, cipher=, verify={ok=, error=}, chain=, alert=, alert_code=, reason=, banner=,
--            local_port= (the port the server's log names this connection by)}
--       alert is the peer's fatal alert by its RFC 8446 name with '_' as a space
--       ("unknown ca", "certificate required"), as the NTLS log spells it; alert_code its number
--   net.certs(pem_or_path) / net.cert(pem_or_path) / net.same_cert(a, b)
--   net.ntls_log(text) --> {events=..., attempts=...}
--
-- Half the guide's failures are on this path: port 1792 blocked, an
-- appliance certificate regenerated or expired, a client certificate the
-- appliance does not know.  Probes answer; they do not raise (a closed port
-- is information).  Bad input raises a usage error.  With --verbose every
-- probe is written to the audit log too.
local core = require "dhsm.net.core"
local dhsm = require "dhsm"
local schema = require "dhsm.schema"
local util = require "dhsm.util"

local M = {}

-- Probes are audited only with --verbose (dhsm.verbose): they change
-- nothing, and a diagnose run makes hundreds.
local function audited(kind, opts, r)
  if dhsm.verbose then
    dhsm.audit.write { action = "net." .. kind, target = ("%s:%s"):format(tostring(opts.host), tostring(opts.port)),
      outcome = (r.open or r.ok) and "ok" or tostring(r.reason), duration_ms = r.ms }
  end
  return r
end

local HOST = { type = "string", required = true, pattern = "^.+$", expect = "a host name or address" }
local PORT = { type = "integer", min = 1, max = 65535 }
local SECONDS = { type = "number", min = 0, expect = "seconds (a number >= 0)" }
local PATH = { type = "string", pattern = "^.+$", expect = "a file path" }
local TCP_OPTIONS = { host = HOST, port = PORT, timeout = SECONDS }
local TLS_OPTIONS = { host = HOST, port = PORT, timeout = SECONDS, ca_file = PATH, client_cert = PATH,
  client_key = PATH, client_key_passphrase = { type = "secret" }, server_name = { type = "string" },
  strict = { type = "boolean" } }
local MANY_OPTIONS = { timeout = SECONDS, limit = { type = "integer", min = 1 } }

function M.tcp(opts)
  schema.options("net.tcp", opts, TCP_OPTIONS, true)
  return audited("tcp", opts, core.tcp(opts))
end

local function usage(fmt, ...)
  dhsm.error { kind = "usage", message = fmt:format(...) }
end

local function readable(path, what)
  if path ~= nil and not io.open(path, "rb") then usage("net.tls: cannot read %s %s", what, path) end
end

function M.tls(opts)
  schema.options("net.tls", opts, TLS_OPTIONS, true)
  readable(opts.ca_file, "ca_file")
  readable(opts.client_cert, "client_cert")
  readable(opts.client_key, "client_key")
  return audited("tls", opts, core.tls(opts))
end

-- tcp_many(list, {timeout=, limit=64}): list of {host=, port=[, timeout=]}
function M.tcp_many(list, opts)
  opts = schema.options("net.tcp_many", opts, MANY_OPTIONS) or {}
  if type(list) ~= "table" then usage("net.tcp_many: expected a list of {host=, port=}") end
  return dhsm.parallel(list, function(e)
    if type(e) ~= "table" then usage("net.tcp_many: each endpoint must be a table {host=, port=}") end
    return M.tcp { host = e.host, port = e.port, timeout = e.timeout or opts.timeout }
  end, { limit = opts.limit or 128 })
end

---------------------------------------------------------------------------
-- certificates

-- certs(pem_or_path) -> every certificate in the text or file
function M.certs(source)
  if type(source) ~= "string" then usage("net.certs: expected PEM text or a file path, got %s", type(source)) end
  local pem, where = source, "the given text"
  if not source:find("-----BEGIN", 1, true) then
    local data, err = util.read_file(source)
    if not data then usage("cannot read certificate file %s", err) end
    pem, where = data, source
  end
  local list = core.certs(pem)
  if #list == 0 then usage("no PEM certificate in %s", where) end
  return list
end

function M.cert(source)
  return M.certs(source)[1]
end

-- same_cert(a, b): a and b are PEM, paths or cert tables
function M.same_cert(a, b)
  local ca = type(a) == "table" and a or M.cert(a)
  local cb = type(b) == "table" and b or M.cert(b)
  return ca.sha256 == cb.sha256
end

---------------------------------------------------------------------------
-- NTLS syslog lines (the troubleshooting guide's format)

local function event_of(rest)
  if rest:find("Incoming connection request", 1, true) then return "incoming" end
  if rest:find("Error message from SSLAccept", 1, true) then return "accept_error" end
  if rest:find("Error during SSL accept", 1, true) then return "ssl_error" end
  if rest:find("RC_SSL_FAILED_HANDSHAKE", 1, true) then return "handshake_failed" end
  if rest:find("Connection instance added", 1, true) then return "added" end
  if rest:find("Connection instance removed", 1, true) then return "removed" end
  return "other"
end

-- The peer ("10.0.0.1/1000", "fe80::1/1000") a line ends with, if any.
-- Found from the end: an unanchored "([%x:]+/%d+)%s*$" rescans the whole
-- hex run from every start and took seconds on a 32 KB line.
local function trailing_peer(text)
  local last = util.suffix(util.trim(text), "%S")
  return last:match("^[%x:]+/%d+$") and last or nil
end

-- "... tlsv1 alert unknown ca" -> "unknown ca"; "...:certificate verify
-- failed" -> "certificate verify failed": the words ending the line.
local function trailing_words(text)
  local words = util.suffix(text, "[%w%s]")
  local alert = words:match("alert (.*)$")
  local reason = text:sub(-#words - 1, -#words - 1) == ":" and words:find("%w") and util.trim(words) or nil
  return alert and util.trim(alert), reason
end

local function parse_line(l)
  local stamp, host, pid, rest = l:match("^(%a%a%a%s+%d+ %d%d:%d%d:%d%d) (%S+) NTLS%[(%d+)%]: (.*)$")
  if not stamp then pid, rest = l:match("NTLS%[(%d+)%]: (.*)$") end
  if not rest then return nil end
  local code, msg = rest:match("^info : (%S+) : (.*)$")
  local e = { time = stamp, host = host, pid = tonumber(pid), code = code, message = msg or rest, line = l,
    event = event_of(rest) }
  e.peer = (msg or rest):match("%f[%d](%d+%.%d+%.%d+%.%d+/%d+)") or trailing_peer(msg or rest)
  e.client = rest:match('NTLS Client "([^"]*)"')
  if e.event == "accept_error" then e.alert, e.reason = trailing_words(rest) end
  return e
end

-- What an attempt's SSLAccept error means.  "tlsv1 alert unknown ca" is the
-- CLIENT's alert: it did not trust the appliance's certificate (stale
-- server.pem after sysconf regenCert: re-exchange).  "certificate verify
-- failed" is the appliance rejecting the client's certificate (not
-- registered: client register).  "probe": the connection closed before a
-- TLS hello (a TCP port check), which is no client's failure.
local function outcome_of(attempt)
  if attempt.added then return "ok" end
  -- closed before any TLS hello: a port probe (ours, a load balancer's), not a client
  local said = attempt.reason or attempt.alert or ""
  if attempt.failed and (said == "ssl handshake failure" or said:find("unexpected eof", 1, true)) then return "probe" end
  if attempt.alert == "unknown ca" or attempt.alert == "bad certificate" or attempt.alert == "certificate expired" then
    return "server_cert_rejected"
  end
  if attempt.reason and attempt.reason:find("certificate verify failed", 1, true) then return "client_cert_unknown" end
  if attempt.failed then return "handshake_failed" end
  if attempt.removed then return "removed" end
  return "pending"
end

-- ntls_log(text | lines) -> {events = {...}, attempts = {{peer=, outcome=, client=, alert=, lines=}}}
function M.ntls_log(input)
  local lines = input
  if type(input) == "string" then
    lines = util.lines(input, "NTLS log", "net")
  elseif type(input) == "table" then
    for i, l in ipairs(input) do
      if type(l) ~= "string" then usage("net.ntls_log: line %d is a %s, expected a string", i, type(l)) end
      util.check_lines(l, "NTLS log line " .. i, "net")
    end
  else
    usage("net.ntls_log: expected syslog text or a list of lines, got %s", type(input))
  end
  local events, attempts, open, pending = {}, {}, {}, {}
  local function note(a, e)
    a.lines[#a.lines + 1] = e.line
    if e.event == "accept_error" then a.alert, a.reason = e.alert, e.reason end
    if e.event == "handshake_failed" or e.event == "ssl_error" then a.failed = true end
    if e.event == "added" then a.added, a.client = true, e.client end
    if e.event == "removed" then a.removed = true end
  end
  for _, l in ipairs(lines) do
    local e = parse_line(l)
    if e then
      events[#events + 1] = e
      local pid = e.pid or 0
      if not e.peer then
        -- the SSLAccept errors name no peer: they belong to the next line of
        -- the same NTLS process that does (connections interleave)
        pending[pid] = pending[pid] or {}
        table.insert(pending[pid], e)
      else
        local a = open[e.peer]
        if e.event == "incoming" or a == nil then
          a = { peer = e.peer, time = e.time, lines = {} }
          attempts[#attempts + 1] = a
          open[e.peer] = a
        end
        for _, p in ipairs(e.event ~= "incoming" and pending[pid] or {}) do note(a, p) end
        if e.event ~= "incoming" then pending[pid] = nil end
        note(a, e)
      end
    end
  end
  for _, a in ipairs(attempts) do a.outcome = outcome_of(a) end
  return { events = events, attempts = attempts }
end

return M
