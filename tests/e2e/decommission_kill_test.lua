-- The kill matrix: `dhsm run decommission` SIGKILLed at each step and at
-- each wait inside a destructive step, then resumed (--resume) until it
-- finishes.  What reached the estate is counted from the estate's own
-- request log (DIR/estate.log: ARM requests and the LunaSH commands the
-- appliance ran): each zeroize and each DELETE at most once, and the
-- sequence finished (HSM resource gone, group gone).  Kills are driven by
-- the run's audit log, never by sleeping; deletes take an hour of sim
-- time, so a run waiting for one stays there until the test advances the
-- estate's clock.
local t = require "dhsm.test"
local cjson = require "cjson"
local proc = require "dhsm.proc"
local util = require "dhsm.util"

local Estate = require "support.estate"

local GROUP = "hsm-rg"
local ZEROIZE = "zeroize hsm1"
local DELETE_HSM = "delete the HSM resource hsm1"
local DELETE_GROUP = "delete resource group " .. GROUP

local function start_estate()
  return Estate.start { args = "--appliances 1", set = { delete_seconds = 3600, retry_after = 0 } }
end

-- A `dhsm run decommission` process on this estate, with its own state folder and audit log.
local function decommission(estate, extra)
  local argv = { t.dhsm, "run", "decommission", "--yes", "-e", "hsm=hsm1", "-e",
    "so_password=file:" .. estate.dir .. "/secrets/hsm1_so_password", "-e", "backups_confirmed=true",
    "-e", "poll_interval=0.05" }
  for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
  return proc.spawn { argv = argv, env = { XDG_STATE_HOME = estate.dir .. "/state",
    DHSM_AUDIT = estate.dir .. "/audit.jsonl", DHSM_INVENTORY = estate.dir .. "/inventory.json" } }
end

local function audit(estate)
  return t.audit_records(estate.dir .. "/audit.jsonl")
end

-- Wait until an audit record after the first `skip` ones matches, then
-- SIGKILL p.  Until the run reaches the step of the kill point, the
-- estate's clock is advanced so the waits of earlier steps end; from then
-- on it stands still, so a wait in that step lasts until the kill.
local function kill_at(estate, p, skip, point)
  local step, match, what = point.step, point.match, point.where
  while true do
    local recs = audit(estate)
    local current
    for i = skip + 1, #recs do
      if match(recs[i]) then
        p:kill(9)
        t.eq(p:wait(30).signal, 9, "killed " .. what)
        return
      end
      if recs[i].action == "step.start" then current = recs[i].step end
    end
    if current and current ~= step then estate:control("POST", "/advance", { idle = true }) end
    local ok, exited = pcall(p.wait, p, 0.01)
    if ok then
      error(("the run ended (status %s) before %s:\n%s"):format(tostring(exited.status), what, p:stderr()), 0)
    end
  end
end

-- Run `fn` while the estate's clock jumps over every pending wait.
local function advancing(estate, fn)
  local ticker = dhsm.spawn(function()
    while true do
      pcall(estate.control, estate, "POST", "/advance", { idle = true })
      dhsm.sleep(0.05)
    end
  end)
  local ok, r = pcall(fn)
  ticker:cancel()
  if not ok then error(r, 0) end
  return r
end

local function run_id(estate)
  for _, f in ipairs(require("dhsm.sys").readdir(estate.dir .. "/state/dhsm/runs") or {}) do
    local id = f:match("^(.+)%.json$")
    if id then return id end
  end
end

-- --resume until the run finishes (a few attempts at most); the exit statuses.
-- The estate's inventory follows its world, as one kept up to date does:
-- once hsm1 is deleted its entry goes, and the operator says that change
-- is intended (--inventory-changed; a resume refuses it otherwise).
local function resume_to_the_end(estate, extra)
  local statuses = {}
  advancing(estate, function()
    for _ = 1, 3 do
      local args = { "--resume", run_id(estate), "--inventory-changed" }
      for _, a in ipairs(extra or {}) do args[#args + 1] = a end
      local p <close> = decommission(estate, args)
      local r = p:wait(45)
      statuses[#statuses + 1] = r.status
      if r.status == 0 then return end
      io.stderr:write(p:stderr())
    end
  end)
  return statuses
end

local group_pattern = GROUP:gsub("%p", "%%%0")

-- What the estate itself saw: {zeroize=n, delete_hsm=n, delete_group=n}
local function sent(estate)
  local n = { zeroize = 0, delete_hsm = 0, delete_group = 0 }
  for line in (util.read_file(estate.dir .. "/estate.log") or ""):gmatch("[^\n]+") do
    if line:find("hsm1 lunash: hsm zeroize", 1, true) then n.zeroize = n.zeroize + 1 end
    if line:find("arm DELETE /subscriptions/[^/]+/resourceGroups/" .. group_pattern
      .. "/providers/Microsoft%.HardwareSecurityModules/dedicatedHSMs/hsm1 ") then
      n.delete_hsm = n.delete_hsm + 1
    end
    if line:find("arm DELETE /subscriptions/[^/]+/resourceGroups/" .. group_pattern .. " ") then
      n.delete_group = n.delete_group + 1
    end
  end
  return n
end

-- The estate's own view: is the HSM resource there, is the group there?
local function remains(estate)
  local state = estate:state()
  local hsm_left, group_left = false, false
  for _, rec in pairs(state.resources or {}) do
    if type(rec) == "table" and rec.type and rec.type:lower():find("dedicatedhsms") and rec.name == "hsm1" then
      hsm_left = true
    end
  end
  for _, g in pairs(state.groups or {}) do
    if type(g) == "table" and g.name == GROUP then group_left = true end
  end
  return { hsm = hsm_left, group = group_left, billed = #state.derived.billed_hsms }
end

-- A kill point: `where` in words, in step `step`, at the first audit record matching.
local function on(where, step, action, outcome)
  return { where = where, step = step, match = function(r)
    return r.step == step and r.action == action and (outcome == nil or r.outcome == outcome)
  end }
end

local function command(where, step, cmd, appliance_faults)
  return { where = where, step = step, appliance_faults = appliance_faults, match = function(r)
    return r.step == step and r.action == "luna.command" and r.command == cmd
  end }
end

local MATRIX = {
  on("at the start of 'show what will be destroyed'", "show what will be destroyed", "step.start"),
  on("at the start of 'require confirmed backups'", "require confirmed backups", "step.start"),
  on("at the start of the zeroize step", ZEROIZE, "step.start"),
  command("in the zeroize step, logged in, the zeroize on its way", ZEROIZE, "hsm login"),
  -- the appliance answers every command 0.3 s late: the kill lands while the zeroize is being
  -- carried out, before its answer (the appliance finishes it; the run never hears)
  command("in the zeroize step, waiting for the zeroize's answer", ZEROIZE, "hsm login", { shell_delay_ms = 300 }),
  command("in the zeroize step, just after the zeroize was answered", ZEROIZE, "hsm zeroize -force"),
  on("at the start of the verification", "verify hsm1 says zeroized", "step.start"),
  on("at the start of the HSM delete step", DELETE_HSM, "step.start"),
  on("in the HSM delete step, the DELETE on its way", DELETE_HSM, "azure.DELETE", "sending"),
  on("in the HSM delete step, waiting for ARM to finish", DELETE_HSM, "azure.DELETE", "202"),
  on("at the start of the group check", "check that " .. GROUP .. " holds no dedicated HSM", "step.start"),
  on("at the start of the group delete step", DELETE_GROUP, "step.start"),
  on("in the group delete step, the DELETE on its way", DELETE_GROUP, "azure.DELETE", "sending"),
  on("in the group delete step, waiting for ARM to finish", DELETE_GROUP, "azure.DELETE", "202"),
}

for _, point in ipairs(MATRIX) do
  t.test("killed " .. point.where .. ": resumed, nothing sent twice, the sequence finishes", function()
    local estate = start_estate()
    if point.appliance_faults then estate:appliance("hsm1", point.appliance_faults) end
    local p <close> = decommission(estate, { "-e", "delete_group=true" })
    kill_at(estate, p, 0, point)
    local statuses = resume_to_the_end(estate, { "-e", "delete_group=true" })
    t.eq(statuses[#statuses], 0, "the last resume finished: " .. table.concat(statuses, ","))
    t.eq(sent(estate), { zeroize = 1, delete_hsm = 1, delete_group = 1 })
    t.eq(remains(estate), { hsm = false, group = false, billed = 0 })
    t.eq(cjson.decode(util.read_file(estate.dir .. "/state/dhsm/runs/" .. run_id(estate) .. ".json")).state, "ok")
  end, { timeout = 60 })
end

t.test("two concurrent --resume of one run: exactly one runs, the other is refused with its pid", function()
  local estate = start_estate()
  local first <close> = decommission(estate)
  kill_at(estate, first, 0, on("waiting for the HSM delete", DELETE_HSM, "azure.DELETE", "202"))
  local id = run_id(estate)
  local skip = #audit(estate)
  local a <close> = decommission(estate, { "--resume", id })
  -- a holds the run once its run.start is written; it then waits for ARM (the clock is not advanced yet)
  while true do
    local started
    local recs = audit(estate)
    for i = skip + 1, #recs do started = started or (recs[i].action == "run.start" and recs[i].resumed) end
    if started then break end
    dhsm.sleep(0.01)
  end
  local b <close> = decommission(estate, { "--resume", id })
  t.eq(b:wait(30).status, 3, b:stderr())
  t.ok(b:stderr():find(("run %s is being run right now by another dhsm (pid %d)"):format(id, a:pid()), 1, true),
    b:stderr())
  t.eq(advancing(estate, function() return a:wait(45).status end), 0, a:stderr())
  local starts = 0
  for _, r in ipairs(audit(estate)) do if r.action == "run.start" then starts = starts + 1 end end
  t.eq(starts, 2, "the first attempt and one resume")
  t.eq(sent(estate), { zeroize = 1, delete_hsm = 1, delete_group = 0 })
  t.eq(remains(estate), { hsm = false, group = true, billed = 0 }, "without delete_group the group stays")
end, { timeout = 60 })

t.test("method=failed-logins killed after a wrong login: resumed, the HSM SO threshold is reached, never passed", function()
  local estate = start_estate()
  local extra = { "-e", "method=failed-logins" }
  local p <close> = decommission(estate, extra)
  kill_at(estate, p, 0, on("after the first wrong HSM SO login", ZEROIZE, "login.so", "failed"))
  local statuses = resume_to_the_end(estate, extra)
  t.eq(statuses[#statuses], 0, "the last resume finished: " .. table.concat(statuses, ","))
  -- A login whose client was killed before it gave the password is no
  -- attempt: the appliance counts none, and its log says "cancelled".
  local logins = 0
  for line in (util.read_file(estate.dir .. "/estate.log") or ""):gmatch("[^\n]+") do
    if line:find("hsm1 lunash: hsm login", 1, true) and not line:find("(cancelled", 1, true) then
      logins = logins + 1
    end
  end
  t.eq(logins, 3, "three wrong logins in all: the kill lost none and the resume added none")
  t.eq(sent(estate), { zeroize = 0, delete_hsm = 1, delete_group = 0 })
  t.eq(remains(estate), { hsm = false, group = true, billed = 0 })
end, { timeout = 60 })

t.test("interrupted while ARM deletes: the printed hint, typed as it reads (no parameters, no inventory), finishes",
  function()
  local estate = start_estate()
  local p <close> = decommission(estate, { "-e", "delete_group=true" })
  local point = on("waiting for the HSM delete", DELETE_HSM, "azure.DELETE", "202")
  t.eventually(function()
    for _, r in ipairs(audit(estate)) do if point.match(r) then return true end end
  end, "the run waits for ARM's DELETE", 30)
  p:kill(2)                                                      -- Ctrl-C
  t.eq(p:wait(30).status, 130, p:stderr())
  local hint = p:stderr():match("'dhsm (run decommission %-%-resume %S+ %-%-yes)' continues it")
  t.ok(hint, p:stderr())
  local argv = { t.dhsm }
  for word in hint:gmatch("%S+") do argv[#argv + 1] = word end
  -- the operator's shell: the run's state folder and audit log, no $DHSM_INVENTORY, no parameters
  local again <close> = proc.spawn { argv = argv, env = { XDG_STATE_HOME = estate.dir .. "/state",
    DHSM_AUDIT = estate.dir .. "/audit.jsonl" } }
  t.eq(advancing(estate, function() return again:wait(45).status end), 0, again:stderr())
  t.eq(sent(estate), { zeroize = 1, delete_hsm = 1, delete_group = 1 })
  t.eq(remains(estate), { hsm = false, group = false, billed = 0 })
end, { timeout = 60 })
