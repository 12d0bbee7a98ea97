-- dhsm.pkcs11: PKCS#11 tokens (a Luna partition, a SoftHSM2 token) from Lua.
--
--   local pkcs11 = require "dhsm.pkcs11"
--   local lib <close> = pkcs11.load([path] [, { env = { SOFTHSM2_CONF = "/x/softhsm2.conf" } }])
--   lib:info(); lib:slots{ token_present = true }; lib:token(slot); lib:tokens(); lib:mechanisms(slot)
--     (slots, tokens and find_token also return `broken`: {{slot=, code=, message=}} of the
--     slots that did not answer, left out of the listing instead of failing it)
--   lib:find_token{ label = "p1" }  or { serial = "1234" }   --> token info (with .slot) | nil, broken
--   local s <close> = lib:open{ label = "p1", rw = true }     -- or serial= / slot=; read-only by default
--   s:login("user" | "so", pin_secret [, { allow_destructive_login = true }]); s:logout(); s:init_pin(new_pin_secret) (as the SO)
--   s:login("user", pin_secret, { read_only = true })   -- on a read-only session: a read, made in check mode too
--   s:find{ class = "private_key", label = "k" }  --> { handle, ... }; s:count(t); s:find_one(t)
--   s:attributes(handle [, { "label", "modulus_bits", ... }]) --> { label = "k", modulus_bits = 2048 }
--   s:destroy(handle)
--   s:generate_aes{ label =, bits = 256 }   s:generate_hmac{ label =, bits = 256 }     --> handle
--   s:generate_rsa{ label =, bits = 2048 }  s:generate_ec{ label =, curve = "P-256" }  --> private, public
--   s:sign(key, "SHA256_RSA_PKCS", data); s:verify(key, mech, data, signature)  --> boolean
--     ECDSA signatures are PKCS#11's raw r||s (64 bytes for P-256), in and out;
--   pkcs11.ecdsa_der(raw) --> DER (X.509, CMS, `openssl dgst -verify`);  pkcs11.ecdsa_raw(der, 32|48|66) --> r||s
--   s:encrypt(key, "AES_GCM", data, { aad = }) --> ciphertext, iv
--   s:decrypt(key, "AES_GCM", ciphertext, { iv =, aad = }); s:digest("SHA256", data); s:random(n)
--
-- The library: the path given, else $DHSM_PKCS11_LIB, else LibUNIX64 of
-- Chrystoki.conf's Chrystoki2 section ($ChrystokiConfigurationPath/Chrystoki.conf
-- or /etc/Chrystoki.conf), else the Luna client's default.  `env` is set
-- (setenv, for the whole process) before the library is loaded: SoftHSM2
-- reads SOFTHSM2_CONF when it is initialised.  A library stays loaded while
-- any of its sessions is open, however it was closed.
--
-- Objects are plain integer handles, as the token gives them.  Mechanisms
-- are PKCS#11 names without CKM_ ("SHA256-RSA-PKCS" and "ckm_sha256_rsa_pkcs"
-- work too).  ECDSA signs a digest the caller made; ECDSA_SHA256 (384, 512)
-- hashes in the binding and has the token sign the digest with CKM_ECDSA,
-- which every token has (SoftHSM2 has no CKM_ECDSA_SHA256).  RSA_PKCS_PSS
-- takes {hash=, salt_len=} (default SHA256 and the hash length);
-- SHA256_RSA_PKCS_PSS implies its hash.  AES_GCM and AES_CBC_PAD take iv=;
-- encrypt makes a fresh one from the token's RNG when none is given and
-- returns it, decrypt needs it.
--
-- Logins go through the failed-login guard (dhsm.guard): the token's
-- PIN flags and our persistent count say how many attempts may be left; the
-- attempt that could be the last is refused unless allow_destructive_login
-- (audited); a failed login is never retried.  Reading the flags, C_Login
-- and recording the outcome are one critical section per token and role,
-- across tasks and processes; C_Login itself is reachable from here only.
-- A login with read_only = true on a read-only session is a read (an
-- inventory of the partition's objects): guarded and audited like any
-- login, but not a change, so check mode makes it; on a read-write
-- session it is refused (that session could change the token).
-- Generation, destruction, init_pin, login and logout pass dhsm.act's gate:
-- recorded before (intent) and after; a destruction is confirmed (the
-- token's label typed); in check mode none is done and each returns
-- { check = true, would = "..." }.
local act = require "dhsm.act"
local dhsm = require "dhsm"
local guard = require "dhsm.guard"
local secret = require "dhsm.secret"
local sys = require "dhsm.sys"
local schema = require "dhsm.schema"
local util = require "dhsm.util"
local core = util.native(select(3, ...), "dhsm.pkcs11.core")

local M = {}

M.DEFAULT_PATH = "/usr/safenet/lunaclient/lib/libCryptoki2_64.so"

-- The unguarded C_Login is for this file only: the core module is
-- private to dhsm.pkcs11 (runtime/modules.c), and its login is taken out
-- of the table besides, so no other path reaches it.
local raw_login = core.login
core.login = nil

local Library, Session = core.library, core.session

-- The core's mutations are raw: taken out of the class, each reachable only
-- through the gate below (dhsm.act).
local raw = {}
for _, name in ipairs { "logout", "init_pin", "destroy", "generate_key", "generate_key_pair" } do
  raw[name], Session[name] = Session[name], nil
end
-- What the REPL completes (and the docs list); open_slot and generate_key(_pair) are the
-- core's, under open and generate_*.
Library.__public = { "info", "slots", "slot", "token", "tokens", "find_token", "mechanisms", "open", "close" }
Session.__public = { "login", "logout", "token", "info", "find", "find_one", "count", "attributes", "destroy",
  "generate_aes", "generate_hmac", "generate_rsa", "generate_ec", "sign", "verify", "encrypt", "decrypt",
  "digest", "random", "close" }
-- The method names a library or session offers, for a proxy that stands
-- for one (the REPL's p11) to complete as one.
M.METHODS = { library = Library.__public, session = Session.__public }

local usage = dhsm.usage_in("pkcs11")

-- t must be nil or a table whose keys are all in `known` (name -> spec of
-- the one option reader, dhsm.schema.options), each of its type.
local function check_fields(t, known, what)
  if t == nil then return {} end
  if type(t) ~= "table" then usage("%s: expected a table of options, got %s", what, type(t)) end
  for k in pairs(t) do
    if not known[k] then
      local names = util.sorted_keys(known)
      usage("%s: unknown field '%s'%s", what, tostring(k), util.did_you_mean(tostring(k), names))
    end
  end
  return schema.options("pkcs11: " .. what, t, known)
end

local LABEL = { type = "string" }
local SERIAL = { type = { "string", "integer" } }

---------------------------------------------------------------------------
-- loading

-- Chrystoki.conf: $ChrystokiConfigurationPath names its folder (getenv:
-- os.getenv, or the environment as it was when dhsm started).
function M.chrystoki_conf(getenv)
  schema.argument("pkcs11.chrystoki_conf", "getenv", getenv, { type = "function", expect = "a function like os.getenv" })
  local dir = (getenv or os.getenv)("ChrystokiConfigurationPath")
  if dir and dir ~= "" then return dir .. "/Chrystoki.conf" end
  return "/etc/Chrystoki.conf"
end

-- LibUNIX64 of the Chrystoki2 section, or nil (dhsm.chrystoki reads the
-- file, loaded when a configuration is there to read).
local function chrystoki_lib(path)
  if not sys.stat(path) then return nil end
  return require("dhsm.chrystoki").load(path):get("Chrystoki2", "LibUNIX64")
end

-- library_path([path] [, getenv]) -> path, where it came from
function M.library_path(path, getenv)
  if path ~= nil then
    if type(path) ~= "string" or path == "" then usage("load: the library path must be a string, got %s", type(path)) end
    return path, "argument"
  end
  getenv = getenv or os.getenv
  local env = getenv("DHSM_PKCS11_LIB")
  if env and env ~= "" then return env, "$DHSM_PKCS11_LIB" end
  local conf = M.chrystoki_conf(getenv)
  local lib = chrystoki_lib(conf)
  if lib and lib ~= "" then return lib, conf end
  return M.DEFAULT_PATH, "the Luna client's default"
end

-- The options of load, slots, open and login: specs made once (the option
-- reader checks a spec table the first time it meets it).
-- The Chrystoki.conf a library read (its HA groups): the one named when a
-- library path was first loaded here - dlopen hands later loads the same
-- initialised copy, whatever environment they set - kept with each library
-- and each session it opens, not looked up again at a login.
local conf_read, conf_of = {}, setmetatable({}, { __mode = "k" })
local raw_open_slot = Library.open_slot
function Library:open_slot(slot, rw)
  local s = raw_open_slot(self, slot, rw)
  conf_of[s] = conf_of[self]
  return s
end

local LOAD_OPTIONS = { env = { type = "table" } }
local SLOTS_OPTIONS = { token_present = { type = "boolean" } }
local LOGIN_OPTIONS = { allow_destructive_login = { type = "boolean" }, read_only = { type = "boolean" } }

-- load([path] [, {env = {NAME = value}}]) -> library
-- What env= may set: it is set for the whole process, so only a PKCS#11
-- library's own configuration - anything else could change which programs
-- run or what they load for everything after (PATH, LD_*, PYTHONPATH, BASH_ENV ...).
local LIBRARY_ENV = { SOFTHSM2_CONF = true, ChrystokiConfigurationPath = true }
local function check_env(env)
  for k in pairs(env or {}) do
    local name = tostring(k)
    if not (LIBRARY_ENV[name] or name:match("^%u[%u%d_]*$") and (name:find("P11", 1, true) or name:find("PKCS11", 1, true))) then
      usage("load: env may set a PKCS#11 library's own configuration only (SOFTHSM2_CONF, ChrystokiConfigurationPath, "
        .. "names with P11 or PKCS11): it is set for the whole process; got %s", name)
    end
  end
end

-- The environment that names the library, as it was when dhsm started
-- (an env= given to load since changes the process's): what check mode
-- calls the configured library, found when first asked for.
local START_ENV = { DHSM_PKCS11_LIB = os.getenv("DHSM_PKCS11_LIB"),
  ChrystokiConfigurationPath = os.getenv("ChrystokiConfigurationPath") }

-- In check mode only the configured library is loaded (the one library_path
-- found at start, or the -i inventory's client.pkcs11_lib): a library's own
-- code runs when it is loaded, and a plan runs nobody's code but dhsm's.
local function check_configured(where)
  if not act.checking() then return end
  local real = sys.realpath(where)
  local known = require("dhsm.inventory").trusted_tools("pkcs11_lib")
  known[#known + 1] = (M.library_path(nil, function(name) return START_ENV[name] end))
  for _, k in ipairs(known) do
    if real and sys.realpath(k) == real then return end
  end
  act.refuse("pkcs11.load", where .. ": not the configured PKCS#11 library")
end

function M.load(path, opts)
  if type(path) == "table" and opts == nil then path, opts = nil, path end
  opts = check_fields(opts, LOAD_OPTIONS, "load")
  check_env(opts.env)
  local where, from = M.library_path(path)
  check_configured(where)
  local ok, lib = pcall(core.load, where, opts.env)
  if not ok then
    if dhsm.error.is(lib, "pkcs11") and from ~= "argument" then
      lib.message = ("%s (the path from %s)"):format(lib.message, from)
    end
    error(lib, 0)
  end
  conf_read[where] = conf_read[where] or M.chrystoki_conf()
  conf_of[lib] = conf_read[where]
  return lib
end

---------------------------------------------------------------------------
-- tokens

-- A slot that does not answer (C_GetSlotInfo or C_GetTokenInfo fails: an HA
-- member gone, a token pulled) must not hide the others: it is left out of
-- the listing and reported in `broken` as {slot=, code=, message=}.
local function read_or_report(read, lib, id, broken)
  local ok, r = pcall(read, lib, id)
  if ok then return r end
  if not dhsm.error.is(r, "pkcs11") then error(r, 0) end
  broken[#broken + 1] = { slot = id, code = r.code, message = r.message }
  return nil
end

-- lib:slots([{token_present=true}]) -> {slot info, ...}, broken
function Library:slots(opts)
  opts = check_fields(opts, SLOTS_OPTIONS, "slots") or {}
  local out, broken = {}, {}
  for _, id in ipairs(core.slot_ids(self, opts.token_present)) do
    out[#out + 1] = read_or_report(self.slot, self, id, broken)
  end
  return out, broken
end

-- lib:tokens() -> {token info, ...} of the initialised tokens, broken
function Library:tokens()
  local out = {}
  local slots, broken = self:slots { token_present = true }
  for _, slot in ipairs(slots) do
    local tok = read_or_report(self.token, self, slot.slot, broken)
    if tok and tok.token_initialized then out[#out + 1] = tok end
  end
  return out, broken
end

local QUERY = { label = LABEL, serial = SERIAL }

-- "slot 3 (CKR_GENERAL_ERROR), slot 7 (...)"
local function describe_broken(broken)
  local parts = {}
  for i, b in ipairs(broken) do parts[i] = ("slot %d (%s)"):format(b.slot, tostring(b.code)) end
  return table.concat(parts, ", ")
end

-- lib:find_token{label= | serial=} -> token info | nil, broken.  Several
-- tokens with one label is an error: the wrong one would get the login.
-- Slots that did not answer are skipped (and returned): the token looked
-- for may be behind one of them, the others are still found.
function Library:find_token(q)
  q = check_fields(q, QUERY, "find_token")
  if q.label == nil and q.serial == nil then usage("find_token: give label= or serial=") end
  local found = {}
  local tokens, broken = self:tokens()
  for _, tok in ipairs(tokens) do
    if (q.label == nil or tok.label == q.label) and (q.serial == nil or tok.serial == tostring(q.serial)) then
      found[#found + 1] = tok
    end
  end
  if #found > 1 then
    local serials = {}
    for i, tok in ipairs(found) do serials[i] = tok.serial end
    usage("find_token: %d tokens are labelled %q (serials %s): give serial=", #found, q.label, table.concat(serials, ", "))
  end
  return found[1], broken
end

local OPEN_OPTIONS = { label = LABEL, serial = SERIAL, rw = { type = "boolean" },
  slot = { type = "integer", min = 0, expect = "a slot number (an integer >= 0)" } }

-- lib:open{label= | serial= | slot=, rw=false} -> session
function Library:open(q)
  q = check_fields(q, OPEN_OPTIONS, "open")
  local slot = q.slot
  if slot == nil then
    local tok, broken = self:find_token { label = q.label, serial = q.serial }
    if not tok then
      local unanswered = #broken > 0
        and ("; %d slot(s) did not answer and may hold it: %s"):format(#broken, describe_broken(broken)) or ""
      dhsm.error { kind = "pkcs11", code = "TokenNotFound",
        message = ("no initialised token with %s on %s%s"):format(
          q.label and ("label %q"):format(q.label) or ("serial %q"):format(tostring(q.serial)), tostring(self),
          unanswered),
        details = { broken = broken } }
    end
    slot = tok.slot
  elseif math.type(slot) ~= "integer" then
    usage("open: slot must be an integer, got %s", type(slot))
  end
  return self:open_slot(slot, q.rw == true)
end

---------------------------------------------------------------------------
-- logins

local ROLES = {
  user = { role = "co", flags = "user_pin_" },     -- CKU_USER: the Crypto Officer of a Luna partition
  so = { role = "pso", flags = "so_pin_" },        -- CKU_SO: the Partition SO
}

-- What the token's flags say is left, for guard.check.  They are coarse:
-- locked -> 0; final try -> 1; count low ("a failure since the last
-- success") -> the threshold less one, an upper bound; no flag -> nil,
-- unknown, and our own count decides.  Clean flags never reset our count:
-- a token (Luna among them) need not raise count_low at all.
function M.device_left(tok, who)
  schema.argument("pkcs11.device_left", "tok", tok, { type = "table", required = true, expect = "a token's info (session:token())" })
  schema.argument("pkcs11.device_left", "who", who, { type = "enum", values = { "user", "so" }, required = true })
  local r = ROLES[who]
  if tok[r.flags .. "locked"] then return 0 end
  if tok[r.flags .. "final_try"] then return 1 end
  if tok[r.flags .. "count_low"] then return guard.THRESHOLDS[r.role] - 1 end
  return nil
end

local LOCKED_HINTS = {
  CKR_PIN_LOCKED = "the PIN is locked",
  CKR_USER_LOCKED_OUT = "the role is locked out (HSM policy 15 decides whether the Partition SO can reset it)",
  CKR_SO_LOGIN_FAILURE_THRESHOLD = "the SO failure threshold was reached: the partition is zeroized",
  CKR_AUDIT_LOGIN_FAILURE_THRESHOLD = "the Auditor is locked for 10 minutes",
}

---------------------------------------------------------------------------
-- changes, through the gate

-- The token's label, which an operator types to confirm a destruction.
local function token_label(self)
  return self:guard_devices().token.label
end

-- change(self, action, what, fn, extra) -> fn's results, or in check mode
-- {check = true, would = ...}
local function change(self, action, what, fn, extra)
  local where = self:guard_devices().where
  local c = { kind = "pkcs11", action = action, target = token_label(self), where = where,
    audit = "pkcs11." .. action, what = ("%s on token %s"):format(what, where) }
  for k, v in pairs(extra or {}) do c[k] = v end
  return act.change(c, fn)
end

-- s:logout()
function Session:logout()
  return change(self, "logout", "log out", function() return raw.logout(self) end)
end

-- s:init_pin(pin): C_InitPIN as the SO - the user's (Crypto Officer's)
-- first PIN, what LunaCM's `role init -name co` does.  A new PIN, not a
-- login: no attempt is counted.
function Session:init_pin(pin)
  if not secret.is(pin) then usage("init_pin: the PIN must be a dhsm.secret, got %s", type(pin)) end
  return change(self, "init_pin", "set the user's (Crypto Officer's) PIN", function() return raw.init_pin(self, pin) end)
end

-- s:destroy(handle) -> true: cannot be undone, so confirmed (the token's label)
function Session:destroy(handle)
  if math.type(handle) ~= "integer" or handle <= 0 then
    usage("destroy: expected an object handle (a positive integer), got %s", tostring(handle))
  end
  local ok, a = pcall(self.attributes, self, handle, { "label", "class" })
  local label = ok and a.label or "?"
  return change(self, "destroy", ("destroy object %d '%s'"):format(handle, tostring(label)),
    function() return raw.destroy(self, handle) end,
    { destructive = true, fields = { handle = handle, label = label, class = ok and a.class or nil } })
end

-- s:generate_key(mech, template, what) -> handle
function Session:generate_key(mech, template, what)
  return change(self, "generate", "generate " .. tostring(what), function()
    return raw.generate_key(self, mech, template, what)
  end, { fields = { mechanism = tostring(mech) }, outcome = function(h) return "ok", { handle = h } end })
end

-- s:generate_key_pair(mech, public, private, what) -> private, public
function Session:generate_key_pair(mech, public, private, what)
  return change(self, "generate", "generate " .. tostring(what), function()
    return raw.generate_key_pair(self, mech, public, private, what)
  end, { fields = { mechanism = tostring(mech) },
    outcome = function(priv, pub) return "ok", { private = priv, public = pub } end })
end

-- The guard's identity of this session's token (dhsm.guard.device), read
-- once: a login then touches the token only inside the guard's lock
-- (SoftHSM2, for one, may fail a read that meets another process's write).
-- A partition is its serial, as the Luna library reports it - the key
-- LunaCM's and LunaSH's logins are counted under too.  An HA group's
-- virtual slot (model LunaVirtual, or a serial the client's Chrystoki.conf
-- lists as a VirtualToken) is each of its member partitions: a login there
-- is a login on every member.  A virtual slot whose members cannot be told
-- is refused, not counted under the group's serial.
-- -> {token = token info, devices = {device, ...}, where = "label#serial"}
local VIRTUAL_MODEL = "LunaVirtual"
local identities = setmetatable({}, { __mode = "k" })

local function ha_group_of(tok, path)
  local readable, conf = false, nil
  if path and sys.stat(path) then readable, conf = pcall(require("dhsm.chrystoki").load, path) end
  for _, g in ipairs(readable and conf:ha_groups() or {}) do
    if g.serial == tok.serial then return g end
  end
  if tok.model == VIRTUAL_MODEL then
    act.refusal { code = "DeviceUnknown",
      message = ("token %s (serial %s) is an HA group's virtual slot, but %s %s; a login there is a login on every "
        .. "member, whose attempts cannot be counted without knowing them"):format(tok.label, tok.serial, path,
        readable and "lists no VirtualToken with that serial" or "cannot be read") }
  end
end

function Session:guard_devices()
  if not identities[self] then
    local tok = self:token()
    local group, devices = ha_group_of(tok, conf_of[self]), {}
    for i, member in ipairs(group and group.members or {}) do
      devices[i] = guard.device("partition", member, ("%s member %s"):format(tok.label, member))
    end
    if #devices == 0 then devices[1] = guard.device("partition", tok.serial, tok.label) end
    identities[self] = { token = tok, devices = devices, where = tok.label .. "#" .. tok.serial, group = group }
  end
  return identities[self]
end

-- A read-only login: the gate's records without the gate - intent and
-- outcome audited, the login made in check mode too (a read, as a find
-- is), never confirmed (it destroys nothing).  -> the act's results
local function read_login(c, fn)
  local function write(outcome, extra)
    local r = { action = c.audit, target = c.where, outcome = outcome, kind = c.kind, what = c.what,
      read_only = true, check = act.checking() or nil }
    for k, v in pairs(c.fields) do r[k] = v end
    for k, v in pairs(extra or {}) do r[k] = v end
    dhsm.audit.write(r)
  end
  write("sending")
  local res = table.pack(pcall(fn, c))
  if not res[1] then
    write("error " .. tostring(dhsm.error.normalize(res[2]).code))
    error(res[2], 0)
  end
  write(c.outcome(table.unpack(res, 2, res.n)))
  return table.unpack(res, 2, res.n)
end

-- A read-only login needs a read-only session: a read-write one could
-- change the token under a login that check mode lets through.
local function check_read_only(self)
  if tostring(self:info().state):match("^rw_") then
    usage("login: read_only = true needs a read-only session (lib:open{...} without rw = true); this one is read-write")
  end
end

-- s:login("user" | "so", pin [, {allow_destructive_login=, read_only=}]) -> true
function Session:login(who, pin, opts)
  opts = check_fields(opts, LOGIN_OPTIONS, "login")
  local r = ROLES[who]
  if not r then usage("login: as \"user\" or \"so\", got %s", tostring(who)) end
  if opts.read_only then check_read_only(self) end
  if not secret.is(pin) then
    usage("login: the PIN must be a dhsm.secret (secret.env, secret.file or secret.prompt), got %s",
      type(pin) == "string" and "a plain string" or type(pin))
  end
  local id = self:guard_devices()
  local key = id.where
  -- check, C_Login and record are one critical section per partition and
  -- role (every member's, through an HA slot)
  local result = guard.attempt(id.devices, r.role, opts, {
    call = ("s:login(%q, pin, {allow_destructive_login = true})"):format(who),
    -- an HA slot's flags stand for every member: an upper bound for each
    device_left = function() return M.device_left(self:token(), who) end,
    try = function()
      -- a login risks a failed attempt: through the gate, not in a dry run
      local what = ("log in as %s on token %s%s"):format(guard.ROLE_NAMES[r.role], key,
        id.group and (" (HA group: every member, %d)"):format(#id.devices) or "")
      local sent, ok, err = (opts.read_only and read_login or act.change)({ kind = "login", action = "login",
        target = token_label(self), where = key, audit = "pkcs11.login", what = what, fields = { role = r.role },
        planned = function() return false, { check = true, would = what } end,
        outcome = function(_, fine, e) return fine and "ok" or tostring(dhsm.error.normalize(e).code) end,
      }, function() return true, pcall(raw_login, self, who, pin) end)
      if not sent then return nil, ok end
      if ok then return true, true end
      local code = dhsm.error.is(err) and err.code
      if code == "CKR_USER_ALREADY_LOGGED_IN" then   -- the token's login is shared by its sessions
        return nil, true
      end
      if code == "CKR_PIN_INCORRECT" then            -- only a wrong PIN counts
        local least = math.huge
        for _, dev in ipairs(id.devices) do least = math.min(least, guard.attempts_left(dev, r.role, nil) - 1) end
        err.message = ("%s; not retried: at most %d attempts left before %s"):format(err.message,
          least, guard.CONSEQUENCES[r.role])
        return false, err
      end
      if LOCKED_HINTS[code] then err.message = err.message .. ": " .. LOCKED_HINTS[code] end
      return nil, err                                -- the token refused it: not an attempt
    end,
  })
  if dhsm.error.is(result) then error(result, 0) end
  return result
end

---------------------------------------------------------------------------
-- objects

function Session:count(template)
  return #self:find(template)
end

-- s:find_one(template) -> handle | nil; more than one is an error
function Session:find_one(template)
  local found = self:find(template)
  if #found > 1 then usage("find_one: %d objects match", #found) end
  return found[1]
end

---------------------------------------------------------------------------
-- keys

local CURVES = {                                  -- DER of the named curve's OID
  ["P-256"] = "\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07",
  ["P-384"] = "\x06\x05\x2b\x81\x04\x00\x22",
}
local CURVE_ALIASES = { prime256v1 = "P-256", secp256r1 = "P-256", secp384r1 = "P-384" }

-- Fields the generators take besides attributes.
local SPEC = { label = { type = "string", pattern = "^.+$", required = true, expect = "a non-empty string" },
  id = { type = "string", expect = "a string of bytes" }, token = { type = "boolean" }, bits = { type = "integer" },
  curve = { type = "string" }, exponent = { type = "integer" }, public = { type = "table" }, private = { type = "table" } }

-- The label, id and token fields shared by both keys of a pair (the id
-- links them: random unless given).
local function common(self, o, what)
  schema.options("pkcs11: " .. what, o, SPEC, true)
  local id = o.id or self:random(16)
  if type(id) ~= "string" then usage("%s: id must be a string of bytes, got %s", what, type(id)) end
  return { label = o.label, id = id, token = o.token ~= false }
end

-- defaults, then the common fields, then the caller's attributes
local function merge(defaults, c, extra)
  local t = {}
  for k, v in pairs(defaults) do t[k] = v end
  for k, v in pairs(c) do t[k] = v end
  for k, v in pairs(extra or {}) do
    if not SPEC[k] then t[k] = v end
  end
  return t
end

local function check_choice(what, field, v, choices)
  for _, c in ipairs(choices) do
    if v == c then return v end
  end
  local list = {}
  for i, c in ipairs(choices) do list[i] = tostring(c) end
  usage("%s: %s must be %s, got %s", what, field, table.concat(list, ", "), tostring(v))
end

-- s:generate_aes{label=, bits=256, token=true, id=, ...attributes} -> handle
function Session:generate_aes(o)
  local c = common(self, o, "generate_aes")
  local bits = check_choice("generate_aes", "bits", o.bits or 256, { 128, 192, 256 })
  local t = merge({ class = "secret_key", key_type = "aes", value_len = bits // 8, private = true,
    sensitive = true, extractable = false, encrypt = true, decrypt = true, sign = false, verify = false,
    wrap = false, unwrap = false, derive = false }, c, o)
  return self:generate_key("AES_KEY_GEN", t, ("AES-%d key '%s'"):format(bits, c.label))
end

-- s:generate_hmac{label=, bits=256, ...} -> handle: a generic secret for SHA*_HMAC
function Session:generate_hmac(o)
  local c = common(self, o, "generate_hmac")
  local bits = o.bits or 256
  if math.type(bits) ~= "integer" or bits < 128 or bits % 8 ~= 0 or bits > 1024 then
    usage("generate_hmac: bits must be a multiple of 8 from 128 to 1024, got %s", tostring(bits))
  end
  local t = merge({ class = "secret_key", key_type = "generic_secret", value_len = bits // 8, private = true,
    sensitive = true, extractable = false, sign = true, verify = true, encrypt = false, decrypt = false }, c, o)
  return self:generate_key("GENERIC_SECRET_KEY_GEN", t, ("HMAC key (%d bits) '%s'"):format(bits, c.label))
end

-- A key pair: top-level fields other than SPEC belong in public= or private=.
local function generate_pair(self, o, mech, what, c, pub, priv)
  for k in pairs(o) do
    if not SPEC[k] then
      usage("%s: unknown field '%s' (an attribute of one key goes in public={...} or private={...})", what, tostring(k))
    end
  end
  local p = merge(pub, c, o.public)
  local q = merge(priv, c, o.private)
  p.token, q.token = c.token, c.token
  return self:generate_key_pair(mech, p, q, what)
end

-- s:generate_rsa{label=, bits=2048, exponent=65537, public={}, private={}} -> private, public
function Session:generate_rsa(o)
  local c = common(self, o, "generate_rsa")
  local bits = check_choice("generate_rsa", "bits", o.bits or 2048, { 2048, 3072, 4096 })
  local e = o.exponent or 65537
  if math.type(e) ~= "integer" or e < 3 or e % 2 == 0 then usage("generate_rsa: exponent must be an odd integer >= 3") end
  local bytes = string.pack(">I8", e):gsub("^\0+", "")
  return generate_pair(self, o, "RSA_PKCS_KEY_PAIR_GEN", ("RSA-%d key pair '%s'"):format(bits, c.label), c,
    { class = "public_key", key_type = "rsa", private = false, modulus_bits = bits, public_exponent = bytes,
      verify = true, encrypt = true, wrap = false },
    { class = "private_key", key_type = "rsa", private = true, sensitive = true, extractable = false,
      sign = true, decrypt = true, unwrap = false })
end

-- s:generate_ec{label=, curve="P-256", public={}, private={}} -> private, public
function Session:generate_ec(o)
  local c = common(self, o, "generate_ec")
  local curve = o.curve or "P-256"
  curve = CURVE_ALIASES[curve] or curve
  if not CURVES[curve] then usage("generate_ec: curve must be P-256 or P-384, got %s", tostring(o.curve)) end
  return generate_pair(self, o, "EC_KEY_PAIR_GEN", ("EC %s key pair '%s'"):format(curve, c.label), c,
    { class = "public_key", key_type = "ec", private = false, ec_params = CURVES[curve], verify = true,
      encrypt = false, wrap = false, derive = false },
    { class = "private_key", key_type = "ec", private = true, sensitive = true, extractable = false,
      sign = true, decrypt = false, unwrap = false, derive = false })
end

-- mechanism(name) -> its canonical name | nil; rv_name(0x80000007) -> "CKR_USER_LOCKED_OUT"
M.mechanism, M.rv_name = core.mechanism, core.rv_name
M.ecdsa_der, M.ecdsa_raw = core.ecdsa_der, core.ecdsa_raw

return M
