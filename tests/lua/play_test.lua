-- The playbook runner: parameters, steps, check mode, confirmation,
-- journal and resume, progress and --json, with the test playbooks in
-- tests/fixtures/playbooks.
local t = require "dhsm.test"
local cjson = require "cjson"
local util = require "dhsm.util"
local sys = require "dhsm.sys"

local here = t.here()
local fixtures = sys.realpath(here .. "/../fixtures")   -- absolute: some runs start in another folder
local q = util.shell_quote

-- A run in a private state folder (journal) with a private audit log.
local function env(dir)
  return ("XDG_STATE_HOME=%s DHSM_AUDIT=%s/audit.jsonl DHSM_PATH=%s"):format(q(dir), q(dir), q(fixtures .. "/playbooks"))
end

local function run(dir, args, opts)
  return t.sh(env(dir) .. " " .. t.cmd(args), opts)
end

local function lines(s)
  local out = {}
  for l in s:gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

local function executed(dir)
  return lines(util.read_file(dir .. "/executed.log") or "")
end

local function audit(dir)
  return t.audit_records(dir .. "/audit.jsonl")
end

local function journal(dir, id)
  return cjson.decode(util.read_file(dir .. "/dhsm/runs/" .. id .. ".json"))
end

local function run_id(stderr)
  return stderr:match("run (%d+T%d+%-%x+)")
end

---------------------------------------------------------------------------
-- parameters

t.test("parameters are converted to their declared types", function()
  local dir = t.tmpdir()
  local r = run(dir, "-i " .. fixtures .. "/inventory/good.json run typed -e name=hsm-1 -e count=4 -e ratio=0.5 "
    .. "-e verbose=yes -e mode=fast -e password=env:HOME -e hosts=a,b -e 'extra={\"k\":1}'")
  t.eq(r.status, 0, r.stderr)
  t.eq(cjson.decode(r.stdout), { name = "hsm-1", count = 4, ratio = 0.5, verbose = true, mode = "fast",
    pw = "<secret>", hosts = { "a", "b" }, extra = { k = 1 }, group = "hsm-rg" })
  r = run(dir, "run typed -e name=x -e group=g -e 'hosts=[\"p\", \"q\"]'")
  t.eq(r.status, 0, r.stderr)
  local got = cjson.decode(r.stdout)
  t.eq({ got.count, got.mode, got.verbose, got.hosts }, { 2, "safe", false, { "p", "q" } })
end)

t.test("every parameter problem is reported at once, exit 2", function()
  local dir = t.tmpdir()
  local r = run(dir, "run typed -e nmae=x -e count=9 -e ratio=abc -e verbose=maybe -e mode=slow "
    .. "-e password=hunter2 -e 'extra=[1'")
  t.eq(r.status, 2)
  t.eq(lines(r.stderr), {
    "dhsm: invalid parameters for playbook 'typed':",
    "  nmae: unknown parameter (did you mean 'name'?)",
    "  count: expected integer 1-4, got \"9\"",
    "  extra: expected a JSON object ({\"key\": value, ...}), got \"[1\"",
    "  group: missing, expected string (give -e group=... or set azure.resource_group in the inventory)",
    "  mode: expected one of \"fast\", \"safe\", got \"slow\"",
    "  name: missing, expected lower-case letters, digits or -",
    "  password: expected a secret reference (env:NAME, file:PATH or prompt), got a literal value (it would show in your shell history and process list)",
    "  ratio: expected number, got \"abc\"",
    "  verbose: expected boolean, got \"maybe\"",
  })
  t.eq(util.read_file(dir .. "/audit.jsonl"), nil, "nothing ran, nothing was audited")
  r = run(dir, "run typed -e name='Bad Name' -e group=g")
  t.eq(lines(r.stderr)[2], '  name: expected lower-case letters, digits or -, got "Bad Name"')
  r = run(dir, "run typed -e name=x -e group=g -e extra=5")
  t.eq(lines(r.stderr)[2], '  extra: expected a JSON object ({"key": value, ...}), got "5"',
    "the form -e takes, not a Lua type")
end)

t.test("a playbook with a bad parameter spec is refused when loaded", function()
  local dir = t.tmpdir()
  t.write(dir .. "/odd.lua", [[return { description = "x", params = { a = { type = "strnig" },
    b = { type = "enum" } }, run = function() end }]])
  local r = t.sh(env(dir) .. " " .. t.cmd("run " .. dir .. "/odd.lua"))
  t.eq(r.status, 2)
  t.ok(r.stderr:find("params.a: unknown type \"strnig\" (did you mean 'string'?); params.b: an enum needs a non-empty 'values' list", 1, true), r.stderr)
end)

t.test("a playbook that declares inventory= is refused without one, before anything is journaled (exit 2)", function()
  local dir = t.tmpdir()
  t.write(dir .. "/needy.lua", [[return { description = "x", inventory = "the appliances to look at",
    run = function(ctx) ctx:step("touch", function() io.open("]] .. dir .. [[/touched", "w"):close() end) end }]])
  local r = t.sh("env -u DHSM_INVENTORY " .. env(dir) .. " " .. t.cmd("run " .. dir .. "/needy.lua"))
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("needy needs an inventory (-i FILE or $DHSM_INVENTORY) for the appliances to look at", 1, true),
    r.stderr)
  t.eq(sys.readdir(dir .. "/dhsm/runs") or {}, {}, "no run journaled")
  t.eq(io.open(dir .. "/touched"), nil, "no step ran")
  t.write(dir .. "/odd.lua", [[return { description = "x", inventory = true, run = function() end }]])
  r = t.sh(env(dir) .. " " .. t.cmd("run " .. dir .. "/odd.lua"))
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("field 'inventory' must be a string", 1, true), r.stderr)
end)

local function runs_started(dir)
  local n = 0
  for _, rec in ipairs(audit(dir)) do
    if rec.action == "run.start" then n = n + 1 end
  end
  return #(sys.readdir(dir .. "/dhsm/runs") or {}), n
end

-- `dhsm args` (a shell command line) refused for its parameters: exit 2,
-- and nothing journaled, locked or audited (no run.start): the run never
-- began.  vars: environment assignments to put first.  -> the lines of stderr
local function refused_before_anything(dir, args, vars)
  local journals, starts = runs_started(dir)
  local r = t.sh((vars or "") .. " " .. env(dir) .. " " .. t.cmd(args))
  t.eq(r.status, 2, r.stderr)
  t.eq({ runs_started(dir) }, { journals, starts }, "no run journaled, no run.start audited\n" .. r.stderr)
  return lines(r.stderr)
end

local GOOD_INV = "-i " .. fixtures .. "/inventory/good.json "

t.test("requires= and exclusive= are reported with every other problem, in the operator's words", function()
  local dir = t.tmpdir()
  t.eq(refused_before_anything(dir, GOOD_INV .. "run rules -e fix=yes -e mode=template -e every=true -e hsm=hsm1,hsm9 "
    .. "-e hosts=x"), {
    "dhsm: invalid parameters for playbook 'rules':",
    '  hosts[1].name: expected 2 or more lower-case letters, digits or -, got "x"',
    "  every: cannot go with hsm (give only one of them)",
    "  fix: true needs domain and pin (give -e domain=... -e pin=...)",
    "  mode: template needs template (give -e template=...)",
    '  hsm[2]: no HSM "hsm9" in the inventory (did you mean \'hsm1\'?) (known: hsm1, hsm2)',
  })
  -- what is given counts, not defaults: every=true is the default, hsm= alone is fine;
  -- what is set counts, defaults applied: fix=false needs nothing
  local r = run(dir, GOOD_INV .. "run rules -e hsm=hsm2 -e fix=false -e mode=template -e template=t.json")
  t.eq(r.status, 0, r.stderr)
  t.eq(cjson.decode(r.stdout).hsm, { "hsm2" })
  -- the hints typed back as they read: fix=yes with the -e domain=... -e pin=... it asked for
  r = run(dir, GOOD_INV .. "run rules -e fix=yes -e domain=env:HOME -e pin=env:HOME -e every=true")
  t.eq(r.status, 0, r.stderr)
  t.eq({ cjson.decode(r.stdout).fix, cjson.decode(r.stdout).domain }, { true, "env:HOME" })
  -- one given with a problem of its own is not also said to be missing
  t.eq(refused_before_anything(dir, "run rules -e fix=yes -e domain=hunter2 -e pin=env:HOME"), {
    "dhsm: invalid parameters for playbook 'rules':",
    "  domain: expected a secret reference (env:NAME, file:PATH or prompt), got a literal value (it would show in "
      .. "your shell history and process list)",
  })
end)

t.test("the shipped playbooks refuse an empty list of HSMs, an empty item and an HSM named twice", function()
  local dir = t.tmpdir()
  local decommission = GOOD_INV .. "run decommission -e method=failed-logins -e hsm="
  for _, given in ipairs { "''", "' '", "'[]'" } do
    t.eq(refused_before_anything(dir, decommission .. given)[2],
      "  hsm: expected list of an inventory HSM name (letters, digits, - _ .), got an empty list", given)
  end
  for _, given in ipairs { ",", "' , '" } do
    t.eq(refused_before_anything(dir, decommission .. given), { "dhsm: invalid parameters for playbook 'decommission':",
      '  hsm[1]: expected an inventory HSM name (letters, digits, - _ .), got ""', '  hsm[2]: expected an inventory HSM name (letters, digits, - _ .), got ""' },
      given)
  end
  t.eq(refused_before_anything(dir, decommission .. "hsm1,hsm2,hsm1")[2],
    '  hsm: "hsm1" given more than once (each may be given once)')
  t.eq(refused_before_anything(dir, GOOD_INV .. "run diagnose -e hsm=hsm2,hsm2")[2],
    '  hsm: "hsm2" given more than once (each may be given once)')
  t.eq(refused_before_anything(dir, GOOD_INV .. "run provision -e hsms=hsm-a:stamp1,hsm-b:stamp2,hsm-a:stamp2")[2],
    '  hsms: name "hsm-a" given more than once (each may be given once)')
end)

t.test("a number must be finite: 1e999 and NaN are refused, not journaled as null", function()
  local dir = t.tmpdir()
  t.eq(refused_before_anything(dir, "run typed -e name=x -e group=g -e ratio=1e999")[2],
    '  ratio: expected number, got "1e999"')
  t.write(dir .. "/p.json", '{"name": "x", "group": "g", "ratio": NaN}')
  t.ok(refused_before_anything(dir, "run typed -e @" .. q(dir .. "/p.json"))[2]:find("^  ratio: expected number, got "))
end)

t.test("exclusive= counts what is given explicitly and set: not false, not a value from the inventory", function()
  local dir = t.tmpdir()
  local r = run(dir, GOOD_INV .. "run rules -e every=false -e hsm=hsm1")
  t.eq(r.status, 0, r.stderr)
  t.eq({ cjson.decode(r.stdout).every, cjson.decode(r.stdout).hsm }, { false, { "hsm1" } })
  t.write(dir .. "/scoped.lua", [[return { description = "x", params = {
    group = { type = "string", required = true, from_inventory = "azure.resource_group", exclusive = { "scope" } },
    scope = { type = "string" } }, run = function(ctx, p) io.stdout:write(p.group, " ", p.scope, "\n") end }]])
  r = run(dir, GOOD_INV .. "run " .. q(dir .. "/scoped.lua") .. " -e scope=s")
  t.eq({ r.status, r.stdout }, { 0, "hsm-rg s\n" }, r.stderr)
  t.eq(refused_before_anything(dir, GOOD_INV .. "run " .. q(dir .. "/scoped.lua") .. " -e scope=s -e group=g")[2],
    "  group: cannot go with scope (give only one of them)")
end)

t.test("a secret reference is checked before anything is journaled, never showing its value", function()
  local dir = t.tmpdir()
  local open_file, folder = dir .. "/open.pw", dir .. "/folder"
  t.write(open_file, "TopSecret42\n", tonumber("644", 8))
  sys.mkdir(folder)
  local args = "run rules -e fix=true -e domain=file:" .. q(open_file) .. " -e pin=env:DHSM_UNSET_PW"
  local got = refused_before_anything(dir, args)
  t.eq(got, {
    "dhsm: invalid parameters for playbook 'rules':",
    ("  domain: secret file %s is open to group/others (mode 0644); run: chmod 600 %s"):format(open_file, open_file),
    "  pin: environment variable DHSM_UNSET_PW is not set (expected a secret in it)",
  })
  t.ok(not table.concat(got, "\n"):find("TopSecret42", 1, true), "the secret's value is never shown")
  for ref, words in pairs { ["file:" .. dir .. "/none"] = "cannot read secret file " .. dir .. "/none: No such file",
      ["file:" .. folder] = "secret file " .. folder .. " is not a regular file",
      ["env:DHSM_EMPTY_PW"] = "environment variable DHSM_EMPTY_PW is not set" } do
    got = refused_before_anything(dir, "run rules -e pin=" .. q(ref), "DHSM_EMPTY_PW=")
    t.ok(got[2] and got[2]:find("  pin: " .. words, 1, true), ref .. ": " .. table.concat(got, "\n"))
  end
  -- readable now: the run goes on, and the secrets are still only references
  local good = dir .. "/good.pw"
  t.write(good, "TopSecret42\n", tonumber("600", 8))
  local r = run(dir, "run rules -e fix=true -e domain=file:" .. q(good) .. " -e pin=env:HOME")
  t.eq(r.status, 0, r.stderr)
  t.eq(cjson.decode(r.stdout).domain, "file:" .. good)
end)

t.test("a resumed run does not refuse a secret reference its remaining steps may not need", function()
  local dir = t.tmpdir()
  local pw = dir .. "/so.pw"
  t.write(pw, "x", tonumber("600", 8))
  local args = "run names -e token_name=t -e so_password=file:" .. q(pw) .. " -e fail=true"
  local r = run(dir, args)
  t.eq(r.status, 1, r.stderr)
  local id = run_id(r.stderr)
  os.remove(pw)                   -- e.g. an SO password gone with its zeroized appliance
  t.eq(refused_before_anything(dir, args)[2], ("  so_password: cannot read secret file %s: No such file or directory")
    :format(pw), "a new run is refused")
  r = run(dir, args .. " --resume " .. id)
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find("↷ use the token", 1, true), "resumed: " .. r.stderr)
  t.ok(r.stderr:find("failed on purpose", 1, true), r.stderr)
end)

t.test("a prompt secret is asked when first used, not when the parameters are checked", function()
  local dir = t.tmpdir()
  -- no terminal: it could never be asked, so it is refused with the other problems, before anything is journaled
  t.eq(refused_before_anything(dir, "run lazy -e pw=prompt"), {
    "dhsm: invalid parameters for playbook 'lazy':",
    "  dir: missing, expected string",
    '  pw: cannot ask for "the late password: ": standard input is not a terminal (give the secret as env:NAME or '
      .. "file:PATH instead)" })
  t.eq(refused_before_anything(dir, "run lazy -e pw=prompt -e dir=" .. q(dir))[2]:match("^  pw: cannot ask"),
    "  pw: cannot ask")
  t.eq(sys.stat(dir .. "/before"), nil, "no step ran")
  -- on a terminal the check passes without asking: the question comes after the first step
  local cmd = env(dir) .. " " .. t.cmd("run lazy --json -e pw=prompt -e dir=" .. q(dir))
  local r = t.sh(("(for i in $(seq 400); do [ -e %s ] && break; sleep 0.05; done; sleep 0.5; printf 'open sesame\\n') | script -qec %s /dev/null")
    :format(q(dir .. "/before"), q(cmd)))
  local asked = r.stdout:find("the late password: ", 1, true)
  t.ok(asked and asked > r.stdout:find("before the secret is used", 1, true), r.stdout)
end, { timeout = 60 })

t.test("records: name[:zone[:port]] split from -e, objects from -e @file.json, each field by its own spec", function()
  local dir = t.tmpdir()
  local r = run(dir, "run rules -e hosts=ab:z1:8080,cd,ef::22")
  t.eq(r.status, 0, r.stderr)
  t.eq(cjson.decode(r.stdout).hosts, { { name = "ab", zone = "z1", port = 8080 }, { name = "cd" }, { name = "ef", port = 22 } })
  t.write(dir .. "/p.json", '{"hosts": [{"name": "ab", "zone": "z1", "port": 8080}, "cd:z2"]}')
  r = run(dir, "run rules -e @" .. q(dir .. "/p.json"))
  t.eq(r.status, 0, r.stderr)
  t.eq(cjson.decode(r.stdout).hosts, { { name = "ab", zone = "z1", port = 8080 }, { name = "cd", zone = "z2" } })
  t.write(dir .. "/bad.json", '{"hosts": [{"name": "ab", "zoen": "z1"}, {"zone": "z"}, ["ab"]]}')
  t.eq(refused_before_anything(dir, "run rules -e @" .. q(dir .. "/bad.json")), {
    "dhsm: invalid parameters for playbook 'rules':",
    "  hosts[1].zoen: unknown field (did you mean 'zone'?)",
    "  hosts[2].name: missing, expected 2 or more lower-case letters, digits or -",
    '  hosts[3]: expected name[:zone[:port]], got a list',
  })
  t.eq(refused_before_anything(dir, "run rules -e hosts=ab:z1:80:x,cd:z:0,:z"), {
    "dhsm: invalid parameters for playbook 'rules':",
    '  hosts[1]: expected name[:zone[:port]], got "ab:z1:80:x"',
    '  hosts[2].port: expected integer 1-65535, got "0"',
    "  hosts[3].name: missing, expected 2 or more lower-case letters, digits or -",
  })
end)

t.test("a playbook's check(params, inventory) runs with the parameter checks, before anything is journaled", function()
  local dir = t.tmpdir()
  t.eq(refused_before_anything(dir, GOOD_INV .. "run checked -e n=7 -e dir=" .. q(dir)), {
    "dhsm: invalid parameters for playbook 'checked':",
    "  n: 7 is not allowed with an inventory" })
  t.eq(sys.stat(dir .. "/ran"), nil)
  -- asked only once every parameter passed its spec: it may rely on them
  os.remove(dir .. "/asked")
  t.eq(refused_before_anything(dir, "run checked -e n=70 -e dir=" .. q(dir))[2], "  n: expected integer 1-9, got \"70\"")
  t.eq(sys.stat(dir .. "/asked"), nil, "check() was not asked")
  local r = run(dir, "run checked -e n=3 -e dir=" .. q(dir))
  t.eq(r.status, 0, r.stderr)
  t.ok(sys.stat(dir .. "/ran"))
  t.write(dir .. "/odd.lua", [[return { description = "x", check = true, run = function() end }]])
  for _, how in ipairs { "run ", "doc " } do
    r = t.sh(env(dir) .. " " .. t.cmd(how .. dir .. "/odd.lua"))
    t.eq(r.status, 2, r.stderr)
    t.ok(r.stderr:find("field 'check' must be a function(params, inventory) -> a list of problems", 1, true), r.stderr)
  end
end)

t.test("mistakes in a parameter spec are refused when the playbook loads or is described, naming each", function()
  local dir = t.tmpdir()
  t.write(dir .. "/odd.lua", [[return { description = "x", params = {
    a = { type = "string", pattern = "[a-" },
    b = { type = "string", pattern = "%" },
    c = { type = "integer", min = 1, max = 4, default = 9 },
    d = { type = "string", requried = true },
    e = { type = "boolean", requires = { "clonig_domain" } },
    cloning_domain = { type = "secret", exclusive = { "nothere" } },
    f = { type = "enum", values = { "x", "y" }, requires = { z = { "a" } } },
    g = { type = "list", items = { type = "record", fields = { { "n", {} }, { "m", { required = true } } } } },
  }, run = function() end }]])
  local expected = {
    [[params.a: pattern "[a-": malformed pattern (missing ']')]],
    [[params.b: pattern "%": malformed pattern (ends with '%')]],
    [[params.c.default: expected integer 1-4, got 9]],
    [[params.cloning_domain.exclusive: "nothere" is not another parameter]],
    [[params.d: unknown key "requried" (did you mean 'required'?)]],
    [[params.e.requires: "clonig_domain" is not another parameter (did you mean 'cloning_domain'?)]],
    [[params.f.requires: "z" is not one of its values]],
    [[params.g.items.fields[2]: required m after optional n]],
  }
  for _, how in ipairs { "run " .. q(dir .. "/odd.lua"), "doc " .. q(dir .. "/odd.lua") } do
    local r = t.sh(env(dir) .. " " .. t.cmd(how))
    t.eq(r.status, 2, how .. ": " .. r.stderr)
    t.eq(select(2, r.stderr:gsub("\n", "")), 1, "one line: " .. r.stderr)
    t.ok(r.stderr:find("playbook odd (" .. dir .. "/odd.lua): ", 1, true), r.stderr)
    for _, words in ipairs(expected) do t.ok(r.stderr:find(words, 1, true), how .. ": " .. words .. "\n" .. r.stderr) end
    t.ok(not r.stderr:find("traceback", 1, true), r.stderr)
  end
end)

t.test("the shipped playbooks' rules: refused before anything is journaled", function()
  local dir = t.tmpdir()
  local function refused(args, want)
    local got = refused_before_anything(dir, GOOD_INV .. "run " .. args)
    table.remove(got, 1)
    t.eq(got, want, args)
  end
  refused("provision -e hsms=ab,hsm-a:stamp1:10.2.1.5:x,hsm-b::10.2,hsm_c -e mode=template", {
    "  hsms[1].name: expected 3-24 letters, digits or '-', got \"ab\"",
    '  hsms[2]: expected name[:stamp[:ip]], got "hsm-a:stamp1:10.2.1.5:x"',
    '  hsms[3].ip: expected an IPv4 address, got "10.2"',
    "  hsms[4].name: expected 3-24 letters, digits or '-', got \"hsm_c\"",
    "  mode: template needs template (give -e template=...)",
  })
  refused("ha-recover -e co_password=env:HOME -e fix_cloning=true", {
    "  fix_cloning: true needs cloning_domain and pso_password (give -e cloning_domain=... -e pso_password=...)" })
  refused("diagnose -e hsm=hsm2,hsm3", {
    '  hsm[2]: no HSM "hsm3" in the inventory (did you mean \'hsm1\'?) (known: hsm1, hsm2)' })
  refused("ntls-reexchange -e hsm=hsm", {
    '  hsm: no HSM "hsm" in the inventory (did you mean \'hsm1\'?) (known: hsm1, hsm2)' })
  -- every HSM must be the inventory's (a typo is not "already deleted"); one it lists needs its password
  refused("decommission -e hsm=hsm1,hsm-2", {
    '  hsm[2]: no HSM "hsm-2" in the inventory (did you mean \'hsm2\'?) (known: hsm1, hsm2)' })
  refused("decommission -e hsm=hsm1", {
    "  method: command needs the HSM SO password of hsm1 (give -e so_password=env:NAME|file:PATH|prompt, or "
      .. "so_password in each inventory entry; or -e method=failed-logins)" })
end)

t.test("dhsm doc describes records and the rules between parameters readably", function()
  local r = t.sh(t.cmd("doc provision"))
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stdout:find("\n  hsms +list of name%[:stamp%[:ip%]%] +yes +HSMs as"), r.stdout)
  t.ok(r.stdout:find("\n  template +string +if mode=template +template mode"), r.stdout)
  r = t.sh(t.cmd("doc ha-recover"))
  t.ok(r.stdout:find("\n  pso_password +a secret reference %(env:NAME, file:PATH or prompt%) +if fix_cloning "), r.stdout)
  r = t.sh(t.cmd("doc diagnose"))
  t.ok(r.stdout:find("\n  hsm +list of inventory HSM name +only these", 1), r.stdout)
end)

---------------------------------------------------------------------------
-- steps, progress, audit, json

t.test("steps run in order, print plain progress when piped, and are audited", function()
  local dir = t.tmpdir()
  local r = run(dir, "run steps -e dir=" .. q(dir))
  t.eq(r.status, 0, r.stderr)
  t.eq(executed(dir), { "first", "second", "third 2 y" })
  local out = lines(r.stderr)
  t.eq(out[1], "→ first")
  t.ok(out[2]:match("^✓ first %(%d+%.%d s%)$"), out[2])
  t.eq({ out[3], out[4] }, { "→ second", "  second: halfway" })
  t.ok(out[#out]:match("^  run %d+T%d+%-%x+: ok %(%d+%.%d s%)$"), out[#out])
  t.ok(not r.stderr:find("\27", 1, true), "no escape codes when piped")
  local actions = {}
  for _, rec in ipairs(audit(dir)) do actions[#actions + 1] = rec.action .. ":" .. (rec.step or "") .. ":" .. rec.outcome end
  t.eq(actions, { "run.start::started", "step.start:first:started", "step.end:first:ok",
    "step.start:second:started", "step.end:second:ok", "step.start:third:started", "step.end:third:ok",
    "run.end::ok" })
end)

t.test("on a terminal a live line with a spinner, then ✓ lines; NO_COLOR drops colour", function()
  local dir = t.tmpdir()
  local cmd = env(dir) .. " " .. t.cmd("run steps -e dir=" .. q(dir))
  local r = t.sh("script -qec " .. q(cmd) .. " /dev/null")
  t.eq(r.status, 0, r.stdout)
  t.ok(r.stdout:find("\r\27[K", 1, true), "the live line is redrawn")
  t.ok(r.stdout:find("\27[32m✓\27[0m first (", 1, true), "green check mark")
  t.ok(r.stdout:find("halfway", 1, true), "progress shown on the live line")
  r = t.sh("script -qec " .. q("NO_COLOR=1 " .. cmd) .. " /dev/null")
  t.ok(r.stdout:find("✓ first (", 1, true))
  t.ok(not r.stdout:find("\27[32m", 1, true), "no colour with NO_COLOR")
end)

t.test("--json prints exactly one document on stdout", function()
  local dir = t.tmpdir()
  local r = run(dir, "run typed --json -e name=a -e group=g -e password=env:HOME")
  t.eq(r.status, 0, r.stderr)
  local doc = cjson.decode(r.stdout)               -- fails if anything else is on stdout
  t.eq({ doc.playbook, doc.outcome, doc.check, doc.params.password, doc.params.name },
       { "typed", "ok", false, "<secret>", "a" })
  t.ok(r.stderr:find('"name":"a"', 1, true), "the playbook's own output went to stderr")
  r = run(dir, "run steps --json -e dir=" .. q(dir) .. " -e fail_at=2")
  t.eq(r.status, 1)
  doc = cjson.decode(r.stdout)
  t.eq(doc.outcome, "failed")
  t.eq(doc.error, { kind = "azure", code = "Conflict", message = "busy" })
  t.eq({ doc.steps[1].status, doc.steps[1].result.list, doc.steps[2].status, doc.steps[2].error.code, #doc.steps },
       { "ok", { "x", "y" }, "failed", "Conflict", 2 })
  t.ok(doc.run:match("^%d+T%d+%-%x+$"))
end)

t.test("a playbook that ends without reaching its goal (ctx:unmet): the closing line says why, exit 1, nothing to resume", function()
  local dir = t.tmpdir()
  local r = run(dir, "run verdict --json -e unmet='found 2 FAIL,hsm2 still out'")
  t.eq(r.status, 1, r.stderr)
  local doc = cjson.decode(r.stdout)
  t.eq({ doc.outcome, doc.unmet, doc.result }, { "unmet", { "found 2 FAIL", "hsm2 still out" }, { found = { "a", "b" } } })
  t.ok(not r.stderr:find("--resume", 1, true), "a run that finished has nothing to resume\n" .. r.stderr)
  r = run(dir, "run verdict -e unmet='found 2 FAIL'")
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find("run %d+T%d+%-%x+: goal not reached: found 2 FAIL %("), "the closing line says so\n" .. r.stderr)
  t.ok(not r.stderr:find(": ok (", 1, true), r.stderr)
  local id = run_id(r.stderr)
  t.eq(journal(dir, id).state, "unmet")
  local ends = {}
  for _, rec in ipairs(audit(dir)) do if rec.action == "run.end" then ends[#ends + 1] = rec.outcome end end
  t.eq(ends[#ends], "unmet", "the audit log says so")
  r = run(dir, "run verdict --resume " .. id .. " -e unmet='found 2 FAIL'")
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("without reaching its goal (found 2 FAIL); nothing to resume: start a new run", 1, true), r.stderr)
  r = run(dir, "run verdict --check -e unmet='found 2 FAIL'")
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find(": goal not reached: found 2 FAIL %(.-%); check mode: nothing was changed; 0 changes described\n"),
    r.stderr)
  r = run(dir, "run verdict")
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find(": ok (", 1, true), r.stderr)
  r = run(dir, "run verdict -e bad_reason=true")
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("ctx:unmet: expected the reason the goal is not reached (a non-empty string), got number", 1, true), r.stderr)
end)

t.test("a step's result must be JSON data", function()
  local dir = t.tmpdir()
  local r = run(dir, "run badresult")
  t.eq(r.status, 2)
  t.ok(r.stderr:find("step 'returns a function' returned something JSON cannot hold at result.f (function)", 1, true), r.stderr)
end)

---------------------------------------------------------------------------
-- safety

t.test("a destructive step without a terminal and without --yes refuses, exit 3", function()
  local dir = t.tmpdir()
  local r = run(dir, "run destroy -e dir=" .. q(dir) .. " -e hsm=hsm1")
  t.eq(r.status, 3)
  t.ok(r.stderr:find("step 'zeroize hsm1' is destructive (target hsm1) and there is no terminal to confirm it on; nothing was done", 1, true), r.stderr)
  t.eq(sys.stat(dir .. "/zeroized-hsm1"), nil)
  local last = audit(dir)
  t.eq({ last[#last - 2].action, last[#last - 2].outcome }, { "confirm", "refused (no terminal)" })
  t.eq(last[#last].outcome, "refused")
end)

t.test("--yes skips the question and the audit log says so", function()
  local dir = t.tmpdir()
  local r = run(dir, "run destroy --yes -e dir=" .. q(dir) .. " -e hsm=hsm1")
  t.eq(r.status, 0, r.stderr)
  t.ok(sys.stat(dir .. "/zeroized-hsm1"))
  local found
  for _, rec in ipairs(audit(dir)) do
    if rec.action == "confirm" then found = rec end
  end
  t.eq({ found.target, found.outcome, found.step }, { "hsm1", "skipped (--yes)", "zeroize hsm1" })
end)

t.test("on a terminal the operator types the target's name; anything else stops", function()
  local dir = t.tmpdir()
  local cmd = env(dir) .. " " .. t.cmd("run destroy -e dir=" .. q(dir) .. " -e hsm=hsm1")
  local r = t.sh("(sleep 0.5; printf 'hsm2\\n') | script -qec " .. q(cmd) .. " /dev/null")
  t.ok(r.stdout:find("Type hsm1 to go on", 1, true), r.stdout)
  t.ok(r.stdout:find("confirmation for step 'zeroize hsm1' did not match hsm1; nothing was done", 1, true), r.stdout)
  t.eq(sys.stat(dir .. "/zeroized-hsm1"), nil)
  r = t.sh("(sleep 0.5; printf 'hsm1\\n') | script -qec " .. q(cmd) .. " /dev/null")
  t.ok(sys.stat(dir .. "/zeroized-hsm1"), r.stdout)
end)

t.test("--check plans: reads run, mutations say 'would', destructive bodies run only as descriptions", function()
  local dir = t.tmpdir()
  local r = run(dir, "run destroy --check --json -e dir=" .. q(dir) .. " -e hsm=hsm1")
  t.eq(r.status, 0, r.stderr)
  t.eq(sys.stat(dir .. "/zeroized-hsm1"), nil)
  local doc = cjson.decode(r.stdout)
  t.eq(doc.outcome, "planned")
  t.eq(doc.steps[1].status, "planned")
  t.eq(doc.steps[1].plan, { "tag hsm1 as decommissioning" })
  t.eq(doc.steps[2].status, "planned")
  t.eq(doc.steps[2].plan, { "run destructive step 'zeroize hsm1' on hsm1",
    ("write %s/zeroized-hsm1 (0 bytes)"):format(dir) })
  t.eq({ doc.described, doc.refused }, { 1, 0 })
  t.ok(r.stderr:find("  would tag hsm1 as decommissioning", 1, true), r.stderr)
  t.eq(sys.stat(dir .. "/dhsm/runs"), nil, "a plan is not journaled")
end)

t.test("--check shows the refusal a destructive step would meet, instead of a plan to act", function()
  local dir = t.tmpdir()
  local r = run(dir, "run destroy --check --json -e dir=" .. q(dir) .. " -e hsm=hsm1 -e refuse=true")
  t.eq(r.status, 3, r.stderr)
  local doc = cjson.decode(r.stdout)
  t.eq({ doc.outcome, doc.steps[2].status, doc.steps[2].error.code }, { "refused", "refused", "Refused" })
  t.eq(sys.stat(dir .. "/zeroized-hsm1"), nil)
end)

---------------------------------------------------------------------------
-- journal and resume

t.test("a failed run is journaled and --resume skips the steps it completed", function()
  local dir = t.tmpdir()
  local r = run(dir, "run steps -e dir=" .. q(dir) .. " -e fail_at=2")
  t.eq(r.status, 1)
  local id = run_id(r.stderr)
  local hint = "dhsm run " .. sys.realpath(fixtures .. "/playbooks/steps.lua") .. " --resume " .. id
  t.ok(r.stderr:find("'" .. hint .. "' continues it, with its own parameters and inventory", 1, true), r.stderr)
  local j = journal(dir, id)
  t.eq({ j.state, j.playbook, j.steps[1].status, j.steps[2].status, #j.steps }, { "failed", "steps", "ok", "failed", 2 })
  t.eq(j.given, { dir = dir, fail_at = "2" }, "the parameters as given")
  t.eq(sys.stat(dir .. "/dhsm/runs/" .. id .. ".json").mode, tonumber("600", 8))
  -- other parameters are refused, naming the field
  r = run(dir, "run steps --resume " .. id .. " -e fail_at=3")
  t.eq(r.status, 2)
  t.ok(r.stderr:find("run " .. id .. " used other parameters (fail_at was 2, now 3)", 1, true), r.stderr)
  -- the hint as printed: the run's own parameters; first is replayed with its result, second runs again
  r = run(dir, (hint:gsub("^dhsm ", "")))
  t.eq(r.status, 1)
  t.eq(executed(dir), { "first", "second", "second" })
  t.ok(r.stderr:find("↷ first (done in an earlier attempt of this run)", 1, true), r.stderr)
end)

t.test("a module's BadArgument inside a step is no input of the operator's: the resume hint stays, and works", function()
  local dir = t.tmpdir()
  local r = run(dir, "run steps -e dir=" .. q(dir) .. " -e bad_reply=true")
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("BadArgument", 1, true) or r.stderr:find("operation_state", 1, true), r.stderr)
  t.ok(not r.stderr:find("same bad input", 1, true), r.stderr)
  local hint = r.stderr:match("'dhsm (run %S+ %-%-resume %S+)' continues it")
  t.ok(hint, r.stderr)
  t.write(dir .. "/fixed", "")
  r = run(dir, hint)
  t.eq(r.status, 0, r.stderr)
  t.eq(executed(dir), { "first", "second", "second", "third 2 y" }, "first replayed, second again, then third")
end)

t.test("a run that fails on its input before any step offers no resume: fix the input and run again", function()
  local dir = t.tmpdir()
  local inv = dir .. "/inventory.json"
  t.write(inv, '{"hsms":{}}')
  local r = run(dir, "-i " .. q(inv) .. " run orphans")
  t.eq(r.status, 2, r.stderr)
  t.ok(not r.stderr:find("--resume", 1, true), "no resume hint: " .. r.stderr)
  t.ok(r.stderr:find("failed on its input before any step ran; nothing was done: fix what the error below names, "
    .. "then run again (a new run): dhsm -i " .. q(sys.realpath(inv)) .. " run orphans\n", 1, true), r.stderr)
  t.ok(r.stderr:find("azure.client: expected a table (the inventory's azure section)", 1, true), r.stderr)
  -- a run that failed in a step still offers its resume (the test above)
end)

t.test("--resume reads the journaled parameters through their specs: a list journaled before it held records resumes", function()
  local dir = t.tmpdir()
  local r = run(dir, "run rules -e hosts=ab:z1,cd")
  t.eq(r.status, 0, r.stderr)
  local id = run_id(r.stderr)
  -- as an older dhsm journaled it: the items as typed, and the run stopped
  local path = dir .. "/dhsm/runs/" .. id .. ".json"
  local j = journal(dir, id)
  t.eq(j.params.hosts, { { name = "ab", zone = "z1" }, { name = "cd" } })
  j.state, j.params.hosts = "failed", { "ab:z1", "cd" }
  t.write(path, cjson.encode(j), tonumber("600", 8))
  -- a real difference is shown as JSON, not "a list, now a list"
  r = run(dir, "run rules --resume " .. id .. " -e hosts=ab:z1,ef")
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find('hosts was [{"name":"ab","zone":"z1"},{"name":"cd"}], now [{"name":"ab","zone":"z1"},'
    .. '{"name":"ef"}]', 1, true) or r.stderr:find('hosts was [{"zone":"z1","name":"ab"},{"name":"cd"}], now '
    .. '[{"zone":"z1","name":"ab"},{"name":"ef"}]', 1, true), r.stderr)
  r = run(dir, "run rules --resume " .. id .. " -e hosts=ab:z1,cd")
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("↷ act", 1, true), r.stderr)
  t.eq(cjson.decode(r.stdout).hosts, { { name = "ab", zone = "z1" }, { name = "cd" } })
end)

t.test("the --resume hint resolves as printed: from another folder, without the -I that found the playbook", function()
  local dir = t.tmpdir()
  local books = t.tmpdir()
  t.write(books .. "/mine.lua", util.read_file(fixtures .. "/playbooks/steps.lua"))
  local state = ("XDG_STATE_HOME=%s DHSM_AUDIT=%s/audit.jsonl"):format(q(dir), q(dir))
  -- by -I with a relative folder, and by a relative path
  for _, how in ipairs { "-I . run mine", "run ./mine.lua" } do
    os.remove(dir .. "/executed.log")
    local r = t.sh(("cd %s && %s %s %s -e dir=%s -e fail_at=2"):format(q(books), state, t.cmd(""), how, q(dir)))
    t.eq(r.status, 1, r.stderr)
    local hint = r.stderr:match("'dhsm (run .- %-%-resume %S+)' continues it")
    t.ok(hint, r.stderr)
    t.ok(hint:find(sys.realpath(books .. "/mine.lua"), 1, true), hint)
    r = t.sh(("cd / && %s %s %s -e fail_at=3"):format(state, t.cmd(""), hint))
    t.ok(r.stderr:find("used other parameters", 1, true), "the hint found the run and its playbook: " .. r.stderr)
    r = t.sh(("cd / && %s %s %s"):format(state, t.cmd(""), hint))
    t.eq(r.status, 1, r.stderr)
    t.eq(executed(dir), { "first", "second", "second" }, how)
  end
end)

-- A run of the fixture `held` (inventory, HSM name, secret) that fails in
-- step two, started from dir with a relative secret file and a copy of the
-- good inventory -> the stderr, the run id and the inventory's path.
local function held_failing(dir)
  local inv = dir .. "/inventory.json"
  t.write(inv, util.read_file(fixtures .. "/inventory/good.json"))
  t.write(dir .. "/pw", "Hidden-Passw0rd\n", tonumber("600", 8))
  t.write(dir .. "/fail", "")
  local r = t.sh(("cd %s && %s %s"):format(q(dir), env(dir), t.cmd("-i inventory.json run held -e dir=" .. q(dir)
    .. " -e hsm=hsm1 -e password=file:pw")))
  t.eq(r.status, 1, r.stderr)
  return r.stderr, run_id(r.stderr), inv
end

-- The resume hint a failed run printed, without its leading "dhsm ".
local function printed_hint(stderr)
  return stderr:match("'dhsm (run %S+ %-%-resume %S+)' continues it, with its own parameters and inventory")
end

t.test("--resume ID alone restores the run's parameters, secret references and inventory: the hint works as printed",
  function()
  local dir = t.tmpdir()
  local stderr, id = held_failing(dir)
  local hint = printed_hint(stderr)
  t.eq(hint, "run " .. fixtures .. "/playbooks/held.lua --resume " .. id, stderr)
  local text = util.read_file(dir .. "/dhsm/runs/" .. id .. ".json")
  t.ok(not text:find("Hidden", 1, true), "no secret value in the journal")
  local j = cjson.decode(text)
  t.eq(j.given, { dir = dir, hsm = "hsm1", password = "file:" .. sys.realpath(dir .. "/pw") })
  t.eq({ j.inventory.path, j.inventory.sha256 }, { sys.realpath(dir .. "/inventory.json"),
    sys.sha256(util.read_file(dir .. "/inventory.json")) })
  os.remove(dir .. "/fail")
  -- typed as printed, from another folder, with no -i and no $DHSM_INVENTORY
  local r = t.sh(("cd / && %s %s"):format(env(dir), t.cmd(hint)))
  t.eq(r.status, 0, r.stderr)
  t.eq(executed(dir), { "first hsm1", "second hsm-rg" })
  t.eq(journal(dir, id).state, "ok")
end)

t.test("a resume refuses another value, another secret reference or another -i, naming each", function()
  local dir = t.tmpdir()
  local stderr = held_failing(dir)
  local hint = printed_hint(stderr)
  local function resume(before, after)
    return t.sh(("cd %s && %s %s"):format(q(dir), env(dir), t.cmd(before .. hint .. after)))
  end
  local r = resume("", " -e hsm=hsm2")
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find('hsm was "hsm1", now "hsm2"', 1, true), r.stderr)
  t.write(dir .. "/other", "x\n", tonumber("600", 8))
  r = resume("", " -e password=file:other")
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("password was file:" .. sys.realpath(dir .. "/pw") .. ", now file:" .. sys.realpath(dir .. "/other"),
    1, true), r.stderr)
  t.write(dir .. "/second.json", util.read_file(dir .. "/inventory.json"))
  r = resume("-i second.json ", "")
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("was started with inventory " .. sys.realpath(dir .. "/inventory.json") .. ", and -i names "
    .. "second.json", 1, true), r.stderr)
  t.eq(executed(dir), { "first hsm1" }, "nothing ran")
  -- the same ones given again are accepted
  os.remove(dir .. "/fail")
  r = resume("-i inventory.json ", " -e hsm=hsm1 -e password=file:pw")
  t.eq(r.status, 0, r.stderr)
  t.eq(executed(dir), { "first hsm1", "second hsm-rg" })
end)

t.test("a changed inventory is refused naming what changed, never a value; --inventory-changed goes on, audited",
  function()
  local dir = t.tmpdir()
  local stderr, id, inv = held_failing(dir)
  local hint = printed_hint(stderr)
  local doc = cjson.decode(util.read_file(inv))
  doc.hsms[1].host = "10.9.9.9"
  doc.hsms[3] = { name = "hsm3", host = "10.0.2.6" }
  t.write(inv, cjson.encode(doc))
  os.remove(dir .. "/fail")
  local r = t.sh(("cd / && %s %s"):format(env(dir), t.cmd(hint)))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("safety/InventoryChanged: run " .. id .. " was started with inventory " .. sys.realpath(inv)
    .. ", which has changed since: hsms[hsm1].host changed, hsms[hsm3] added.", 1, true), r.stderr)
  t.ok(not r.stderr:find("10.9.9.9", 1, true) and not r.stderr:find("10.0.2.6", 1, true), "no value shown")
  t.eq(executed(dir), { "first hsm1" }, "nothing ran")
  -- the remedy, typed as printed
  local remedy = r.stderr:match("'dhsm (run %S+ %-%-resume %S+ %-%-inventory%-changed)' resumes with it")
  t.ok(remedy, r.stderr)
  r = t.sh(("cd / && %s %s"):format(env(dir), t.cmd(remedy)))
  t.eq(r.status, 0, r.stderr)
  t.eq(executed(dir), { "first hsm1", "second hsm-rg" })
  local accepted
  for _, rec in ipairs(audit(dir)) do
    if rec.action == "run.inventory_changed" then accepted = rec end
  end
  t.ok(accepted, "audited")
  t.eq({ accepted.target, accepted.outcome, accepted.changes }, { id, "accepted", { "hsms[hsm1].host changed",
    "hsms[hsm3] added" } })
  t.eq(journal(dir, id).inventory.sha256, sys.sha256(util.read_file(inv)), "the accepted file is the run's now")
  t.ok(run(dir, "run held --inventory-changed -e dir=x").stderr:find("--inventory-changed goes with --resume ID", 1,
    true))
end)

t.test("an inventory named with ~/ ($DHSM_INVENTORY as written) is journaled as it is read", function()
  local dir = t.tmpdir()
  t.write(dir .. "/inventory.json", util.read_file(fixtures .. "/inventory/good.json"))
  t.write(dir .. "/pw", "Hidden-Passw0rd\n", tonumber("600", 8))
  local r = t.sh(("cd / && HOME=%s DHSM_INVENTORY='~/inventory.json' %s %s"):format(q(dir), env(dir),
    t.cmd("run held -e dir=" .. q(dir) .. " -e hsm=hsm1 -e password=file:" .. q(dir .. "/pw"))))
  t.eq(r.status, 0, r.stderr)
  t.eq(journal(dir, run_id(r.stderr)).inventory.path, sys.realpath(dir .. "/inventory.json"))
end)

t.test("an inventory that dropped the run's HSM: the resume is refused as a changed inventory, not as bad input",
  function()
  local dir = t.tmpdir()
  local stderr, id, inv = held_failing(dir)
  local doc = cjson.decode(util.read_file(inv))
  table.remove(doc.hsms, 1)
  t.write(inv, cjson.encode(doc))
  local r = t.sh(("cd / && %s %s"):format(env(dir), t.cmd(printed_hint(stderr))))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("safety/InventoryChanged: run " .. id .. " was started with inventory", 1, true), r.stderr)
  t.ok(r.stderr:find("hsms[hsm1] removed", 1, true), r.stderr)
  t.eq(executed(dir), { "first hsm1" }, "nothing ran")
end)

t.test("resume refuses unknown runs, other playbooks and finished runs", function()
  local dir = t.tmpdir()
  t.eq(run(dir, "run steps --resume nope -e dir=x").status, 2)
  t.ok(run(dir, "run steps --resume ../x -e dir=x").stderr:find("not a run id", 1, true))
  local r = run(dir, "run steps -e dir=" .. q(dir))
  local id = run_id(r.stderr)
  r = run(dir, "run steps --resume " .. id .. " -e dir=" .. q(dir))
  t.ok(r.stderr:find("already finished successfully", 1, true), r.stderr)
  r = run(dir, "run typed --resume " .. id .. " -e name=a -e group=g")
  t.ok(r.stderr:find("run " .. id .. " was playbook 'steps', not 'typed'", 1, true), r.stderr)
  t.ok(run(dir, "run steps --check --resume " .. id .. " -e dir=x").stderr:find("cannot go together", 1, true))
end)

-- Start the slow run, wait until it is inside step two, send `signal`.
local function stop_in_second(dir, signal)
  local cmd = env(dir) .. " " .. t.cmd("run steps -e dir=" .. q(dir) .. " -e slow=true")
  return t.sh(("%s & pid=$!; for i in $(seq 200); do [ -e %s ] && break; sleep 0.05; done; kill -%s $pid; wait $pid")
    :format(cmd, q(dir .. "/in-second"), signal))
end

local function resume_to_the_end(dir, id)
  t.write(dir .. "/release", "")                  -- step two no longer waits
  local r = run(dir, "run steps --resume " .. id .. " -e dir=" .. q(dir) .. " -e slow=true")
  t.eq(r.status, 0, r.stderr)
  t.eq(executed(dir), { "first", "second", "second", "third 2 y" }, "first ran once, second again, then third")
  t.eq(journal(dir, id).state, "ok")
  return r
end

t.test("a run killed (SIGKILL) in the middle of a step resumes without repeating what was done", function()
  local dir = t.tmpdir()
  stop_in_second(dir, "KILL")
  t.eq(executed(dir), { "first", "second" })
  local runs = t.sh(env(dir) .. " " .. t.cmd("runs"))
  local id, state, steps = runs.stdout:match("\n(%S+)%s+steps%s+(%S+)%s+(%S+)")
  t.eq({ state, steps }, { "running", "1/2" }, runs.stdout)
  local r = resume_to_the_end(dir, id)
  t.ok(r.stderr:find("↷ first", 1, true), r.stderr)
  runs = t.sh(env(dir) .. " " .. t.cmd("runs"))
  t.ok(runs.stdout:find(id:gsub("%p", "%%%0") .. "%s+steps%s+ok%s+3/3"), runs.stdout)
end, { timeout = 60 })

t.test("Ctrl-C in a step exits 130 and leaves the run resumable", function()
  local dir = t.tmpdir()
  local r = stop_in_second(dir, "INT")
  t.eq(r.status, 130, r.stderr)
  t.ok(r.stderr:find("✗ second: interrupted", 1, true), r.stderr)
  local id = run_id(r.stderr)
  local j = journal(dir, id)
  t.eq({ j.state, j.steps[1].status, j.steps[2].status }, { "interrupted", "ok", "interrupted" })
  local last = audit(dir)[#audit(dir)]
  t.eq({ last.action, last.outcome, last.run, last.playbook }, { "run.end", "interrupted", id, "steps" },
    "the record written while the task is cancelled names its run and playbook")
  resume_to_the_end(dir, id)
end, { timeout = 60 })

t.test("--json still prints its document when the run is interrupted", function()
  local dir = t.tmpdir()
  local cmd = env(dir) .. " " .. t.cmd("run steps --json -e dir=" .. q(dir) .. " -e slow=true")
  local r = t.sh(("%s >%s & pid=$!; for i in $(seq 200); do [ -e %s ] && break; sleep 0.05; done; kill -INT $pid; wait $pid")
    :format(cmd, q(dir .. "/doc.json"), q(dir .. "/in-second")))
  t.eq(r.status, 130, r.stderr)
  local doc = cjson.decode(util.read_file(dir .. "/doc.json"))
  t.eq({ doc.outcome, doc.steps[1].status, doc.steps[2].status }, { "interrupted", "ok", "interrupted" })
end, { timeout = 60 })

---------------------------------------------------------------------------
-- any raised value fails

t.test("error(nil), error(false) and error({}) fail the step: journal, audit and exit agree", function()
  for _, what in ipairs { "nil", "false", "table" } do
    local dir = t.tmpdir()
    local r = run(dir, "run steps -e dir=" .. q(dir) .. " -e raise=" .. what)
    t.eq(r.status, 1, what .. ": " .. r.stderr)
    local j = journal(dir, run_id(r.stderr))
    t.eq({ j.state, j.steps[2].status, j.steps[2].error.code, #j.steps }, { "failed", "failed", "BadError", 2 }, what)
    local outcomes = {}
    for _, rec in ipairs(audit(dir)) do
      if rec.action == "step.end" or rec.action == "run.end" then outcomes[#outcomes + 1] = rec.outcome end
    end
    t.eq(outcomes, { "ok", "failed", "failed" }, what)
  end
end)

---------------------------------------------------------------------------
-- destructive steps killed half-way

-- Start the device playbook, wait until its destructive step waits at its gate
-- (what it does before the gate is then on disk), SIGKILL it.
local function kill_in_step(dir, extra)
  local cmd = env(dir) .. " " .. t.cmd("run device --yes -e dir=" .. q(dir) .. " " .. extra)
  local r = t.sh(("%s & pid=$!; for i in $(seq 400); do [ -e %s ] && break; sleep 0.05; done; kill -KILL $pid; wait $pid")
    :format(cmd, q(dir .. "/at-gate")))
  t.eq(r.status, 137, r.stderr)
  local id = sys.readdir(dir .. "/dhsm/runs")[1]:match("^(.*)%.json$")
  local j = journal(dir, id)
  t.eq({ j.state, j.steps[2].status }, { "running", "started" }, "journaled as begun before it acted")
  t.ok(j.steps[2].began)
  return id
end

local function sent(dir)
  return #lines(util.read_file(dir .. "/sent.log") or "")
end

t.test("killed after it sent: resume asks the step's done= check and does not send again", function()
  local dir = t.tmpdir()
  local id = kill_in_step(dir, "-e gate=after")
  t.eq(sent(dir), 1)
  t.write(dir .. "/device", "done")                -- the device finished on its own meanwhile
  local r = run(dir, "run device --yes --resume " .. id .. " -e dir=" .. q(dir) .. " -e gate=after")
  t.eq(r.status, 0, r.stderr)
  t.eq(sent(dir), 1, "the order was not sent twice")
  t.ok(r.stderr:find("finished by an earlier attempt of this run", 1, true), r.stderr)
  t.eq(util.read_file(dir .. "/after.log"), "after\n")
  local j = journal(dir, id)
  t.eq({ j.state, j.steps[2].status, j.steps[2].checked, j.steps[2].result }, { "ok", "ok", true, { state = "done" } })
end, { timeout = 60 })

t.test("killed after it sent, still working: resume waits for it instead of sending again", function()
  local dir = t.tmpdir()
  local id = kill_in_step(dir, "-e gate=after")
  t.eq(util.read_file(dir .. "/device"), "working")
  local cmd = env(dir) .. " " .. t.cmd("run device --yes --resume " .. id .. " -e dir=" .. q(dir) .. " -e gate=after")
  -- the resumed run is inside its done= check (audit: step.start of the second step) before the device finishes
  local r = t.sh(("%s & pid=$!; for i in $(seq 400); do [ \"$(grep -c '\"step\":\"order the device\".*\"step.start\"' %s)\" = 2 ] "
    .. "&& break; sleep 0.05; done; printf done > %s; wait $pid"):format(cmd, q(dir .. "/audit.jsonl"), q(dir .. "/device")))
  t.eq(r.status, 0, r.stderr)
  t.eq(sent(dir), 1)
end, { timeout = 60 })

t.test("killed before it sent: resume finds it not done and runs it once", function()
  local dir = t.tmpdir()
  local id = kill_in_step(dir, "-e gate=before")
  t.eq(sent(dir), 0)
  t.write(dir .. "/release", "")
  local r = run(dir, "run device --yes --resume " .. id .. " -e dir=" .. q(dir) .. " -e gate=before")
  t.eq(r.status, 0, r.stderr)
  t.eq(sent(dir), 1)
  local checks = {}
  for _, rec in ipairs(audit(dir)) do if rec.action == "step.check" then checks[#checks + 1] = rec.outcome end end
  t.eq(checks, { "not done", "not done" }, "checked on the first run and on resume")
end, { timeout = 60 })

t.test("a destructive step without done= that began is not resumed blindly (exit 3)", function()
  local dir = t.tmpdir()
  local id = kill_in_step(dir, "-e gate=after -e check=false")
  t.write(dir .. "/release", "")
  local r = run(dir, "run device --yes --resume " .. id .. " -e dir=" .. q(dir) .. " -e gate=after -e check=false")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("step 'order the device' began acting on dev in an earlier attempt of this run", 1, true), r.stderr)
  t.ok(r.stderr:find("declares no done= check", 1, true), r.stderr)
  t.eq(sent(dir), 1, "not sent again")
  -- and it stays refused on the next attempt too
  r = run(dir, "run device --yes --resume " .. id .. " -e dir=" .. q(dir) .. " -e gate=after -e check=false")
  t.eq({ r.status, sent(dir) }, { 3, 1 })
end, { timeout = 60 })

t.test("one run, one runner: a resume while the run is going is refused with the holder's pid", function()
  local dir = t.tmpdir()
  local cmd = env(dir) .. " " .. t.cmd("run device --yes -e dir=" .. q(dir) .. " -e gate=after")
  local resume = env(dir) .. " " .. t.cmd("run device --yes --resume $id -e dir=" .. q(dir) .. " -e gate=after")
  local r = t.sh(("%s 2>%s & pid=$!; for i in $(seq 400); do [ -e %s ] && break; sleep 0.05; done; "
    .. "id=$(ls %s | sed -n 's/\\.json$//p'); echo \"pid=$pid\"; %s; echo \"status=$?\"; kill -KILL $pid; wait $pid")
    :format(cmd, q(dir .. "/first.err"), q(dir .. "/at-gate"), q(dir .. "/dhsm/runs"), resume))
  local pid = r.stdout:match("pid=(%d+)")
  t.eq(r.stdout:match("status=(%d+)"), "3", r.stdout .. r.stderr)
  t.ok(r.stderr:find("is being run right now by another dhsm (pid " .. pid .. ")", 1, true), r.stderr)
  t.eq(sent(dir), 1)
end, { timeout = 60 })

---------------------------------------------------------------------------
-- what is written down: secrets by type, plain values faithfully

t.test("the journal keeps plain values as given (token_name resumes); the audit log still hides pins and passwords", function()
  local dir = t.tmpdir()
  local args = "run names -e token_name=tok1 -e co_pin=246810 -e so_password=env:HOME -e fail="
  local r = run(dir, args .. "true")
  t.eq(r.status, 1, r.stderr)
  local id = run_id(r.stderr)
  local j = journal(dir, id)
  t.eq({ j.params.token_name, j.params.co_pin, j.params.so_password, j.secret_params },
       { "tok1", 246810, nil, { "so_password" } })
  t.eq(j.steps[1].result, { token_name = "tok1", co_pin = 246810 })
  r = run(dir, args .. "true --resume " .. id)
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find("↷ use the token", 1, true), "resumed with the same parameters: " .. r.stderr)
  local text = util.read_file(dir .. "/audit.jsonl")
  t.ok(not text:find("246810", 1, true), "a numeric co_pin is not in the audit log")
  t.ok(not text:find("hunter2", 1, true), "a long key does not escape redaction")
  t.ok(not text:find("97531", 1, true), "nor a numeric pin in a free-form field")
  local start = audit(dir)[1]
  -- the audit log errs on the side of hiding: a secret-looking name hides a plain value too
  t.eq({ start.action, start.params.token_name, start.params.co_pin }, { "run.start", "<redacted>", "<redacted>" })
end)

t.test("a secret parameter given as a number or a literal string is refused", function()
  local dir = t.tmpdir()
  t.write(dir .. "/p.json", '{"token_name": "t", "so_password": 246810}')
  local r = run(dir, "run names -e @" .. q(dir .. "/p.json"))
  t.eq(r.status, 2)
  t.ok(r.stderr:find("so_password: expected a secret reference (env:NAME, file:PATH or prompt), got a number "
    .. "(not shown)", 1, true), r.stderr)
  t.ok(not r.stderr:find("246810", 1, true), r.stderr)
  r = run(dir, "run names -e token_name=t -e so_password=246810")
  t.eq(r.status, 2)
  t.ok(r.stderr:find("so_password: expected a secret reference (env:NAME, file:PATH or prompt), got a literal value", 1, true), r.stderr)
  t.ok(not r.stderr:find("246810", 1, true))
end)
