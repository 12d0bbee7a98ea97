-- dhsm.client.ntls: the certificate exchange between a Luna client and one
-- appliance (the guide's "NTLS" section), diagnosed and repaired.
--
--   local ntls = require "dhsm.client.ntls"
--   local d = ntls.diagnose(entry, client, session)   -- client: ntls.client(inventory)
--   --> {tcp=, tls=, server_changed=, ntls_stale=, client_name=, registered=, client_rejected=,
--   --   client_days_left=, partitions={...}, syslog={lines...}, findings={{code=, text=}}}
--   ntls.readd_server(client, entry, pem_path); ntls.register_client(client, entry, session, diagnosis, partitions)
--   ntls.vtl_verify(client) --> {ok=, partitions={{slot=, serial=, label=}} | nil, text=, error=}
--   ntls.client_cert(client) --> net.cert; ntls.client_cert_file(client) --> path; ntls.renew_client_cert(client, name) --> the new one (vtl createCert)
--   ntls.inspect(entry, client, session)  -- the same without a handshake: for a read-only health check
--   ntls.tcp(entry); ntls.handshake(client, entry, {strict=, server_name=, need_trust=}) --> net.tcp's, net.tls's answer
--
-- What is compared, and why: the appliance's server.pem (fetched over SCP)
-- against the certificates the client trusts (its ServerCAFile) says
-- whether `sysconf regenCert` happened since the exchange; the certificate
-- NTLS presents against server.pem says whether NTLS was restarted since;
-- the NTLS syslog lines of our own handshake say whether the appliance
-- knows the client's certificate ("certificate verify failed").  A probe
-- without the client's certificate would only add failures to that log.
local chrystoki = require "dhsm.chrystoki"
local dhsm = require "dhsm"
local net = require "dhsm.net"
local parse = require "dhsm.luna.parse"
local proc = require "dhsm.proc"
local schema = require "dhsm.schema"
local util = require "dhsm.util"

local M = {}

---------------------------------------------------------------------------
-- what the public functions take: checked first (the one option reader,
-- dhsm.schema.options), so a wrong argument is a usage error naming it and
-- what was expected, not a Lua error from deep inside

local ENTRY = { host = { type = "string", required = true }, name = { type = "string" },
  ntls_port = { type = "integer", min = 1, max = 65535 }, client_ip = { type = "string" } }
local CLIENT = { conf_path = { type = "string", required = true, expect = "the path of Chrystoki.conf" },
  vtl = { type = "string" } }
local DIAGNOSIS = { client_name = { type = "string", required = true }, registered = { type = "boolean" },
  client_rejected = { type = "boolean" }, partitions = { type = "table" } }
local HANDSHAKE = { strict = { type = "boolean" }, server_name = { type = "string" }, need_trust = { type = "boolean" },
  files = { type = "table" } }
local INSPECT = { workdir = { type = "string" }, own_ports = { type = "table" }, entries = { type = "integer", min = 1 } }

local function usage(where, what, expected, v)
  schema.bad_argument("ntls." .. where, what, expected, v)
end

local function record(where, what, v, fields, expected)
  schema.record_argument("ntls." .. where, what, v, fields, expected)
end

local function entry_arg(where, entry)
  record(where, "entry", entry, ENTRY, "an inventory HSM entry (inv:hsm(NAME))")
end

local function client_arg(where, client)
  record(where, "client", client, CLIENT, "the client install (ntls.client(inventory))")
end

local function session_arg(where, session)
  local ok = (type(session) == "table" or type(session) == "userdata") and type(session.must) == "function"
  if not ok then usage(where, "session", "a LunaSH session (luna.open or hsm(NAME))", session) end
end

-- Days before a client certificate's end that are worth a warning.
M.EXPIRY_WARN_DAYS = 30
-- Seconds to wait for the NTLS log lines of our own handshake.
M.LOG_WAIT = 5

-- client(inventory) -> the client install (dhsm.chrystoki.install) with its vtl
function M.client(inv)
  return chrystoki.install(inv, { "vtl" })
end

local function files(client)
  return chrystoki.load(client.conf_path):client_cert()
end

-- vtl(client, ...) -> the run; vtl's own words decide, as for lunacm
local function vtl(client, ...)
  local argv = { client.vtl }
  for _, a in ipairs { ... } do argv[#argv + 1] = a end
  local r = proc.run { argv = argv, env = client.env, timeout = 60 }
  -- an Error: line of vtl's own, never the words inside a listed label
  r.failed = ("\n" .. r.stdout):match("\n[ \t]*Error: ([^\n]*)")
  return r
end

-- vtl_verify(client) -> {ok=, partitions = {{slot=, serial=, label=}}, text=, error=}
-- ok: vtl lists at least one partition.  When vtl says it failed (an
-- `Error:` line), error= is its words and partitions is nil - not read as
-- "none".  A vtl that ended otherwise than by exiting 0 without saying
-- why (killed, or a non-zero status and no `Error:` line) may have printed
-- half its listing: a luna/VtlFailed error naming its status, never a
-- reading.  Otherwise its listing is read by dhsm.luna.parse.vtl_verify,
-- which raises on a layout it does not know or a listing cut short.
function M.vtl_verify(client)
  client_arg("vtl_verify", client)
  local r = vtl(client, "verify")
  if r.failed then return { ok = false, text = r.stdout, error = r.failed } end
  if r.signal or r.status ~= 0 then
    dhsm.error { kind = "luna", code = "VtlFailed", details = { status = r.status, signal = r.signal },
      message = ("vtl verify ended %s without saying why: its listing is not read"):format(r.signal
        and ("by signal " .. tostring(r.signal)) or ("with exit status " .. tostring(r.status))) }
  end
  local parts = parse.vtl_verify(r.stdout)
  return { ok = #parts > 0, partitions = parts, text = r.stdout }
end

-- The NTLS lines of the appliance's log (`syslog tail`), newest last.
local function syslog(session, entries)
  session_arg("syslog", session)
  if entries ~= nil and math.type(entries) ~= "integer" then usage("syslog", "entries", "a whole number of lines", entries) end
  local text = session:must(("syslog tail -logname messages -entries %d -search NTLS"):format(entries or 40)).text
  local lines = {}
  for l in text:gmatch("[^\r\n]+") do
    if l:find("NTLS[", 1, true) then lines[#lines + 1] = l end
  end
  return lines
end
M.syslog = syslog

-- The lines of after that came since before's last line (both windows of
-- the same log: the window moves, so counting lines would not do).
local function since(before, after)
  local last = before[#before]
  for i = #after, 1, -1 do
    if after[i] == last then return { table.unpack(after, i + 1) } end
  end
  return after
end

-- The certificates the client trusts (its ServerCAFile): a list, empty
-- when the file holds none (vtl deleteServer of the last server empties
-- it); nil and why when there is no such file to read, or what it holds
-- is not certificates (a corrupt file is broken, not "trusts nothing").
local function trust_list(path)
  local data, err = util.read_file(path)
  if not data then return nil, err end
  if not data:find("-----BEGIN", 1, true) then return {} end
  local ok, list = pcall(net.certs, data)
  if not ok then return nil, dhsm.error.normalize(list).message end
  return list
end

-- port(entry) -> the appliance's NTLS port
function M.port(entry)
  entry_arg("port", entry)
  return entry.ntls_port or 1792
end

-- tcp(entry) -> net.tcp's answer from the appliance's NTLS port
function M.tcp(entry)
  entry_arg("tcp", entry)
  return net.tcp { host = entry.host, port = M.port(entry), timeout = 2 }
end

-- handshake(client, entry [, {strict=, server_name=, need_trust=, files=}]) -> net.tls's answer:
-- the handshake dhsm makes as the client (diagnose's, and dhsm.client.ha's
-- probe), with the client's certificate and key (encrypted: its passphrase
-- is the inventory's client.key_passphrase), trusting only what the client
-- trusts.  strict: give up as the client would on a server certificate it
-- does not trust, so the appliance logs what the client's own failure looks
-- like; else the handshake goes on and tls.verify says what was wrong.
-- need_trust: a ServerCAFile that cannot be read is a usage error (the
-- install is broken), not an answer.  files: the client's certificate
-- files, when the caller read Chrystoki.conf for them already.
function M.handshake(client, entry, opts)
  client_arg("handshake", client)
  entry_arg("handshake", entry)
  opts = schema.options("ntls.handshake", opts, HANDSHAKE) or {}
  local cert = opts.files or files(client)
  local trusted, unreadable = trust_list(cert.ca)
  if not trusted and opts.need_trust then
    dhsm.usage("the client's trusted server certificates cannot be read (ServerCAFile %s): %s", cert.ca,
      tostring(unreadable))
  end
  if not trusted or #trusted == 0 then
    return { ok = false, reason = ("the client trusts no server certificate (%s %s)"):format(cert.ca,
      trusted and "holds none" or "cannot be read") }
  end
  return net.tls { host = entry.host, port = M.port(entry), timeout = 5, ca_file = cert.ca,
    client_cert = cert.cert, client_key = cert.key, client_key_passphrase = client.key_passphrase,
    strict = opts.strict, server_name = opts.server_name }
end

-- The NTLS lines since before, and our handshake's attempt among them
-- (the log names it by our port): the appliance writes them as its side of
-- the connection ends, so wait (a few seconds at most) for the attempt's
-- closing "Connection instance removed" line.
local function handshake_lines(session, before, tls)
  local peer = tls.local_port and ("/" .. tls.local_port)
  if not peer then return since(before, syslog(session, 50)), nil end   -- no connection was made
  local deadline = dhsm.now() + M.LOG_WAIT
  while true do
    local lines = since(before, syslog(session, 50))
    for _, a in ipairs(parse.ntls_log(lines).attempts) do
      if peer and a.peer:sub(-#peer) == peer and a.removed then return lines, a end
    end
    if dhsm.now() >= deadline then return lines, nil end
    dhsm.sleep(0.1)
  end
end

local function finding(d, code, text)
  d.findings[#d.findings + 1] = { code = code, text = text }
end

-- Is the certificate in pem one of those in the file at path?
local function trusted(path, pem)
  for _, c in ipairs(trust_list(path) or {}) do
    if net.same_cert(c, pem) then return true end
  end
  return false
end

-- The client certificate's name and expiry, into d (findings client_expired,
-- client_expiring).
local function client_expiry(d, cert)
  local mine = net.cert(cert.cert)
  d.client_name = mine.subject:match("CN=([^,/]+)")
  d.client_days_left = mine.days_left
  if mine.days_left < 0 then
    finding(d, "client_expired", ("the client certificate %s expired on %s"):format(cert.cert, mine.not_after))
  elseif mine.days_left < M.EXPIRY_WARN_DAYS then
    finding(d, "client_expiring", ("the client certificate %s expires in %d days (%s)"):format(cert.cert,
      mine.days_left, mine.not_after))
  end
end

-- Is entry's appliance (host and NTLS port) in the client's server list?
local function registered_server(client, entry)
  for _, srv in ipairs(chrystoki.load(client.conf_path):servers()) do
    if srv.name == entry.host and srv.port == M.port(entry) then return true end
  end
  return false
end

-- The appliance's server.pem (SCP) against what the client trusts, into d
-- (finding server_changed; d.first_exchange when the client has no server
-- entry for the appliance either: never exchanged, not regenerated since);
-- -> the server certificate.
local function server_state(d, entry, cert, session, workdir, client)
  local dir = workdir or (require("dhsm.act").scratch_dir("dhsm-ntls-"))   -- dhsm's own: a plan reads into it too
  d.server_pem = dir .. "/" .. entry.name .. "-server.pem"
  session:get("server.pem", d.server_pem)
  local server = net.cert(d.server_pem)
  d.server_days_left = server.days_left
  d.server_changed = not trusted(cert.ca, server)
  if d.server_changed then
    d.first_exchange = not registered_server(client, entry)
    finding(d, "server_changed", ("%s's server.pem (sha256 %s) is not among the certificates the client trusts "
      .. "(%s): %s"):format(entry.name, server.sha256:sub(1, 16), cert.ca, d.first_exchange
        and ("and the client has no server entry for %s:%d: no certificate exchange with it yet"):format(entry.host,
          M.port(entry))
        or "regenerated since the exchange"))
  end
  return server
end

-- Whether the appliance knows the client by its certificate's name, and
-- the partitions assigned to it, into d.
local function registration(d, session)
  for _, n in ipairs(parse.client_list(session:must("client list").text)) do
    if n == d.client_name then d.registered = true end
  end
  if d.registered then
    d.partitions = parse.client_show(session:must("client show -client " .. d.client_name).text).partitions
  end
end

-- inspect(entry, client, session [, {workdir=}]) -> what diagnose() finds
-- without connecting to NTLS at all: the client certificate's expiry, the
-- appliance's server.pem against the client's trusted copy, the
-- registration, and the outcome of the latest NTLS connection of each
-- peer in the appliance's log (d.last_attempts: {peer IP = attempt}).
-- For a read-only health check: no handshake, so no log line of ours but
-- those of a TCP probe, whose local ports opts.own_ports lists (ignored).
function M.inspect(entry, client, session, opts)
  entry_arg("inspect", entry)
  client_arg("inspect", client)
  session_arg("inspect", session)
  opts = schema.options("ntls.inspect", opts, INSPECT) or {}
  local d = { hsm = entry.name, findings = {} }
  local cert = files(client)
  client_expiry(d, cert)
  server_state(d, entry, cert, session, opts.workdir, client)
  registration(d, session)
  if not d.registered then
    finding(d, "client_unknown", ("client %s is not registered on %s"):format(tostring(d.client_name), entry.name))
  end
  d.syslog = syslog(session, opts.entries or 60)
  d.last_attempts = {}
  local own = {}
  for _, port in ipairs(opts.own_ports or {}) do own[tostring(port)] = true end
  for _, a in ipairs(parse.ntls_log(d.syslog).attempts) do
    local ip, port = a.peer:match("^(.*)/(%d+)$")
    ip = ip or a.peer
    if not own[port] and a.outcome ~= "pending" and a.outcome ~= "removed" and a.outcome ~= "probe" then
      d.last_attempts[ip] = a                  -- a connection that tried TLS: a client's
    end
  end
  return d
end

-- diagnose(entry, client, session [, {workdir=}]) -> the diagnosis (see top)
function M.diagnose(entry, client, session, opts)
  entry_arg("diagnose", entry)
  client_arg("diagnose", client)
  session_arg("diagnose", session)
  opts = schema.options("ntls.diagnose", opts, INSPECT) or {}
  local d = { hsm = entry.name, findings = {} }
  local cert = files(client)
  d.tcp = M.tcp(entry)
  if not d.tcp.open then
    finding(d, "port_closed", ("TCP %d on %s: %s; NTLS needs it open (guide: check 1792 before certificates)")
      :format(M.port(entry), entry.name, tostring(d.tcp.reason)))
    return d
  end
  client_expiry(d, cert)
  local server = server_state(d, entry, cert, session, opts.workdir, client)
  local before = syslog(session, 50)
  d.tls = M.handshake(client, entry, { strict = true, files = cert })
  local presented = d.tls.chain and d.tls.chain[1]
  d.ntls_stale = presented ~= nil and not net.same_cert(presented, server)
  if d.ntls_stale then
    finding(d, "ntls_restart", ("NTLS on %s still presents its old certificate: server.pem was regenerated and "
      .. "NTLS not restarted since"):format(entry.name))
  end
  local ours
  d.syslog, ours = handshake_lines(session, before, d.tls)
  d.client_rejected = ours ~= nil and ours.outcome == "client_cert_unknown"
  registration(d, session)
  if not d.registered then
    finding(d, "client_unknown", ("client %s is not registered on %s"):format(tostring(d.client_name), entry.name))
  elseif d.client_rejected then
    finding(d, "client_stale", ("%s rejects client %s's certificate (\"certificate verify failed\" in its log): %s")
      :format(entry.name, d.client_name, d.client_days_left < 0 and "it has expired"
        or "the registration holds another certificate"))
  end
  d.ok = #d.findings == 0 or (#d.findings == 1 and d.findings[1].code == "client_expiring")
  return d
end

-- client_cert_file(client) -> the path of the client's certificate (Chrystoki.conf's ClientCertFile)
function M.client_cert_file(client)
  client_arg("client_cert_file", client)
  return files(client).cert
end

-- client_cert(client) -> the certificate the client presents (net.cert: days_left=, not_after=, ...)
function M.client_cert(client)
  client_arg("client_cert", client)
  return net.cert(files(client).cert)
end

-- renew_client_cert(client, name) -> the new certificate: `vtl createCert -n
-- NAME` writes a new key pair (the key encrypted with the client's
-- passphrase) and certificate, and points Chrystoki.conf at them.  Success
-- is a new certificate in place, not what vtl printed.
function M.renew_client_cert(client, name)
  client_arg("renew_client_cert", client)
  if type(name) ~= "string" or name == "" then usage("renew_client_cert", "name", "the certificate's name (a string)", name) end
  local before = M.client_cert(client)
  local r = vtl(client, "createCert", "-n", name)
  if r.check then return nil end                  -- check mode: described (dhsm.proc's gate)
  local ok, now = pcall(M.client_cert, client)
  if r.failed or not ok or net.same_cert(now, before) then
    dhsm.error { kind = "luna", code = "VtlFailed", message = ("vtl createCert -n %s made no new certificate: %s")
      :format(name, tostring(r.failed or util.trim(r.stdout))) }
  end
  return now
end

-- readd_server(client, entry, pem): vtl deleteServer (when listed), then addServer with pem
function M.readd_server(client, entry, pem)
  client_arg("readd_server", client)
  entry_arg("readd_server", entry)
  if type(pem) ~= "string" then usage("readd_server", "pem", "the server certificate's file (a path)", pem) end
  local port = tostring(M.port(entry))
  if registered_server(client, entry) then        -- gone already when a killed run is resumed
    local r = vtl(client, "deleteServer", "-n", entry.host, "-p", port)
    if r.failed and not r.failed:find("not registered", 1, true) then
      dhsm.error { kind = "luna", code = "VtlFailed", message = "vtl deleteServer: " .. r.failed }
    end
  end
  local r = vtl(client, "addServer", "-n", entry.host, "-c", pem, "-p", port)
  if r.check then return end                      -- check mode: described (dhsm.proc's gate)
  -- already there with this very certificate: the addServer of a run killed
  -- before it heard the answer (the tool outlives it) got there first
  local added = r.stdout:find("successfully added", 1, true) or (r.stdout:find("already registered", 1, true)
    and trusted(chrystoki.load(client.conf_path):client_cert().ca, net.cert(pem)))
  if not added then
    dhsm.error { kind = "luna", code = "VtlFailed", message = "vtl addServer: " .. tostring(r.failed or util.trim(r.stdout)) }
  end
end

-- register_client(client, entry, session, d, partitions): bring the
-- appliance's registration of this client to what d, a fresh diagnosis,
-- says is missing: a registration holding another certificate is deleted
-- (the caller confirmed it), the client's certificate uploaded as <ip>.pem
-- and registered, and the partitions not yet assigned assigned.  Working
-- from the state as it is, a resumed run sends nothing twice.
function M.register_client(client, entry, session, d, partitions)
  client_arg("register_client", client)
  entry_arg("register_client", entry)
  session_arg("register_client", session)
  record("register_client", "d", d, DIAGNOSIS, "a diagnosis (ntls.diagnose)")
  if type(partitions) ~= "table" then usage("register_client", "partitions", "a list of partition names", partitions) end
  local name = d.client_name
  local ip = entry.client_ip or "127.0.0.1"
  local assigned = {}
  if d.registered and d.client_rejected then
    session:must("client delete -client " .. name .. " -force")
  elseif d.registered then
    for _, p in ipairs(d.partitions or {}) do assigned[p] = true end
  end
  if not d.registered or d.client_rejected then
    session:put(files(client).cert, ip .. ".pem")
    session:must(("client register -client %s -ip %s"):format(name, ip))
  end
  for _, p in ipairs(partitions) do
    if not assigned[p] then session:must(("client assignPartition -client %s -partition %s"):format(name, p)) end
  end
end

return M
