-- dhsm.play.resume: what `dhsm run PLAYBOOK --resume ID` needs to continue
-- a run from its id alone, and the one line that tells the operator how
-- to go on after a run that did not finish.
--
-- A run journals (dhsm.play, dhsm.journal)
--   given      its parameters as given: plain values as typed, secrets as
--              their references (env:NAME, file:ABSOLUTE-PATH, prompt),
--              never a value; resolved again when resumed
--   inventory  {path=, sha256=, fields=}: the file's absolute path, the
--              digest of its bytes, and a digest per field (hsms[hsm1].host),
--              so that a change can be named without showing any value
--
-- On --resume the run's own parameters and inventory are used.  Parameters
-- given again must be the journaled ones (play refuses another value,
-- naming the field); a secret given again must be the same reference.  An
-- inventory whose digest changed is refused (safety InventoryChanged),
-- naming the fields that changed, unless the operator says the change is
-- intended (--inventory-changed, audited as run.inventory_changed).
local cjson = require "cjson"
local dhsm = require "dhsm"
local journal = require "dhsm.journal"
local secret = require "dhsm.secret"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

local q = util.shell_quote

---------------------------------------------------------------------------
-- parameters

-- A secret's reference as journaled, or nil for one that has none (a value
-- made in Lua): a file by its absolute path, so a resume from another
-- folder reads the same file.
function M.reference(s)
  local origin = s:origin()
  if origin == "prompt" or origin:match("^env:.") then return origin end
  local path = origin:match("^file:(.+)$")
  if path then return "file:" .. (sys.realpath(path) or path) end
end

-- Whether v can be journaled as it is: plain data, no secret inside.
local function plain(v)
  if secret.is(v) then return false end
  if type(v) ~= "table" then return true end
  for _, x in pairs(v) do if not plain(x) then return false end end
  return true
end

-- given(pb, raw, params) -> the parameters as given, to journal: the
-- command line's values, each secret parameter by its reference (a
-- prompt a terminal defaulted to included).  A value holding a secret
-- without a reference is left out: a resume must be given it again.
function M.given(pb, raw, params)
  local out = {}
  for k, spec in pairs(pb.params) do
    if spec.type == "secret" and secret.is(params[k]) then
      out[k] = M.reference(params[k])
    elseif raw[k] ~= nil and plain(raw[k]) then
      out[k] = raw[k]
    end
  end
  return out
end

-- raw(j, cli) -> the parameters a resumed run is validated with: its own,
-- with those given again on the command line over them (compared after).
function M.raw(j, cli)
  return util.merged(j and j.given or {}, cli)
end

-- secret_changes(pb, j, cli, params) -> {"so_password was file:/a, now file:/b"}:
-- secrets given again with another reference than the journaled one.
function M.secret_changes(pb, j, cli, params)
  local out = {}
  for _, k in ipairs(util.sorted_keys(cli)) do
    local spec, was = pb.params[k], (j.given or {})[k]
    if spec and spec.type == "secret" and was ~= nil and secret.is(params[k]) then
      local now = M.reference(params[k])
      if now ~= was then out[#out + 1] = ("%s was %s, now %s"):format(k, was, tostring(now or "a value")) end
    end
  end
  return out
end

---------------------------------------------------------------------------
-- the inventory

local function digest(v)
  return sys.sha256(sys.json_encode(v, { redact = false })):sub(1, 16)
end

-- Whether t, a table with something in it, is a JSON array.
local function is_array(t)
  return #t > 0
end

-- fields(v, path, out): a digest per leaf, keyed by where it is; an entry
-- of a list that has a name is keyed by it (hsms[hsm1]), so reordering
-- the list changes no field.
local function fields(v, path, out)
  if type(v) == "table" and next(v) == nil then return out end      -- [] or {}: nothing in it to name
  if type(v) ~= "table" or (is_array(v) and type(v[1]) ~= "table") then
    out[path] = digest(v)
    return out
  end
  if is_array(v) then
    for i, x in ipairs(v) do
      local name = type(x) == "table" and type(x.name) == "string" and x.name or tostring(i)
      fields(x, ("%s[%s]"):format(path, name), out)
    end
    return out
  end
  for k, x in pairs(v) do fields(x, path == "" and tostring(k) or (path .. "." .. tostring(k)), out) end
  return out
end

-- inventory_record(path) -> {path=, sha256=, fields=} of the file as it is
-- now (path as dhsm.inventory.load reads it: ~/ is the home folder).
function M.inventory_record(path)
  path = require("dhsm.inventory").expand_home(path)
  local abs = sys.realpath(path) or path
  local data, err = util.read_file(abs)
  if not data then
    dhsm.error { kind = "usage", code = "BadInventory", message = ("cannot read inventory %s"):format(err) }
  end
  local ok, t = pcall(cjson.decode, data)
  return { path = abs, sha256 = sys.sha256(data), fields = ok and fields(t, "", {}) or {} }
end

-- The entry a field belongs to ("hsms[hsm3]"), or nil.
local function entry_of(key)
  return key:match("^(.-%[[^%]]*%])")
end

-- differences(was, now) -> {"hsms[hsm1].host changed", "hsms[hsm3] added", ...}:
-- by field names only, never a value.  An entry whose every field is new
-- (or gone) is named once.
function M.differences(was, now)
  local keys, entries = {}, {}
  for k in pairs(was) do keys[k] = true end
  for k in pairs(now) do keys[k] = true end
  for k in pairs(keys) do
    local e = entry_of(k)
    if e then
      entries[e] = entries[e] or { was = false, now = false }
      entries[e].was = entries[e].was or was[k] ~= nil
      entries[e].now = entries[e].now or now[k] ~= nil
    end
  end
  local out, named = {}, {}
  for _, k in ipairs(util.sorted_keys(keys)) do
    local e = entry_of(k)
    local whole = e and entries[e].was ~= entries[e].now
    if whole and not named[e] then
      named[e] = true
      out[#out + 1] = e .. (entries[e].now and " added" or " removed")
    elseif not whole and was[k] ~= now[k] then
      out[#out + 1] = k .. (was[k] == nil and " added" or now[k] == nil and " removed" or " changed")
    end
  end
  if #out == 0 then out[1] = "no field changed: only its layout (spacing, order)" end
  return out
end

-- inventory_path(id, path, explicit) -> the inventory file a resume of run
-- id reads: the run's own.  An -i naming another file is refused; a
-- $DHSM_INVENTORY naming another is set aside, and said so.  A journal
-- without the record (an older dhsm) keeps path.  Read before the run is
-- locked: the path never changes once journaled.
function M.inventory_path(id, path, explicit)
  local ok, j = pcall(journal.load, id)
  if not ok or type(j.inventory) ~= "table" or not j.inventory.path then return path end
  local own = j.inventory.path
  if path and (sys.realpath(path) or path) ~= own then
    if explicit then
      dhsm.usage("run %s was started with inventory %s, and -i names %s: a run is resumed with its own "
        .. "(leave -i out), another inventory takes a new run", id, own, path)
    end
    io.stderr:write(("dhsm: resuming run %s with its own inventory %s ($DHSM_INVENTORY names %s)\n"):format(id, own,
      path))
  end
  return own
end

-- check_inventory(j, changed_ok): the run's inventory file is what the run
-- was started with, or the operator said the change is intended (audited;
-- the journal then holds the new record, which a later resume compares with).
function M.check_inventory(j, changed_ok, resume_command)
  local was = j.inventory
  if type(was) ~= "table" or not was.sha256 then return end
  local now = M.inventory_record(was.path)
  if now.sha256 == was.sha256 then return end
  local changes = M.differences(was.fields or {}, now.fields)
  if changed_ok then
    dhsm.audit.write { action = "run.inventory_changed", target = j.id, outcome = "accepted", path = now.path,
      was = was.sha256, now = now.sha256, changes = changes }
    j.inventory = now
    return
  end
  dhsm.error { kind = "safety", code = "InventoryChanged", details = { path = now.path, changes = changes },
    message = ("run %s was started with inventory %s, which has changed since: %s. Put it back as it was, or, if "
      .. "the change is intended, '%s --inventory-changed' resumes with it"):format(j.id, now.path,
      table.concat(changes, ", "), resume_command) }
end

---------------------------------------------------------------------------
-- how to go on

-- The refusals a resume meets again as they are: the run's parameters or
-- what was found does not change by resuming.
local NOT_RESUMABLE = { CannotResume = true, LastLoginAttempt = true, NoLoginAttemptsLeft = true }

-- `dhsm run NAME --resume ID`, as the operator types it.
function M.resume_command(name, id, yes)
  return ("dhsm run %s --resume %s%s"):format(name, id, yes and " --yes" or "")
end

-- The command of a new run: the run's own parameters and inventory, with
-- `with` over them.
local function new_run_command(name, j, with, yes)
  local words = { "dhsm" }
  if type(j.inventory) == "table" and j.inventory.path then words[#words + 1] = "-i " .. q(j.inventory.path) end
  words[#words + 1] = "run " .. name
  local params = util.merged(j.given or {}, with)
  for _, k in ipairs(util.sorted_keys(params)) do
    local v = params[k]
    if type(v) == "table" then v = sys.json_encode(v, { redact = false }) end
    words[#words + 1] = "-e " .. q(("%s=%s"):format(k, tostring(v)))
  end
  if yes then words[#words + 1] = "--yes" end
  return table.concat(words, " ")
end

-- A run that failed on its input (a usage error) before any step ran: it
-- did nothing, and a resume would bring back the input that failed (and,
-- the file fixed, refuse it as a changed inventory).
local function failed_on_input(j, e)
  return e and e.kind == "usage" and #(j.steps or {}) == 0
end

-- way_on(name, j, outcome, err, yes) -> the line that says how to go on
-- after a run that ended with err: a resume, when resuming can get past
-- it (a failure, an interruption); a new run with the parameter a refusal
-- asks for (err.details.new_run = {name = value}), or once the input a
-- run failed on before any step, or the input a playbook refused
-- (err.details.bad_input = "parameter"), is fixed; a new plan, when an approved
-- plan no longer fits the estate (err.details.new_plan); or neither.
function M.way_on(name, j, outcome, err, yes)
  local e = err and dhsm.error.normalize(err)
  if failed_on_input(j, e) then
    return ("dhsm: run %s %s on its input before any step ran; nothing was done: fix what the error below names, "
      .. "then run again (a new run): %s\n"):format(j.id, outcome, new_run_command(name, j, {}, yes))
  end
  local new_run = e and type(e.details) == "table" and e.details.new_run
  if type(new_run) == "table" then
    return ("dhsm: run %s %s; resuming it would meet the same refusal: start a new run: %s\n"):format(j.id, outcome,
      new_run_command(name, j, new_run, yes))
  end
  if type(e and e.details) == "table" and e.details.new_plan then
    return ("dhsm: run %s %s; the estate is no longer what the plan was approved on, and resuming would meet the "
      .. "same refusal: make a new plan, and have it approved: %s --check --out NEW-PLAN.json --key KEY\n")
      :format(j.id, outcome, new_run_command(name, j, {}, false))
  end
  -- a playbook's refusal of the operator's input (err.details.bad_input names the parameter): the run's own
  -- parameters again would meet it again.  Any other usage error (a module refusing a reply it cannot use,
  -- BadArgument) is no input of the operator's: the resume below stands
  local bad = type(e and e.details) == "table" and e.details.bad_input
  if bad then
    return ("dhsm: run %s %s; resuming it would meet the same bad input (%s, see below): correct it, then run again "
      .. "(a new run): %s\n"):format(j.id, outcome, tostring(bad), new_run_command(name, j, {}, yes))
  end
  if e and NOT_RESUMABLE[e.code] then
    return ("dhsm: run %s %s; resuming it would meet the same refusal (see below)\n"):format(j.id, outcome)
  end
  -- a wrong secret: read again from its reference on resume, so it is corrected there first
  local first = type(e and e.details) == "table" and e.details.correct_first
  if first then
    return ("dhsm: run %s %s; correct %s first (a resume reads it again: the same wrong value would spend another "
      .. "attempt), then '%s' continues it, with its own parameters and inventory\n"):format(j.id, outcome, first,
      M.resume_command(name, j.id, yes))
  end
  -- a wrong secret asked at the terminal: asked again on resume, so typed right then
  local again = type(e and e.details) == "table" and e.details.type_again
  if again then
    return ("dhsm: run %s %s; '%s' continues it, with its own parameters and inventory: type %s (a wrong one "
      .. "spends another attempt)\n"):format(j.id, outcome, M.resume_command(name, j.id, yes), again)
  end
  return ("dhsm: run %s %s; '%s' continues it, with its own parameters and inventory\n"):format(j.id, outcome,
    M.resume_command(name, j.id, yes))
end

return M
