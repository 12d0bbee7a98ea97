-- dhsm.pkcs11 against real SoftHSM2 tokens made here with softhsm2-util:
-- loading, slots and tokens, sessions and their lifetime, guarded logins,
-- objects, every key type and mechanism, check mode, audit, bad input.
local t = require "dhsm.test"
local cjson = require "cjson"
local pkcs11 = require "dhsm.pkcs11"
local guard = require "dhsm.guard"
local sys = require "dhsm.sys"
local util = require "dhsm.util"
local p11 = require "support.p11"

if not p11.available() then
  t.test("pkcs11 (needs SoftHSM2)", function() t.skip("libsofthsm2.so or softhsm2-util is not installed") end)
  return
end

-- main: objects and crypto; guard: failed logins; so: SO logins (and read-only CO logins); two "twin"s.
local hsm = p11.softhsm { "main", "guard", "lastone", "so", "twin", "twin" }

-- A fresh audit log for the test; returns a reader of its records.
local function fresh_audit()
  local path = t.tmpdir() .. "/audit.jsonl"
  dhsm.audit.set_path(path)
  t.cleanup(function() dhsm.audit.set_path(nil) end)
  return function()
    local out = {}
    for line in (util.read_file(path) or ""):gmatch("[^\n]+") do out[#out + 1] = cjson.decode(line) end
    return out, util.read_file(path) or ""
  end
end

local function actions(records)
  local out = {}
  for _, r in ipairs(records) do out[#out + 1] = r.action end
  return out
end

-- A session on token `label`, closed when the test ends.
local function open(lib, label, opts)
  local s = lib:open { label = label, rw = not (opts and opts.ro) }
  t.cleanup(function() s:close() end)
  return s
end

-- A read-write session on token `label` and the guard's device for it.
local function guarded(label)
  local s = open(hsm:load(), label)
  local id = s:guard_devices()
  t.eq(#id.devices, 1, "one partition")
  return s, id.devices[1]
end

-- A logged-in read-write session on "main".
local function user_session()
  local lib = hsm:load()
  local s = open(lib, "main")
  s:login("user", hsm:pin("main"))
  return s, lib
end

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function tamper(s)
  return string.char(s:byte(1) ~ 1) .. s:sub(2)
end

---------------------------------------------------------------------------
-- loading

t.test("a library that cannot be loaded: the error names the path and dlerror", function()
  local err = t.raises(function() pkcs11.load("/nonexistent/libnope.so") end, "LoadFailed")
  t.eq(err.kind, "pkcs11")
  t.ok(err.message:find("/nonexistent/libnope.so", 1, true), err.message)
  t.ok(err.message:find("cannot open shared object file", 1, true), err.message)
  t.eq(err.details.path, "/nonexistent/libnope.so")
  err = t.raises(function() pkcs11.load("libz.so.1") end, "LoadFailed")      -- a library, not PKCS#11
  t.ok(err.message:find("no C_GetFunctionList", 1, true), err.message)
  t.raises(function() pkcs11.load(42) end, "must be a string")
  t.raises(function() pkcs11.load(p11.LIB, { envv = {} }) end, "unknown field 'envv' %(did you mean 'env'%?%)")
  t.raises(function() pkcs11.load(p11.LIB, { env = { SOFTHSM2_CONF = 1 } }) end, "env must map")
end)

t.test("the path: argument, then DHSM_PKCS11_LIB, then Chrystoki.conf's LibUNIX64, then the Luna default", function()
  local dir = t.tmpdir()
  t.write(dir .. "/Chrystoki.conf", "Chrystoki2 = {\n   LibUNIX64 = " .. p11.LIB .. ";\n}\n"
    .. "Luna = { DefaultTimeOut = 500000; }\n")
  local q = util.shell_quote
  local function path_in(env, code)
    local r = t.sh(("env -u DHSM_PKCS11_LIB -u ChrystokiConfigurationPath %s %s"):format(env,
      t.cmd("exec -e " .. q(code))))
    return util.trim(r.stdout), r
  end
  local show = "print(require('dhsm.pkcs11').library_path())"
  if not sys.stat("/etc/Chrystoki.conf") then                -- no Luna client on this machine
    t.eq(path_in("", show), pkcs11.DEFAULT_PATH .. "\tthe Luna client's default")
  end
  t.eq(path_in("ChrystokiConfigurationPath=" .. q(dir), show), p11.LIB .. "\t" .. dir .. "/Chrystoki.conf")
  t.eq(path_in("DHSM_PKCS11_LIB=/opt/x.so ChrystokiConfigurationPath=" .. q(dir), show), "/opt/x.so\t$DHSM_PKCS11_LIB")
  t.eq(pkcs11.library_path("/a/b.so"), "/a/b.so")
  -- loaded from the configuration, and an error says where a bad path came from
  local out = path_in("SOFTHSM2_CONF=" .. q(hsm.conf) .. " ChrystokiConfigurationPath=" .. q(dir),
    "print(#require('dhsm.pkcs11').load():tokens())")
  t.eq(out, "6")
  local _, r = path_in("DHSM_PKCS11_LIB=/opt/none.so", "require('dhsm.pkcs11').load()")
  t.ok(r.stderr:find("/opt/none.so: dlopen failed.*%(the path from %$DHSM_PKCS11_LIB%)"), r.stderr)
end)

---------------------------------------------------------------------------
-- library, slots, tokens

t.test("library info, slots with tokens, token flags as booleans", function()
  local lib = hsm:load()
  local info = lib:info()
  t.eq({ info.cryptoki_version, info.manufacturer, info.path }, { "2.40", "SoftHSM", p11.LIB })
  local slots = lib:slots { token_present = true }
  t.eq(#slots, 7, "six tokens and the free slot")
  for _, s in ipairs(slots) do
    t.eq({ math.type(s.slot), s.token_present, type(s.description) }, { "integer", true, "string" })
  end
  t.ok(#lib:slots() >= #slots)
  local tok = lib:find_token { label = "main" }
  t.eq({ tok.label, tok.manufacturer, tok.model }, { "main", "SoftHSM project", "SoftHSM v2" })
  t.eq({ tok.token_initialized, tok.login_required, tok.user_pin_initialized, tok.rng },
       { true, true, true, true })
  t.eq({ tok.so_pin_locked, tok.so_pin_final_try, tok.user_pin_locked, tok.user_pin_final_try,
         tok.user_pin_to_be_changed, tok.write_protected }, { false, false, false, false, false, false })
  t.eq(lib:token(tok.slot).serial, tok.serial)
  t.eq(math.type(tok.max_pin_len), "integer")
  local mechs = {}
  for _, m in ipairs(lib:mechanisms(tok.slot)) do mechs[m] = true end
  t.ok(mechs.ECDSA and mechs.AES_GCM and mechs.SHA256_RSA_PKCS_PSS and mechs.SHA256_HMAC)
  t.eq(#lib:tokens(), 6)
  t.ok(tostring(lib):find("^pkcs11 library .*libsofthsm2.so %(0 sessions%)$"), tostring(lib))
end)

t.test("tokens are found by label or serial, never by a fixed slot number", function()
  local lib = hsm:load()
  local main = lib:find_token { label = "main" }
  t.eq(lib:find_token { serial = main.serial }.label, "main")
  t.eq(lib:find_token { label = "main", serial = main.serial }.slot, main.slot)
  t.eq(lib:find_token { label = "absent" }, nil)
  t.eq(lib:find_token { label = "main", serial = "0" }, nil)
  local err = t.raises(function() lib:find_token { label = "twin" } end, "2 tokens are labelled \"twin\"")
  t.eq(err.kind, "usage")
  t.raises(function() lib:find_token {} end, "give label= or serial=")
  t.raises(function() lib:find_token { lable = "main" } end, "did you mean 'label'")
  t.raises(function() lib:open { label = "absent" } end, "TokenNotFound")
  t.raises(function() lib:open { slot = "1" } end, "pkcs11: open: slot: expected a slot number %(an integer >= 0%), got \"1\"")
  t.raises(function() lib:token(-1) end, "non%-negative")
  t.raises(function() lib:token(987654321) end, "CKR_SLOT_ID_INVALID")
  local twin
  for _, tok in ipairs(lib:tokens()) do if tok.label == "twin" then twin = tok end end
  local s = lib:open { serial = twin.serial }
  t.eq(s:token().serial, twin.serial)
  s:close()
  s = lib:open { slot = main.slot }
  t.eq(s:token().label, "main")
  s:close()
end)

-- SoftHSM2 behind tests/support/p11shim.c, built here: the slot of the
-- token labelled `broken` fails C_GetSlotInfo and C_GetTokenInfo with
-- CKR_GENERAL_ERROR, as an HA member that went away does.
local function broken_library(broken)
  local so = t.tmpdir() .. "/p11shim.so"
  local q = util.shell_quote
  local r = t.sh(("cc -std=c11 -shared -fPIC -Wall -Werror $(pkg-config --cflags p11-kit-1) -o %s %s -ldl")
    :format(q(so), q(t.here() .. "/../support/p11shim.c")))
  t.eq(r.status, 0, r.stderr)
  hsm:load()                                     -- SoftHSM2 stays initialised by the plain library
  local lib = pkcs11.load(so, { env = { P11SHIM_LIB = p11.LIB, P11SHIM_BROKEN = broken } })
  t.cleanup(function() lib:close() end)
  return lib
end

t.test("a slot that does not answer is skipped and reported; the healthy tokens are still found", function()
  local lib = broken_library("guard")
  local healthy = hsm:load():find_token { label = "main" }
  local tok, broken = lib:find_token { label = "main" }
  t.eq(tok and tok.serial, healthy.serial)
  t.eq(#broken, 1)
  t.eq({ broken[1].code, math.type(broken[1].slot) }, { "CKR_GENERAL_ERROR", "integer" })
  t.ok(broken[1].message:find("C_GetSlotInfo", 1, true), broken[1].message)
  -- every listing: the broken slot is left out and reported, the rest is there
  local slots, bslots = lib:slots { token_present = true }
  t.eq({ #slots, #bslots }, { 6, 1 })
  local tokens, btokens = lib:tokens()
  t.eq({ #tokens, #btokens, btokens[1].slot }, { 5, 1, broken[1].slot })
  for _, x in ipairs(tokens) do t.ok(x.label ~= "guard", "the broken token is not listed") end
  -- a session on a healthy token opens through the same library
  local s <close> = lib:open { label = "main" }
  t.eq(s:token().label, "main")
  -- looking for the token behind the broken slot says where it may be
  local err = t.raises(function() lib:open { label = "guard" } end, "TokenNotFound")
  t.ok(err.message:find("1 slot%(s%) did not answer and may hold it: slot %d+ %(CKR_GENERAL_ERROR%)"), err.message)
  t.eq(err.details.broken[1].slot, broken[1].slot)
  -- asked for by number, the broken slot still raises
  t.raises(function() lib:token(broken[1].slot) end, "CKR_GENERAL_ERROR")
end, { timeout = 60 })

---------------------------------------------------------------------------
-- sessions and lifetime

t.test("sessions close with <close>; the library outlives its sessions", function()
  local lib = hsm:load()
  local kept
  do
    local s <close> = lib:open { label = "main" }
    kept = s
    t.eq(s:info().state, "ro_public")
    t.ok(tostring(lib):find("(1 sessions)", 1, true))
    t.ok(tostring(s):find("^pkcs11 session on token main#%x+ %(slot %d+, ro%)$"), tostring(s))
  end
  t.ok(tostring(kept):find("closed", 1, true))
  t.raises(function() kept:info() end, "session is closed")
  kept:close()                                          -- twice is fine
  -- closing the library with a session open: the session goes on, the library
  -- object refuses, and it is released when the session closes
  local s = lib:open { label = "main", rw = true }
  lib:close()
  t.raises(function() lib:tokens() end, "library is closed")
  t.eq(s:info().rw, true)
  t.eq(#s:random(8), 8)
  s:close()
  t.ok(tostring(lib):find("(closed)", 1, true))
  -- a session alone keeps its library alive through garbage collection
  local lib2 = pkcs11.load(p11.LIB, { env = hsm:env() })
  local s2 = lib2:open { label = "main" }
  lib2 = nil      -- luacheck: ignore
  collectgarbage()
  collectgarbage()
  t.eq(s2:token().label, "main")
  s2:close()
end)

t.test("a library loaded again after all were closed sees new tokens", function()
  local lib = pkcs11.load(p11.LIB, { env = hsm:env() })
  t.eq(lib:find_token { label = "late" }, nil)
  lib:close()
  collectgarbage()
  hsm:add_token("late")
  local again = hsm:load()
  t.eq(again:find_token { label = "late" }.label, "late")
end)

---------------------------------------------------------------------------
-- logins

t.test("login as user and as SO, logout; audited without the PIN", function()
  local records = fresh_audit()
  local lib = hsm:load()
  local s = open(lib, "main")
  t.eq(s:login("user", hsm:pin("main")), true)
  t.eq(s:info().state, "rw_user")
  t.eq(s:login("user", hsm:pin("main")), true, "a token's login is shared by its sessions")
  s:logout()
  t.eq(s:info().state, "rw_public")
  local so = open(lib, "so")
  t.eq(so:login("so", hsm:so_pin("so")), true)
  t.eq(so:info().state, "rw_so")
  so:logout()
  local recs, text = records()
  -- each C_Login and C_Logout passes the gate: its intent, then its outcome; the guard records each login
  local seen = {}
  for i, r in ipairs(recs) do seen[i] = r.action .. " " .. r.outcome end
  t.eq(seen, { "pkcs11.login sending", "pkcs11.login ok", "login.co ok",
    "pkcs11.login sending", "pkcs11.login CKR_USER_ALREADY_LOGGED_IN",
    "pkcs11.logout sending", "pkcs11.logout ok",
    "pkcs11.login sending", "pkcs11.login ok", "login.pso ok",
    "pkcs11.logout sending", "pkcs11.logout ok" })
  t.ok(recs[1].target:find("^main#%x+$"), recs[1].target)
  t.ok(not text:find(hsm.pins.main.user, 1, true) and not text:find(hsm.pins.so.so, 1, true), "no PIN in the log")
end)

t.test("a wrong PIN raises CKR_PIN_INCORRECT, is counted, and is not retried", function()
  local records = fresh_audit()
  local s, key = guarded("guard")
  local err = t.raises(function() s:login("user", dhsm.secret.value("wrong-pin")) end, "CKR_PIN_INCORRECT")
  t.eq({ err.kind, err.code, err.retryable, err.details.rv, err.details["function"] },
       { "pkcs11", "CKR_PIN_INCORRECT", false, 0xA0, "C_Login" })
  t.ok(err.message:find("not retried: at most 9 attempts left", 1, true), err.message)
  t.eq(guard.failures(key, "co"), 1)
  t.eq(s:token().user_pin_count_low, true, "SoftHSM2 flags the failure")
  t.eq(pkcs11.device_left(s:token(), "user"), 9)
  local recs = records()
  t.eq({ #recs, recs[3].action, recs[3].outcome, recs[3].failures }, { 3, "login.co", "failed", 1 })
  t.eq({ recs[1].outcome, recs[2].outcome }, { "sending", "CKR_PIN_INCORRECT" }, "the intent came first")
  s:login("user", hsm:pin("guard"))
  t.eq(guard.failures(key, "co"), 0, "a success resets the count")
  t.eq(s:token().user_pin_count_low, false)
end)

t.test("the guard refuses the attempt that could be the last; the override is audited", function()
  local records = fresh_audit()
  local s, key = guarded("lastone")
  for _ = 1, 9 do
    t.raises(function() s:login("user", dhsm.secret.value("bad")) end, "CKR_PIN_INCORRECT")
  end
  -- the tenth could lock the Crypto Officer out: refused even with the right PIN
  local err = t.raises(function() s:login("user", hsm:pin("lastone")) end, "LastLoginAttempt")
  t.eq(err.kind, "safety")
  t.eq(guard.failures(key, "co"), 9, "the refused attempt was not made")
  t.eq(s:info().state, "rw_public")
  -- the operator, sure of the PIN, says so
  t.eq(s:login("user", hsm:pin("lastone"), { allow_destructive_login = true }), true)
  t.eq(s:info().state, "rw_user")
  t.eq(guard.failures(key, "co"), 0)
  local overrides = {}
  for _, r in ipairs(records()) do
    if r.action == "safety.override" then overrides[#overrides + 1] = r.outcome end
  end
  t.eq(overrides, { "allow_destructive_login" })
end, { timeout = 120 })

t.test("a read-only login is a read: made in check mode, counted and refused at the last attempt, audited; never on a read-write session",
  function()
  local records = fresh_audit()
  local lib = hsm:load()
  local key = open(lib, "so", { ro = true }):guard_devices().devices[1]
  t.eq(guard.failures(key, "co"), 0)        -- (the guard's folder made before check mode)
  t.cleanup(function() guard.forget(key, "co") end)
  local rw = open(lib, "so")
  local err = t.raises(function() rw:login("user", hsm:pin("so"), { read_only = true }) end, "needs a read%-only session")
  t.eq(err.kind, "usage")
  t.eq(rw:info().state, "rw_public", "not logged in")
  local checking = require("dhsm.act").check_scope(true)
  t.cleanup(function() checking:close() end)
  local s = open(lib, "so", { ro = true })
  t.raises(function() s:login("user", dhsm.secret.value("wrong"), { read_only = true }) end, "CKR_PIN_INCORRECT")
  t.eq(guard.failures(key, "co"), 1, "a wrong PIN counts, in check mode too")
  t.eq(s:login("user", hsm:pin("so"), { read_only = true }), true)
  t.eq(s:info().state, "ro_user", "made, not described")
  t.eq(guard.failures(key, "co"), 1, "check mode clears no count")
  local seen = {}
  for i, r in ipairs(records()) do seen[i] = r.action .. " " .. r.outcome .. (r.read_only and " (read)" or "") end
  t.eq(seen, { "pkcs11.login sending (read)", "pkcs11.login CKR_PIN_INCORRECT (read)", "login.co failed",
    "pkcs11.login sending (read)", "pkcs11.login ok (read)", "login.co ok" })
  s:logout()
  for _ = 1, 8 do guard.record(key, "co", false) end
  t.eq(guard.failures(key, "co"), 9)
  t.raises(function() s:login("user", hsm:pin("so"), { read_only = true }) end, "LastLoginAttempt")
  checking:close()
  guard.record(key, "co", true)
  t.eq(guard.failures(key, "co"), 0, "outside check mode the counts fold into logins.json and clear")
end)

t.test("the token's PIN flags map to attempts left; a locked token is not tried", function()
  t.eq(pkcs11.device_left({ user_pin_locked = true, user_pin_final_try = true }, "user"), 0)
  t.eq(pkcs11.device_left({ user_pin_final_try = true }, "user"), 1)
  t.eq(pkcs11.device_left({ user_pin_count_low = true }, "user"), 9)
  t.eq(pkcs11.device_left({ user_pin_count_low = false }, "user"), nil)
  t.eq(pkcs11.device_left({ so_pin_final_try = true, user_pin_locked = true }, "so"), 1)
  t.eq(pkcs11.device_left({ so_pin_count_low = true }, "so"), 9)
  local key = guard.device("partition", "0000000")
  t.cleanup(function() guard.forget(key, "co") end)
  t.raises(function() guard.check(key, "co", pkcs11.device_left({ user_pin_locked = true }, "user"), {}) end,
    "NoLoginAttemptsLeft")
  t.raises(function() guard.check(key, "co", pkcs11.device_left({ user_pin_final_try = true }, "user"), {}) end,
    "LastLoginAttempt")
end)

t.test("bad login input is refused before any attempt", function()
  local s, key = guarded("guard")
  local before = guard.failures(key, "co")
  local err = t.raises(function() s:login("user", hsm.pins.guard.user) end, "must be a dhsm.secret .*got a plain string")
  t.eq(err.kind, "usage")
  t.ok(not err.message:find(hsm.pins.guard.user, 1, true), "the PIN is not repeated")
  t.raises(function() s:login("admin", hsm:pin("guard")) end, "as \"user\" or \"so\"")
  t.raises(function() s:login("user", hsm:pin("guard"), { allow = true }) end, "unknown field 'allow'")
  t.raises(function() s:login("user", nil) end, "got nil")
  t.eq(guard.failures(key, "co"), before)
  t.eq(s:info().state, "rw_public")
  t.eq(pcall(require, "dhsm.pkcs11.core"), false, "the core with the unguarded C_Login is private")
end)

---------------------------------------------------------------------------
-- objects

t.test("objects: find, count, attributes with their Lua types, destroy", function()
  local records = fresh_audit()
  local s = user_session()
  local aes = s:generate_aes { label = "obj-aes", bits = 256 }
  t.eq(math.type(aes), "integer")
  t.eq(s:find { label = "obj-aes" }, { aes })
  t.eq(s:count { class = "secret_key", key_type = "aes", label = "obj-aes", token = true }, 1)
  t.eq(s:find_one { label = "obj-aes" }, aes)
  t.eq(s:find_one { label = "none" }, nil)
  local a = s:attributes(aes, { "label", "class", "key_type", "value_len", "token", "private", "sensitive",
    "extractable", "never_extractable", "local", "encrypt", "sign", "id", "value", "key_gen_mechanism" })
  t.eq(a, { label = "obj-aes", class = "secret_key", key_type = "aes", value_len = 32, token = true,
    private = true, sensitive = true, extractable = false, never_extractable = true, ["local"] = true,
    encrypt = true, sign = false, id = a.id, key_gen_mechanism = "AES_KEY_GEN" })
  t.eq({ math.type(a.value_len), #a.id }, { "integer", 16 })
  t.eq(a.value, nil, "a sensitive value is not shown")
  -- a pair shares its id
  local priv, pub = s:generate_ec { label = "obj-ec", token = false, id = "\1\2\3" }
  t.eq(s:count { id = "\1\2\3" }, 2)
  t.eq(s:find { id = "\1\2\3", class = "public_key" }, { pub })
  t.eq(s:attributes(pub, { "ec_params", "id", "class" }), { ec_params = "\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07",
    id = "\1\2\3", class = "public_key" })
  t.eq(s:attributes(priv).class, "private_key")
  t.eq(s:count { label = "obj-ec", token = true }, 0, "session objects are not on the token")
  -- destroy
  t.eq(s:destroy(aes), true)
  t.eq(s:count { label = "obj-aes" }, 0)
  local err = t.raises(function() s:destroy(aes) end, "CKR_OBJECT_HANDLE_INVALID")
  t.eq(err.details["function"], "C_DestroyObject")
  local gen, des = {}, {}
  for _, r in ipairs(records()) do
    if r.action == "pkcs11.generate" then gen[#gen + 1] = r end
    if r.action == "pkcs11.destroy" then des[#des + 1] = r end
  end
  -- intent, then outcome (dhsm.act)
  t.eq({ gen[1].outcome, gen[1].mechanism, gen[2].mechanism, gen[2].handle, gen[2].outcome },
    { "sending", "AES_KEY_GEN", "AES_KEY_GEN", aes, "ok" })
  t.ok(gen[2].what:find("^generate AES%-256 key 'obj%-aes' on token main#"), gen[2].what)
  t.eq({ gen[4].mechanism, gen[4].private, gen[4].public }, { "EC_KEY_PAIR_GEN", priv, pub })
  t.eq({ #des, des[1].outcome, des[2].label, des[2].outcome, des[4].outcome },
    { 4, "sending", "obj-aes", "ok", "error CKR_OBJECT_HANDLE_INVALID" })
  t.ok(des[2].target:find("^main#"))
end)

t.test("every key type: AES 128/192/256, HMAC, RSA 2048/3072/4096, EC P-256/P-384", function()
  local s = user_session()
  for _, bits in ipairs { 128, 192, 256 } do
    local k = s:generate_aes { label = "aes" .. bits, bits = bits, token = false }
    t.eq(s:attributes(k, { "value_len", "key_type" }), { value_len = bits // 8, key_type = "aes" })
  end
  local h = s:generate_hmac { label = "mac", token = false }
  t.eq(s:attributes(h, { "key_type", "sign", "verify", "encrypt" }),
       { key_type = "generic_secret", sign = true, verify = true, encrypt = false })
  for _, bits in ipairs { 2048, 3072, 4096 } do
    local priv, pub = s:generate_rsa { label = "rsa" .. bits, bits = bits, token = false }
    t.eq(s:attributes(pub, { "modulus_bits", "public_exponent", "verify", "encrypt" }),
         { modulus_bits = bits, public_exponent = "\1\0\1", verify = true, encrypt = true })
    t.eq(#s:attributes(pub, { "modulus" }).modulus, bits // 8)
    t.eq(s:attributes(priv, { "sign", "decrypt", "sensitive", "extractable" }),
         { sign = true, decrypt = true, sensitive = true, extractable = false })
    t.eq(#s:attributes(priv, { "modulus" }).modulus, bits // 8)
  end
  local oids = { ["P-256"] = "\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07", ["P-384"] = "\x06\x05\x2b\x81\x04\x00\x22" }
  for curve, oid in pairs(oids) do
    local priv, pub = s:generate_ec { label = "ec" .. curve, curve = curve, token = false }
    t.eq(s:attributes(pub, { "ec_params", "key_type" }), { ec_params = oid, key_type = "ec" })
    t.eq(s:attributes(priv, { "sign", "derive", "decrypt", "sensitive", "extractable" }),
         { sign = true, derive = false, decrypt = false, sensitive = true, extractable = false })
  end
  local priv = s:generate_ec { label = "secp", curve = "secp384r1", token = false }
  t.eq(#s:sign(priv, "ECDSA", ("x"):rep(48)), 96)
  -- overrides for one key of a pair
  local p2 = s:generate_rsa { label = "rsa-x", token = false, private = { decrypt = false } }
  t.eq(s:attributes(p2, { "decrypt" }).decrypt, false)
end, { timeout = 180 })

t.test("key generation refuses bad specifications, naming the field", function()
  local s = user_session()
  t.raises(function() s:generate_aes { bits = 256 } end, "generate_aes: label: missing, expected a non%-empty string")
  t.raises(function() s:generate_aes { label = "x", bits = 100 } end, "bits must be 128, 192, 256, got 100")
  t.raises(function() s:generate_rsa { label = "x", bits = 1024 } end, "bits must be 2048, 3072, 4096")
  t.raises(function() s:generate_ec { label = "x", curve = "P-521" } end, "curve must be P%-256 or P%-384")
  t.raises(function() s:generate_hmac { label = "x", bits = 100 } end, "multiple of 8")
  t.raises(function() s:generate_aes { label = "x", sensitiv = true } end, "unknown template field 'sensitiv'")
  t.raises(function() s:generate_aes { label = "x", extractable = "no" } end, "field 'extractable' must be a boolean")
  t.raises(function() s:generate_rsa { label = "x", extractable = true } end, "goes in public={...} or private={...}")
  t.raises(function() s:generate_rsa { label = "x", private = { colour = 1 } } end,
    "RSA%-2048 key pair 'x' %(private key%): unknown template field 'colour'")
  t.raises(function() s:generate_rsa { label = "x", exponent = 4 } end, "odd integer")
  t.raises(function() s:generate_aes { label = "x", class = "key" } end, "field 'class' has no value \"key\"")
  t.raises(function() s:generate_aes { label = "x", id = 5 } end, "generate_aes: id: expected a string of bytes, got 5")
  t.raises(function() s:generate_aes "x" end, "expected a table")
  t.eq(s:count { label = "x" }, 0)
end)

---------------------------------------------------------------------------
-- crypto

t.test("sign and verify: RSA-PKCS, SHA256-RSA-PKCS, RSA-PSS, ECDSA, HMAC-SHA256; tampering fails", function()
  local s = user_session()
  local rsa, rsa_pub = s:generate_rsa { label = "sig-rsa", token = false }
  local ec, ec_pub = s:generate_ec { label = "sig-ec", token = false }
  local mac = s:generate_hmac { label = "sig-mac", token = false }
  local data = "the quick brown fox"
  local digest = s:digest("SHA256", data)
  local cases = {
    { rsa, rsa_pub, "RSA_PKCS", data, 256 },
    { rsa, rsa_pub, "SHA256_RSA_PKCS", data, 256 },
    { rsa, rsa_pub, "SHA256-RSA-PKCS-PSS", data, 256 },
    { rsa, rsa_pub, "RSA_PKCS_PSS", digest, 256 },
    { ec, ec_pub, "ECDSA", digest, 64 },
    { ec, ec_pub, "ECDSA_SHA256", data, 64 },
    { mac, mac, "HMAC-SHA256", data, 32 },
  }
  for _, c in ipairs(cases) do
    local key, vkey, mech, msg, len = table.unpack(c)
    local sig = s:sign(key, mech, msg)
    t.eq(#sig, len, mech)
    t.eq(s:verify(vkey, mech, msg, sig), true, mech)
    t.eq(s:verify(vkey, mech, tamper(msg), sig), false, mech .. " with tampered data")
    t.eq(s:verify(vkey, mech, msg, tamper(sig)), false, mech .. " with a tampered signature")
  end
  -- the binding's SHA-256 is the token's: ECDSA_SHA256(data) is ECDSA(SHA-256(data))
  t.eq(s:verify(ec_pub, "ECDSA", digest, s:sign(ec, "ECDSA_SHA256", data)), true)
  t.eq(s:verify(rsa_pub, "RSA_PKCS_PSS", digest, s:sign(rsa, "SHA256_RSA_PKCS_PSS", data)), true)
  t.eq(s:verify(rsa_pub, "RSA_PKCS_PSS", digest, s:sign(rsa, "RSA_PKCS_PSS", digest, { salt_len = 0 }),
    { salt_len = 0 }), true)
  -- RSA-PKCS and HMAC are deterministic
  t.eq(s:sign(rsa, "SHA256_RSA_PKCS", data), s:sign(rsa, "SHA256_RSA_PKCS", data))
  t.eq(s:sign(mac, "SHA256_HMAC", data), s:sign(mac, "SHA256_HMAC", data))
  t.eq(s:verify(rsa_pub, "SHA256_RSA_PKCS", data, "short"), false)
end, { timeout = 90 })

-- DER helpers for the test: a SubjectPublicKeyInfo from the token's EC attributes.
local function der(tag, body)
  local n = #body
  local len = n < 128 and string.char(n) or n < 256 and string.char(0x81, n) or string.char(0x82, n >> 8, n & 0xff)
  return string.char(tag) .. len .. body
end

local function ec_spki(s, pub)
  local a = s:attributes(pub, { "ec_params", "ec_point" })
  local point = a.ec_point:sub(3)                      -- the OCTET STRING's content (P-256: 65 bytes)
  local ec_public_key = "\x06\x07\x2a\x86\x48\xce\x3d\x02\x01"   -- 1.2.840.10045.2.1
  return der(0x30, der(0x30, ec_public_key .. a.ec_params) .. der(0x03, "\0" .. point))
end

t.test("ECDSA: sign returns raw r||s; ecdsa_der makes the DER that openssl verifies; ecdsa_raw inverts it", function()
  local s = user_session()
  local ec, ec_pub = s:generate_ec { label = "der-ec", token = false }
  local dir = t.tmpdir()
  t.write(dir .. "/pub.der", ec_spki(s, ec_pub))
  local data = "the quick brown fox"
  t.write(dir .. "/data", data)
  local q = util.shell_quote
  for i = 1, 8 do                                      -- r or s with a high bit, or short, now and then
    local raw = s:sign(ec, "ECDSA_SHA256", data)
    t.eq(#raw, 64, "raw r||s")
    local sig = pkcs11.ecdsa_der(raw)
    t.eq(sig:byte(1), 0x30, "a DER SEQUENCE")
    t.eq(pkcs11.ecdsa_raw(sig, 32), raw, "round trip")
    t.write(dir .. "/sig", sig)
    local r = t.sh(("openssl dgst -sha256 -verify %s -keyform DER -signature %s %s"):format(
      q(dir .. "/pub.der"), q(dir .. "/sig"), q(dir .. "/data")))
    t.eq({ r.status, r.stdout }, { 0, "Verified OK\n" }, r.stderr)
    if i == 1 then                                     -- the raw signature is not DER: openssl refuses it
      t.write(dir .. "/sig", raw)
      t.ok(t.sh(("openssl dgst -sha256 -verify %s -keyform DER -signature %s %s"):format(
        q(dir .. "/pub.der"), q(dir .. "/sig"), q(dir .. "/data"))).status ~= 0)
    end
  end
  -- an OpenSSL signature (DER) converts for the token's C_Verify
  local r = t.sh(("openssl ecparam -name prime256v1 -genkey -noout -out %s && openssl ec -in %s -pubout -outform DER -out %s 2>/dev/null"
    .. " && openssl dgst -sha256 -sign %s -out %s %s"):format(q(dir .. "/k.pem"), q(dir .. "/k.pem"),
    q(dir .. "/kpub.der"), q(dir .. "/k.pem"), q(dir .. "/osig"), q(dir .. "/data")))
  t.eq(r.status, 0, r.stderr)
  local raw = pkcs11.ecdsa_raw(util.read_file(dir .. "/osig"), 32)
  t.eq(#raw, 64)
  t.eq(pkcs11.ecdsa_der(raw), util.read_file(dir .. "/osig"))
end, { timeout = 60 })

t.test("ECDSA conversions refuse what is not a signature, clearly", function()
  local good = pkcs11.ecdsa_der(string.rep("\1", 32) .. string.rep("\2", 32))
  t.raises(function() pkcs11.ecdsa_raw("not der at all", 32) end, "not a DER ECDSA signature")
  t.raises(function() pkcs11.ecdsa_raw(good .. "\0", 32) end, "nothing after")      -- trailing data
  t.raises(function() pkcs11.ecdsa_raw(good:sub(1, -2), 32) end, "not a DER ECDSA signature")
  t.raises(function() pkcs11.ecdsa_raw(good, 16) end, "fit in 16 bytes")
  t.raises(function() pkcs11.ecdsa_raw(good, 0) end, "size is the curve's size")
  t.raises(function() pkcs11.ecdsa_der("odd") end, "even length")
  t.raises(function() pkcs11.ecdsa_der("") end, "got 0 bytes")
  t.raises(function() pkcs11.ecdsa_der(string.rep("\0", 64)) end, "r or s is zero")
  local err = t.raises(function() pkcs11.ecdsa_raw("x", 32) end)
  t.eq({ err.kind, err.code }, { "usage", "BadSignature" })
  t.eq(#pkcs11.ecdsa_raw(pkcs11.ecdsa_der(string.rep("\0", 31) .. "\1" .. string.rep("\0", 31) .. "\2"), 32), 64)
end)

t.test("encrypt and decrypt: AES-GCM with AAD, AES-CBC-PAD; IVs given or made", function()
  local s = user_session()
  local k = s:generate_aes { label = "enc", token = false }
  local plain = "attack at dawn, bring the HSM"
  local ct, iv = s:encrypt(k, "AES_GCM", plain, { aad = "header" })
  t.eq({ #ct, #iv }, { #plain + 16, 12 })
  t.eq(s:decrypt(k, "AES_GCM", ct, { iv = iv, aad = "header" }), plain)
  t.raises(function() s:decrypt(k, "AES_GCM", ct, { iv = iv, aad = "other" }) end, "pkcs11")
  t.raises(function() s:decrypt(k, "AES_GCM", tamper(ct), { iv = iv, aad = "header" }) end, "pkcs11")
  local _, iv2 = s:encrypt(k, "AES_GCM", plain)
  t.ok(iv2 ~= iv, "a fresh IV each time")
  local given = ("\7"):rep(12)
  local ct3, iv3 = s:encrypt(k, "AES_GCM", "", { iv = given, tag_bits = 96 })
  t.eq({ #ct3, iv3 }, { 12, given })
  t.eq(s:decrypt(k, "AES_GCM", ct3, { iv = given, tag_bits = 96 }), "")
  for _, n in ipairs { 0, 15, 16, 17, 1000 } do
    local msg = ("m"):rep(n)
    local c, civ = s:encrypt(k, "AES_CBC_PAD", msg)
    t.eq({ #c, #civ }, { (n // 16 + 1) * 16, 16 }, "CBC-PAD of " .. n)
    t.eq(s:decrypt(k, "AES-CBC-PAD", c, { iv = civ }), msg)
  end
  t.raises(function() s:decrypt(k, "AES_GCM", ct) end, "decrypting needs the iv=")
  t.raises(function() s:encrypt(k, "AES_CBC_PAD", "x", { iv = "short" }) end, "iv must be 16 bytes, got 5")
  t.raises(function() s:encrypt(k, "AES_GCM", "x", { ivv = "x" }) end, "AES_GCM takes no option 'ivv'")
  t.raises(function() s:encrypt(k, "AES_GCM", "x", { aad = 5 }) end, "option 'aad' must be a string")
end)

t.test("digest: SHA-256 known answers (FIPS 180-2)", function()
  local s = user_session()
  local vectors = {
    { "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
    { "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
    { "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1" },
    { ("a"):rep(1000000), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0" },
  }
  for _, v in ipairs(vectors) do t.eq(hex(s:digest("SHA256", v[1])), v[2]) end
  t.eq(hex(s:digest("sha384", "abc")),
    "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7")
  t.eq(#s:digest("SHA512", "abc"), 64)
end)

t.test("random: the length asked, different every time", function()
  local s = user_session()
  t.eq({ #s:random(0), #s:random(1), #s:random(32), #s:random(4096) }, { 0, 1, 32, 4096 })
  t.ok(s:random(32) ~= s:random(32))
  t.raises(function() s:random(-1) end, "n must be 0%-")
  t.raises(function() s:random(1 << 21) end, "n must be 0%-")
end)

---------------------------------------------------------------------------
-- check mode, errors, bad input

t.test("check mode: generate, destroy, login and logout are described, not done", function()
  local records = fresh_audit()
  local s = user_session()
  local keep = s:generate_aes { label = "chk-keep", token = false }
  local lib = hsm:load()               -- before check mode: a plan loads only the configured library
  local shown = {}
  dhsm.context().would = function(what) shown[#shown + 1] = what end     -- as the runner shows them
  local checking = require("dhsm.act").check_scope(true)
  t.cleanup(function() checking:close() dhsm.context().would = nil end)
  local r = s:generate_aes { label = "chk-new" }
  t.eq(r.check, true)
  t.ok(r.would:find("^generate AES%-256 key 'chk%-new' on token main#%x+$"), r.would)
  local pr = s:generate_rsa { label = "chk-rsa" }
  t.ok(pr.would:find("RSA-2048 key pair 'chk-rsa'", 1, true), pr.would)
  t.eq(s:count { label = "chk-new" } + s:count { label = "chk-rsa" }, 0)
  t.ok(s:destroy(keep).would:find("destroy object " .. keep .. " 'chk-keep'", 1, true))
  t.eq(s:count { label = "chk-keep" }, 1, "still there")
  t.ok(s:logout().would:find("^log out on token main#"))
  t.eq(s:info().state, "rw_user")
  local so = open(lib, "so")
  t.ok(so:login("so", hsm:so_pin("so")).would:find("log in as Partition SO on token so#", 1, true))
  t.eq(so:info().state, "rw_public")
  t.eq(#s:digest("SHA256", "reads still happen"), 32)
  local would = {}
  for _, rec in ipairs(records()) do
    if rec.action == "check.would" then would[#would + 1] = rec.what:match("^%S+ %S+") end
    t.ok(rec.action ~= "pkcs11.generate" or rec.what:find("'chk-keep'", 1, true), "nothing else generated")
  end
  t.eq(would, { "generate AES-256", "generate RSA-2048", "destroy object", "log out", "log in" })
  t.eq(#shown, 5)
end)

t.test("a destruction from a runbook is confirmed: refused without a terminal (the object stays), made with --yes",
  function()
  local s = user_session()
  s:generate_aes { label = "victim" }
  local code = ([[local lib = require('dhsm.pkcs11').load(%q, { env = { SOFTHSM2_CONF = %q } })
local s <close> = lib:open { label = 'main', rw = true }
s:login('user', secret.env('MAIN_PIN'))
return s:destroy(s:find_one { label = 'victim' })]]):format(p11.LIB, hsm.conf)
  local state = t.tmpdir()
  local env = "MAIN_PIN=" .. util.shell_quote(hsm.pins.main.user)
  local r = t.run("exec -e " .. util.shell_quote(code), { state = state, env = env })
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("destroy object %d+ 'victim' on token main#%x+ is destructive %(main%) and there is no terminal"),
    r.stderr)
  t.eq(s:count { label = "victim" }, 1, "the object stays")
  r = t.run("exec --yes -e " .. util.shell_quote(code), { state = state, env = env })
  t.eq(r.status, 0, r.stderr)
  t.eq(s:count { label = "victim" }, 0, "confirmed in advance, it is destroyed")
  local seen = {}
  for _, rec in ipairs(t.audit_records(state .. "/audit.jsonl")) do
    if rec.action == "confirm" or rec.action == "pkcs11.destroy" then seen[#seen + 1] = rec.action .. " " .. rec.outcome end
  end
  t.eq(seen, { "confirm refused (no terminal)", "confirm skipped (--yes)", "pkcs11.destroy sending", "pkcs11.destroy ok" })
end)

t.test("in check mode only the configured library is loaded: its code runs when loaded", function()
  local checking = require("dhsm.act").check_scope(true)
  t.cleanup(function() checking:close() end)
  local err = t.raises(function() pkcs11.load(p11.LIB) end, "not the configured PKCS#11 library")
  t.eq(err.code, "CheckModeRefused")
  checking:close()
  -- the library the environment named when dhsm started is the configured one: a plan loads it
  local q = util.shell_quote
  local r = t.run("repl", { env = ("DHSM_PKCS11_LIB=%s SOFTHSM2_CONF=%s"):format(q(p11.LIB), q(hsm.conf)),
    stdin = ":check on\nrequire('dhsm.pkcs11').load():info().manufacturer\n" })
  t.ok(r.stdout:find('"SoftHSM"', 1, true), r.stdout .. r.stderr)
end)

t.test("load's env cannot change what the whole process runs or where it writes", function()
  for _, name in ipairs { "PATH", "LD_PRELOAD", "TMPDIR", "HOME", "XDG_STATE_HOME", "DHSM_AUDIT", "PYTHONPATH",
      "BASH_ENV", "https_proxy", "OPENSSL_CONF" } do
    t.raises(function() pkcs11.load(p11.LIB, { env = { [name] = "/tmp/x" } }) end, "got " .. name)
  end
  t.eq(os.getenv("LD_PRELOAD"), nil)
end)

t.test("errors carry the CKR name and number; Luna's vendor codes are named", function()
  local s = user_session()
  local aes = s:generate_aes { label = "err-aes", token = false }
  local err = t.raises(function() s:sign(aes, "SHA256_RSA_PKCS", "x") end, "pkcs11")
  t.ok(err.code:find("^CKR_"), err.code)
  t.eq({ err.kind, err.details["function"]:match("^C_Sign"), err.retryable, math.type(err.details.rv) },
       { "pkcs11", "C_Sign", false, "integer" })
  t.ok(tostring(err):find("^pkcs11/CKR_[%u_]+: C_Sign%a* on token main#%x+ %(slot %d+%) returned CKR_[%u_]+ %(0x%x+%)$"),
    tostring(err))
  t.raises(function() s:sign(987654, "ECDSA", "x") end, "CKR_[%u]+_HANDLE_INVALID")
  local ro = open(hsm:load(), "main", { ro = true })
  t.raises(function() ro:generate_aes { label = "ro" } end, "CKR_SESSION_READ_ONLY")
  t.eq(pkcs11.rv_name(0xA0), "CKR_PIN_INCORRECT")
  t.eq(pkcs11.rv_name(0x80000007), "CKR_USER_LOCKED_OUT")
  t.eq(pkcs11.rv_name(0x8000001C), "CKR_SO_LOGIN_FAILURE_THRESHOLD")
  t.eq(pkcs11.rv_name(0x8000003C), "CKR_AUDIT_LOGIN_FAILURE_THRESHOLD")
  t.eq(pkcs11.rv_name(0x80000999), "CKR_0x80000999")
end)

t.test("bad input: mechanisms, templates, handles, options", function()
  local s = user_session()
  local k = s:generate_aes { label = "bad-in", token = false }
  local err = t.raises(function() s:sign(k, "SHA256_RSA_PKCS_PSSS", "x") end, "unknown mechanism \"SHA256_RSA_PKCS_PSSS\"")
  t.eq(err.kind, "usage")
  t.ok(err.message:find("known: .*SHA256_RSA_PKCS_PSS"), err.message)
  t.raises(function() s:digest("MD4", "x") end, "unknown mechanism")
  t.eq({ pkcs11.mechanism("ckm-sha256-rsa-pkcs"), pkcs11.mechanism("hmac-sha256"), pkcs11.mechanism("nope") },
       { "SHA256_RSA_PKCS", "SHA256_HMAC", nil })
  t.raises(function() s:find { lable = "x" } end, "find: unknown template field 'lable'")
  t.raises(function() s:find { token = "yes" } end, "field 'token' must be a boolean, got string")
  t.raises(function() s:find { value_len = -1 } end, "non%-negative integer")
  t.raises(function() s:find { key_type = "rsa2" } end, "has no value \"rsa2\"")
  t.raises(function() s:find { [1] = true } end, "template fields are attribute names")
  t.raises(function() s:find "label" end, "expected a template table")
  t.raises(function() s:attributes(k, { "colour" }) end, "unknown attribute colour")
  t.raises(function() s:attributes("k") end, "must be an object handle")
  t.raises(function() s:sign(k, "ECDSA", "x", { iv = "x" }) end, "ECDSA takes no option 'iv'")
  t.raises(function() s:sign(k, "RSA_PKCS_PSS", "x", { hash = "MD5" }) end, "option 'hash' must be SHA1")
  t.raises(function() s:sign(k, "ECDSA") end, "bad argument #3")
  t.raises(function() s:encrypt(k, "AES_GCM", "x", "aad") end, "options must be a table")
end)
