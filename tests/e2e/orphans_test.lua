-- The orphans playbook against the simulated estate: an HSM whose resource
-- group was deleted is still listed (and billed); the playbook finds it,
-- read-only, and prints what the support request needs.
local t = require "dhsm.test"
local cjson = require "cjson"
local util = require "dhsm.util"
local support = require "support.estate"
local hsm = require "dhsm.azure.hsm"
local network = require "dhsm.azure.network"

local e = support.start { set = { hsm_step_seconds = 0, delete_seconds = 0, network_seconds = 0, retry_after = 0 },
  args = "--appliances 0" }

local function run(args)
  return e:run("run orphans " .. args)
end

local function mutations()
  local n = 0
  for line in (util.read_file(e.dir .. "/estate.log") or ""):gmatch("[^\n]+") do
    local m = line:match(" arm (%u+) %S+ %-> ")
    if m and m ~= "GET" and m ~= "HEAD" then n = n + 1 end
  end
  return n
end

t.test("no orphan: says so, changes nothing, ok (exit 0)", function()
  local before = mutations()
  local r = run("--json")
  t.eq(r.status, 0, r.stderr)
  t.eq(cjson.decode(r.stdout).outcome, "ok")
  local doc = cjson.decode(r.stdout)
  t.eq(doc.steps[1].result.orphans, {})
  t.ok(r.stderr:find("no orphaned dedicated HSM", 1, true), r.stderr)
  t.eq(mutations(), before)
end)

t.test("an HSM whose group was deleted is found, with the ids and times for the support request", function()
  local c = e:azure()
  c:put(c:group_path("gone-rg"), { body = { location = "eastus" } })
  hsm.create(c, "hsm-orph", { subnet_id = network.subnet_path(c, "hsm-vnet", "hsm"), stamp = "stamp2" },
    { group = "gone-rg", skip_preflight = true })
  t.raises(function() c:delete(c:group_path("gone-rg")) end, "GroupHoldsHsm")
  e:delete_group_around_dhsm(c, "gone-rg")             -- as the portal would, around dhsm
  local derived = e:state().derived.orphaned_hsms
  t.eq(#derived, 1)
  local before = mutations()
  local r = run("--json")
  t.eq(r.status, 1, "an orphan found is a goal not reached\n" .. r.stderr)
  t.eq(cjson.decode(r.stdout).outcome, "unmet")
  local found = cjson.decode(r.stdout).steps[1].result
  t.eq(#found.orphans, 1)
  local o = found.orphans[1]
  t.eq({ o.id:lower(), o.name, o.group, o.stamp, o.state }, { derived[1]:lower(), "hsm-orph", "gone-rg", "stamp2", "Succeeded" })
  t.ok(o.created_at and o.last_modified_at, "times for the support request")
  t.eq(found.subscription, e.inventory.azure.subscription)
  t.ok(found.advice:find("support request", 1, true))
  t.eq(mutations(), before, "read-only")
  r = run("")
  t.ok(r.stderr:find("hsm-orph: resource id " .. o.id, 1, true), r.stderr)
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find(": goal not reached: found 1 orphaned HSM, still billed: a support request removes them (", 1,
    true), "the outcome line says what was found\n" .. r.stderr)
end)
