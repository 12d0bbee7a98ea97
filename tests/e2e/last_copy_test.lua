-- No last copy destroyed: decommission lists every object on the
-- partitions it destroys (a read-only Crypto Officer login per partition)
-- and looks for each on what survives - the other members of its HA group,
-- a backup partition named - before anything is zeroized.  Real SoftHSM
-- tokens behind the simulated estate (tests/sim, --client-ready: partition
-- par1 on each appliance); what reached the estate is counted from its own
-- log (DIR/estate.log), the audit records from the run's audit log.
local t = require "dhsm.test"
local cjson = require "cjson"
local proc = require "dhsm.proc"
local util = require "dhsm.util"
local support = require "support.estate"

local q = util.shell_quote
local count = support.count

-- A lunacm command as the operator types it, the CO PIN on its stdin.
local function lunacm(e, ...)
  local c = e.inventory.client
  local o = { argv = { c.lunacm, "-c", ... }, env = { ChrystokiConfigurationPath = c.chrystoki_conf:match("^(.*)/[^/]*$") },
    timeout = 60, password = e:secret("hsm1_par1_co_pin") }
  local r = proc.lunacm_login(o)
  t.ok(r.ok, r.stdout)
end

local function serial(e, name)
  return e:state().appliances[name].partitions.par1.serial
end

-- The operator's inventory: each HSM's SO password, its partition and
-- that partition's Crypto Officer secret (unless co == false).
local function inventory(e, co)
  local inv = cjson.decode(util.read_file(e.dir .. "/inventory.json"))
  for _, h in ipairs(inv.hsms) do
    local sn = serial(e, h.name)
    h.so_password = "file:" .. e.dir .. "/secrets/" .. h.name .. "_so_password"
    h.partitions = { sn }
    if co ~= false then h.crypto_officers = { { partition = sn, password = "file:" .. e.dir .. "/secrets/" .. h.name .. "_par1_co_pin" } } end
  end
  local path = t.tmpdir() .. "/inventory.json"
  t.write(path, cjson.encode(inv))
  return path
end

-- An estate of n appliances, par1 on each; with group, HA group myHA of all of them.
local function estate(n, group)
  local e = support.start { set = { delete_seconds = 0, hsm_step_seconds = 0 }, args = ("--appliances %d --client-ready"):format(n) }
  if group then
    lunacm(e, "hagroup", "createGroup", "-label", "myHA", "-serialNumber", serial(e, "hsm1"))
    for i = 2, n do lunacm(e, "hagroup", "addMember", "-group", "myHA", "-serialNumber", serial(e, "hsm" .. i)) end
  end
  e.inv = inventory(e)
  return e
end

-- dhsm ARGS in the estate's state folder (its audit log: state/audit.jsonl)
local function dhsm_run(e, args, inv)
  return t.run(("-i %s %s"):format(q(inv or e.inv), args), { state = e.dir .. "/state", env = "env -u DHSM_INVENTORY" })
end

local function decommission(e, args, inv)
  return dhsm_run(e, "run decommission -e poll_interval=0.02 -e backups_confirmed=true --yes " .. args, inv)
end

-- An application's key on appliance `name`'s partition, made as applications
-- make them: sensitive, never extractable (pkcs11's defaults); o: generate_aes's fields.
local function put_key(e, name, o)
  local code = ([[
    local c = inv.client
    local lib <close> = require("dhsm.pkcs11").load(c.pkcs11_lib, { env = { SOFTHSM2_CONF = c.softhsm_conf,
      ChrystokiConfigurationPath = c.chrystoki_conf:match("^(.*)/") } })
    local s <close> = lib:open { label = %q, rw = true }
    s:login("user", require("dhsm.secret").file(%q))
    s:generate_aes { label = %q, id = %s }
    s:logout()]]):format(name .. "-par1", e.dir .. "/secrets/" .. name .. "_par1_co_pin", o.label,
    o.id and ("%q"):format(o.id) or "nil")
  local r = dhsm_run(e, "exec -e " .. q(code))
  t.eq(r.status, 0, r.stderr)
end

local function synchronize(e)
  lunacm(e, "hagroup", "synchronize", "-group", "myHA")
end

local function zeroizes(e) return count(e:mutations(), "hsm zeroize") end

-- decommission ARGS goes through: exit 0, and n zeroizes in the estate's log by now
local function passes(e, args, n)
  local r = decommission(e, args)
  t.eq(r.status, 0, r.stderr)
  t.eq(zeroizes(e), n)
  return r
end

-- decommission ARGS is refused (exit 3) and nothing is zeroized
local function refused(e, args)
  local r = decommission(e, args)
  t.eq(r.status, 3, r.stderr)
  t.eq(zeroizes(e), 0, "nothing zeroized")
  return r
end

local function records(e, action)
  local out = {}
  for _, r in ipairs(t.audit_records(e.dir .. "/state/audit.jsonl")) do
    if r.action == action then out[#out + 1] = r end
  end
  return out
end

---------------------------------------------------------------------------

t.test("a key present on both members passes: the run goes on to zeroize", function()
  local e = estate(2, true)
  put_key(e, "hsm1", { label = "k-both" })
  synchronize(e)
  local r = passes(e, "-e hsm=hsm1", 1)
  t.ok(r.stderr:find("secret_key 'k%-both' id %x+ aes 256 kcv:%x+"), "the census lists it: " .. r.stderr)
  t.ok(r.stderr:find("every object on the partitions to be destroyed has a copy on a partition that survives", 1, true), r.stderr)
  t.eq(#records(e, "decommission.last_copies"), 0, "no last copy named")
end, { timeout = 180 })

t.test("a key made on one member while the other was down is refused until ha-recover synchronises it", function()
  local e = estate(2, true)
  e:appliance("hsm2", "down")
  t.eventually(function()
    for _, g in ipairs(e:control("GET", "/client").groups) do
      for _, m in ipairs(g.members) do if m.serial == serial(e, "hsm2") then return m.status == "down" end end
    end
  end, "hsm2's member down")
  put_key(e, "hsm1", { label = "app-key-1" })
  e:appliance("hsm2", "up")
  local r = refused(e, "-e hsm=hsm1")
  t.ok(r.stderr:find("safety/LastCopy", 1, true), r.stderr)
  t.ok(r.stderr:find("secret_key 'app%-key%-1' id %x+ aes 256 kcv:%x+"), r.stderr)
  t.ok(r.stderr:find("-e destroy_last_copies=app-key-1", 1, true), "the way on, typed as it reads: " .. r.stderr)
  r = dhsm_run(e, "run ha-recover --yes -e co_password=file:" .. q(e.dir .. "/secrets/hsm1_par1_co_pin"))
  t.eq(r.status, 0, r.stderr)
  passes(e, "-e hsm=hsm1", 1)
end, { timeout = 240 })

t.test("destroy_last_copies naming the key goes on, and the audit log has the list", function()
  local e = estate(2, true)
  put_key(e, "hsm1", { label = "k-only" })
  local sn = serial(e, "hsm1")
  local r = refused(e, "-e hsm=hsm1 -e destroy_last_copies=k-other")
  t.ok(r.stderr:find("these were not named in destroy_last_copies", 1, true), r.stderr)
  passes(e, "-e hsm=hsm1 -e destroy_last_copies=k-only", 1)
  local recs = records(e, "decommission.last_copies")
  t.eq(#recs, 1)
  local o = recs[1].objects[1]
  t.eq({ recs[1].count, #recs[1].objects, o.label, o.class, o.partition }, { 1, 1, "k-only", "secret_key", sn })
  t.ok(o.fingerprint:match("^kcv:%x+$") and o.id:match("^%x+$"), cjson.encode(o))
  t.eq(o.value, nil)
end, { timeout = 180 })

t.test("a backup partition named by serial that holds the key makes it pass", function()
  local e = estate(2, true)
  put_key(e, "hsm1", { label = "k-backed" })
  synchronize(e)
  -- hsm2's partition leaves the group: a partition of its own that holds the copy
  local c = e.inventory.client
  local r0 = proc.run { argv = { c.lunacm, "-c", "hagroup", "removeMember", "-group", "myHA", "-serialNumber", serial(e, "hsm2") },
    env = { ChrystokiConfigurationPath = c.chrystoki_conf:match("^(.*)/[^/]*$") }, timeout = 60 }
  t.ok(r0.ok, r0.stdout)
  t.ok(refused(e, "-e hsm=hsm1").stderr:find("'k-backed'", 1, true))
  passes(e, "-e hsm=hsm1 -e backup=" .. serial(e, "hsm2"), 1)
end, { timeout = 180 })

t.test("a whole group: one line with the count before any step; refused without destroy_last_copies", function()
  local e = estate(2, true)
  put_key(e, "hsm1", { label = "k-group" })
  synchronize(e)
  local r = refused(e, "-e hsm=hsm1,hsm2")
  local line = "every member of HA group myHA is decommissioned: its 2 objects are last copies"
  local at = r.stderr:find(line, 1, true)
  t.ok(at, r.stderr)
  t.eq(select(2, r.stderr:gsub(line:gsub("%p", "%%%0"), "")), 1, "said once")
  local first_step = r.stderr:find("show what will be destroyed", 1, true)
  t.ok(first_step and at < first_step, "before any step: " .. r.stderr)
  t.ok(r.stderr:find("-e destroy_last_copies=all:2", 1, true), r.stderr)
  -- all without a terminal is refused: the count is typed, or given
  r = refused(e, "-e hsm=hsm1,hsm2 -e destroy_last_copies=all")
  t.ok(r.stderr:find("give -e destroy_last_copies=all:2", 1, true), r.stderr)
  refused(e, "-e hsm=hsm1,hsm2 -e destroy_last_copies=all:3")
  passes(e, "-e hsm=hsm1,hsm2 -e destroy_last_copies=all:2", 2)
  t.eq(records(e, "decommission.last_copies")[1].count, 2)
end, { timeout = 240 })

t.test("sensitive keys are compared by fingerprint attributes, never by value", function()
  local e = estate(2, true)
  put_key(e, "hsm1", { label = "k-synced" })
  synchronize(e)
  -- one label and one CKA_ID on both members, two different keys: only the KCV tells them apart
  put_key(e, "hsm1", { label = "k-twin", id = "\1\2" })
  put_key(e, "hsm2", { label = "k-twin", id = "\1\2" })
  local r = refused(e, "-e hsm=hsm1")
  local listed = r.stderr:match("survives.-:\n(.-)\nBack them up")
  t.ok(listed and listed:find("'k-twin' id 0102 aes 256 kcv:", 1, true), r.stderr)
  t.ok(not listed:find("k-synced", 1, true), "the synchronized key has its copy: " .. listed)
  t.eq(zeroizes(e), 0)
  -- the census asks for no value of a private or secret key: the attribute names it requested, per class
  local code = ([[
    local c = inv.client
    local lib <close> = require("dhsm.pkcs11").load(c.pkcs11_lib, { env = { SOFTHSM2_CONF = c.softhsm_conf,
      ChrystokiConfigurationPath = c.chrystoki_conf:match("^(.*)/") } })
    local s <close> = lib:open { label = "hsm1-par1", rw = true }
    s:login("user", require("dhsm.secret").file(%q))
    s:generate_rsa { label = "k-rsa" }
    s:generate_ec { label = "k-ec" }
    local asked = {}
    local proxy = setmetatable({ attributes = function(_, h, names)
      local class = s:attributes(h, { "class" }).class
      for _, n in ipairs(names) do asked[class .. "." .. n] = true end
      return s:attributes(h, names)
    end }, { __index = function(_, k) return function(_, ...) return s[k](s, ...) end end })
    local objects = require("dhsm.client.copies").census(proxy)
    local names = {}
    for k in pairs(asked) do names[#names + 1] = k end
    table.sort(names)
    print(require("cjson").encode { asked = names, objects = objects })]]):format(e.dir .. "/secrets/hsm1_par1_co_pin")
  local x = dhsm_run(e, "exec -e " .. q(code))
  t.eq(x.status, 0, x.stderr)
  local doc = cjson.decode(x.stdout)
  local asked = {}
  for _, n in ipairs(doc.asked) do asked[n] = true end
  t.ok(asked["secret_key.check_value"] and asked["private_key.modulus"], x.stdout)
  t.eq({ asked["secret_key.value"], asked["private_key.value"] }, { nil, nil }, "no value of a sensitive key asked for")
  local fp = {}
  for _, o in ipairs(doc.objects) do fp[o.class .. ":" .. o.label] = o end
  t.eq(fp["private_key:k-rsa"].fingerprint, fp["public_key:k-rsa"].fingerprint, "an RSA pair: one fingerprint")
  t.eq(fp["private_key:k-ec"].fingerprint, fp["public_key:k-ec"].fingerprint, "an EC pair: paired by CKA_ID")
  t.eq({ fp["private_key:k-ec"].size, fp["public_key:k-rsa"].size, fp["secret_key:k-synced"].size }, { "P-256", 2048, 256 })
  t.ok(fp["public_key:k-rsa"].fingerprint:match("^sha256:%x+$"), x.stdout)
end, { timeout = 240 })

t.test("a partition whose Crypto Officer secret is missing: CensusUnreadable, nothing sent", function()
  local e = estate(2, true)
  put_key(e, "hsm1", { label = "k-unread" })
  local sent = e:mutations()
  local r = decommission(e, "-e hsm=hsm1", inventory(e, false))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("CensusUnreadable", 1, true) or r.stderr:find("cannot tell which objects partition", 1, true), r.stderr)
  t.ok(r.stderr:find("hsms[].crypto_officers", 1, true), "what to add: " .. r.stderr)
  t.eq(e:mutations(), sent, "nothing sent")
end, { timeout = 180 })

t.test("--check: the census reads happen (read-only logins) and the refusal shows in the plan", function()
  local e = estate(2, true)
  put_key(e, "hsm1", { label = "k-plan" })
  local before, sent = e:world(), e:mutations()
  local r = dhsm_run(e, "run decommission -e poll_interval=0.02 -e backups_confirmed=true -e hsm=hsm1 --check")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("secret_key 'k-plan'", 1, true), "the census was read: " .. r.stderr)
  t.ok(r.stderr:find("destroy_last_copies=k-plan", 1, true), r.stderr)
  t.eq({ count(e:mutations(), "lunash"), count(e:mutations(), "^DELETE") }, { 0, 0 }, "the plan changed nothing")
  t.eq({ e:world().resources, #e:mutations() }, { before.resources, #sent })
  local logins = {}
  for _, rec in ipairs(records(e, "pkcs11.login")) do
    if rec.read_only then logins[#logins + 1] = rec.outcome .. (rec.check and " in check mode" or "") end
  end
  t.eq(logins, { "sending in check mode", "ok in check mode", "sending in check mode", "ok in check mode" },
    "two read-only CO logins, made: hsm1's partition and its surviving member's")
end, { timeout = 180 })

t.test("all at a terminal: their count typed destroys them; another answer destroys nothing", function()
  local tty = require "support.tty"
  if not tty.available() then t.skip("tmux is not installed") end
  local e = estate(2, true)
  put_key(e, "hsm1", { label = "k-typed" })
  local cmd = t.cmd(("-i %s run decommission -e poll_interval=0.02 -e backups_confirmed=true -e hsm=hsm1 "
    .. "-e destroy_last_copies=all --yes"):format(q(e.inv)))
  local function answer(typed, exit)
    local term = tty.start(cmd, { keep = true, env = "DHSM_AUDIT=" .. q(e.dir .. "/state/audit.jsonl") })
    term.wait_for("Type their number, 1, to destroy them:$", 60)
    term.keys(typed, "Enter")
    term.wait_for("%[exit " .. exit .. "%]", 60)
  end
  answer("2", 3)
  t.eq(zeroizes(e), 0, "--yes does not answer it, nor does another number")
  answer("1", 0)
  t.eq(zeroizes(e), 1)
  t.eq(records(e, "decommission.last_copies")[1].objects[1].label, "k-typed")
end, { timeout = 180 })

-- Lua run by `dhsm exec --yes` against the estate's inventory (e.inv), in its state folder.
local function exec(e, code)
  return dhsm_run(e, "exec --yes -e " .. q(code))
end

t.test("a raw hsm zeroize on an appliance holding objects is refused without a clearance; allow_last_copies goes on, audited",
  function()
  local e = estate(2, false)
  put_key(e, "hsm1", { label = "k-raw" })
  local zeroize = [[
    local s <close> = require("dhsm.luna").open(inv:hsm("hsm1"))
    s:login_so(inv:hsm("hsm1").so_password)
    local ok, err = pcall(s.must, s, "hsm zeroize -force", %s)
    print(ok and "zeroized" or err.code)]]
  local r = exec(e, zeroize:format("nil"))
  t.eq({ r.status, util.trim(r.stdout) }, { 0, "LastCopyUnchecked" }, r.stderr)
  t.eq(zeroizes(e), 0, "nothing reached the appliance")
  -- a destructive policy's change erases the partitions: the same refusal, before anything is sent
  r = exec(e, [[
    local s <close> = require("dhsm.luna").open(inv:hsm("hsm1"))
    local ok, err = pcall(s.must, s, "hsm changePolicy -policy 22 -value 0", { proceed = true })
    print(ok and "changed" or err.code)]])
  t.eq({ r.status, util.trim(r.stdout) }, { 0, "LastCopyUnchecked" }, r.stderr)
  t.eq(count(e:mutations(), "hsm changePolicy"), 0, "no policy change reached the appliance")
  -- the same by failed logins
  r = exec(e, [[
    local s <close> = require("dhsm.luna").open(inv:hsm("hsm1"))
    local ok, err = pcall(s.zeroize_by_failed_logins, s, s:hsm_show().serial, { zeroize = true })
    print(err.code)]])
  t.eq(util.trim(r.stdout), "LastCopyUnchecked", r.stderr)
  t.eq(count(e:mutations(), "hsm login"), 1, "the SO login of the first call only: no wrong password was sent")
  r = exec(e, zeroize:format("{ allow_last_copies = true }"))
  t.eq(util.trim(r.stdout), "zeroized", r.stderr)
  t.eq(zeroizes(e), 1)
  local overrides = {}
  for _, rec in ipairs(records(e, "safety.override")) do overrides[#overrides + 1] = rec.outcome end
  t.eq(overrides, { "allow_last_copies" })
end, { timeout = 180 })

t.test("a clearance is dhsm.client.copies's, for one appliance and the partitions it read: nothing else clears", function()
  local e = estate(2, false)
  put_key(e, "hsm1", { label = "k-clear" })
  local r = exec(e, ([[
    local copies = require "dhsm.client.copies"
    local install = require("dhsm.client.ha").client(inv)
    local s <close> = require("dhsm.luna").open(inv:hsm("hsm1"))
    local other <close> = require("dhsm.luna").open(inv:hsm("hsm2"))
    local serial, p1 = s:hsm_show().serial, %q
    local function try(c)
      local ok, err = pcall(s.check_last_copies, s, "hsm zeroize", { last_copies_cleared = c })
      return ok and "cleared" or err.code
    end
    local out = {
      try({}),                                                                        -- a hand-made table
      try(copies.clear(install, other:hsm_show().serial, {}, {}, {})),               -- another appliance's
      try(copies.clear(install, serial, {}, {}, {})),                                 -- it read no partition
      (select(2, pcall(copies.clear, install, serial, { p1 }, {}, {}))).code,         -- k-clear: a last copy
    }
    local named = copies.read(install, p1).objects
    local c = copies.clear(install, serial, { p1 }, {}, named)
    out[#out + 1] = try(c)                                                           -- named: cleared
    local ev, now = require("dhsm.evidence"), require("dhsm.sys").time()
    out[#out + 1] = tostring(ev.cleared(c, serial, { p1 }, now + ev.CLEARANCE_MAX_AGE + 1))  -- too old: no
    out[#out + 1] = select(2, pcall(require("dhsm.evidence").clearance_issuer)).code  -- the maker is taken
    print(table.concat(out, " "))]]):format(serial(e, "hsm1")))
  t.eq(r.status, 0, r.stderr)
  t.eq(util.trim(r.stdout), "LastCopyUnchecked LastCopyUnchecked LastCopyUnchecked LastCopyUnchecked cleared false ClearanceIssuer")
  t.eq(zeroizes(e), 0)
end, { timeout = 180 })

-- A plan to decommission hsm1 of a two-member group whose key is on both,
-- made by alice and approved by bob -> the estate, the operators, the plan
local function approved_plan()
  local k = require("support.operators").new()
  local e = estate(2, true)
  put_key(e, "hsm1", { label = "app-key" })
  synchronize(e)
  local path = t.tmpdir() .. "/plan.json"
  local r = t.run(("-i %s run decommission -e hsm=hsm1 -e backups_confirmed=true -e poll_interval=0.02 --check --out %s "
    .. "--key %s"):format(q(e.inv), q(path), q(k.alice)), { state = e.dir .. "/state", env = k.env })
  t.eq(r.status, 0, r.stderr)
  local plan = cjson.decode(util.read_file(path))
  t.ok(cjson.encode(plan.body.reads):find("app-key", 1, true), "the census is among the plan's reads")
  r = t.run(("plan approve %s --key %s"):format(q(path), q(k.bob)), { state = e.dir .. "/state", env = k.env })
  t.eq(r.status, 0, r.stderr)
  return e, k, path
end

t.test("a plan over a partition holding keys applies as approved: the census read again, hsm1 zeroized once", function()
  local e, k, path = approved_plan()
  local r = t.run("run --plan " .. q(path) .. " --yes", { state = e.dir .. "/state", env = k.env })
  t.eq(r.status, 0, r.stderr)
  t.eq(zeroizes(e), 1)
end, { timeout = 180 })

t.test("a plan approved, then an extra object on the partition: applying it stops before any change", function()
  local e, k, path = approved_plan()
  put_key(e, "hsm1", { label = "made-after-approval" })
  local before = #e:mutations()
  local r = t.run("run --plan " .. q(path) .. " --yes", { state = e.dir .. "/state", env = k.env })
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("the estate changed since the plan was approved", 1, true)
    and r.stderr:find("made-after-approval", 1, true), r.stderr)
  t.eq({ #e:mutations(), zeroizes(e) }, { before, 0 })
end, { timeout = 180 })
