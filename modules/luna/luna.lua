-- dhsm.luna: the appliance's LunaSH over SSH, with the guide's safety rules.
--
--   local luna = require "dhsm.luna"
--   local s <close> = luna.connect{ host=, port=22, user="tenantadmin", password=secret | key=path,
--                                   known_hosts=path, host_key="strict"|"accept-new", timeout=30,
--                                   connect_timeout=10, name= }
--     (timeout: per command; connect_timeout: the TCP connect and SSH handshake.  An RSA key=
--     fails against OpenSSH >= 8.8: libssh2 1.10 signs RSA only with SHA-1; use Ed25519 or ECDSA)
--   -- or luna.open(inventory:hsm("hsm1"))
--   -- an appliance fresh from Microsoft: the first login must change the password
--   local s = luna.first_login(inventory:hsm("hsm1"), { new_password = secret.prompt("new password") })
--   local r = s:run("partition list")      --> {ok=, code=, text=, error={code=, hex=, lines=}, command=, canonical=}
--   s:must("client list")                   -- raises a luna error when the command failed
--   s:hsm_show(); s:partitions()            -- parsed (dhsm.luna.parse)
--   s:zeroize_by_failed_logins(serial, {zeroize=true})  -- the guide's quickest zeroization, guarded
--   s:login_so(password, {allow_destructive_login=})   -- the failed-login guard
--   s:run("audit login", {password=secret})             -- logins in run() take the same path
--   s:get(remote, local_path); s:put(local_path, remote)
--   luna.classify("par cr -par p1")         --> "write", "partition create"
--
-- One SSH session and one LunaSH shell serve every command.  Prompts
-- (`Type 'proceed'`, passwords) are answered from opts.answers, secrets
-- allowed and never written anywhere; a password prompt nobody answers
-- closes the session rather than submit a wrong password.  A read is
-- audited once; a command that may change something, a login, a file copy
-- and a first-login password change pass the gate (dhsm.act): its rule,
-- check mode (described, not sent), the confirmation of what cannot be
-- undone (LUNASH_DESTRUCTIVE, a zeroization by failed logins), "sending"
-- before it is written (so a process killed while `hsm zeroize` runs still
-- leaves a record), then its result.
-- Safety (docs/safety.md), whatever the caller: logins go through
-- dhsm.guard, and the gate's rule for a LunaSH command refuses a reboot
-- without the KB0019789 fix installed and a network change that would cut
-- the path this session uses.
--
-- Logins cannot go around the guard: the SSH session and shell channel are
-- kept in a table private to this file (not in the session's fields), the
-- SSH module itself is private to it (runtime/modules.c), and the one
-- function that writes a line to the shell classifies it and refuses a
-- login - however spelled: abbreviated, any case, quoted, options before
-- the verb, ambiguous - unless the guarded login path passes a capability
-- only it holds.  (Lua's debug, io.popen and os.execute stay what they are:
-- this closes dhsm's API, it is not a sandbox.)
local act = require "dhsm.act"
local dhsm = require "dhsm"
local commands = require "dhsm.guard.commands"
local prompts = require "dhsm.luna.prompts"
local guard = require "dhsm.guard"
local parse = require "dhsm.luna.parse"
local schema = require "dhsm.schema"
local secret = require "dhsm.secret"
local util = require "dhsm.util"
local ssh = util.native(select(3, ...), "dhsm.luna.ssh")

local M = {}

-- The reboot fix as the guide and Microsoft call it; what `package list`
-- really calls it is unconfirmed, so an inventory entry may name it
-- (reboot_fix_package), matched as a substring in any case.
M.REBOOT_FIX = "KB0019789"
local PROMPT = "%[([^%]\r\n]+)%] lunash:>%s*$"

local usage = dhsm.usage

---------------------------------------------------------------------------
-- what a command does (commands and options may be abbreviated)

-- What LunaSH would do with a line (dhsm.guard.commands), and what cannot
-- be undone, asked for outside playbook steps.  (Locals, which is what the
-- write path calls: assigning to luna.classify changes nothing there.)
local classify = commands.lunash
local DESTRUCTIVE = commands.LUNASH_DESTRUCTIVE
-- The commands that destroy key material: each needs a last-copy clearance
-- on an appliance whose partitions hold objects (check_last_copies).
local KEY_MATERIAL = commands.LUNASH_KEY_MATERIAL
-- (the public one names itself when its line is not a string)
function M.classify(line)
  return classify(schema.argument("luna.classify", "line", line, "string"))
end
M.DESTRUCTIVE = DESTRUCTIVE

-- The command as it may be written down: as typed, the value of every
-- option LunaSH could read as a secret (a password, a cloning domain ...)
-- masked, however abbreviated - and nothing else: -p abbreviates
-- -partition as often, and the operator must see which partition a
-- command names (dhsm.guard.commands.lunash_shown).
local function masked(command)
  return commands.lunash_shown(command, true)
end

---------------------------------------------------------------------------
-- sessions

local Session = {}
Session.__index = Session
-- What the REPL completes (and the docs list); the rest is this module's own.
Session.__public = { "run", "must", "hsm_show", "partitions", "packages", "network", "login_so",
  "zeroize_by_failed_logins", "zeroized_evidence", "check_reboot_fix", "check_network_change", "check_last_copies", "get",
  "put", "close" }

-- The options of luna.connect (luna.open's merge those of the inventory
-- entry), first_login and a session's run/must, for the one option reader.
local SECONDS = { type = "number", min = 0, expect = "seconds (a number >= 0)" }
local PATH = { type = "string", pattern = "^.+$", expect = "a file path" }
local SESSION_OPTIONS = { port = { type = "integer", min = 1, max = 65535 }, user = { type = "string" },
  password = { type = "secret", expect = "a secret (secret.env/file/prompt), not a plain string" },
  key = PATH, passphrase = { type = "secret" }, known_hosts = PATH,
  host_key = { type = "enum", values = { "strict", "accept-new" } }, timeout = SECONDS, name = { type = "string" },
  connect_timeout = { type = "number", min = 0.001, expect = "seconds for the TCP connect and SSH handshake (> 0)" } }
local CONNECT_OPTIONS = util.merged(SESSION_OPTIONS, {
  host = { type = "string", required = true, pattern = "^.+$", expect = "a host name or address" } })
local FIRST_LOGIN_OPTIONS = { new_password = { type = "secret", required = true,
  expect = "a secret (secret.env/file/prompt), not a plain string" }, timeout = SECONDS,
  host_key = SESSION_OPTIONS.host_key }
local RUN_OPTIONS = { timeout = SECONDS, answers = { type = "table" }, proceed = { type = "boolean" },
  password = SESSION_OPTIONS.password, allow_destructive_login = { type = "boolean" },
  allow_without_reboot_fix = { type = "boolean" }, allow_cutting_path = { type = "boolean" },
  zeroize = { type = "boolean" }, allow_last_copies = { type = "boolean" },
  last_copies_cleared = { type = "table", expect = "a last-copy clearance (dhsm.client.copies.clear)" } }

local function check_opts(o)
  schema.options("luna.connect", o, CONNECT_OPTIONS, true)
  if o.password == nil and o.key == nil then usage("luna.connect: give password= (a secret) or key= (a private key path)") end
end

local function known_hosts_path(o)
  return o.known_hosts or ((os.getenv("HOME") or "") .. "/.ssh/known_hosts")
end

-- The command that accepts a re-keyed appliance's new key (dhsm.cli's
-- `inventory trust`): the remedy a changed key's refusal names.
local function trust_command(name, sha256)
  return ("dhsm inventory trust %s --fingerprint %s"):format(name, sha256)
end

local function revoked(where, hk, path, line)   -- OpenSSH refuses it whatever else the file says; so do we
  dhsm.error { kind = "safety", code = "HostKeyRevoked",
    message = ("REVOKED HOST KEY DETECTED: the host key of %s (%s %s) is marked @revoked in %s line %d; "
      .. "not connecting"):format(where, hk.type, hk.sha256, path, line),
    details = { offered = hk.sha256, known_hosts = path, line = line } }
end

-- Record a key not on file, through the gate: in check mode described, not
-- written (the key is taken for this session only).
-- The first key recorded makes the file's folder when it is missing (mode
-- 0700, one level: ~/.ssh on a fresh account, as OpenSSH's ssh makes it).
local function record_new_key(s, path, where, name, hk)
  local folder = path:match("^(.*)/[^/]+$")
  local make = folder and folder ~= "" and not require("dhsm.sys").stat(folder)
  act.change({ kind = "file", action = "known_hosts", target = path, audit = "ssh.accept_new_host_key",
    what = ("record the host key of %s (%s %s) in %s%s"):format(where, hk.type, hk.sha256, path,
      make and (" (making its folder " .. folder .. ", mode 0700)") or ""),
    fields = { appliance = name, fingerprint = hk.sha256 }, planned = false,
    outcome = function() return "added" end }, function()
    if make then
      local ok, err = require("dhsm.sys").mkdir(folder, tonumber("700", 8))
      if not ok then
        dhsm.error { kind = "usage", code = "KnownHostsFolder",
          message = ("cannot make %s for the known_hosts file %s: %s"):format(folder, path, tostring(err)) }
      end
    end
    s:add_known_host(path)
  end)
end

-- Verify the appliance's host key against known_hosts (OpenSSH format).
-- A key not on file is recorded with host_key="accept-new", or when
-- accept(hk) says so (the operator's word: dhsm inventory discover).
-- -> the key, and "known" or "added"
local function verify_host_key(s, o, name, accept)
  local path = known_hosts_path(o)
  local hk = s:hostkey()
  local verdict, known, markers = s:known_hosts(path)
  local where = ("%s (%s:%d)"):format(name, o.host, o.port or 22)
  if verdict == "revoked" then revoked(where, hk, path, known) end
  if verdict == "match" then return hk, "known" end
  if verdict == "mismatch" then
    dhsm.error { kind = "safety", code = "HostKeyMismatch",
      message = ("the host key of %s does not match %s: known %s, offered %s. Someone may be in the path; "
        .. "if the appliance was really re-keyed (an appliance Microsoft resets gets a new host key), check the "
        .. "offered fingerprint on its console, then accept it with: %s"):format(
        where, path, known or "?", hk.sha256, trust_command(name, hk.sha256)),
      details = { known = known, offered = hk.sha256, known_hosts = path, remedy = trust_command(name, hk.sha256) } }
  end
  if (o.host_key or "strict") == "strict" and not (accept and accept(hk, where, path)) then
    dhsm.error { kind = "safety", code = "HostKeyUnknown",
      message = ("the host key of %s (%s %s) is not in %s; check it with the appliance's console and add it, "
        .. "or connect with host_key=\"accept-new\"%s"):format(where, hk.type, hk.sha256, path,
        markers and markers.cert_authority and (" (%s has @cert-authority lines for it: dhsm does not check host "
          .. "certificates, so only plain key lines count)"):format(path) or ""),
      details = { offered = hk.sha256, type = hk.type, known_hosts = path } }
  end
  record_new_key(s, path, where, name, hk)
  return hk, "added"
end

-- The raw SSH objects of each session: { ssh=, shell=, buf= }.  Here and
-- not in the session's fields, so no caller can write to the shell
-- around send_line.
local raw = setmetatable({}, { __mode = "k" })

-- The capability to write a login: held by the guarded login path only.
local LOGIN_PASS = setmetatable({}, { __tostring = function() return "luna login pass" end })

local read_until, send_line

-- What may come before the first prompt: an appliance fresh from Microsoft
-- makes the first interactive login change the password (luna-field.md
-- 1.1: a starred box, then Linux passwd's "New password:" - no current
-- password asked - and "Retype new password:").
local NEW_PASSWORD = "New password:%s*$"
local RETYPE = "Retype new password:%s*$"

-- A powered-off appliance drops SYNs: the connect waits this long, not the
-- command timeout, so the console is back soon with a message that says
-- which option sets it.
M.CONNECT_TIMEOUT = 10

local function peer(o)
  return ("%s (%s:%d)"):format(o.name or o.host, o.host, o.port or 22)
end

local function connect_ssh(o)
  local connect_timeout = o.connect_timeout or math.min(M.CONNECT_TIMEOUT, o.timeout or M.CONNECT_TIMEOUT)
  local ok, s = pcall(ssh.connect, { host = o.host, port = o.port or 22, timeout = connect_timeout,
    known_hosts = known_hosts_path(o) })        -- ssh asks for the host key types it holds first
  if ok then
    s:set_timeout(o.timeout or 30)
    return s
  end
  if dhsm.error.is(s, "net") and s.code == "Timeout" then
    dhsm.error { kind = "net", code = "Timeout", retryable = true,
      message = ("%s: no answer to the SSH connect within %g s (powered off, or a firewall dropping the "
        .. "packets?); connect_timeout= (luna.connect, or the inventory entry's 'connect_timeout') sets "
        .. "the wait"):format(peer(o), connect_timeout),
      details = { connect_timeout = connect_timeout, cause = s.message } }
  end
  error(s, 0)
end

-- libssh2 before 1.11 signs with an RSA key only as ssh-rsa (SHA-1), which
-- OpenSSH 8.8 and later refuse by default: the server's answer is then a
-- bare "Username/PublicKey combination invalid" for a key it does hold.
local function rsa_sha1_only()
  local major, minor = (require("dhsm.sys").versions().libssh2 or ""):match("^(%d+)%.(%d+)")
  return major ~= nil and (tonumber(major) < 1 or (tonumber(major) == 1 and tonumber(minor) < 11))
end

local function authenticate(s, o)
  if not o.key then return s:auth_password(o.user or "tenantadmin", o.password) end
  local ok, err = pcall(s.auth_key, s, o.user or "tenantadmin", o.key, o.passphrase)
  if ok then return end
  if dhsm.error.is(err, "luna") and err.code == "AuthenticationFailed" and ssh.is_rsa_key(o.key) and rsa_sha1_only() then
    dhsm.error { kind = "luna", code = "AuthenticationFailed",
      message = ("%s refused the RSA key %s. If the key is authorised there, the cause is the signature: "
        .. "libssh2 %s (Debian 12) signs with RSA keys only as ssh-rsa (SHA-1), which OpenSSH 8.8 and later "
        .. "refuse. Use an Ed25519 or ECDSA key, or the password"):format(peer(o), o.key,
        require("dhsm.sys").versions().libssh2),
      details = { libssh2 = err.message } }
  end
  error(err, 0)
end

-- SSH session, host key, authentication, shell: -> session, what came
-- before the first prompt or question, which (1 prompt, 2 new password).
local function open_shell(o)
  check_opts(o)
  local name = o.name or o.host
  local s = connect_ssh(o)
  local ok, hostkey = pcall(function()
    local hk = verify_host_key(s, o, name)
    authenticate(s, o)
    return hk
  end)
  if not ok then
    s:close()
    error(hostkey, 0)
  end
  local self = setmetatable({ name = name, host = o.host, port = o.port or 22, user = o.user or "tenantadmin",
    timeout = o.timeout or 30, turn = dhsm.semaphore(1), hostkey = hostkey }, Session)
  -- what the rules read is kept here, not in fields a caller can write
  raw[self] = { ssh = s, buf = "", host = o.host, reboot_fix = M.REBOOT_FIX }
  local text, which
  ok, text = pcall(function()
    raw[self].shell = s:shell { term = "vt100" }
    local t, w = read_until(self, { PROMPT, NEW_PASSWORD }, self.timeout)
    which = w
    return t
  end)
  if not ok then
    self:close()
    error(text, 0)
  end
  return self, text, which
end

local function at_prompt(self, text, t0, outcome)
  self.hostname = text:match(PROMPT)
  self.banner = text
  dhsm.audit.write { action = "luna.connect", target = self.name, outcome = outcome or "ok",
    duration_ms = (dhsm.now() - t0) * 1000 }
  return self
end

-- connect(opts) -> session, with the shell open at its first prompt.  An
-- appliance that demands a password change first is not answered: the
-- session is closed with a PasswordChangeRequired error (luna.first_login
-- is the way through).
function M.connect(o)
  local t0 = dhsm.now()
  local self, text, which = open_shell(o)
  if which == 2 then
    self:close()
    dhsm.audit.write { action = "luna.connect", target = self.name, outcome = "PasswordChangeRequired" }
    dhsm.error { kind = "luna", code = "PasswordChangeRequired",
      message = ("%s demands that the %s password be changed before its first prompt (an appliance fresh from "
        .. "Microsoft); nothing was answered and the session was closed. Change it once (in dhsm -i INVENTORY exec, or the REPL): "
        .. "require(\"dhsm.luna\").first_login(inv:hsm(%q), {new_password = secret.prompt(\"new password: \")}), "
        .. "then keep the new password where the inventory's 'password' points"):format(self.name, self.user, self.name) }
  end
  return at_prompt(self, text, t0)
end

-- connect_options(entry, opts) -> luna.connect's options for an inventory
-- entry (dhsm.inventory), those in opts winning: a key, when the entry
-- has one, is used instead of the password.
local function connect_options(entry, opts)
  local o = { host = entry.host, port = entry.ssh_port, user = entry.user, password = entry.key and nil or entry.password,
    key = entry.key, known_hosts = entry.known_hosts, name = entry.name, connect_timeout = entry.connect_timeout }
  for k, v in pairs(opts or {}) do o[k] = v end
  return o
end

-- The lines passwd and LunaSH printed about the change (never a password:
-- none is echoed).
local function passwd_lines(text)
  local out = {}
  for l in text:gsub("\r", ""):gmatch("[^\n]+") do
    if l:find("^passwd:") or l:find("^BAD PASSWORD") or l:find("^Sorry") or l:find("^Password change") then
      out[#out + 1] = util.trim(l)
    end
  end
  return out
end

-- first_login(entry, {new_password = secret [, timeout=]}) -> session at its
-- first prompt, with .password_changed.  Answers the forced change of an
-- appliance's first login (new password, typed twice); when the appliance
-- does not ask, nothing is sent and .password_changed is false.  The new
-- password must satisfy the appliance (at least 8 characters of 3 of the 4
-- classes, luna-field.md 1.1): a refusal is a PasswordChangeRejected error
-- quoting passwd's words.  The old password stays valid until then.
function M.first_login(entry, opts)
  if type(entry) ~= "table" then usage("luna.first_login: expected an inventory entry, got %s", type(entry)) end
  schema.options("luna.first_login", opts, FIRST_LOGIN_OPTIONS, true)
  local o = connect_options(entry, { timeout = opts.timeout, host_key = opts.host_key })
  local t0 = dhsm.now()
  local self, text, which = open_shell(o)
  if which == 1 then
    self.password_changed = false
    return at_prompt(self, text, t0, "ok (no password change asked)")
  end
  -- asked: the change passes the gate (in check mode the session closes, unchanged)
  return act.change({ kind = "luna", action = "first_login", target = self.name, fields = { user = self.user },
    what = ("change the %s password of %s at its first login"):format(self.user, self.name),
    planned = function() self:close() end,
    outcome = function(s) return "changed", { said = s.said } end,
  }, function()
    local ok, answer = pcall(function()
      send_line(self, opts.new_password)
      local seen = read_until(self, { RETYPE }, self.timeout)
      send_line(self, opts.new_password)
      return seen .. read_until(self, { PROMPT }, self.timeout)
    end)
    if not ok then
      local said = passwd_lines(raw[self].buf)
      self:close()
      if #said == 0 then error(answer, 0) end
      dhsm.error { kind = "luna", code = "PasswordChangeRejected",
        message = ("%s refused the new %s password: %s; the old one still applies"):format(self.name, self.user,
          table.concat(said, " ")), details = { said = said } }
    end
    self.password_changed = true
    self.said = table.concat(passwd_lines(answer), " ")
    return at_prompt(self, answer, t0)
  end)
end

-- open(entry [, opts]): connect to an inventory entry (dhsm.inventory)
function M.open(entry, opts)
  if type(entry) ~= "table" then usage("luna.open: expected an inventory entry (inv:hsm(name)), got %s", type(entry)) end
  schema.options("luna.open", opts, SESSION_OPTIONS)
  local s = M.connect(connect_options(entry, opts))
  s.reboot_fix_package = entry.reboot_fix_package          -- shown; the rule reads its own copy
  raw[s].reboot_fix = entry.reboot_fix_package or M.REBOOT_FIX
  return s
end

---------------------------------------------------------------------------
-- host keys without a login (dhsm inventory discover and trust)

local HOST_KEY_OPTIONS = { accept = { type = "function" }, host_key = SESSION_OPTIONS.host_key }
local TRUST_OPTIONS = { confirm = { type = "function" } }

-- with_ssh(entry, fn): fn(s, o, name, where, path) on an SSH connection to
-- the entry (no login), closed after whatever fn did.
local function with_ssh(what, entry, fn)
  if type(entry) ~= "table" then usage("%s: expected an inventory entry (inv:hsm(name)), got %s", what, type(entry)) end
  local o = connect_options(entry)
  schema.options(what, o, CONNECT_OPTIONS, true)
  local name = o.name or o.host
  local s = connect_ssh(o)
  local r = table.pack(pcall(fn, s, o, name, ("%s (%s:%d)"):format(name, o.host, o.port or 22), known_hosts_path(o)))
  s:close()
  if not r[1] then error(r[2], 0) end
  return table.unpack(r, 2, r.n)
end

-- host_key(entry [, {accept = fn(hk, where, path) -> bool, host_key=}]) ->
-- {type=, sha256=, known_hosts=, status = "known"|"added"}: the appliance's
-- SSH host key (no login), checked as every connect checks it: on file and
-- matching, "known"; not on file, recorded (the gate, audited
-- ssh.accept_new_host_key) when accept(hk) says so or host_key is
-- "accept-new", else HostKeyUnknown; changed, HostKeyMismatch naming the
-- command that accepts it; revoked, HostKeyRevoked.
function M.host_key(entry, opts)
  opts = opts or {}
  schema.options("luna.host_key", opts, HOST_KEY_OPTIONS)
  return with_ssh("luna.host_key", entry, function(s, o, name, _, path)
    o.host_key = opts.host_key
    local hk, status = verify_host_key(s, o, name, opts.accept)
    return { type = hk.type, sha256 = hk.sha256, known_hosts = path, status = status }
  end)
end

-- trust_host_key(entry, fingerprint [, {confirm = fn(change)}]) -> {type=,
-- sha256=, old=, known_hosts=, status = "known"|"replaced"|"added"}: the
-- explicit acceptance of a re-keyed appliance's new key.  Only a key whose
-- SHA256 fingerprint is exactly `fingerprint` (what the operator read on
-- the appliance's console) is taken; confirm({type=, old=, sha256=, where=,
-- known_hosts=}) - the operator's word, raising when not given - runs
-- before the line is replaced, through the gate (audited
-- ssh.replace_host_key, with both fingerprints; described in check mode).
-- Every other line of the file is kept as it is.
function M.trust_host_key(entry, fingerprint, opts)
  opts = opts or {}
  schema.argument("luna.trust_host_key", "fingerprint", fingerprint, "string")
  schema.options("luna.trust_host_key", opts, TRUST_OPTIONS)
  if not fingerprint:match("^SHA256:[%w%+/]+$") then
    usage("luna.trust_host_key: fingerprint: expected SHA256:... as ssh-keygen -l prints it, got %q", fingerprint)
  end
  return with_ssh("luna.trust_host_key", entry, function(s, _, name, where, path)
    local hk = s:hostkey()
    local verdict, known = s:known_hosts(path)
    if verdict == "revoked" then revoked(where, hk, path, known) end
    if hk.sha256 ~= fingerprint then
      dhsm.error { kind = "safety", code = "FingerprintMismatch",
        message = ("%s offers the %s key %s, not %s; nothing was written to %s"):format(where, hk.type, hk.sha256,
          fingerprint, path), details = { offered = hk.sha256, given = fingerprint, known_hosts = path } }
    end
    local out = { type = hk.type, sha256 = hk.sha256, old = verdict == "mismatch" and known or nil,
      known_hosts = path, status = "known" }
    if verdict == "match" then return out end
    if opts.confirm then opts.confirm { type = hk.type, old = out.old, sha256 = hk.sha256, where = where, known_hosts = path } end
    out.status = verdict == "mismatch" and "replaced" or "added"
    -- a key replaced without the caller's own question (a runbook, the
    -- REPL) is a destructive change: the gate asks for it, or refuses
    act.change({ kind = "file", action = "known_hosts", target = path, audit = "ssh.replace_host_key",
      destructive = verdict == "mismatch" and not opts.confirm or nil,
      what = ("%s the host key of %s in %s: %s%s %s"):format(verdict == "mismatch" and "replace" or "record", where,
        path, out.old and (out.old .. " -> ") or "", hk.type, hk.sha256),
      fields = { appliance = name, old = out.old, fingerprint = hk.sha256 }, planned = false,
      outcome = function() return out.status end }, function()
      if verdict == "mismatch" then s:replace_known_host(path) else s:add_known_host(path) end
    end)
    return out
  end)
end

-- sessions(inventory [, {connecting = fn(entry)}]) -> a pool of sessions
-- to the inventory's HSMs: pool:get(name) opens one on first use, hands
-- the same back after and opens it again when it was lost or closed
-- (connecting(entry) is called first, to say so); pool:close() closes
-- them all.  What a playbook run (ctx:appliance) and the REPL's hsm "name"
-- share.  Tasks asking for one name at once (dhsm.parallel) share one
-- connect: a session each would leave all but one open, never closed.
local Pool = {}
Pool.__index = Pool

function M.sessions(inv, opts)
  if type(inv) ~= "table" or type(inv.hsm) ~= "function" then
    usage("luna.sessions: expected an inventory (dhsm.inventory), got %s", type(inv))
  end
  return setmetatable({ inventory = inv, open = {}, turns = {}, options = {}, connecting = opts and opts.connecting }, Pool)
end

local function usable(s)
  return s ~= nil and not s.closed and not s.broken
end

-- The pool's session to name, opened anew unless one is usable.  A
-- broken one is closed first: its connection may still be up, logged in
-- (as the HSM SO), and nothing else holds it to close it.
local function reopen(pool, name)
  local old = pool.open[name]
  if usable(old) then return old end          -- another task opened it while this one waited
  if old then
    pool.open[name] = nil
    pcall(old.close, old)
  end
  local entry = pool.inventory:hsm(name)
  if pool.connecting then pool.connecting(entry) end
  local s = M.open(entry, pool.options[name])
  pool.open[name] = s
  return s
end

-- get(name [, opts]) -> the session to inventory HSM name; opts (luna.open's,
-- e.g. {password = secret} once an initialisation changed it) are kept for
-- every later connect to that name.
function Pool:get(name, opts)
  if opts ~= nil then self.options[name] = opts end
  local s = self.open[name]
  if usable(s) then return s end
  self.turns[name] = self.turns[name] or dhsm.semaphore(1)    -- one connect to a name at a time
  return self.turns[name]:run(reopen, self, name)
end

function Pool:close()
  for _, s in pairs(self.open) do s:close() end
end
Pool.__close = Pool.close

function Session:close()
  if self.closed then return end
  self.closed = true
  local r = raw[self]
  if r.shell then r.shell:close() end
  r.ssh:close()
end
Session.__close = Session.close

function Session:__tostring()
  return ("luna session %s (%s)"):format(self.name, self.closed and "closed" or (self.broken and "broken" or "open"))
end

-- The connection went (the appliance rebooted, powered off, or a network
-- device dropped an idle session): said in our words, with the peer;
-- libssh2's own ("Failure while draining incoming flow") goes to details.
local function lost(self, what, cause)
  self.broken = true
  self.lost = true
  dhsm.error { kind = "net", code = "ConnectionLost",
    message = ("%s (%s:%d): connection lost %s"):format(self.name, self.host, self.port, what),
    details = { cause = cause and cause.message, peer = ("%s:%d"):format(self.host, self.port) } }
end

-- How long the appliance must write nothing more before a last line left
-- open that ends like a question (dhsm.luna.prompts.match_quiet) is taken
-- for one: output cut at a chunk boundary goes on well within it.
M.QUIET_SECONDS = 1

local function take(r, ...)
  local text = r.buf
  r.buf = ""
  return text, ...
end

-- Read until one of patterns matches the end of what came; returns the
-- text (including the match) and which pattern matched.  With quiet
-- (a function of the text so far), a text it accepts ends the read too,
-- as #patterns + 1, once QUIET_SECONDS pass with nothing more.
function read_until(self, patterns, timeout, quiet)
  local r = raw[self]
  local deadline = dhsm.now() + timeout
  while true do
    for i, p in ipairs(patterns) do
      if r.buf:find(p) then return take(r, i) end
    end
    local left = deadline - dhsm.now()
    if left <= 0 then
      self.broken = true
      dhsm.error { kind = "net", code = "Timeout", message = ("%s: no prompt within %g s"):format(self.name, timeout) }
    end
    local asking = quiet and quiet(r.buf)
    if asking then left = math.min(left, M.QUIET_SECONDS) end
    local ok, data = pcall(r.shell.read, r.shell, left)
    if ok and data == "" and asking then return take(r, #patterns + 1) end
    if not ok then
      if dhsm.error.is(data, "net") then
        lost(self, "while waiting for its answer; what the appliance did is unknown: check before repeating", data)
      end
      error(data, 0)
    end
    if data == nil then lost(self, "while waiting for its answer; what the appliance did is unknown: check before repeating") end
    r.buf = r.buf .. data
  end
end

-- The answer to a question (dhsm.luna.prompts): a confirmation is
-- answered `proceed` when the call allows it (proceed=true, or its own
-- answers), else `quit`; the HSM SO's last-attempt caution only for a login
-- the guard let through as the last attempt (opts.last_attempt, never a
-- caller's option); a password or another question from opts.answers =
-- { {match=pattern, answer=string|secret}, ... }, else none.
local function answer_for(form, question, opts)
  if form.kind == "last_attempt" then return opts.last_attempt == true and "proceed" or "quit" end
  for _, a in ipairs(opts.answers or {}) do
    if question:find(a.match) then return a.answer end
  end
  if form.kind == "proceed" then return opts.proceed and "proceed" or "quit" end
end

-- An answer is one word (proceed, quit, y, a name), or a secret for a
-- password question: a line of words could be read as a command of its
-- own if the "question" was misread (an echo that ends like one), and it
-- would then reach the appliance outside the gate.
local function check_answer(self, form, question, answer)
  local function refuse(code, fmt, ...)
    dhsm.error { kind = "safety", code = code, message = ("%s: %s"):format(self.name, fmt:format(...)) }
  end
  if secret.is(answer) then
    if form.kind ~= "password" and form.kind ~= "domain" then
      refuse("SecretNotForThisQuestion", "refusing to answer %q with a secret: a secret is sent only to a password "
        .. "or cloning-domain question", question)
    end
  elseif not classify(answer):match("^login") and not answer:match("^[%w%-_%.]+$") then   -- a login: send_line refuses it
    refuse("AnswerNotAWord", "refusing to answer %q with %q: an answer is one word (proceed, quit, y, n ...), "
      .. "never words LunaSH could run as a command", question, masked(answer))
  end
end

-- The command's output: without the echoed command line and the prompt.
local function body_of(text, command)
  text = text:gsub("\r", "")
  text = text:gsub(PROMPT:gsub("%%s%*%$$", "") .. "%s*$", "")
  local first, rest = text:match("^([^\n]*)\n?(.*)$")
  if first and util.trim(first) == util.trim(command) then text = rest end
  return text
end

-- The one place a line reaches the shell.  A line that LunaSH could read
-- as a login is written only with LOGIN_PASS; an answer in plain text is
-- held to the same rule (it would be read as a command if the question was
-- misread).  Anything else must be a secret (write_line takes a string or
-- a secret, nothing else): a password, sent as one line, unread here.
function send_line(self, line, pass)
  if type(line) == "string" then
    local verb = classify(line)
    if verb:match("^login") and pass ~= LOGIN_PASS then
      act.refusal { code = "UnguardedLogin",
        message = ("%s: refusing to send '%s': LunaSH could read it as a login, and logins go only through "
          .. "the failed-login guard (s:login_so, or s:run with password=)"):format(self.name, masked(line)) }
    end
  end
  local ok, err = pcall(raw[self].shell.write_line, raw[self].shell, line)
  if not ok and dhsm.error.is(err, "net") then
    lost(self, "(found when sending the next command, which was not sent): connect again", err)
  end
  if not ok then error(err, 0) end
end

-- Whether what came so far ends like a question no form knows (a short
-- tail is enough: a question is one line, and a long output is read often;
-- the known forms read_until has tried already).
local function ends_like_question(text)
  return prompts.open_question(text:sub(-1024)) ~= nil
end

-- exchange(...) -> the command's output, and the question answered
-- `quit` if one was (the call then fails saying what was asked).
local function exchange(self, command, opts, pass)
  send_line(self, command, pass)
  local transcript, declined = {}, nil
  local patterns = { PROMPT }
  for _, q in ipairs(prompts.patterns()) do patterns[#patterns + 1] = q end
  while true do
    local text, which = read_until(self, patterns, opts.timeout or self.timeout, ends_like_question)
    transcript[#transcript + 1] = text
    if which == 1 then break end
    -- the form read_until matched, or the open question its quiet check took
    local form, question
    if which == #patterns + 1 then form, question = prompts.open_question(text) else form, question = prompts.match(text) end
    local answer = answer_for(form, question, opts)
    if answer == "quit" then declined = question end
    if answer ~= nil then
      local fine, why = pcall(check_answer, self, form, question, answer)
      if not fine then
        self:close()                           -- the question stays unanswered: the shell's state is unknown
        error(why, 0)
      end
    end
    if answer == nil then
      self:close()                           -- never submit a guessed password
      dhsm.error { kind = "luna", code = "UnansweredPrompt",
        message = ("%s: '%s' asked %q and no answer was given; the session was closed so nothing was submitted")
          :format(self.name, masked(command), question) }
    end
    send_line(self, answer)
  end
  return body_of(table.concat(transcript), command), declined
end

-- Send one command and read its result.  A read is audited here; a
-- command that may change something is sent from inside the gate
-- (dhsm.act), which records its intent before and its outcome after.
local function command(self, line, verb, opts, pass)
  return self.turn:run(function()
    local t0 = dhsm.now()
    local shown = masked(line)
    local done = false
    local interrupted <close> = setmetatable({}, { __close = function()
      if not done then self.broken = true end   -- cancelled half-way: the shell's state is unknown
    end })
    local ok, text, declined = pcall(exchange, self, line, opts, pass)
    done = ok                                   -- an error half-way leaves the shell's state unknown
    if not ok then error(text, 0) end
    local r = parse.result(text)
    if declined then                            -- whatever LunaSH printed after `quit`, the call did not go on
      r.ok, r.declined = false, declined
      r.error = r.error or { code = "Declined", lines = {} }
      table.insert(r.error.lines, 1, ("asked %q, answered quit (the call does not allow proceed)"):format(declined))
    end
    r.canonical, r.command = r.command, shown     -- LunaSH's own name for it, and what was sent
    if verb == "read" then
      dhsm.audit.write { action = "luna.command", target = self.name, outcome = tostring(r.code),
        command = r.command, duration_ms = (dhsm.now() - t0) * 1000, error = r.error and r.error.code }
    end
    return r
  end)
end

local function check_open(self)
  if self.closed or self.broken then
    usage("%s: this session is %s; connect again", self.name, self.closed and "closed"
      or self.lost and "gone (the connection was lost)" or "broken (an earlier command did not finish)")
  end
end

local login

-- The gate's description of a LunaSH command on this appliance (dhsm.act).
local function change_of(self, line, what, extra)
  local shown = masked(line)
  local change = { kind = "luna", action = what, target = self.name, audit = "luna.command",
    -- the question names the command as LunaSH reads it ("par del" is partition delete)
    what = ("run '%s' on %s"):format(commands.lunash_shown(line), self.name), fields = { command = shown },
    planned = function() return { ok = true, code = 0, text = "", check = true, command = shown } end,
    outcome = function(r, r2)
      if type(r) ~= "table" then r = r2 end              -- a login's try gives (ok, result)
      return tostring(r.code), { error = r.error and r.error.code }
    end }
  for k, v in pairs(extra or {}) do change[k] = v end
  return change
end

-- run(command, {answers=, proceed=, timeout=, password=, allow_destructive_login=,
--   allow_without_reboot_fix=, allow_cutting_path=}) -> result
function Session:run(line, opts)
  opts = schema.options("luna run", opts, RUN_OPTIONS) or {}
  if type(line) ~= "string" or line:find("[\r\n]") or util.trim(line) == "" then
    usage("luna: a command is one line of text, got %q", tostring(line))
  end
  -- a line that ends like one of LunaSH's questions would be taken, echoed back, for that question
  -- (and a password's secret sent as a line of its own): no command holds one
  if prompts.looks_like_question(line) then
    dhsm.error { kind = "safety", code = "LooksLikeQuestion", message = ("%s: refusing %q: it holds the words of "
      .. "one of LunaSH's questions, and its echo would be read as that question"):format(self.name, masked(line)) }
  end
  if line:find("[\128-\255]") then        -- LunaSH folds some to ASCII letters (a Kelvin sign is a k)
    dhsm.error { kind = "safety", code = "NotAscii", message = ("%s: refusing %q: LunaSH may read a letter "
      .. "beyond ASCII as another one, so dhsm could not tell what the command does"):format(self.name, masked(line)) }
  end
  check_open(self)
  local verb, what = classify(line)
  local role = verb:match("^login:(.+)$")
  if role then return login(self, role, line, opts) end
  if verb == "read" then return command(self, line, verb, opts) end
  return act.change(change_of(self, line, what, {
    destructive = DESTRUCTIVE[what] or nil,
    rule = function()
      if KEY_MATERIAL[what] then self:check_last_copies(what, opts) end
      if verb == "reboot" then self:check_reboot_fix(what, opts) end
      if verb == "network" then self:check_network_change(line, opts) end
    end,
  }), function() return command(self, line, verb, opts) end)
end


-- must(command, opts) -> result; a failed command raises a luna error
function Session:must(line, opts)
  local r = self:run(line, opts)
  if not r.ok then
    dhsm.error { kind = "luna", code = r.error and r.error.code or ("Result" .. tostring(r.code)),
      message = ("%s: '%s' failed: %s"):format(self.name, r.command,
        r.error and table.concat(r.error.lines, " ") or ("Command Result " .. tostring(r.code))),
      details = { result = r, hex = r.error and r.error.hex } }
  end
  return r
end

---------------------------------------------------------------------------
-- reads

function Session:hsm_show()
  return parse.hsm_show(self:must("hsm show").text)
end

function Session:packages()
  return parse.package_list(self:must("package list").text)
end

-- partition list: {{serial=, name=, objects=, ...}} (no partition login needed)
function Session:partitions()
  return parse.partition_list(self:must("partition list").text)
end

function Session:network()
  return parse.network_show(self:must("network show").text)
end

-- The interface that carries this session, as `network show` gives it:
-- the one holding the address the session reached, else (behind NAT, a
-- tunnel) the default route's.
local function session_interface(self, net)
  local ours = net.default_device
  for dev, i in pairs(net.interfaces) do
    if i.ip == raw[self].host then ours = dev end
  end
  return ours
end

-- zeroized_evidence([entry]) -> the evidence dhsm.azure.hsm.delete asks
-- for (dhsm.evidence), when hsm show says zeroized: the serial and the
-- address of the interface carrying this session (network show: another
-- interface's address could be one set for the purpose) it reads from the device now, the
-- session's name and address, the Azure resource its inventory entry
-- says it stands for (without an entry, the session's name, as the
-- inventory defaults it) and when.  entry.serial, when known, must match
-- the device; the delete then checks the resource's NIC against the
-- addresses, so a name proves nothing by itself.
local mint_evidence = require("dhsm.evidence").issuer()

function Session:zeroized_evidence(entry)
  if entry ~= nil and (type(entry) ~= "table" or entry.name ~= self.name) then
    usage("%s: zeroized_evidence(entry) takes this appliance's inventory entry, got %s", self.name,
      type(entry) == "table" and ("the entry of " .. tostring(entry.name)) or type(entry))
  end
  local show, net = self:hsm_show(), self:network()
  local dev = session_interface(self, net)
  local ip = dev and net.interfaces[dev] and net.interfaces[dev].ip
  return mint_evidence(show, { ip }, { appliance = self.name, host = raw[self].host, interface = dev,
    resource = entry and entry.resource or self.name, serial = entry and entry.serial })
end

---------------------------------------------------------------------------
-- safety

-- The guard's identity of this appliance (dhsm.guard.device): the HSM
-- serial the device reported, read once per session (kept where callers
-- cannot set it) and checked again at each login's reading; never the
-- session's name, which is the caller's to choose.
function Session:guard_device()
  local r = raw[self]
  if not r.serial then r.serial = self:hsm_show().serial end
  return guard.device("hsm", r.serial, self.name)
end

-- What the device says is left for role, read now; nil when its output has
-- no count (LunaSH shows it for the HSM SO; for the Auditor, when `audit
-- show` does); a count it shows and dhsm cannot read raises ParseError.
-- The reading is refused when the appliance is not the one the login is
-- counted for (another device behind the same address since).
local function device_left(self, role, dev, after_failure)
  if role == "so" then
    local h = self:hsm_show()
    if h.serial ~= dev.serial then
      dhsm.error { kind = "safety", code = "SerialMismatch",
        message = ("%s now reports HSM serial %s, not %s, the appliance this login is counted for; not attempting")
          :format(self.name, tostring(h.serial), dev.serial) }
    end
    if h.zeroized and not after_failure then
      dhsm.error { kind = "safety", code = "Zeroized", message = ("%s is zeroized: there is nothing to log in to"):format(self.name) }
    end
    return h.zeroized and 0 or h.attempts_left
  end
  -- `audit show` read strictly (dhsm.luna.parse.audit_show): its count
  -- field is required, so a count worded otherwise, a form not seen or a
  -- failed `audit show` raises and the guard makes no login - never
  -- "nothing said"
  return parse.audit_show(self:must("audit show").text).attempts_left
end

-- Logins through the guard: one critical section per appliance and role
-- (dhsm.guard) that reads what is left, refuses the last attempt,
-- sends the login with LOGIN_PASS, reads the device again and records.
-- Never retried.
function login(self, role, line, opts)
  if not guard.THRESHOLDS[role] then
    act.refusal { code = "UnsupportedLogin",
      message = ("%s: refusing '%s': it submits a role's password, which dhsm sends over LunaSH only for the HSM SO "
        .. "(hsm login) and the Auditor (audit login), where the failed-login guard counts it; partition roles log in "
        .. "through dhsm.pkcs11"):format(self.name, masked(line)) }
  end
  local password = opts.password
  for _, a in ipairs(password == nil and opts.answers or {}) do
    if ("password:"):find(a.match) then password = a.answer end
  end
  if password == nil then usage("%s: a %s login needs password= (a secret)", self.name, guard.ROLE_NAMES[role]) end
  if not secret.is(password) then usage("%s: the password must be a secret, not a plain string", self.name) end
  local first = true
  return guard.attempt(self:guard_device(), role, opts, {
    call = role == "so" and "s:login_so(password, {allow_destructive_login = true})"
      or ("s:run(%q, {password = password, allow_destructive_login = true})"):format(masked(line)),
    device_left = function(dev)
      local left = device_left(self, role, dev, not first)
      first = false
      return left
    end,
    try = function()
      local change = change_of(self, line, "login", { kind = "login",
        what = ("log in as %s on %s"):format(guard.ROLE_NAMES[role], self.name) })
      change.planned = function() return nil, { ok = true, code = 0, text = "", check = true, command = masked(line) } end
      return act.change(change, function()
        local r = command(self, line, "login", { answers = { { match = "[Pp]assword:", answer = password } },
          last_attempt = opts.allow_destructive_login == true, timeout = opts.timeout }, LOGIN_PASS)
        if r.declined then return nil, r end       -- the caution answered quit: no password was sent
        return r.ok, r
      end)
    end,
  })
end

function Session:login_so(password, opts)
  opts = schema.options("luna login_so", opts, RUN_OPTIONS) or {}
  opts.password = password
  local r = self:run("hsm login", opts)
  if not r.ok and not r.check then
    dhsm.error { kind = "luna", code = r.error and r.error.code or "LoginFailed",
      message = ("%s: HSM SO login failed (%s); not retried"):format(self.name,
        r.error and r.error.code or ("result " .. tostring(r.code))),
      details = { result = r, hex = r.error and r.error.hex } }
  end
  return r
end

-- zeroize_by_failed_logins(serial, {zeroize=true}) -> {attempts=, zeroized=}
-- The guide's quickest zeroization: wrong HSM SO logins (a random password
-- no one knows) until the HSM zeroizes, through the guard's own audited
-- path (dhsm.guard.zeroize_by_failures), on the appliance with this
-- serial only.
function Session:zeroize_by_failed_logins(serial, opts)
  schema.options("luna zeroize_by_failed_logins", opts, RUN_OPTIONS)
  check_open(self)
  self:check_last_copies("zeroize_by_failed_logins", opts or {})
  local wrong = secret.value(require("dhsm.sys").random_hex(32))
  return guard.zeroize_by_failures(self:guard_device(), "so", { zeroize = (opts or {}).zeroize, serial = serial,
    target = self.name }, {
    read = function() return self:hsm_show() end,
    fail = function()
      local r = command(self, "hsm login", "login", { answers = { { match = "[Pp]assword:", answer = wrong } },
        last_attempt = true }, LOGIN_PASS)         -- the deliberate last attempt: the caution is answered proceed
      if r.ok then self:run("hsm logout") end
      return not r.ok
    end,
  })
end

-- reboot_fix() -> the installed package holding the reboot fix's name (nil
-- when none), and that name: the entry's reboot_fix_package, else KB0019789.
function Session:reboot_fix()
  local want = raw[self].reboot_fix
  return parse.has_package(self:packages(), want), want
end

function Session:check_reboot_fix(what, opts)
  if opts.allow_without_reboot_fix then
    dhsm.audit.write { action = "safety.override", target = self.name, outcome = "allow_without_reboot_fix", command = what }
    return
  end
  local found, want = self:reboot_fix()
  if not found then
    dhsm.error { kind = "safety", code = "RebootFixMissing",
      message = ("refusing '%s' on %s: no installed package is named like the reboot fix '%s' (package list), and "
        .. "without the fix the appliance may hang on reboot until Microsoft power-cycles it (up to 48 hours). "
        .. "Install it first; if it is installed under another name, set reboot_fix_package in the inventory"):format(
        what, self.name, want), details = { reboot_fix_package = want } }
  end
  dhsm.audit.write { action = "safety.reboot_fix", target = self.name, outcome = "installed", package = found }
end

-- A command that destroys key material (KEY_MATERIAL, a zeroization by
-- failed logins) on an appliance whose partitions hold objects needs a
-- last-copy clearance for its HSM serial (dhsm.client.copies.clear, made
-- by decommission's check), or allow_last_copies (audited).  A zeroized
-- appliance has nothing left to lose; a count `partition list` does not
-- give is taken for objects.
function Session:check_last_copies(what, opts)
  if opts.allow_last_copies then
    dhsm.audit.write { action = "safety.override", target = self.name, outcome = "allow_last_copies", command = what }
    return
  end
  local show = self:hsm_show()
  if show.zeroized then return end
  local held, holding = 0, {}
  for _, p in ipairs(self:partitions()) do
    local n = math.type(p.objects) and p.objects or 1
    if n > 0 then held, holding[#holding + 1] = held + n, p.serial end
  end
  if held == 0 then return end
  if require("dhsm.evidence").cleared(opts.last_copies_cleared, show.serial, holding) then
    dhsm.audit.write { action = "safety.last_copies", target = self.name, outcome = "cleared", command = what,
      serial = show.serial }
    return
  end
  dhsm.error { kind = "safety", code = "LastCopyUnchecked", details = { serial = show.serial, objects = held },
    message = ("refusing '%s' on %s: its partitions hold %d object(s), and no last-copy check cleared this appliance "
      .. "(serial %s) in the last %d minutes: it could destroy the last copy of a key. dhsm run decommission checks "
      .. "(every object found on another HA member or a backup, or named); a call that means it passes "
      .. "allow_last_copies = true (audited)"):format(what, self.name, held, tostring(show.serial),
      require("dhsm.evidence").CLEARANCE_MAX_AGE // 60) }
end

-- A network change must not touch the interface carrying this session.
function Session:check_network_change(command, opts)
  if opts.allow_cutting_path then
    dhsm.audit.write { action = "safety.override", target = self.name, outcome = "allow_cutting_path", command = masked(command) }
    return
  end
  -- the words as LunaSH reads them (quotes gone), every -device given,
  -- compared as the appliance compares interface names (any case)
  local words, devices = commands.words(command), {}
  for i = 1, #words - 1 do
    local opt = words[i]:lower():match("^%-(.+)$")
    if opt and ("device"):sub(1, #opt) == opt then devices[#devices + 1] = words[i + 1]:lower() end
  end
  local net = self:network()
  local ours = session_interface(self, net)
  local device, cuts = devices[1], #devices ~= 1
  for _, d in ipairs(devices) do
    if ours == nil or d == ours:lower() then device, cuts = d, true end
  end
  if cuts then
    dhsm.error { kind = "safety", code = "WouldCutPath",
      message = ("refusing '%s' on %s: it could change %s, which carries this session (%s); a lost path means a "
        .. "Microsoft support reset that wipes the appliance"):format(masked(command), self.name,
        device or "an interface", ours and (ours .. " " .. raw[self].host) or raw[self].host) }
  end
end

---------------------------------------------------------------------------
-- files (certificates) over SCP

-- get(remote, local_path) -> bytes: a read of the appliance; the local
-- file is dhsm's own when it lies in a scratch folder, else a file written
-- for someone else, through the gate (described in check mode).
function Session:get(remote, local_path)
  if type(local_path) ~= "string" or local_path == "" then usage("%s: get needs a local path", self.name) end
  local s = raw[self].ssh
  local data = self.turn:run(s.scp_get, s, remote)
  dhsm.audit.write { action = "luna.get", target = self.name, outcome = "ok", file = remote, bytes = #data }
  if act.is_private(local_path) then
    local f = assert(io.open(local_path, "wb"))
    f:write(data)
    f:close()
  else
    act.write_file(local_path, data, { what = ("%s:%s"):format(self.name, remote) })
  end
  return #data
end

function Session:put(local_path, remote)
  local data, err = util.read_file(local_path)
  if not data then usage("cannot read %s", err) end
  return act.change({ kind = "luna", action = "put", target = self.name, fields = { file = remote, bytes = #data },
    what = ("copy %s to %s:%s"):format(local_path, self.name, remote), planned = 0,
  }, function()
    local s = raw[self].ssh
    self.turn:run(s.scp_put, s, remote, data, tonumber("644", 8))
    return #data
  end)
end

return M
