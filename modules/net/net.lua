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

local usage = dhsm.usage

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
-- certificates of source, said by the function called (net.cert or net.certs)
local function certs_of(fn, source)
  schema.argument(fn, "source", source, { type = "string", required = true, expect = "PEM text or a file path" })
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

function M.certs(source)
  return certs_of("net.certs", source)
end

function M.cert(source)
  return certs_of("net.cert", source)[1]
end

-- same_cert(a, b): a and b are PEM, paths or cert tables
function M.same_cert(a, b)
  local ca = type(a) == "table" and a or M.cert(a)
  local cb = type(b) == "table" and b or M.cert(b)
  return ca.sha256 == cb.sha256
end

return M
