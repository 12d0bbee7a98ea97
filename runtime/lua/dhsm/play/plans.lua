-- dhsm.play.plans: a playbook run saved as a plan, and a run held to one.
--
--   author:   dhsm run decommission -e hsm=hsm1 ... --check --out PLAN.json --key ~/.ssh/id_ed25519
--   reviewer: dhsm plan show PLAN.json; dhsm plan approve PLAN.json --key ~/.ssh/id_ed25519
--   author:   dhsm run --plan PLAN.json
--
-- A check-mode run describes every change it would make (dhsm.act); saved
-- with --out, the plan (dhsm.plan: the file, its signatures, the host's
-- policy) holds
--   changes  each described change, in order, as the gate compares it
--            (act.identity: kind, action, target, address, description,
--            fields - values made afresh each time by their role)
--   reads    the result of every step that ended before the run described
--            its first change: what the changes were planned on (the
--            serials, the zeroized state, the resources, the objects)
--   params   as given (secrets by reference, never a value), the inventory
--            by its digest, the playbook by its name and source digest.
-- Applying it (--plan) takes the plan's own parameters and inventory, and
--   1. refuses a plan the policy does not find approved, or expired, or an
--      inventory or playbook that is not the plan's;
--   2. reads again: each of those steps' results must be the plan's, or the
--      run stops there - before any change ("the estate changed since the
--      plan was approved");
--   3. the gate sends only the plan's changes, in order per target
--      (dhsm.act.plan_policy); a change the plan does not hold stops the
--      run before it is sent.
-- A resumed run applying a plan is held to it again (its journal names
-- the plan); what the killed attempt sent is read from the audit log's
-- intent records, so it is counted as sent, never as missing.
local cjson = require "cjson"
local dhsm = require "dhsm"
local act = require "dhsm.act"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

---------------------------------------------------------------------------
-- saving

-- A step's result as the plan file will give it back (JSON's view), so a
-- fresh result and a saved one compare alike.
local function as_json(v)
  if v == nil then return nil end
  return cjson.decode(sys.json_encode(v))
end

-- reads(steps) -> the results of the steps that ended before the first
-- change was described (rec.changes_at_end, play's record of the tally)
function M.reads(steps)
  local out = {}
  for _, rec in ipairs(steps) do
    -- (a step that returns nothing read nothing to compare)
    -- (nor one that only described what it would do: the real run's result is another)
    if rec.changes_at_end == 0 and rec.status == "ok" and rec.result ~= nil then
      out[#out + 1] = { step = rec.key, result = as_json(rec.result) }
    end
  end
  return out
end


-- playbook_of(pb) -> {name=, sha256=}: how a plan names its playbook (a
-- built-in by name, any other by absolute path) and the digest of its code
local function playbook_of(pb)
  return { name = pb.embedded and pb.name or (sys.realpath(pb.path) or pb.path), sha256 = pb.sha256 }
end

-- save(ctx, pb, j, tally, opts): the check run `ctx` ended as planned; its
-- plan is made, signed by the author's key (opts.key) and written through
-- the front end's writer (opts.write_plan) -> the plan
function M.save(ctx, pb, j, tally, opts)
  local plan = require "dhsm.plan"
  local p = plan.new { playbook = playbook_of(pb), params = j.given or {}, inventory = j.inventory,
    changes = tally.identities, reads = M.reads(ctx.steps), ttl = opts.ttl }
  plan.sign(p, opts.key, "author")
  opts.write_plan(plan.encode(p))
  dhsm.audit.write { action = "plan.write", target = opts.out, outcome = "written", plan = plan.digest(p),
    playbook = pb.name, changes = #tally.identities, signers = { p.signatures[1].key } }
  return p
end

---------------------------------------------------------------------------
-- applying

-- The changes a killed attempt of run `id` may have sent under the plan:
-- the indices its intent records name.
local function sent_before(id, digest)
  local used = {}
  if not id then return used end
  for _, r in ipairs(util.audit_records(function(r) return r.run == id and r.plan == digest and r.outcome == "sending" end)) do
    used[math.tointeger(r.plan_change) or -1] = true
  end
  return used
end

-- A refusal of the plan, audited.  One the estate's change causes says to
-- make a new plan (details.new_plan: dhsm.play.resume's way on).
local NEW_PLAN = { EstateChanged = true, PlaybookChanged = true, InventoryChanged = true }

local function refuse(code, fmt, ...)
  act.plan_refusal(code, fmt:format(...), NEW_PLAN[code] == true)
end

-- load(path, policy [, run_id]) -> plan, applied (act.plan_policy's
-- argument): the plan, verified against the host's policy (approvals,
-- expiry).  run_id: a resumed run (what it sent is counted as sent).
function M.load(path, policy, run_id)
  local plan = require "dhsm.plan"
  if not policy then
    refuse("NoPolicy", "no plan policy is in force on this host (%s): there is no list of who may approve a plan, "
      .. "so %s cannot be applied", plan.SYSTEM_POLICY, path)
  end
  local p = plan.load(path)
  local who = plan.verify(p, policy)
  local signers = {}
  for _, a in ipairs(who.approvers) do signers[#signers + 1] = a.key end
  local digest = who.digest
  dhsm.audit.write { action = "plan.apply", target = path, outcome = "verified", plan = digest,
    playbook = plan.playbook_name(p), author = who.author.key, signers = signers }
  return p, { digest = digest, changes = p.body.changes, used = sent_before(run_id, digest), signers = signers,
    playbook = plan.playbook_name(p) }
end

-- claim(digest, run_id) -> lock (close it when the run ends): a plan is
-- applied by one run, once, on this host - whoever applies it.  The mark
-- (the run's id) and the lock live in the guard's folder, shared by the
-- host's operators (dhsm.paths.guard_dir); the run that made the mark may
-- resume, no other run applies the plan again.
function M.claim(digest, run_id)
  local dir = require("dhsm.paths").guard_dir() .. "/plans"
  local made, why = sys.mkdir(dir, tonumber("2770", 8))
  if not made then dhsm.error { kind = "audit", message = ("cannot make %s: %s"):format(dir, tostring(why)) } end
  local lock, holder = sys.lock(dir .. "/" .. digest .. ".lock", 0)
  if not lock then
    refuse("PlanInProgress", "plan sha256:%s is being applied right now by another dhsm (pid %s): a plan is applied "
      .. "once, by one run", digest:sub(1, 16), tostring(holder))
  end
  local mark = dir .. "/" .. digest .. ".run"
  local by = util.read_file(mark)
  if by and by ~= run_id then
    lock:unlock()
    refuse("PlanApplied", "plan sha256:%s was applied by run %s: a plan is applied once; that run's operator resumes "
      .. "it ('dhsm run PLAYBOOK --resume %s'), or a new plan is made", digest:sub(1, 16), by, by)
  end
  if not by then
    local ok, err = sys.write_file(mark, run_id, tonumber("660", 8))
    if not ok then dhsm.error { kind = "audit", message = ("cannot write %s: %s"):format(mark, tostring(err)) } end
  end
  return lock
end

-- check_playbook(p, pb): the playbook found is the code the plan was made with
function M.check_playbook(p, pb)
  local planned, now = p.body.playbook, playbook_of(pb)
  if type(planned) ~= "table" or planned.name ~= now.name or planned.sha256 ~= now.sha256 then
    refuse("PlaybookChanged", "playbook %s (%s) is not the code the plan was made with (its digest changed): make a "
      .. "new plan", pb.name, pb.path)
  end
end

-- check_inventory(p, record): the inventory file is the plan's
function M.check_inventory(p, record)
  local was = p.body.inventory
  if type(was) ~= "table" or not was.sha256 then return end
  if record and record.sha256 == was.sha256 then return end
  local resume = require "dhsm.play.resume"
  local changes = record and resume.differences(was.fields or {}, record.fields) or { "no inventory given" }
  refuse("InventoryChanged", "the inventory is not the one the plan was made with (%s): %s; make a new plan",
    tostring(was.path), table.concat(changes, ", "))
end

-- A value in a difference: short, one line.
local function shown(v)
  if v == nil then return "nothing" end
  local text = type(v) == "table" and (next(v) == nil and "none" or sys.json_encode(v)) or tostring(v)
  return #text > 120 and (text:sub(1, 117) .. "...") or text
end

-- differences(was, now, path, out) -> out: "hsms[1].zeroized was false, now
-- true" for each leaf that differs (a list's entries by position, an
-- object's by name; an empty list and an empty object are alike, as in JSON)
local function differences(was, now, path, out)
  if util.same(was, now) then return out end
  if type(was) ~= "table" or type(now) ~= "table" or next(was) == nil or next(now) == nil then
    out[#out + 1] = ("%s was %s, now %s"):format(path, shown(was), shown(now))
    return out
  end
  local keys = {}
  for k in pairs(was) do keys[k] = true end
  for k in pairs(now) do keys[k] = true end
  for _, k in ipairs(util.sorted_keys(keys)) do
    local at = math.type(k) == "integer" and ("%s[%d]"):format(path, k) or (path == "" and k or path .. "." .. k)
    differences(was[k], now[k], at, out)
  end
  return out
end

local MAX_SHOWN = 6

-- same_read(p, rec): at the end of step rec of a run applying plan p, its
-- result is the one the plan was made on (a step the plan read before its
-- first change), else the run stops here, before any change.
function M.same_read(p, rec)
  for _, r in ipairs(p.body.reads or {}) do
    if r.step == rec.key then
      local diff = differences(r.result, as_json(rec.result), "", {})
      if #diff > 0 then
        local shown_diff = table.move(diff, 1, math.min(#diff, MAX_SHOWN), 1, {})
        if #diff > MAX_SHOWN then shown_diff[#shown_diff + 1] = ("and %d more"):format(#diff - MAX_SHOWN) end
        refuse("EstateChanged", "the estate changed since the plan was approved: step '%s' now reads otherwise "
          .. "than the plan was made on (%s); stopped before any change", rec.title, table.concat(shown_diff, "; "))
      end
      return
    end
  end
end

-- check_policy(pb, check): a playbook the host's policy lists runs for real
-- only from an approved plan (its check run makes one)
function M.check_policy(pb, check)
  local rules, applied = act.plans()
  if check or not rules or not (rules.playbooks or {})[pb.name] then return end
  if applied and applied.playbook == playbook_of(pb).name then return end
  refuse("PlanRequired", "this host's policy (%s) runs playbook %s only from an approved plan: %s",
    tostring(rules.source), pb.name, act.plan_way(pb.name))
end

return M
