-- The decommission playbook end to end against the simulated estate: the
-- guide's order for several HSMs, method=failed-logins through the login
-- guard's override, the refusals (not zeroized, group still holding an
-- HSM, another appliance), idempotent re-runs, --check telling the truth
-- and --resume of a playbook run by path.  What reached the estate is read
-- from its own state and request log (estate.log), not from dhsm's output.
local t = require "dhsm.test"
local support = require "support.estate"
local cjson = require "cjson"
local util = require "dhsm.util"

local GROUP = "hsm-rg"
local q = util.shell_quote

local function estate(set)
  local knobs = { delete_seconds = 0, retry_after = 0, hsm_step_seconds = 0, gateway_seconds = 0, network_seconds = 0 }
  for k, v in pairs(set or {}) do knobs[k] = v end
  return support.start { set = knobs, args = "--appliances 2" }
end

-- run(e, args [, playbook]) -> {status, stdout, stderr}; one state folder per estate
local function run(e, args, playbook)
  return e:run(("run %s -e poll_interval=0.02 %s"):format(playbook or "decommission", args), { state = e.dir .. "/state" })
end

local function so(e, name)
  return "-e so_password=file:" .. q(e.dir .. "/secrets/" .. name .. "_so_password")
end

local count = support.count
local function hsms(e) return e:hsms() end

local function group_exists(e)
  for _, g in pairs(e:state().groups) do
    if type(g) == "table" and g.name == GROUP then return true end
  end
  return false
end

local function zeroized(e, name)
  return e:control("GET", "/appliances")[name].zeroized
end


---------------------------------------------------------------------------

t.test("two HSMs by command, one by one, each zeroized before its DELETE, the group last", function()
  local e = estate()
  -- the operator's inventory: each HSM's SO password by reference (and it keeps the HSMs when they go)
  local inv = cjson.decode(util.read_file(e.dir .. "/inventory.json"))
  for _, h in ipairs(inv.hsms) do h.so_password = "file:" .. e.dir .. "/secrets/" .. h.name .. "_so_password" end
  local own = t.tmpdir() .. "/inventory.json"
  t.write(own, cjson.encode(inv))
  local args = "-i " .. q(own) .. " -e hsm=hsm1,hsm2 -e backups_confirmed=true -e delete_group=true --yes"
  local r = run(e, args)
  t.eq(r.status, 0, r.stderr)
  local order = {}
  for _, x in ipairs(e:mutations()) do
    local zeroize, deleted = x:match("^(hsm%d) lunash: hsm zeroize"), x:match("^DELETE .*/dedicatedHSMs/(hsm%d)$")
    local what = zeroize and ("zeroize " .. zeroize) or deleted and ("DELETE " .. deleted)
      or (x:match("^DELETE .*/resourceGroups/hsm%-rg$") and "DELETE group")
    if what then order[#order + 1] = what end
  end
  t.eq(order, { "zeroize hsm1", "DELETE hsm1", "zeroize hsm2", "DELETE hsm2", "DELETE group" })
  t.eq({ hsms(e), group_exists(e) }, { {}, false })
  -- the same inventory again: everything is gone, nothing is sent
  local before = e:mutations()
  r = run(e, args)
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("everything is already gone: nothing was changed", 1, true), r.stderr)
  t.eq(e:mutations(), before)
end)

t.test("without an inventory it is refused before anything is journaled", function()
  local state = t.tmpdir()
  local r = t.run("run decommission -e hsm=hsm1 -e backups_confirmed=true --yes", { state = state, env = "env -u DHSM_INVENTORY" })
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("decommission needs an inventory (-i FILE or $DHSM_INVENTORY) for the appliances to zeroize",
    1, true), r.stderr)
  t.eq(require("dhsm.sys").readdir(state .. "/dhsm/runs") or {}, {}, "no journal")
end)

t.test("refused without confirmed backups before anything is destroyed; each hint typed back in as it reads",
  function()
  local e = estate()
  local r = run(e, so(e, "hsm1") .. " -e hsm=hsm1 --yes")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("BackupsNotConfirmed", 1, true) or r.stderr:find("back them up", 1, true), r.stderr)
  t.eq({ count(e:mutations(), "zeroize"), zeroized(e, "hsm1") }, { 0, false }, "nothing destroyed")
  -- no resume hint (a resume would meet the same refusal): the runner's line is a new run, typed as it reads
  local refused = r.stderr
  t.ok(not refused:find("--resume", 1, true), refused)
  local new_run = r.stderr:match("resuming it would meet the same refusal: start a new run: dhsm ([^\n]+)")
  t.ok(new_run and new_run:find("-e backups_confirmed=true", 1, true), r.stderr)
  r = t.run(new_run, { state = e.dir .. "/state", env = "env -u DHSM_INVENTORY" })
  t.eq(r.status, 0, r.stderr)
  t.eq({ zeroized(e, "hsm1"), hsms(e).hsm1 }, { true, nil })
  -- the refusal's own words say the same: "run again with -e backups_confirmed=true"; the group kept, as it says
  local again = refused:match("run again with (%-e backups_confirmed=true)")
  t.ok(again, refused)
  local keep = r.stderr:match("resource group hsm%-rg kept %((%-e delete_group=true) deletes it once it holds no HSM%)")
  t.ok(keep, r.stderr)
  t.eq(group_exists(e), true)
  -- that one too: hsm2 still in the group, so it is refused; given back with it, the group goes
  -- (hsm1 has left the estate's inventory with its resource: only hsm2 is named)
  r = run(e, so(e, "hsm2") .. " -e hsm=hsm2 --yes " .. again .. " " .. keep)
  t.eq(r.status, 0, r.stderr)
  t.eq({ hsms(e), group_exists(e) }, { {}, false })
end)

t.test("method=failed-logins: wrong SO logins through the guard's override until zeroized, then the delete", function()
  local e = estate()
  local r = run(e, "-e hsm=hsm1,hsm2 -e method=failed-logins -e backups_confirmed=true -e delete_group=true --yes")
  t.eq(r.status, 0, r.stderr)
  local m = e:mutations()
  t.eq({ count(m, "^hsm1 lunash: hsm login"), count(m, "^hsm2 lunash: hsm login") }, { 3, 3 }, "the SO threshold, no more")
  t.eq(count(m, "hsm zeroize"), 0, "no zeroize command: the failures did it")
  local order = {}                     -- one HSM at a time, each zeroized before its DELETE, the group last
  for _, x in ipairs(m) do
    local login, deleted = x:match("^(hsm%d) lunash: hsm login"), x:match("^DELETE .*/dedicatedHSMs/(hsm%d)$")
    local what = login and ("logins " .. login) or deleted and ("DELETE " .. deleted)
      or (x:match("^DELETE .*/resourceGroups/hsm%-rg$") and "DELETE group")
    if what and order[#order] ~= what then order[#order + 1] = what end
  end
  t.eq(order, { "logins hsm1", "DELETE hsm1", "logins hsm2", "DELETE hsm2", "DELETE group" })
  t.eq({ hsms(e), group_exists(e) }, { {}, false })
  local overrides = 0
  for _, rec in ipairs(t.audit_records(e.dir .. "/state/audit.jsonl")) do
    if rec.action == "safety.override" and rec.outcome == "zeroize_by_failed_logins" then overrides = overrides + 1 end
  end
  t.eq(overrides, 2, "one audited override per HSM")
end)

t.test("the guard's zeroization refuses an appliance that is not the one named, and one not asked for", function()
  local e = estate()
  local luna = require "dhsm.luna"
  local s <close> = luna.open(e.inventory:hsm("hsm1"))
  local serial = s:hsm_show().serial
  local err = t.raises(function() s:zeroize_by_failed_logins(serial .. "0", { zeroize = true }) end, "SerialMismatch")
  t.ok(err.message:find("not " .. serial .. "0", 1, true), err.message)
  t.raises(function() s:zeroize_by_failed_logins(serial, {}) end, "ZeroizeNotAsked")
  t.eq(e:mutations(), {}, "no login reached the appliance")
  t.eq(zeroized(e, "hsm1"), false)
end)

t.test("a zeroize that fails (wrong SO password) stops the run, no DELETE; the hint names the reference to correct first",
  function()
  local e = estate()
  -- the operator's reference, holding the wrong password (hsm2's) at first
  local pw = t.tmpdir() .. "/so_password"
  local wrong = util.read_file(e.dir .. "/secrets/hsm2_so_password")
  t.write(pw, wrong, tonumber("600", 8))
  local r = run(e, "-e hsm=hsm1 -e so_password=file:" .. q(pw) .. " -e backups_confirmed=true --yes")
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find("HSM SO login failed", 1, true), r.stderr)
  t.eq(count(e:mutations(), "^DELETE"), 0, "no DELETE reached ARM")
  t.eq({ hsms(e).hsm1, zeroized(e, "hsm1") }, { "Succeeded", false })
  -- the way on: correct the value behind the reference first (named, the value never shown), then the resume
  local first = r.stderr:match("correct (the value behind so_password's reference %b()) first")
  t.eq(first, "the value behind so_password's reference (file:" .. pw .. ")", r.stderr)
  t.ok(not r.stderr:find((wrong:gsub("%s+$", "")), 1, true), "the value is never shown")
  local hint = r.stderr:match("then 'dhsm (run decommission %-%-resume %S+ %-%-yes)' continues it")
  t.ok(hint, r.stderr)
  -- done as it says: the right password behind the same reference, the hint typed as printed
  t.write(pw, util.read_file(e.dir .. "/secrets/hsm1_so_password"), tonumber("600", 8))
  r = t.run(hint, { state = e.dir .. "/state", env = "env -u DHSM_INVENTORY" })
  t.eq(r.status, 0, r.stderr)
  t.eq({ count(e:mutations(), "^hsm1 lunash: hsm login"), count(e:mutations(), "hsm zeroize"), count(e:mutations(), "^DELETE") },
    { 2, 1, 1 }, "one wrong SO login, one right; one DELETE")
  t.eq(hsms(e), { hsm2 = "Succeeded" })
end)

t.test("a wrong HSM SO password typed at the prompt: the hint says to type the right one when the resume asks",
  function()
  local e = estate()
  local state = e.dir .. "/state"
  -- dhsm on a terminal of its own (script), the password typed once its question is on the screen
  local function at_terminal(args, password)
    local screen = t.tmpdir() .. "/screen"
    local line = ("XDG_STATE_HOME=%s DHSM_AUDIT=%s/audit.jsonl %s"):format(q(state), q(state), t.cmd(args))
    local r = t.sh(("(for i in $(seq 400); do grep -q 'so_password: ' %s 2>/dev/null && break; sleep 0.05; done; "
      .. "printf '%%s\\n' %s) | script -qefc %s %s"):format(q(screen), q(password), q(line), q(screen)))
    return r.status, util.read_file(screen) or ""
  end
  local function so_of(name) return util.trim(util.read_file(e.dir .. "/secrets/" .. name .. "_so_password")) end
  local status, screen = at_terminal("-i " .. q(e.dir .. "/inventory.json") .. " run decommission -e poll_interval=0.02 "
    .. "-e hsm=hsm1 -e so_password=prompt -e backups_confirmed=true --yes", so_of("hsm2"))
  t.eq(status, 1, screen)
  t.ok(screen:find("HSM SO login failed", 1, true), screen)
  t.ok(not screen:find("correct the value behind", 1, true), "nothing behind a prompt to correct\n" .. screen)
  local hint = screen:match("'dhsm (run decommission %-%-resume %S+ %-%-yes)' continues it, with its own parameters and "
    .. "inventory: type the right HSM SO password when the resume asks for so_password")
  t.ok(hint, screen)
  t.eq(count(e:mutations(), "^DELETE"), 0, "no DELETE reached ARM")
  -- done as it says: the hint typed as printed, the right password when asked
  status, screen = at_terminal(hint, so_of("hsm1"))
  t.eq(status, 0, screen)
  t.eq({ count(e:mutations(), "^hsm1 lunash: hsm login"), count(e:mutations(), "hsm zeroize"), count(e:mutations(), "^DELETE") },
    { 2, 1, 1 }, "one wrong SO login, one right; one DELETE")
end, { timeout = 120 })

t.test("group deletion refused while another HSM remains: for real and in --check", function()
  local e = estate()
  local before = e:world()
  local r = run(e, "-e hsm=hsm1 " .. so(e, "hsm1") .. " -e backups_confirmed=true -e delete_group=true --check")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("not deleting resource group hsm-rg: it still holds dedicated HSM hsm2", 1, true), r.stderr)
  t.ok(not r.stderr:find("would DELETE /subscriptions/[^ ]+/resourceGroups/hsm%-rg\n"), "no plan to delete the group")
  t.ok(r.stderr:find("check mode: %d+ changes described, 1 refused, 1 step refused"), "the closing line says so: " .. r.stderr)
  t.eq(e:world(), before, "the plan changed nothing")
  t.eq(e:mutations(), {})
  r = run(e, "-e hsm=hsm1 " .. so(e, "hsm1") .. " -e backups_confirmed=true -e delete_group=true --yes")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("it still holds dedicated HSM hsm2", 1, true), r.stderr)
  t.eq({ hsms(e), group_exists(e) }, { { hsm2 = "Succeeded" }, true })
  t.eq(count(e:mutations(), "^DELETE"), 1, "the HSM's DELETE only")
end)

t.test("--check of a whole decommission: every mutation described, the estate and its log unchanged", function()
  local e = estate()
  local before, log_before = e:world(), e:mutations()
  local r = run(e, "-e hsm=hsm1,hsm2 -e method=failed-logins -e backups_confirmed=true -e delete_group=true --check --json")
  t.eq(r.status, 0, r.stderr)
  t.eq(e:world(), before)
  t.eq(e:mutations(), log_before)
  t.ok(r.stderr:find("would DELETE /subscriptions/[^ ]+/dedicatedHSMs/hsm2"), r.stderr)
  t.ok(r.stderr:find("would send 3 wrong HSM SO login(s) to hsm1", 1, true), r.stderr)
  t.ok(r.stderr:find("would DELETE /subscriptions/[^ ]+/resourceGroups/hsm%-rg"), r.stderr)
  local doc = cjson.decode(r.stdout)
  t.eq(doc.outcome, "planned")
  -- the plan lists each described change once, in the guide's order; the count agrees with the gate's
  local changes, seen = {}, {}
  for _, step in ipairs(doc.steps) do
    for _, line in ipairs(step.plan or {}) do
      if line:match("^DELETE ") or line:match("^send %d") then
        t.eq(seen[line], nil, "described once: " .. line)
        seen[line] = true
        changes[#changes + 1] = line:match("^(%S+ %S+)")
      end
    end
  end
  t.eq(#changes, 5, table.concat(changes, "; "))
  t.ok(changes[1]:find("^send") and changes[2]:find("^DELETE") and changes[5]:find("^DELETE"), table.concat(changes, "; "))
  t.eq({ doc.described, doc.refused }, { 5, 0 })
end)

t.test("idempotent: a re-run when everything is gone says so, and how it knows, and sends nothing", function()
  local e = estate()
  local kept = t.tmpdir() .. "/inventory.json"       -- the operator's copy, which keeps the HSMs given back
  t.write(kept, util.read_file(e.dir .. "/inventory.json"))
  local args = "-e hsm=hsm1,hsm2 -e method=failed-logins -e backups_confirmed=true -e delete_group=true --yes"
  local first = run(e, args)
  t.eq(first.status, 0, first.stderr)
  local id = first.stderr:match("run (%d+T%d+%-%x+)")
  local before = e:mutations()
  local r = run(e, "-i " .. q(kept) .. " " .. args)
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("everything is already gone: nothing was changed", 1, true), r.stderr)
  t.ok(r.stderr:find("hsm1: HSM resource hsm1 in hsm-rg is already deleted: ARM answers 404 for it, and the audit "
    .. "log (" .. e.dir .. "/state/audit.jsonl) has its DELETE, accepted (202) at ", 1, true), r.stderr)
  t.ok(r.stderr:find("by run " .. id, 1, true), "the run that deleted it is named\n" .. r.stderr)
  -- the time printed is the audit record's own
  local deleted = t.audit_records(e.dir .. "/state/audit.jsonl")
  local when
  for _, rec in ipairs(deleted) do
    if tostring(rec.action):lower() == "azure.delete" and tostring(rec.target):match("/dedicatedHSMs/hsm1$")
      and tostring(rec.outcome) == "202" and rec.run == id then
      when = rec.ts
    end
  end
  t.ok(when and r.stderr:find(("accepted (202) at %s by run %s"):format(when, id), 1, true), tostring(when) .. "\n" .. r.stderr)
  t.eq(e:mutations(), before, "no zeroize, no login, no DELETE")
  -- the estate's own inventory dropped them: the names are not the inventory's any more
  r = run(e, args)
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find('hsm[1]: no HSM "hsm1" in the inventory (known: none)', 1, true), r.stderr)
  t.eq(e:mutations(), before)
end)

t.test("a name the inventory does not have is bad input with did-you-mean, before anything is journaled or sent", function()
  local e = estate()
  local state = t.tmpdir()
  local before = e:mutations()
  local r = e:run("run decommission -e hsm=hsm-1 -e backups_confirmed=true --yes", { state = state })
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find([[hsm[1]: no HSM "hsm-1" in the inventory (did you mean 'hsm1'?) (known: hsm1, hsm2)]], 1, true),
    r.stderr)
  t.ok(not r.stderr:find("already deleted", 1, true), r.stderr)
  t.eq(require("dhsm.sys").readdir(state .. "/dhsm/runs") or {}, {}, "nothing journaled")
  t.eq(e:mutations(), before, "nothing sent")
  t.eq(hsms(e), { hsm1 = "Succeeded", hsm2 = "Succeeded" })
  -- and a resource deleted from elsewhere: ARM's 404 is how the run knows
  local c = e:azure()
  local kept = t.tmpdir() .. "/inventory.json"
  t.write(kept, util.read_file(e.dir .. "/inventory.json"))
  e:appliance("hsm2", "zeroize")
  c:delete(require("dhsm.azure.hsm").path(c, "hsm2"), { allow_unzeroized = true })
  t.eventually(function() return hsms(e).hsm2 == nil end, "hsm2 gone")
  r = e:run("-i " .. q(kept) .. " run decommission -e hsm=hsm2 -e method=failed-logins --yes", { state = state })
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("hsm2: HSM resource hsm2 in hsm-rg is already deleted: ARM answers 404 for it; the audit log (" ..
    state .. "/audit.jsonl) has no DELETE of it: it was deleted from elsewhere", 1, true), r.stderr)
end)

t.test("a resource group that does not exist is refused as bad input, never 'already deleted': -e, inventory, --check",
  function()
  local e = estate()
  local state = e.dir .. "/state"
  local base = "-e hsm=hsm1 " .. so(e, "hsm1") .. " -e backups_confirmed=true"
  -- -e group misspelled: for real, then in --check
  local printed
  for _, mode in ipairs { "--yes", "--check" } do
    local r = run(e, base .. " -e group=hsm-rgx " .. mode)
    t.eq(r.status, 2, r.stderr)
    t.ok(r.stderr:find("resource group hsm-rgx does not exist in subscription", 1, true), r.stderr)
    t.ok(r.stderr:find("ResourceGroupNotFound", 1, true) and r.stderr:find("the name came from -e group", 1, true), r.stderr)
    t.ok(not r.stderr:find("already deleted", 1, true) and not r.stderr:find("already gone", 1, true), r.stderr)
    t.ok(not r.stderr:find("--resume", 1, true), "no resume hint: the same parameters meet the same refusal\n" .. r.stderr)
    -- the playbook's refusal of the operator's input: said so, with the new run's command to correct
    printed = printed or r.stderr:match("resuming it would meet the same bad input %(group, see below%): correct it, "
      .. "then run again %(a new run%): dhsm ([^\n]+)")
  end
  t.ok(printed and printed:find("group=hsm-rgx", 1, true), "the new run's command, its group to correct")
  -- the inventory's azure.resource_group misspelled: named with its file
  local inv = cjson.decode(util.read_file(e.dir .. "/inventory.json"))
  inv.azure.resource_group = "hsm-rgx"
  local bad = t.tmpdir() .. "/inventory.json"
  t.write(bad, cjson.encode(inv))
  local r = run(e, "-i " .. q(bad) .. " " .. base .. " --yes")
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("the name came from the inventory's azure.resource_group (" .. bad .. ")", 1, true), r.stderr)
  -- nothing reached the estate, and the HSM is there as it was
  t.eq(e:mutations(), {}, "nothing sent")
  t.eq({ hsms(e).hsm1, zeroized(e, "hsm1") }, { "Succeeded", false })
  -- the refusal's advice, typed: the printed command with the right group, and the run gives hsm1 back
  r = t.run((printed:gsub("group=hsm%-rgx", "group=" .. GROUP)), { state = e.dir .. "/state", env = "env -u DHSM_INVENTORY" })
  t.eq(r.status, 0, r.stderr)
  t.eq({ hsms(e).hsm1, count(e:mutations(), "^DELETE") }, { nil, 1 })
end)

t.test("a playbook run by path is journaled with its path: the resume hint and --resume work", function()
  local e = estate()
  local dir = t.tmpdir()
  t.sh(("cp %s %s/decommission.lua"):format(q(t.here() .. "/../../playbooks/decommission.lua"), q(dir)))
  local path = dir .. "/decommission.lua"
  -- the SO password by a reference of the operator's, holding the wrong one (hsm2's) at first
  local pw = dir .. "/so_password"
  t.write(pw, util.read_file(e.dir .. "/secrets/hsm2_so_password"), tonumber("600", 8))
  local args = "-e hsm=hsm1 -e so_password=file:" .. q(pw) .. " -e backups_confirmed=true"
  local r = run(e, args .. " --yes", q(path))             -- the wrong password: fails at the zeroize
  t.eq(r.status, 1, r.stderr)
  local hint = r.stderr:match("'dhsm (run .- %-%-resume %S+ %-%-yes)' continues it")
  t.ok(hint and hint:find(path, 1, true), r.stderr)
  local id = hint:match("%-%-resume (%S+)")
  t.eq(cjson.decode(util.read_file(e.dir .. "/state/dhsm/runs/" .. id .. ".json")).path, path)
  r = run(e, "--yes --resume " .. id, "decommission")
  t.eq(r.status, 2, "the built-in playbook is not the file the run used")
  t.ok(r.stderr:find("resume it with 'dhsm run " .. path .. " --resume " .. id .. "'", 1, true), r.stderr)
  -- the right password behind the same reference, read again: the hint as printed
  t.write(pw, util.read_file(e.dir .. "/secrets/hsm1_so_password"), tonumber("600", 8))
  r = t.run(hint, { state = e.dir .. "/state", env = "env -u DHSM_INVENTORY" })
  t.eq(r.status, 0, r.stderr)
  t.eq({ hsms(e).hsm1, count(e:mutations(), "hsm zeroize"), count(e:mutations(), "^DELETE") }, { nil, 1, 1 })
end)

t.test("after two wrong HSM SO passwords each remedy printed is typed where it is shown, and works", function()
  local e = estate()
  for _, name in ipairs { "hsm1", "hsm2" } do
    local s = e:luna_session(name)
    for i = 1, 2 do t.raises(function() s:login_so(dhsm.secret.value("wrong" .. i)) end, "LUNA_RET_UM_PIN_INCORRECT") end
  end
  -- decommission: the guard's count and decommission's own way on, a new run with -e method=failed-logins
  local r = run(e, so(e, "hsm1") .. " -e hsm=hsm1 -e backups_confirmed=true --yes")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("1 attempt is left of 3, and one more failure and the HSM is zeroized", 1, true), r.stderr)
  t.ok(r.stderr:find("run decommission with -e method=failed-logins", 1, true), r.stderr)
  t.ok(not r.stderr:find("allow_destructive_login", 1, true) and not r.stderr:find("--resume", 1, true), r.stderr)
  local new_run = r.stderr:match("start a new run: dhsm ([^\n]+)")
  t.ok(new_run and new_run:find("-e method=failed-logins", 1, true), r.stderr)
  r = t.run(new_run, { state = e.dir .. "/state", env = "env -u DHSM_INVENTORY" })
  t.eq(r.status, 0, r.stderr)
  t.eq({ zeroized(e, "hsm1"), hsms(e).hsm1 }, { true, nil })
  t.eq(count(e:mutations(), "^hsm1 lunash: hsm login"), 3, "one wrong login more: the threshold, never passed")
  -- a runbook: the login call with the option, as the refusal spells it
  local pw = e.dir .. "/secrets/hsm2_so_password"
  local code = 'local s = hsm "hsm2"; local password = secret.file(%q); %s; return s:hsm_show().zeroized'
  r = e:run("exec --json -e " .. q(code:format(pw, "s:login_so(password)")), { state = e.dir .. "/state" })
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("1 attempt is left of 3", 1, true), r.stderr)
  local call = r.stderr:match("allow_destructive_login = true to the login call: (s:login_so%b())")
  t.eq(call, "s:login_so(password, {allow_destructive_login = true})", r.stderr)
  r = e:run("exec --json -e " .. q(code:format(pw, call)), { state = e.dir .. "/state" })
  t.eq({ r.status, r.stdout }, { 0, "false\n" }, r.stderr)
  t.eq(count(e:mutations(), "^hsm2 lunash: hsm login"), 3, "the two wrong ones, then the remedy's, right")
end)
