-- A playbook run SIGKILLed at a point of its own audit log, then resumed
-- (--resume ID) until it finishes: the kill/resume tests of the playbooks.
-- Kills are driven by the audit log, never by sleeping.
--
--   local killrun = require "support.killrun"
--   local p <close> = killrun.spawn(estate, "ha-recover", { "-e", "co_password=file:..." })
--   killrun.kill_at(estate, p, killrun.after_command("hagroup retry"))
--   local statuses = killrun.resume(estate, "ha-recover", { ... })
local t = require "dhsm.test"
local proc = require "dhsm.proc"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

-- `dhsm run PLAYBOOK ARGS...` on the estate's inventory, with the estate's
-- own state folder (journal, runs) and audit log
function M.spawn(estate, playbook, args)
  local argv = { t.dhsm, "run", playbook }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  return proc.spawn { argv = argv, env = { XDG_STATE_HOME = estate.dir .. "/state",
    DHSM_AUDIT = estate.dir .. "/audit.jsonl", DHSM_INVENTORY = estate.dir .. "/inventory.json" } }
end

function M.audit(estate)
  return t.audit_records(estate.dir .. "/audit.jsonl")
end

-- A kill point at the start of the step whose title contains `step`.
function M.at_step(step)
  return { where = "at the start of '" .. step .. "'", match = function(r)
    return r.action == "step.start" and r.step:find(step, 1, true) ~= nil
  end }
end

-- A kill point once a command containing `cmd` (LunaSH, or a local tool
-- run through dhsm.proc) was answered; `sending`: once it is on its way.
function M.after_command(cmd, sending)
  return { where = (sending and "with '%s' on its way" or "just after '%s' was answered"):format(cmd),
    match = function(r)
      if (r.action ~= "luna.command" and r.action ~= "proc.run") or not (r.command or ""):find(cmd, 1, true) then
        return false
      end
      return (r.outcome == "sending") == (sending == true)
    end }
end

-- The processes pid started that still run (its tools: vtl, lunacm).
local function children(pid)
  local out = {}
  for child in (util.read_file(("/proc/%d/task/%d/children"):format(pid, pid)) or ""):gmatch("%d+") do
    out[#out + 1] = child
  end
  return out
end

local function running(pid)
  local stat = util.read_file("/proc/" .. pid .. "/stat")
  return stat ~= nil and stat:match("%) (%u)") ~= "Z"
end

-- SIGKILL p at the first audit record the point matches (or SIGINT, as
-- Ctrl-C: signal 2, and the run ends interrupted, exit 130).  A tool it had
-- started runs on (it leads its own process group) and finishes what it
-- was asked: the resume starts once it has, as an operator's would.
function M.kill_at(estate, p, point, signal)
  while true do
    for _, r in ipairs(M.audit(estate)) do
      if point.match(r) then
        local tools = children(p:pid())
        p:kill(signal or 9)
        local exited = p:wait(30)
        if signal == 2 then
          t.eq(exited.status, 130, "interrupted " .. point.where)
        else
          t.eq(exited.signal, 9, "killed " .. point.where)
        end
        for _, pid in ipairs(tools) do
          t.eventually(function() return not running(pid) end, "the killed run's tool " .. pid .. " finished", 120)
        end
        return
      end
    end
    local ok, exited = pcall(p.wait, p, 0.01)
    if ok then
      error(("the run ended (status %s) before %s:\n%s"):format(tostring(exited.status), point.where, p:stderr()), 0)
    end
  end
end

-- The id of the (only) run in the estate's state folder.
function M.run_id(estate)
  for _, f in ipairs(sys.readdir(estate.dir .. "/state/dhsm/runs") or {}) do
    local id = f:match("^(.+)%.json$")
    if id then return id end
  end
end

-- --resume until the run finishes (3 attempts at most) -> the exit statuses
function M.resume(estate, playbook, args)
  local statuses = {}
  for _ = 1, 3 do
    local all = { "--resume", M.run_id(estate) }
    for _, a in ipairs(args or {}) do all[#all + 1] = a end
    local p <close> = M.spawn(estate, playbook, all)
    local r = p:wait(120)
    statuses[#statuses + 1] = r.status
    if r.status == 0 then break end
    io.stderr:write(p:stderr())
  end
  return statuses
end

-- typed(estate, stderr) -> {status=, stderr=}: the resume hint a run
-- printed ('dhsm run NAME --resume ID ...' continues it), run as it reads
-- in the operator's shell: the run's state folder and audit log, no
-- $DHSM_INVENTORY, nothing added.
function M.typed(estate, stderr)
  local hint = stderr:match("'dhsm (run %S+ %-%-resume [^']+)' continues it")
  t.ok(hint, "a resume hint: " .. stderr)
  local argv = { t.dhsm }
  for word in hint:gmatch("%S+") do argv[#argv + 1] = word end
  local p <close> = proc.spawn { argv = argv, env = { XDG_STATE_HOME = estate.dir .. "/state",
    DHSM_AUDIT = estate.dir .. "/audit.jsonl" } }
  local r = p:wait(120)
  return { status = r.status, stderr = p:stderr() }
end

-- The run's final state as its record says ("ok", "failed", ...).
function M.run_state(estate)
  return require("cjson").decode(util.read_file(estate.dir .. "/state/dhsm/runs/" .. M.run_id(estate) .. ".json")).state
end

return M
