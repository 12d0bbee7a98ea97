-- dhsm.play: loading, describing and running playbooks.
--
-- A playbook file returns
--   { name=, description=, params = { key = {type=, required=, default=, values=,
--       pattern=, from_inventory="azure.resource_group", requires=, exclusive=,
--       inventory="hsm", description=} (dhsm.schema's specs) },
--     check = function(params, inventory) -> problems (optional),
--     run = function(ctx, params) ... end }
-- and works in named steps:
--   local gw = ctx:step("wait for gateway", function() ... return state end)
--   ctx:step("zeroize", { destructive = true, target = "hsm1",
--     done = function(ctx) return s:hsm_show().zeroized, { zeroized = true } end,
--   }, function() ... end)
-- ctx also has .inventory, .params, .run_id, .check, :progress(msg),
-- :note(msg), :would(what) and the run's shared resources (:azure(),
-- :appliance(name), :scratch_dir(): dhsm.play.context), closed when the run ends.
--
-- Step options: destructive (the operator types `target` to confirm; in
-- --check its body runs unconfirmed with check mode on, so it must act
-- only through the modules or dhsm.act: its own plain effects are refused), target, and done = function(ctx) -> done?, result: how
-- to tell from the real state that the step's work is done.  It is asked
-- first, on every run: when it says done, the step is skipped and `result`
-- is its result.  It may wait for work an earlier attempt left going (a
-- DELETE ARM accepted) and then say done, so nothing is sent twice.  A
-- destructive step is journaled as begun ("started", fsync'd) after the
-- confirmation and before it acts; resumed after a crash in the middle, a
-- destructive step without done= is refused (CannotResume), never re-run
-- blindly.
--
-- The runner validates every parameter before anything runs (its spec, the
-- rules between parameters, secret references readable, inventory names
-- known, the playbook's check), asks before a destructive step, journals
-- each step for --resume, shows progress, writes the audit log and, with
-- --json, prints one JSON document at the end.  A
-- run is held by one process: runs/ID.lock (sys.lock) for its whole life,
-- so a second `--resume ID` while it goes is refused with the holder's pid.
-- Any value a step raises fails it, error(nil) included.
local act = require "dhsm.act"
local cjson = require "cjson"
local dhsm = require "dhsm"
local run_context = require "dhsm.play.context"
local plans = require "dhsm.play.plans"
local resume = require "dhsm.play.resume"
local inventory = require "dhsm.inventory"
local journal = require "dhsm.journal"
local progress = require "dhsm.progress"
local schema = require "dhsm.schema"
local secret = require "dhsm.secret"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

local usage = dhsm.usage

---------------------------------------------------------------------------
-- loading and describing

local function bad(found, fmt, ...)
  usage("playbook %s (%s): " .. fmt, found.name, found.path, ...)
end

-- check_params_spec(found, params [, partial]): the mistakes in the specs,
-- refused.  partial names the parameters describe() has only in part (a
-- value the sandbox dropped is no mistake of the author's): their specs
-- are not checked, and the others' requires= and exclusive= may name them.
local function check_params_spec(found, params, partial)
  partial = partial or {}
  local siblings = util.merged(partial, params)
  local problems = {}
  for _, k in ipairs(util.sorted_keys(params)) do
    if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") then
      problems[#problems + 1] = ("params[%s]: parameter names are identifiers"):format(schema.show(k))
    elseif not partial[k] then
      local where = { siblings = siblings, name = k, kind = "parameter" }
      for _, p in ipairs(schema.spec_problems(params[k], "params." .. k, where)) do problems[#problems + 1] = p end
    end
  end
  if #problems > 0 then bad(found, "%s", table.concat(problems, "; ")) end
end

local function check_hook(found, check)
  if check ~= nil and type(check) ~= "function" then
    bad(found, "field 'check' must be a function(params, inventory) -> a list of problems")
  end
end

local function source_of(found)
  if found.source then return found.source end
  local src, err = util.read_file(found.path)
  if not src then bad(found, "cannot read: %s", err) end
  return src
end

-- load(found) where found comes from dhsm.paths.find_playbook: runs the
-- file's top level (its requires, its helpers) to get the playbook table.
-- Only the runner does this; list and doc use describe().
function M.load(found)
  local source = source_of(found)
  local chunk, err = load(source, "@" .. found.path, "t")
  if not chunk then bad(found, "%s", err) end
  local ok, pb = pcall(chunk)
  if not ok then bad(found, "error while loading: %s", tostring(pb)) end
  if type(pb) ~= "table" then bad(found, "must return a table {name=, description=, params=, run=}, got %s", type(pb)) end
  if type(pb.description) ~= "string" then bad(found, "field 'description' must be a string") end
  if type(pb.run) ~= "function" then bad(found, "field 'run' must be a function(ctx, params)") end
  if pb.params ~= nil and type(pb.params) ~= "table" then bad(found, "field 'params' must be a table") end
  if pb.inventory ~= nil and type(pb.inventory) ~= "string" then
    bad(found, "field 'inventory' must be a string: what the playbook needs the inventory for")
  end
  check_hook(found, pb.check)
  pb.name = pb.name or found.name
  pb.params = pb.params or {}
  pb.path = found.path
  pb.by_path = found.by_path
  pb.embedded = found.embedded
  pb.sha256 = sys.sha256(source)           -- the code itself: a plan names what it was made with
  check_params_spec(found, pb.params)
  return pb
end

---------------------------------------------------------------------------
-- describing without running: `dhsm list`, `dhsm doc`, the REPL's :doc
--
-- Listing the playbooks on a search path must never run one (a folder of
-- runbooks is full of files whose top level acts).  describe() runs the
-- file's top level in a sandbox so it can return its table, and keeps only
-- the data: name, description, params.  In the sandbox
--   * the pure libraries are copies (string, table, math, utf8) and the
--     pure base functions are there (pairs, type, tostring, error, ...);
--   * every other name -- require, io, os, dhsm, load, debug, pcall,
--     coroutine, collectgarbage, whatever the file invents -- is an inert
--     stand-in: indexing or calling it gives another stand-in, so
--     `local azure = require "dhsm.azure"` and even
--     `os.execute("rm -rf /")` or `require("dhsm.azure").client{}:delete(x)`
--     do nothing at all;
--   * setmetatable refuses __gc (a finaliser would run outside the budget);
--   * the top level gets DESCRIBE_BUDGET VM instructions (a debug.sethook
--     count hook on its own coroutine); past it, describing fails with
--     "takes too long" and every further instruction fails, so a pcall
--     loop cannot outlast it.
-- A description or parameter computed from a module (values = hsm.SKUS)
-- comes back as a stand-in and is dropped: describe() keeps plain data only.
-- A parameter that lost such a value is described in part and its spec is
-- not checked (`dhsm run` loads it for real and checks it whole).  The
-- returned table is walked raw (next, never __pairs, __index or
-- __tostring): the file's code runs only under the budget.
M.DESCRIBE_BUDGET = 1000000

local Inert = {}
local inert
inert = setmetatable({}, {
  __index = function() return inert end, __call = function() return inert end,
  __newindex = function() end, __concat = function() return inert end,
  __tostring = function() return "(not run: described only)" end,
  __len = function() return 0 end, __close = function() end, __metatable = Inert,
})

local function is_inert(v) return getmetatable(v) == Inert end

local function copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

local function sandbox_env()
  local env = {
    string = copy(string), table = copy(table), math = copy(math), utf8 = copy(utf8),
    pairs = pairs, ipairs = ipairs, next = next, select = select, type = type,
    tostring = tostring, tonumber = tonumber, error = error, assert = assert,
    rawequal = rawequal, rawlen = rawlen, rawget = rawget,
    -- not the strings' metatable: its __index is dhsm's own string library
    getmetatable = function(v) if type(v) ~= "string" then return getmetatable(v) end end,
    setmetatable = function(t, mt)
      if type(mt) == "table" and rawget(mt, "__gc") ~= nil then error("__gc is not allowed while describing", 2) end
      return setmetatable(t, mt)
    end,
  }
  env._G = env
  return setmetatable(env, { __index = function() return inert end })
end

-- Plain data only (strings, numbers, booleans, tables of them): stand-ins
-- and functions are left out.  A copy that lacks what the original had (a
-- stand-in dropped, as key or value; what a metatable's __index gave it)
-- is marked in lossy, and so is every copy holding one.
local function plain(v, seen, lossy)
  if type(v) == "table" and not is_inert(v) then
    if seen[v] then return nil end
    seen[v] = true
    local out, lost = {}, debug.getmetatable(v) ~= nil
    for k, x in next, v do
      if type(k) == "string" or type(k) == "number" then out[k] = plain(x, seen, lossy) end
      lost = lost or is_inert(k) or is_inert(x) or lossy[out[k]] == true   -- (lossy[nil] is nil)
    end
    seen[v] = nil
    lossy[out] = lost or nil
    return out
  end
  local t = type(v)
  if t == "string" or t == "number" or t == "boolean" then return v end
end

-- The parameters described in part (name -> true): a spec that is a
-- stand-in (kept out of params) or lost one inside it.
local function partial_params(raw, params, lossy)
  local partial = {}
  if type(raw) ~= "table" or is_inert(raw) then return partial end
  for k, spec in next, raw do
    if type(k) == "string" and (is_inert(spec) or lossy[params[k]]) then partial[k] = true end
  end
  return partial
end

-- What the top level raised, in words, without calling into it (an error
-- value's __tostring would run outside the budget).
local function raised_words(err)
  if type(err) == "string" then return err end
  return ("it raised a %s, not a message"):format(type(err))
end

-- Run chunk's top level in its own coroutine under the instruction budget.
local function run_bounded(chunk)
  local co = coroutine.create(chunk)
  local spent = false
  debug.sethook(co, function()
    if not spent then
      spent = true
      debug.sethook(co, debug.gethook(co), "", 1)   -- from now on, every instruction fails
    end
    error("its top level takes too long to run (more than " .. M.DESCRIBE_BUDGET .. " instructions)", 0)
  end, "", M.DESCRIBE_BUDGET)
  local ok, r = coroutine.resume(co)
  if ok and coroutine.status(co) ~= "dead" then ok, r = false, "its top level yields" end
  return ok, r
end

-- describe(found) -> {name=, description=, params=, path=, by_path=}, the
-- playbook's data, without running any of its code outside the sandbox.
function M.describe(found)
  local chunk, err = load(source_of(found), "@" .. found.path, "t", sandbox_env())
  if not chunk then bad(found, "%s", err) end
  local ok, pb = run_bounded(chunk)
  if not ok then bad(found, "cannot be described: %s", raised_words(pb)) end
  if type(pb) ~= "table" or is_inert(pb) then
    bad(found, "must return a table {name=, description=, params=, run=}, got %s", is_inert(pb) and "a computed value" or type(pb))
  end
  local lossy = {}
  local d = plain(pb, {}, lossy)
  if type(d.description) ~= "string" then bad(found, "field 'description' must be a string") end
  if type(rawget(pb, "run")) ~= "function" then bad(found, "field 'run' must be a function(ctx, params)") end
  check_hook(found, rawget(pb, "check"))
  if d.params ~= nil and type(d.params) ~= "table" then bad(found, "field 'params' must be a table") end
  local described = { name = type(d.name) == "string" and d.name or found.name, description = d.description,
    params = d.params or {}, path = found.path, by_path = found.by_path }
  check_params_spec(found, described.params, partial_params(rawget(pb, "params"), described.params, lossy))
  return described
end

-- name -> "if fix_cloning", "if mode=template": when another parameter's
-- requires= makes it needed.
local function needed_when(params)
  local out = {}
  for _, k in ipairs(util.sorted_keys(params)) do
    for _, case in ipairs(schema.requires_cases(params[k])) do
      for _, name in ipairs(case.names) do
        local cond = case.when == nil and k or (k .. "=" .. tostring(case.when))
        out[name] = out[name] and (out[name] .. " or " .. cond) or ("if " .. cond)
      end
    end
  end
  return out
end

function M.doc(pb)
  local lines = { pb.name, "", pb.description, "" }
  local when = needed_when(pb.params)
  local keys = util.sorted_keys(pb.params)
  if #keys == 0 then
    lines[#lines + 1] = "no parameters"
    return table.concat(lines, "\n")
  end
  local rows = { { "parameter", "type", "default", "required", "description" } }
  for _, k in ipairs(keys) do
    local p = pb.params[k]
    local default = p.default ~= nil and tostring(p.default)
      or p.from_inventory and ("inventory " .. p.from_inventory) or ""
    rows[#rows + 1] = { k, schema.expected(p), default, p.required and "yes" or when[k] or "", p.description or "" }
  end
  local widths = {}
  for _, row in ipairs(rows) do
    for i, cell in ipairs(row) do widths[i] = math.max(widths[i] or 0, utf8.len(cell)) end
  end
  for _, row in ipairs(rows) do
    local cells = {}
    for i, cell in ipairs(row) do cells[i] = i < #row and util.pad(cell, widths[i]) or cell end
    lines[#lines + 1] = "  " .. table.concat(cells, "  ")
  end
  return table.concat(lines, "\n")
end

---------------------------------------------------------------------------
-- parameters

-- "(give -e a=... -e b=...)": how the operator gives what a rule needs
-- (in the REPL, its :run form: schema.give).
local function how_to_give(names)
  local out = {}
  for i, name in ipairs(names) do out[i] = name .. "=..." end
  return "(give " .. schema.give(table.unpack(out)) .. ")"
end

-- The problem of a secret reference that cannot be read now (its first
-- use would fail), or nil: checked without reading it, so a prompt is
-- still asked only when first used and no value is ever shown.
local function unreadable(s, path)
  local ok, err = pcall(s.check, s)
  if not ok then return ("%s: %s"):format(path, dhsm.error.normalize(err).message) end
end

-- The problem of a name that is no HSM of the inventory (in the
-- inventory's words: the closest name, the known ones), or nil.
local function unknown_hsm(inv, name, path)
  if not inv then
    return ("%s: names an HSM of the inventory, and none is loaded (-i FILE or $DHSM_INVENTORY)"):format(path)
  end
  local ok, err = pcall(inv.hsm, inv, name)
  if not ok then return ("%s: %s"):format(path, dhsm.error.normalize(err).message) end
end

-- The rules a value cannot be judged by alone, for every value and item
-- in params: secret references, names of inventory HSMs (inventory = "hsm";
-- not when resuming either, see below).
-- A resumed run does not check its secret references: it may be past
-- every use of one (decommission's SO password is gone with the zeroized
-- appliance), and one still needed fails its step when used, before it
-- acts, leaving the run resumable.
local function outside_problems(pb, params, inv, problems, resuming)
  for _, name in ipairs(util.sorted_keys(params)) do
    schema.walk(params[name], pb.params[name], name, function(v, spec, path)
      if secret.is(v) and not resuming then problems[#problems + 1] = unreadable(v, path) end
      -- a resumed run's names were checked when it began; one the inventory has since dropped (it left with
      -- its resource, which the journal knows) fails the step that still needs it, when it asks
      if spec.inventory == "hsm" and type(v) == "string" and not resuming then
        problems[#problems + 1] = unknown_hsm(inv, v, path)
      end
    end)
  end
end

-- The playbook's own check(params, inventory) -> problems, for rules the
-- specs cannot say (they depend on the inventory's entries).  Asked only
-- when everything else is sound: it may rely on every parameter.
local function playbook_problems(pb, params, inv, problems)
  if not pb.check or #problems > 0 then return end
  local found = pb.check(params, inv)
  if found ~= nil and type(found) ~= "table" then
    usage("playbook %s: check() must return a list of problems (strings), got %s", pb.name, type(found))
  end
  for _, p in ipairs(found or {}) do problems[#problems + 1] = tostring(p) end
end

-- validate(pb, raw, inv, tty [, resuming]) -> params, or a usage error
-- listing every problem: unknown, missing and malformed parameters, the
-- rules between them (requires=, exclusive=), secret references that
-- cannot be read (not when resuming), names the inventory does not know,
-- and the playbook's own check().
function M.validate(pb, raw, inv, tty, resuming)
  local problems = {}
  local names = util.sorted_keys(pb.params)
  for _, k in ipairs(util.sorted_keys(raw)) do
    if pb.params[k] == nil then
      problems[#problems + 1] = ("%s: unknown parameter%s"):format(k, util.did_you_mean(k, names))
    end
  end
  local params, given = {}, {}
  for _, name in ipairs(names) do
    local spec = pb.params[name]
    local v = raw[name]
    given[name] = v ~= nil and v ~= cjson.null     -- by -e or @FILE.json: a default or the inventory's is not given
    if v == nil and spec.from_inventory and inv then v = inv:get(spec.from_inventory) end
    if v == nil and spec.type == "secret" and spec.required and tty then v = "prompt" end
    if v == nil and spec.required and spec.default == nil and spec.from_inventory then
      problems[#problems + 1] = ("%s: missing, expected %s (give %s or set %s in the inventory)")
        :format(name, schema.expected(spec), schema.give(name .. "=..."), spec.from_inventory)
    else
      params[name] = schema.check(v, spec, name, problems, true)
    end
  end
  schema.relations(pb.params, params, given, problems, { how = how_to_give })
  outside_problems(pb, params, inv, problems, resuming)
  playbook_problems(pb, params, inv, problems)
  if #problems > 0 then
    dhsm.error { kind = "usage", code = "BadParameters",
      message = ("invalid parameters for playbook '%s':\n  %s"):format(pb.name, table.concat(problems, "\n  ")),
      details = { problems = problems } }
  end
  return params
end

-- The parameters that may be written down (secrets only by name).
local function public_params(pb, params)
  local out, secrets = {}, {}
  for k, v in pairs(params) do
    if pb.params[k].type == "secret" or secret.is(v) then secrets[#secrets + 1] = k else out[k] = v end
  end
  table.sort(secrets)
  return out, secrets
end

---------------------------------------------------------------------------
-- running

-- A journaled parameter as this run reads it: run back through its spec
-- (coerced, as from the command line), so that a value journaled before
-- the spec changed shape ("hsm-a:stamp1", before hsms were records) is
-- compared by what it means now.  One the spec now refuses stays as it was.
local function as_now(spec, was, name)
  if spec == nil or spec.type == "secret" then return was end
  local problems = {}
  local v = schema.check(was, spec, name, problems, true)
  return #problems == 0 and v or was
end

-- A parameter's value in a resume's refusal: as JSON, so the difference
-- shows ("a list, now a list" says nothing).
local function json_of(v)
  if v == nil then return "nothing" end
  return sys.json_encode(v)
end

-- The journal to continue: this playbook's, not finished.
local function resumable(pb, j)
  local id = j.id
  if j.playbook ~= pb.name then
    usage("run %s was playbook '%s', not '%s'", id, tostring(j.playbook), pb.name)
  end
  if j.by_path and j.path ~= pb.path then
    usage("run %s was playbook file %s; resume it with 'dhsm run %s --resume %s'",
      id, tostring(j.path), util.shell_quote(tostring(j.path)), id)
  end
  if j.state == "ok" then usage("run %s already finished successfully; nothing to resume", id) end
  if j.state == "unmet" then         -- it ran to its end: resuming would replay it, not reach the goal
    usage("run %s ran to its end without reaching its goal (%s); nothing to resume: start a new run", id,
      table.concat(j.unmet or {}, "; "))
  end
  return j
end

-- The resumed run's parameters checked against the journal's: the run's
-- own (dhsm.play.resume) with those given again over them, so a value
-- given again that is not the journaled one is named here.
local function resume_journal(pb, j, public, changed_secrets)
  local id = j.id
  local diffs = {}
  local keys = {}
  for k in pairs(public) do keys[k] = true end
  for k in pairs(j.params or {}) do keys[k] = true end
  for _, k in ipairs(util.sorted_keys(keys)) do
    local was, now = as_now(pb.params[k], (j.params or {})[k], k), public[k]
    if not util.same(was, now) then
      diffs[#diffs + 1] = ("%s was %s, now %s"):format(k, json_of(was), json_of(now))
    end
  end
  for _, d in ipairs(changed_secrets) do diffs[#diffs + 1] = d end
  if #diffs > 0 then
    usage("run %s used other parameters (%s); a resume takes the run's own (leave them out), other ones a new run",
      id, table.concat(diffs, "; "))
  end
  return j
end

-- unmet: the reasons the playbook gave for not reaching its goal (ctx:unmet).
local function outcome_of(err, check, unmet)
  if err == nil and #unmet > 0 then return "unmet" end
  if err == nil then return check and "planned" or "ok" end
  if dhsm.error.is(err, "safety") then return "refused" end
  if dhsm.error.is(err, "interrupted") then return "interrupted" end
  return "failed"
end

-- A check run's closing words: "nothing was changed" only when it planned
-- to the end with nothing refused and no step failed (even one whose
-- failure the playbook caught).
local function check_summary(outcome, tally, steps)
  local described, refused = tally and tally.described or 0, tally and tally.refused or 0
  local ended = { failed = 0, refused = 0 }
  for _, rec in ipairs(steps) do
    if ended[rec.status] then ended[rec.status] = ended[rec.status] + 1 end
  end
  local changes = ("%d change%s described"):format(described, described == 1 and "" or "s")
  if (outcome == "planned" or outcome == "unmet") and refused == 0 and ended.failed + ended.refused == 0 then
    return "nothing was changed; " .. changes
  end
  local out = ("%s, %d refused"):format(changes, refused)
  for _, status in ipairs { "refused", "failed" } do
    local n = ended[status]
    if n > 0 then out = out .. (", %d step%s %s"):format(n, n == 1 and "" or "s", status) end
  end
  return out
end

-- The outcome in the closing line: an unmet goal with its reasons.
local function outcome_words(outcome, unmet)
  if outcome ~= "unmet" then return outcome end
  return "goal not reached: " .. table.concat(unmet, "; ")
end

local function json_document(ctx, pb, params, outcome, err, t0, result, tally)
  local steps = {}
  for i, rec in ipairs(ctx.steps) do
    steps[i] = { title = rec.title, status = rec.status, target = rec.target, duration_s = rec.duration_s,
      cpu_s = rec.cpu_s,
      result = rec.result, plan = rec.plan,
      error = rec.error and { kind = rec.error.kind, code = rec.error.code, message = rec.error.message } }
  end
  local e = err and dhsm.error.normalize(err)
  return sys.json_encode {
    run = ctx.run_id, playbook = pb.name, check = ctx.check, resumed = ctx.resumed,
    params = params, outcome = outcome, unmet = #ctx.unmet_reasons > 0 and ctx.unmet_reasons or nil,
    duration_s = dhsm.now() - t0, steps = steps, result = result,
    described = tally and tally.described or nil, refused = tally and tally.refused or nil,
    error = e and { kind = e.kind, code = e.code, message = e.message } or nil,
  }
end

-- save_plan(...) -> err: a check run asked to save its plan (--out) does
-- so only when it planned to the end with nothing refused; otherwise no
-- file is written, and the run says why.
local function save_plan(ctx, pb, j, tally, opts, outcome, err)
  if outcome ~= "planned" or tally.refused > 0 then
    ctx.reporter:note(nil, ("no plan written to %s: the check run did not plan to its end without a refusal")
      :format(opts.out))
    return err or dhsm.error.new { kind = "plan", code = "PlanNotWritten", message = ("no plan written to %s")
      :format(opts.out) }
  end
  local ok, p = pcall(plans.save, ctx, pb, j, tally, opts)
  if not ok then return dhsm.error.normalize(p) end
  ctx.reporter:note(nil, ("plan written to %s: %d change(s), digest %s, expires %s. A reviewer checks it with "
    .. "'dhsm plan show %s' and approves it with 'dhsm plan approve %s --key KEY'; then 'dhsm run --plan %s' applies it")
    :format(opts.out, #tally.changes, require("dhsm.plan").digest(p):sub(1, 16), p.body.expires,
      util.shell_quote(opts.out), util.shell_quote(opts.out), util.shell_quote(opts.out)))
  return err
end

-- How the --resume hint names the playbook: so that it resolves as typed,
-- from any folder and without the -I that found it.  A playbook built
-- into dhsm by its name; any other by its absolute path (the journal
-- records it too).
function M.resume_name(pb)
  if pb.embedded then return pb.name end
  return util.shell_quote(sys.realpath(pb.path) or pb.path)
end

-- run(pb, raw_params, opts) -> exit status, or raises: 0, or 1 when the
-- playbook ran to its end without reaching its goal (ctx:unmet: a
-- diagnosis that found failures, a member still out - nothing to resume,
-- yet its caller, cron or CI, must see it).  The result (a table) is the
-- --json document's "result".
-- opts: check, yes, resume (run id), json, inventory (path), inventory_loaded
-- (that file as the front end already loaded it), tty (for tests)
function M.run(pb, raw, opts)
  if opts.check and opts.resume then usage("--check and --resume cannot go together") end
  if opts.inventory_changed and not opts.resume then usage("--inventory-changed goes with --resume ID") end
  plans.check_policy(pb, opts.check)        -- a playbook the host's policy lists runs from an approved plan
  if opts.plan then plans.check_playbook(opts.plan, pb) end
  local tty = opts.tty
  if tty == nil then tty = sys.isatty(0) end
  local inv = opts.inventory_loaded or opts.inventory and inventory.load(opts.inventory) or nil
  if pb.inventory and not inv then        -- refused before anything is journaled
    usage("%s needs an inventory (-i FILE or $DHSM_INVENTORY) for %s", pb.name, pb.inventory)
  end
  local context = dhsm.context()
  local j, run_lock
  if opts.resume then
    run_lock = journal.lock(opts.resume)        -- first: the journal is read by its one runner
    j = resumable(pb, journal.load(opts.resume))
    -- the inventory first: a changed one (an HSM dropped) is refused as such, not
    -- as the parameter check it would fail
    resume.check_inventory(j, opts.inventory_changed, resume.resume_command(M.resume_name(pb), j.id, opts.yes))
  end
  if opts.plan then            -- the plan's inventory, as it was when the plan was made
    plans.check_inventory(opts.plan, opts.inventory and resume.inventory_record(opts.inventory) or nil)
  end
  local resumed_held <close> = run_lock
  -- a resumed run is given its own parameters (dhsm.play.resume)
  local params = M.validate(pb, resume.raw(j, raw), inv, tty, opts.resume ~= nil)
  local public, secret_names = public_params(pb, params)
  if opts.resume then
    resume_journal(pb, j, public, resume.secret_changes(pb, j, raw, params))
    context.run = j.id
  else
    j = journal.new { id = context.run, playbook = pb.name, path = sys.realpath(pb.path) or pb.path, by_path = pb.by_path, params = public,
      secret_params = secret_names, given = resume.given(pb, raw, params),
      inventory = opts.inventory and resume.inventory_record(opts.inventory) or nil,
      plan = opts.plan and { path = opts.plan_path, digest = opts.plan_digest } or nil }
    if not opts.check then run_lock = journal.lock(j.id) end
  end
  local held <close> = not opts.resume and run_lock or nil
  local replay = {}
  for _, s in ipairs(j.steps) do replay[s.key] = s end
  j.state = "running"
  context.playbook = pb.name
  -- check mode is this task's and its children's until the run ends
  -- (dhsm.act): a step cannot switch it off
  local check_scope <close> = act.check_scope(opts.check == true)
  local ctx = run_context.new {
    run_id = context.run, playbook = pb, params = params, inventory = inv, opts = opts,
    check = opts.check == true, resumed = opts.resume ~= nil, journal = j, replay = replay,
    steps = {}, seen = {}, current = {}, depth = 0, reporter = progress.new(), unmet_reasons = {},
    plan = opts.plan,
  }
  -- a destructive change no confirmed step covers is asked for (dhsm.act,
  -- with the front end's policy); the live progress line clears itself first
  context.before_prompt = function() ctx.reporter:clear_live() end
  -- what a module says while it waits (dhsm.azure's retries) shows under the running step
  context.progress = function(line) ctx:progress(line) end

  -- With --json, stdout carries only the final document: everything else
  -- written there (Lua, C, child processes) goes to stderr meanwhile.
  local real_stdout = opts.json and assert(sys.stdout_to_stderr())
  local t0 = dhsm.now()
  local finished = false
  local result
  local function finish(err)
    finished = true
    ctx:release()
    local tally = check_scope.tally
    -- refused calls a body caught are still refusals: the run says so (exit 3)
    if tally and tally.refused > 0 and not dhsm.error.is(err, "safety") and not dhsm.error.is(err, "interrupted") then
      err = dhsm.error.new { kind = "safety", code = "CheckModeRefused",
        message = ("check mode refused %d call(s) that would have changed something%s"):format(tally.refused,
          err and ("; and then: " .. tostring(dhsm.error.normalize(err))) or "") }
    end
    local outcome = outcome_of(err, ctx.check, ctx.unmet_reasons)
    -- a failed step's line showed this error in full: the front end's last
    -- line names it only (each fact once; --json and the audit keep it whole)
    for _, rec in ipairs(ctx.steps) do
      if err and rec.error and rec.error.text == tostring(err) then err.shown_above = true end
    end
    for _, rec in ipairs(ctx.current) do
      rec.status, rec.error = "interrupted", { kind = "interrupted", message = "interrupted", text = "interrupted" }
      ctx.reporter:step_end(rec)
    end
    ctx.reporter:close()
    j.state, j.unmet = outcome, #ctx.unmet_reasons > 0 and ctx.unmet_reasons or nil
    ctx:save()
    dhsm.audit.write { action = "run.end", target = pb.name, outcome = outcome, unmet = j.unmet,
      duration_ms = (dhsm.now() - t0) * 1000, error = err and tostring(err) or nil }
    if real_stdout then
      io.stdout:flush()
      sys.restore_stdout(real_stdout)
      io.stdout:write(json_document(ctx, pb, params, outcome, err, t0, result, tally), "\n")
      io.stdout:flush()
    elseif ctx.check then                        -- a plan is not journaled: nothing to resume
      ctx.reporter:note(nil, ("run %s: %s (%s); check mode: %s"):format(ctx.run_id,
        outcome_words(outcome, ctx.unmet_reasons), util.duration(dhsm.now() - t0), check_summary(outcome, tally, ctx.steps)))
      if opts.write_plan then err = save_plan(ctx, pb, j, tally, opts, outcome, err) end
    elseif outcome == "ok" or outcome == "unmet" then     -- ran to its end: nothing to resume
      ctx.reporter:note(nil, ("run %s: %s (%s)"):format(ctx.run_id, outcome_words(outcome, ctx.unmet_reasons),
        util.duration(dhsm.now() - t0)))
    else
      -- a resume when resuming can get past it; a refusal that only other
      -- parameters get past (-e backups_confirmed=true) takes a new run
      io.stderr:write(resume.way_on(M.resume_name(pb), j, outcome, err, opts.yes))
    end
    return err
  end
  -- Ctrl-C cancels this task: the journal still says where it stopped.
  local guard <close> = setmetatable({}, { __close = function()
    if not finished then
      local done = pcall(finish, dhsm.error.new { kind = "interrupted", message = "interrupted" })
      -- a task being cancelled cannot wait (a busy pipe, a lock): whatever
      -- of the ending could not be done, the way on is still said, with
      -- C stdio's plain blocking write
      if not done and not ctx.check and not real_stdout then
        io.stderr:write(resume.way_on(M.resume_name(pb), j, "interrupted", nil, opts.yes))
      end
    end
  end })
  dhsm.audit.write { action = "run.start", target = pb.name, outcome = "started", check = ctx.check,
    resumed = ctx.resumed, params = public, secret_params = secret_names }
  ctx:save()
  local ok, err = pcall(pb.run, ctx, params)
  if ok then
    -- a result JSON cannot hold is left out of the document, not a failure
    result = type(err) == "table" and not run_context.not_json(err, "result", {}) and err or nil
  end
  if not ok then err = run_context.raised(err) end
  local failure = finish(not ok and err or nil)
  if failure then error(failure, 0) end
  return #ctx.unmet_reasons > 0 and 1 or 0
end


return M
