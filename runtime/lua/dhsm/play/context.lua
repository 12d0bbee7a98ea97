-- dhsm.play.context: what a playbook's run(ctx, params) works with.
--
--   ctx:step(title, [{destructive=, target=, done=}], fn)   a named step (journaled, confirmed,
--                                  resumable: see dhsm.play)
--   ctx:progress(msg); ctx:note(msg); ctx:would(what)
--   ctx:unmet(reason)              the run ends without reaching its goal (exit 1), for reason
--   ctx.params, ctx.inventory, ctx.run_id, ctx.check
--   ctx:azure([options])           the run's ARM client for the inventory's azure section
--   ctx:appliance(name [, opts])   the run's LunaSH session to an inventory HSM
--   ctx:scratch_dir()              a private folder for the run's own files
--
-- What steps share comes from here, not from arguments handed from step
-- to step: the run's client, its sessions and its folder are made when
-- first asked for and closed when the run ends (ctx:release, called by
-- dhsm.play however the run ends: done, failed, refused or interrupted).
local act = require "dhsm.act"
local azure = require "dhsm.azure"
local dhsm = require "dhsm"
local luna = require "dhsm.luna"
local plans = require "dhsm.play.plans"
local secret = require "dhsm.secret"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

local usage = dhsm.usage

-- The key that lets this runner, and nothing else, say a confirmed step
-- covers its target (dhsm.act): taken when this module is loaded, which
-- dhsm.cli does before any code of the user's runs.
local RUNNER_KEY = act.runner_key()

---------------------------------------------------------------------------
-- steps

local Ctx = {}

-- ctx.check is read-only: whether this run plans decides what it journals
-- and prints, so a playbook cannot turn a plan into a "real" run.
local checks = setmetatable({}, { __mode = "k" })
local CtxMeta = {
  __index = function(self, k)
    if k == "check" then return checks[self] end
    return Ctx[k]
  end,
  __newindex = function(self, k, v)
    if k == "check" then usage("ctx.check is read-only: check mode is the run's (dhsm run --check)") end
    rawset(self, k, v)
  end,
}

-- Where in a result a value JSON cannot carry (a function, a secret...).
function M.not_json(v, path, seen)
  local t = type(v)
  if t == "nil" or t == "boolean" or t == "string" then return nil end
  if t == "number" then return (v ~= v or v == math.huge or v == -math.huge) and (path .. " (not a finite number)") or nil end
  if t ~= "table" then return ("%s (%s)"):format(path, secret.is(v) and "a secret" or t) end
  if seen[v] then return path .. " (a cycle)" end
  seen[v] = true
  for k, x in pairs(v) do
    if type(k) ~= "string" and math.type(k) ~= "integer" then return path .. " (a key of type " .. type(k) .. ")" end
    local bad_at = M.not_json(x, path .. "." .. tostring(k), seen)
    if bad_at then return bad_at end
  end
  seen[v] = nil
end

-- Whatever a step or playbook raised, as a dhsm error: error(nil),
-- error(false) and error({}) are failures too, not a quiet "ok".
function M.raised(v)
  if dhsm.error.is(v) then return v end
  if v == nil or v == false or (type(v) == "table" and getmetatable(v) == nil) then
    local shown = v == nil and "nil" or (v == false and "false" or "a table with no message")
    return dhsm.error.new { kind = "lua", code = "BadError", message = ("raised %s instead of an error"):format(shown) }
  end
  return dhsm.error.normalize(v)
end

local function error_record(err)
  local e = dhsm.error.normalize(err)
  return { kind = e.kind, code = e.code, message = e.message, text = tostring(e) }
end

-- Journal key: the title, and which occurrence of it this is.
function Ctx:key_for(title)
  local parent = dhsm.context().step_key
  local base = parent and (parent .. " / " .. title) or title
  self.seen[base] = (self.seen[base] or 0) + 1
  return self.seen[base] == 1 and base or ("%s #%d"):format(base, self.seen[base])
end

-- The operator confirms a destructive step by typing its target's name.
function Ctx:confirm(rec)
  -- --yes is the front end's word (dhsm.act's policy), not a field a playbook can set
  require("dhsm.ask").confirm { target = rec.target, yes = act.policy(),
    before_prompt = function() self.reporter:clear_live() end,
    question = ("\nStep '%s' is destructive: it acts on %s.\nType %s to go on, anything else to stop: ")
      :format(rec.title, rec.target, rec.target),
    no_terminal = ("step '%s' is destructive (target %s) and there is no terminal to confirm it on; "
      .. "nothing was done (%s)"):format(rec.title, rec.target, act.no_terminal()),
    mismatch = ("confirmation for step '%s' did not match %s; nothing was done"):format(rec.title, rec.target) }
end

-- Run fn(ctx) as the body of step rec; returns the packed results.
function Ctx:execute(rec, fn)
  local context = dhsm.context()
  local saved, saved_refused = context.would, context.refused
  context.would = function(what)
    rec.plan = rec.plan or {}
    rec.plan[#rec.plan + 1] = what
    self.reporter:would(rec, what)
  end
  context.refused = function(what)                 -- a plain effect check mode refused (dhsm.act)
    rec.plan = rec.plan or {}
    rec.plan[#rec.plan + 1] = "refused " .. what
    self.reporter:refused(rec, what)
  end
  local r = table.pack(pcall(fn, self))
  context.would, context.refused = saved, saved_refused
  if not r[1] then r[2] = M.raised(r[2]) end
  return r
end

local function step_args(title, opts, fn)
  if fn == nil then opts, fn = {}, opts end
  if type(title) ~= "string" or title == "" then usage("ctx:step: the title must be a non-empty string") end
  if type(opts) ~= "table" then usage("ctx:step '%s': options must be a table", title) end
  if type(fn) ~= "function" then usage("ctx:step '%s': expected a function", title) end
  if opts.destructive and (type(opts.target) ~= "string" or opts.target == "") then
    usage("ctx:step '%s': a destructive step needs target= (the name the operator types to confirm)", title)
  end
  if opts.done ~= nil and type(opts.done) ~= "function" then
    usage("ctx:step '%s': done= must be a function(ctx) -> done?, result", title)
  end
  return opts, fn
end

-- The step's work, as packed pcall results.  A done= check comes first:
-- when it says the work is done (an earlier attempt finished it, or it
-- waited for what that attempt left going), fn does not run.  A
-- destructive step is journaled as begun (on disk, fsync'd) after the
-- operator confirmed it and before it acts, so a run killed half-way
-- knows on resume that the step may have acted; without a done= check it
-- then cannot know what was done and refuses rather than act twice.
function Ctx:body(rec, opts, fn)
  if opts.done then
    local r = self:execute(rec, opts.done)
    if not r[1] then return r end
    dhsm.audit.write { action = "step.check", target = rec.target, outcome = r[2] and "done" or "not done" }
    if r[2] then
      rec.checked = true
      self.reporter:note(rec, rec.began and "finished by an earlier attempt of this run" or "already done: nothing to do")
      return table.pack(true, r[3])
    end
  elseif rec.began then
    return table.pack(false, dhsm.error.new { kind = "safety", code = "CannotResume",
      message = ("step '%s' began acting on %s in an earlier attempt of this run (%s) and did not finish; it "
        .. "declares no done= check, so what it did is unknown and it is not run again. Check %s by hand, "
        .. "then start a new run"):format(rec.title, rec.target, rec.began, rec.target) })
  end
  if opts.destructive and self.check then
    -- The body runs: its reads and safety rules meet the real state, its
    -- mutations (through the modules) only describe themselves.  So the
    -- plan shows the refusal the real run would meet, not a hopeful
    -- "would delete".  No confirmation is asked and nothing is journaled.
    rec.plan = { ("run destructive step '%s' on %s"):format(rec.title, rec.target) }
    self.reporter:would(rec, rec.plan[1])
    return self:execute(rec, fn)
  end
  if not opts.destructive then return self:execute(rec, fn) end
  local ok, err = pcall(self.confirm, self, rec)
  if not ok then return table.pack(false, err) end
  rec.began, rec.status = sys.rfc3339(), "started"
  self:save()
  -- the operator's word covers the gate's questions for this target, in
  -- this step only (dhsm.act): a change to anything else is asked for
  local covered <close> = act.cover(RUNNER_KEY, rec.target)
  return self:execute(rec, fn)
end

-- ctx:step(title, [opts], fn) -> fn's result
function Ctx:step(title, opts, fn)
  opts, fn = step_args(title, opts, fn)
  local rec = { title = title, key = self:key_for(title), target = opts.target,
    destructive = opts.destructive or nil, depth = self.depth, started = sys.rfc3339() }
  self.steps[#self.steps + 1] = rec
  local prev = self.replay[rec.key]
  if prev and (prev.status == "ok" or prev.status == "replayed") then
    rec.status, rec.result = "replayed", prev.result
    self.reporter:step_end(rec)
    self:save()
    return rec.result
  end
  rec.began = opts.destructive and prev and prev.began or nil   -- known until the step finishes
  rec.status = "running"
  self:save()
  self.reporter:step_start(rec)
  local context = dhsm.context()            -- audit records and child tasks see the step
  local saved_step, saved_key = context.step, context.step_key
  context.step, context.step_key = title, rec.key
  dhsm.audit.write { action = "step.start", target = rec.target, outcome = "started" }
  local t0, cpu0 = dhsm.now(), os.clock()     -- os.clock: this process's CPU time
  self.current[#self.current + 1] = rec
  self.depth = self.depth + 1
  local r = self:body(rec, opts, fn)
  self.depth = self.depth - 1
  table.remove(self.current)
  rec.duration_s, rec.cpu_s = dhsm.now() - t0, os.clock() - cpu0
  if r[1] then
    local bad_at = M.not_json(r[2], "result", {})
    if bad_at then
      r = table.pack(false, dhsm.error.new { kind = "usage", message = ("step '%s' returned something JSON cannot "
        .. "hold at %s; a step's result is journaled for --resume"):format(title, bad_at) })
    end
  end
  if r[1] and self.plan then          -- applying a plan: what it was made on is read again
    rec.result = r[2]
    local same, err = pcall(plans.same_read, self.plan, rec)
    if not same then r = table.pack(false, err) end
  end
  if self.check then                  -- a plan's reads are the steps before its first change
    rec.changes_at_end = (act.tally() or {}).described
  end
  if r[1] then
    rec.result = r[2]
    rec.status = (rec.plan and self.check) and "planned" or "ok"
  else
    rec.error = error_record(r[2])
    rec.status = rec.error.kind == "safety" and "refused" or "failed"
  end
  self:save()
  dhsm.audit.write { action = "step.end", target = rec.target, outcome = rec.status,
    duration_ms = rec.duration_s * 1000, error = rec.error and rec.error.text }
  context.step, context.step_key = saved_step, saved_key
  self.reporter:step_end(rec)
  if not r[1] then error(r[2], 0) end
  return rec.result
end

function Ctx:progress(message)
  local rec = self.current[#self.current]
  if rec then self.reporter:progress(rec, tostring(message)) else self.reporter:note(nil, tostring(message)) end
end

function Ctx:note(message)
  self.reporter:note(self.current[#self.current], tostring(message))
end

-- would(what): in check mode, a line of the plan for what the real run
-- would find or do that a plan cannot (a member alive after a recovery
-- only described).  Changes describe themselves (dhsm.act); this is a note.
function Ctx:would(what)
  if type(what) ~= "string" then usage("ctx:would: expected a description, got %s", type(what)) end
  dhsm.audit.write { action = "check.would", outcome = "planned", detail = what }
  local show = dhsm.context().would
  if show then show(what) else self.reporter:note(nil, "would " .. what) end
end

-- unmet(reason): the playbook goes on to its end, but its goal is not
-- reached ("found 2 FAIL", "member 1234 still out"): the run's outcome is
-- "unmet" with every reason given, its closing line says so, it exits 1,
-- and there is nothing to resume.  For what the run found, not for what
-- went wrong while it ran: that is an error, raised.
function Ctx:unmet(reason)
  if type(reason) ~= "string" or reason == "" then
    usage("ctx:unmet: expected the reason the goal is not reached (a non-empty string), got %s", type(reason))
  end
  self.unmet_reasons[#self.unmet_reasons + 1] = reason
  dhsm.audit.write { action = "run.unmet", outcome = "unmet", detail = reason }
end

function Ctx:save()
  self.journal.steps = {}
  for i, rec in ipairs(self.steps) do
    self.journal.steps[i] = { title = rec.title, key = rec.key, status = rec.status, target = rec.target,
      started = rec.started, began = rec.began, checked = rec.checked, duration_s = rec.duration_s,
      result = rec.result, error = rec.error, plan = rec.plan }
  end
  if not self.check then self.journal:save() end
end

---------------------------------------------------------------------------
-- the run's shared resources

-- A resource to close when the run ends, in the reverse order of making.
local function keep(ctx, closer)
  ctx.resources = ctx.resources or {}
  ctx.resources[#ctx.resources + 1] = closer
end

-- azure([options]) -> the run's ARM client (dhsm.azure.client) for the
-- inventory's azure section, options over it (poll_interval=,
-- resource_group=, location=...); made once: asked again, with the same
-- options or none, it is the same client.
function Ctx:azure(options)
  if self.arm then
    if options ~= nil and not util.same(options, self.arm_options) then
      usage("ctx:azure: the run's client was made with other options (%s)", sys.json_encode(self.arm_options))
    end
    return self.arm
  end
  local section = self.inventory and self.inventory.azure
  if not section then
    usage("%s needs the inventory's azure section (subscription, tenant, resource_group, credential)",
      self.playbook.name)
  end
  self.arm_options = options or {}
  local client = azure.client(setmetatable(util.merged(self.arm_options), { __index = section }))
  self.arm = client
  keep(self, function() client:close() end)
  return client
end

-- appliance(name [, opts]) -> the run's LunaSH session to the inventory's
-- HSM name, opened on first use (and again when the one it had was lost or
-- closed); opts: luna.open's, kept for every later connect to that name
-- (initialize logs in with the password its first login set).
function Ctx:appliance(name, opts)
  if not self.inventory then usage("%s: no inventory to find HSM %s in", self.playbook.name, tostring(name)) end
  if not self.pool then
    local pool = luna.sessions(self.inventory)
    self.pool = pool
    keep(self, function() pool:close() end)
  end
  return self.pool:get(name, opts)
end

-- scratch_dir() -> a private folder (0700) for the run's own files,
-- removed with them when the run ends (util.scratch_dir).
function Ctx:scratch_dir()
  if not self.scratch then
    local dir, gone = util.scratch_dir("dhsm-" .. self.playbook.name:gsub("[^%w%-]", "") .. "-")
    self.scratch = dir
    keep(self, function() local _ <close> = gone end)
  end
  return self.scratch
end

-- release(): close what the run made, newest first; a failure to close
-- one does not keep the others open.
function Ctx:release()
  local list = self.resources or {}
  self.resources, self.arm, self.arm_options, self.pool, self.scratch = nil, nil, nil, nil, nil
  for i = #list, 1, -1 do pcall(list[i]) end
end

-- new(fields) -> a context (dhsm.play makes it for each run)
function M.new(fields)
  local check = fields.check == true
  fields.check = nil
  local ctx = setmetatable(fields, CtxMeta)
  checks[ctx] = check
  return ctx
end

return M
