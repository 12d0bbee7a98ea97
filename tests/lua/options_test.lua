-- Every option of every public function that takes an option table, fed a
-- value of the wrong type: the answer is a usage error naming the
-- function, the field and what was expected (one checked reader,
-- dhsm.schema.options), never a raw Lua error from deeper down.
local t = require "dhsm.test"
local dhsm = require "dhsm"
local azure = require "dhsm.azure"
local luna = require "dhsm.luna"
local net = require "dhsm.net"
local pkcs11 = require "dhsm.pkcs11"
local proc = require "dhsm.proc"
local secret = require "dhsm.secret"
local p11 = require "support.p11"

local pw = secret.value("not-used")

-- A value each field's type refuses: false, or a string where false is fine.
local function wrong(field, booleans)
  return booleans[field] and "yes" or false
end

local function with(base, k, v)
  local t2 = {}
  for kk, vv in pairs(base) do t2[kk] = vv end
  t2[k] = v
  return t2
end

local AZURE_CLIENT = { "subscription", "tenant", "resource_group", "location", "credential", "endpoint",
  "authority", "imds_endpoint", "ca_file", "audience", "timeout", "retry_deadline", "max_attempts", "poll_interval",
  "max_connections", "az_command" }
local AZURE_REQUEST = { "body", "api_version", "query", "headers", "timeout", "retry_deadline", "idempotent",
  "correlation_id" }
local AZURE_WAIT = { "timeout", "interval", "on_progress", "deleting" }
local PROC_RUN = { "argv", "env", "cwd", "timeout", "stdin", "secret_json_field" }
local PROC_LUNACM = { "argv", "env", "cwd", "timeout", "password", "allow_destructive_login" }
local LUNA_SESSION = { "port", "user", "password", "key", "passphrase", "known_hosts", "host_key", "timeout", "name" }
local LUNA_RUN = { "timeout", "answers", "proceed", "password", "allow_destructive_login", "allow_without_reboot_fix",
  "allow_cutting_path", "zeroize" }
local P11_GENERATE = { "label", "id", "token", "bits", "curve", "exponent", "public", "private" }
local BOOLEANS = { idempotent = true, deleting = true, strict = true, allow_destructive_login = true, proceed = true,
  allow_without_reboot_fix = true, allow_cutting_path = true, zeroize = true, rw = true, token = true }

local client = azure.client { subscription = "00000000-0000-0000-0000-000000000000" }
local entry = { name = "x", host = "127.0.0.1", ssh_port = 1, password = pw }

-- { where the message says it, the fields, call(opts) with everything else valid }
local CASES = {
  { "azure.client", AZURE_CLIENT, function(o)
    azure.client(with(o, "subscription", o.subscription == nil and "00000000-0000-0000-0000-000000000000" or o.subscription))
  end },
  { "azure GET", AZURE_REQUEST, function(o) client:get("/subscriptions", o) end },
  { "azure PUT", AZURE_REQUEST, function(o) client:put("/subscriptions/x", o) end },
  { "azure wait", AZURE_WAIT, function(o) client:wait({ status = 200, method = "GET", path = "/x", headers = {} }, o) end },
  { "azure poll", AZURE_WAIT, function(o) client:poll("x", o, function() return true end) end },
  { "net.tcp", { "host", "port", "timeout" }, function(o) net.tcp(with(o, "host", o.host == nil and "127.0.0.1" or o.host)) end },
  { "net.tls", { "host", "port", "timeout", "ca_file", "client_cert", "client_key", "client_key_passphrase",
    "server_name", "strict" }, function(o) net.tls(with(o, "host", o.host == nil and "127.0.0.1" or o.host)) end },
  { "net.tcp_many", { "timeout", "limit" }, function(o) net.tcp_many({}, o) end },
  { "proc.run", PROC_RUN, function(o) proc.run(with(o, "argv", o.argv == nil and { "true" } or o.argv)) end },
  { "proc.spawn", { "argv", "env", "cwd" }, function(o) proc.spawn(with(o, "argv", o.argv == nil and { "true" } or o.argv)) end },
  { "proc.lunacm_login", PROC_LUNACM, function(o) proc.lunacm_login(with(o, "argv", o.argv == nil and { "lunacm" } or o.argv)) end },
  { "proc.lunacm_slots", PROC_LUNACM, function(o) proc.lunacm_slots(with(o, "argv", o.argv == nil and { "lunacm" } or o.argv)) end },
  { "proc.lunacm_groups", PROC_LUNACM, function(o) proc.lunacm_groups(with(o, "argv", o.argv == nil and { "lunacm" } or o.argv)) end },
  { "luna.connect", { "host", table.unpack(LUNA_SESSION) }, function(o)
    local base = { host = "127.0.0.1", port = 1, password = pw }
    for k, v in pairs(o) do base[k] = v end
    luna.connect(base)
  end },
  { "luna.open", LUNA_SESSION, function(o) luna.open(entry, o) end },
  { "luna.first_login", { "new_password", "timeout", "host_key" }, function(o)
    luna.first_login(entry, with(o, "new_password", o.new_password == nil and pw or o.new_password))
  end },
  { "pkcs11: load", { "env" }, function(o) pkcs11.load("/nonexistent/lib.so", o) end },
}

local function check_case(where, fields, call, booleans)
  for _, field in ipairs(fields) do
    local bad = wrong(field, booleans)
    local ok, err = pcall(call, { [field] = bad })
    t.ok(not ok, ("%s{%s = %s} was accepted"):format(where, field, tostring(bad)))
    t.ok(dhsm.error.is(err, "usage"), ("%s{%s}: a usage error expected, got %s"):format(where, field, tostring(err)))
    local msg = dhsm.error.is(err) and err.message or tostring(err)
    t.ok(msg:find(where .. ": " .. field .. ": expected ", 1, true),
      ("%s{%s = %s}: the message must name the field and what was expected: %s"):format(where, field, tostring(bad), msg))
  end
  return #fields
end

t.test("every option of the functions that need no live peer", function()
  local n = 0
  for _, c in ipairs(CASES) do n = n + check_case(c[1], c[2], c[3], BOOLEANS) end
  t.ok(n >= 100, ("%d options checked"):format(n))
end)

t.test("net.tls{ca_file=false}, the case that was a raw Lua error", function()
  local err = t.raises(function() net.tls { host = "127.0.0.1", port = 1, ca_file = false } end, "usage")
  t.eq(err.message, "net.tls: ca_file: expected a file path, got false")
end)

t.test("a mistake in an option spec is the module's, refused at its first use, naming it", function()
  local schema = require "dhsm.schema"
  local ok, err = pcall(schema.options, "thing.do", { a = 1 }, { a = { type = "integr" }, b = { type = "string", pattern = "[x" } })
  t.ok(not ok)
  t.ok(not dhsm.error.is(err, "usage"), "not the caller's mistake: " .. tostring(err))
  t.ok(tostring(err):find([[thing.do: its option spec is wrong: a: unknown type "integr" (did you mean 'integer'?); ]]
    .. [[b: pattern "[x": malformed pattern (missing ']')]], 1, true), tostring(err))
  local fields = { a = { type = { "string", "function" } }, s = { type = "text" } }
  t.eq(schema.options("thing.do", { a = print }, fields).a, print, "the option types and lists of types are sound")
end)

t.test("the options of a LunaSH session's calls", function()
  local estate = require("support.estate").start { args = "--appliances 1" }
  local s = estate:luna_session("hsm1")
  check_case("luna run", LUNA_RUN, function(o) s:run("hsm show", o) end, BOOLEANS)
  check_case("luna login_so", LUNA_RUN, function(o) s:login_so(pw, o) end, BOOLEANS)
  check_case("luna zeroize_by_failed_logins", LUNA_RUN, function(o) s:zeroize_by_failed_logins("1", o) end, BOOLEANS)
  t.eq(#estate:mutations(), 0, "nothing reached the appliance")
end, { timeout = 60 })

t.test("the options of PKCS#11 libraries and sessions", function()
  if not p11.available() then t.skip("SoftHSM2 is not installed") end
  local hsm = p11.softhsm { "opts" }
  local lib = hsm:load()
  check_case("pkcs11: find_token", { "label", "serial" }, function(o) lib:find_token(o) end, BOOLEANS)
  check_case("pkcs11: open", { "label", "serial", "slot", "rw" }, function(o) lib:open(o) end, BOOLEANS)
  local s <close> = lib:open { label = "opts", rw = true }
  check_case("pkcs11: login", { "allow_destructive_login" }, function(o) s:login("user", hsm:pin("opts"), o) end,
    BOOLEANS)
  s:login("user", hsm:pin("opts"))
  for _, what in ipairs { "generate_aes", "generate_hmac", "generate_rsa", "generate_ec" } do
    check_case("pkcs11: " .. what, P11_GENERATE, function(o)
      s[what](s, with(o, "label", o.label == nil and "k" or o.label))
    end, BOOLEANS)
  end
  t.eq(s:count {}, 0, "no key was made")
end)

-- Every public function of module M fed nothing, a number and a table of
-- the wrong shape in each position (and the calls given): what answers
-- with anything but a usage error ("attempt to index a nil value"), as
-- lines naming the function.  skip: functions not to call.
-- plain_errors(name, M, calls, skip, any_kind) -> what answered bad arguments
-- with a plain Lua error, or (without any_kind) a dhsm error not a usage one
local function plain_errors(name, M, calls, skip, any_kind)
  local all = { { n = 0 }, { n = 1, 42 }, { n = 1, { bogus = true } }, { n = 2, {}, 42 }, { n = 3, {}, {}, 42 } }
  for _, c in ipairs(calls or {}) do all[#all + 1] = c end
  local raw = {}
  for _, fname in ipairs(require("dhsm.util").sorted_keys(M)) do
    if type(M[fname]) == "function" and not (skip or {})[fname] then
      for _, args in ipairs(all) do
        local ok, e = pcall(dhsm.deadline, 5, function() return M[fname](table.unpack(args, 1, args.n)) end)
        if not ok and not (dhsm.error.is(e) and (any_kind or e.kind == "usage")) then
          raw[#raw + 1] = ("%s.%s with %d argument(s): %s"):format(name, fname, args.n, tostring(e))
        end
      end
    end
  end
  return raw
end

-- Every public function of dhsm.client.ntls fed nothing, a number and a
-- table of the wrong shape in each position: nothing answers with a plain
-- Lua error ("attempt to index a nil value"); what is refused is a usage
-- error naming the function and the argument.
t.test("dhsm.client.ntls: bad arguments are usage errors naming what was expected", function()
  local ntls = require "dhsm.client.ntls"
  t.eq(plain_errors("ntls", ntls, { { n = 4, { conf_path = "/nonexistent" }, { host = "h" }, {}, 42 } }, { client = true }), {})
  local ok, e = pcall(ntls.tcp, nil)
  t.eq({ ok, e.message }, { false, "ntls.tcp: entry: expected an inventory HSM entry (inv:hsm(NAME)), got nil" })
  ok, e = pcall(ntls.diagnose, { host = "h" }, { conf_path = "/x" }, 42)
  t.eq(e.message, "ntls.diagnose: session: expected a LunaSH session (luna.open or hsm(NAME)), got number")
end)

-- The azure modules as well: no plain Lua error, a usage error naming the
-- function, the argument and what was expected (the client, a scope).
t.test("dhsm.azure: bad arguments are usage errors naming what was expected", function()
  local raw = {}
  for _, name in ipairs { "dhsm.azure", "dhsm.azure.checks", "dhsm.azure.deploy", "dhsm.azure.groups",
      "dhsm.azure.hsm", "dhsm.azure.network", "dhsm.azure.rules" } do
    for _, line in ipairs(plain_errors(name, require(name))) do raw[#raw + 1] = line end
  end
  t.eq(raw, {})
  local hsm = require "dhsm.azure.hsm"
  local ok, e = pcall(hsm.get, nil, "hsm1")
  t.eq({ ok, e.kind, e.message }, { false, "usage",
    "azure.hsm.get: c: expected an Azure client (azure.client or inventory:azure()), got nil" })
  ok, e = pcall(require("dhsm.azure.checks").run, {}, { "quota" })
  t.eq(e.message, "azure.checks.run: s: expected a scope of the checks (checks.scope(c, opts)), got table")
  ok, e = pcall(require("dhsm.azure.network").gateway_path, { group_path = function() return "/g" end }, 42)
  t.eq(e.message, "azure.network.gateway_path: name: expected a string, got number")
end)

-- The same survey over the other modules whose functions once answered a
-- bad argument with a plain Lua error (or C's "bad argument #1 to '?'"):
-- every public function fed nothing, a number and a table of the wrong
-- shape in each position answers with a dhsm error.  Most are usage
-- errors naming the function and the argument; a few refusals are of
-- their own kind and say why (a parser given no output: luna/ParseError;
-- evidence not made by dhsm.luna: safety/EvidenceNotGenuine).
local SURVEYED = { "dhsm.guard.commands", "dhsm.secret", "dhsm.pkcs11", "dhsm.luna.parse", "dhsm.luna.prompts",
  "dhsm.chrystoki", "dhsm.client.ha", "dhsm.evidence", "dhsm.luna", "dhsm.proc", "dhsm.client.steps", "dhsm.plan" }
-- Calls beyond nothing, a number and a wrong table that once met a raw Lua error.
local CALLS = {
  ["dhsm.client.ha"] = { { n = 3, {}, "x", {} } },
  ["dhsm.client.steps"] = { { n = 2, nil, "g" } },
}
t.test("guard, secret, pkcs11, luna, chrystoki, ha, evidence, proc: bad arguments are dhsm errors", function()
  local raw = {}
  for _, modname in ipairs(SURVEYED) do
    -- secret.prompt would ask the terminal: checked below with a wrong argument
    local skip = modname == "dhsm.secret" and { prompt = true } or nil
    for _, r in ipairs(plain_errors(modname, require(modname), CALLS[modname], skip, true)) do raw[#raw + 1] = r end
  end
  t.eq(raw, {})
  local function message(fn, ...)
    local ok, e = pcall(fn, ...)
    t.eq({ ok, dhsm.error.is(e, "usage") }, { false, true }, tostring(e))
    return e.message
  end
  local commands = require "dhsm.guard.commands"
  t.eq(message(commands.words, nil), "guard.commands.words: line: expected a string, got nothing")
  t.eq(message(commands.option, {}, {}, "x", "x"),
    "guard.commands.option: from: expected a position in words (an integer from 1), got a table")
  -- the C functions name themselves, and never show the value given (it may be a secret)
  t.eq(message(secret.env, {}), "secret.env: name: expected a string, got table")
  t.eq(message(secret.prompt, {}), "secret.prompt: text: expected a string, got table")
  t.eq(message(secret.value, nil), "secret.value: bytes: expected a string, got nothing")
  t.eq(message(pkcs11.ecdsa_raw, "x"), "pkcs11.ecdsa_raw: size: expected an integer, got nothing")
  t.eq(message(pkcs11.rv_name, "zz"), "pkcs11.rv_name: rv: expected an integer, got string")
  t.eq(message(pkcs11.device_left, {}, 42), 'pkcs11.device_left: who: expected one of "user", "so", got 42')
  t.eq(message(luna.classify, 42), "luna.classify: line: expected a string, got 42")
  t.eq(message(require("dhsm.client.ha").compare, { {} }),
    "ha.compare: members[1]: expected a member {serial=, objects={keys=}} (objects from c:objects), got a table")
  t.eq(message(require("dhsm.chrystoki").load, nil), "chrystoki.load: path: expected a string, got nothing")
  t.eq(message(proc.read_only, { "ls" }, 42), "proc.read_only: opts: expected a table, got 42")
  t.eq(message(require("dhsm.client.ha").partition_on, {}, "x", {}),
    "ha.partition_on: session: expected a LunaSH session (luna.open(entry)), got table")
  t.eq(message(require("dhsm.client.steps").comparable, nil, "g"),
    "steps.comparable: ctx: expected a playbook's context (the run's ctx), got nil")
  t.eq(message(require("dhsm.audit").set_path, {}),
    "audit.set_path: path: expected a file path (nil: the default again), got a table")
  t.eq(message(require("dhsm.plan").author_key, nil),
    "plan: author_key: expected a plan (from plan.new or plan.load), got nil")
  t.eq(message(azure.id_part, "x"), "azure.id_part: key: expected a string, got nil")
  t.eq(message(azure.reply_error, "GET", "u", {}),
    "azure.reply_error: r: expected a transport reply {status=, headers=, body=}, got table")
  t.eq(message(net.cert, 5), "net.cert: source: expected PEM text or a file path, got 5")
  t.eq(message(net.certs, 5), "net.certs: source: expected PEM text or a file path, got 5")
  -- good arguments answer as before
  t.eq({ pkcs11.rv_name(7), (commands.lunash("par del -par p1")) }, { "CKR_ARGUMENTS_BAD", "write" })
  t.eq({ secret.is(secret.value("x")), pkcs11.ecdsa_raw(pkcs11.ecdsa_der(("\1"):rep(64)), 32) == ("\1"):rep(64) }, { true, true })
end)
