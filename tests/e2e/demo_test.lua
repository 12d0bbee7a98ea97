-- make demo (tools/demo.sh) end to end, and interrupted with SIGINT half-way
-- as Ctrl-C would.  Each chapter is checked from the estate's own request
-- log (DIR/estate.log: ARM requests, LunaSH commands, the client tools'
-- commands) and its saved state (DIR/state.json, DIR/client), never from
-- what the demo printed; and the estate must be stopped afterwards, with no
-- process of the demo left behind.
local t = require "dhsm.test"
local cjson = require "cjson"
local chrystoki = require "dhsm.chrystoki"
local proc = require "dhsm.proc"
local util = require "dhsm.util"
local log_entries = require("support.estate").log_of

local DEMO = t.here() .. "/../../tools/demo.sh"

local function spawn_demo(dir)
  return proc.spawn { argv = { "/bin/sh", DEMO, t.dhsm }, env = { DHSM_DEMO_DIR = dir } }
end

-- Everything the demo printed, read until it ends (for failure messages).
local function finish(p, timeout)
  local out = {}
  local deadline = dhsm.now() + timeout
  while dhsm.now() < deadline do
    local chunk = p:read(1)
    if chunk == nil then break end
    out[#out + 1] = chunk
  end
  return p:wait(30), table.concat(out) .. p:stderr()
end

-- positions of the entries matching a Lua pattern
local function where(entries, pattern)
  local found = {}
  for i, e in ipairs(entries) do
    if e:find(pattern) then found[#found + 1] = i end
  end
  return found
end

local HSM_PATH = "/providers/Microsoft%.HardwareSecurityModules/dedicatedHSMs/"

-- The daemon (estate.json's pid) is gone and no process names the estate's folder.
local function assert_stopped(dir)
  local info = cjson.decode(util.read_file(dir .. "/estate.json"))
  local stat = util.read_file("/proc/" .. info.pid .. "/stat")
  t.ok(stat == nil or stat:match("%) (%u)") == "Z", "the estate daemon " .. info.pid .. " is gone")
  local r = proc.run { argv = { "pgrep", "-a", "-f", (dir:gsub("[^%w/]", ".")) } }
  t.eq(r.stdout, "", "no process of the demo is left")
  t.ok(where(log_entries(dir), "^stopped$")[1], "the estate logged its stop")
end

t.test("the whole story: every chapter reached the estate, which ends empty and stopped", function()
  local dir = t.tmpdir()
  local exit, output = finish(spawn_demo(dir), 600)
  t.eq(exit.status, 0, output)
  local log = log_entries(dir)
  local function one(pattern, what)
    local at = where(log, pattern)
    t.eq(#at, 1, what .. ": " .. pattern)
    return at[1]
  end

  one("^lunacm: hagroup createGroup %-label demoHA .* %-> No Error$", "the HA group made")
  t.eq(#where(log, "^arm PUT /subscriptions/%S+" .. HSM_PATH .. "hsm3 %->"), 2,
    "provision: hsm3 PUT, hit by the gateway race, then PUT again")
  local discovered = where(log, "^arm GET /subscriptions/[^/]+/resourceGroups/hsm%-rg/providers/"
    .. "Microsoft%.HardwareSecurityModules/dedicatedHSMs %-> 200")
  t.ok(#discovered >= 2, "discover and discover --merge list the group's HSMs")
  local init = one("^hsm3 lunash: hsm init %-label hsm3 %-> 0$", "initialize: hsm init on hsm3")
  one("^hsm3 lunash: partition create %-force %-partition par1 %-> 0$", "initialize: partition par1 on hsm3")
  local members = where(log, "^lunacm: hagroup addMember %-group demoHA .* %-> No Error$")
  t.eq(#members, 2, "hsm2 joins demoHA as the story starts, hsm3 through initialize")
  local member = members[2]
  local syncs = where(log, "^lunacm: hagroup synchronize %-group demoHA.* %-> No Error$")
  t.eq(#syncs, 2, "initialize clones the group's keys to hsm3, ha-recover the key hsm2 missed")
  t.ok(discovered[1] < init and init < member and member < syncs[1], "discover, initialize, its synchronize in order")
  t.ok(output:find("app-key-0 on hsm3's partition: there (cloned by the synchronize)", 1, true), "the key is on hsm3")
  local regen = one("^hsm1 lunash: sysconf regenCert %-force %-> 0$", "hsm1 regenerates its certificate")
  one("^hsm1 lunash: service restart ntls %-> 0$", "and restarts NTLS")
  local adds = where(log, "^vtl: addServer %-cert %S+ %-name 127%.0%.0%.1 %-port %d+ %-> 0$")
  t.eq(#adds, 2, "initialize adds hsm3's server certificate, ntls-reexchange re-adds hsm1's")
  local add = adds[2]
  one("^vtl: deleteServer %-name 127%.0%.0%.1 %-port %d+ %-> 0$", "after deleting the stale one")
  local recover = one("^lunacm: hagroup recover %-group demoHA %-> No Error$", "ha-recover recovers hsm2")
  one("^lunacm: hagroup retry %-count %-1 %-> No Error$", "initialize sets the retry count")
  local sync = syncs[2]
  local deletes = {}
  for _, name in ipairs { "hsm1", "hsm2", "hsm3" } do
    deletes[#deletes + 1] = one("^arm DELETE /subscriptions/%S+" .. HSM_PATH .. name .. " %-> 202", "delete " .. name)
  end
  for _, name in ipairs { "hsm1", "hsm2", "hsm3" } do
    one("^" .. name .. " lunash: hsm zeroize %-force %-> 0$", "zeroize " .. name)
  end
  local group = one("^arm DELETE /subscriptions/[^/]+/resource[Gg]roups/hsm%-rg %-> 202", "delete the group")
  t.ok(syncs[1] < regen and regen < add and add < recover and recover < sync and sync < deletes[1]
    and deletes[3] < group, "the chapters in the story's order")

  local cfg = chrystoki.load(dir .. "/client/Chrystoki.conf"):ha_config()
  t.eq(cfg.reconnAtt, -1, "Chrystoki.conf keeps the auto-recovery initialize set")
  local world = cjson.decode(util.read_file(dir .. "/state.json"))
  t.eq({ world.resources, world.groups }, { {}, {} }, "no resource and no group left")
  local status = {}
  for name, a in pairs(world.appliances) do status[name] = a.status end
  t.eq(status, { hsm1 = "pool", hsm2 = "pool", hsm3 = "pool" }, "every appliance back in the pool")
  assert_stopped(dir)
end, { timeout = 900 })

t.test("Ctrl-C half-way (SIGINT to the demo's process group): the estate is stopped, nothing is left", function()
  local dir = t.tmpdir()
  local p = spawn_demo(dir)
  t.eventually(function()
    local ok, exited = pcall(p.wait, p, 0)
    if ok then error("the demo ended (status " .. tostring(exited.status) .. ") before the kill point\n" .. p:stderr(), 0) end
    return where(log_entries(dir), "^hsm1 lunash: sysconf regenCert")[1]
  end, "at chapter 6 (hsm1's regenCert in estate.log)", 600)
  p:kill(2)
  local exit, output = finish(p, 120)
  t.eq(exit.status, 130, output)
  t.eq(#where(log_entries(dir), "^arm DELETE "), 0, "the story stopped: nothing was deleted")
  assert_stopped(dir)
end, { timeout = 900 })
