-- dhsm.client.steps: the HA steps two playbooks take, ha-recover (a group
-- back to health) and initialize (a new member into a group), written once.
--
--   local steps = require "dhsm.client.steps"
--   steps.client(ctx)                 the run's client install (dhsm.client.ha), made once per run
--   steps.auto_recovery(ctx)          HA auto-recovery set (ctx.params.retry_count, retry_interval) and read back
--   steps.comparable(ctx, group)      the members that can be compared: alive, with a slot and an appliance
--   steps.drifting(ctx, members)      whether their objects differ (read as the Crypto Officer, ctx.params.co_password)
--   steps.verify_synchronized(ctx, label, read)   a step: after a synchronize, the members read() gives agree
--
-- Each takes the playbook's context (dhsm.play.context): what they share
-- with the rest of the run (the client install, the parameters) comes from
-- there, not from arguments handed along.
local dhsm = require "dhsm"
local ha = require "dhsm.client.ha"
local schema = require "dhsm.schema"
local util = require "dhsm.util"

local M = {}

-- The run's client install (lunacm, Chrystoki.conf, PKCS#11), made once per
-- run.  Kept here, keyed by the run's context, rather than on the context:
-- it holds nothing to close.
M.client = util.weak_memo(function(ctx) return ha.client(ctx.inventory) end)

---------------------------------------------------------------------------
-- auto-recovery settings

-- Done when Chrystoki.conf itself (not a default) holds a retry count
-- other than 0 and the interval asked for; -> done, the settings.
local function retry_set(ctx)
  local s = M.client(ctx):settings()
  return s.retry ~= 0 and s.held.interval == ctx.params.retry_interval, s
end

function M.auto_recovery(ctx)
  local p, c = ctx.params, M.client(ctx)
  ctx:step(("set HA auto-recovery: retry count %d, interval %d s"):format(p.retry_count, p.retry_interval),
    { done = retry_set }, function()
    local now = c:settings()     -- a count set already (not 0) is the operator's: kept
    ctx:note(("the retry count is %d: 0 means no auto-recovery (guide: HA group), so a member that drops stays "
      .. "out until recovered by hand"):format(now.retry))
    c:set_retry(now.retry == 0 and p.retry_count or now.retry, p.retry_interval)
  end)
  ctx:step("verify Chrystoki.conf holds the auto-recovery settings", function()
    if ctx.check then
      ctx:would(("find reconnAtt = %d, AutoReconnectInterval = %d in %s"):format(p.retry_count, p.retry_interval, c.conf_path))
      return { planned = true }
    end
    local ok, s = retry_set(ctx)
    if not ok then
      dhsm.error { kind = "luna", code = "RetryNotSet", message = ("%s holds retry count %d, interval %d"):format(
        c.conf_path, s.retry, s.interval) }
    end
    return s
  end)
end

---------------------------------------------------------------------------
-- compare

-- The members of a group that can be compared: alive, with a slot.
function M.comparable(ctx, g)
  local c = M.client(ctx)
  local slots = c:slots()
  local out = {}
  for _, m in ipairs(g.members) do
    local entry = c:hsm_of(m.serial)
    if slots[m.serial] and entry then out[#out + 1] = { serial = m.serial, entry = entry, token = slots[m.serial].label } end
  end
  return out
end

-- Each member's objects, read as the Crypto Officer (not in check mode:
-- that is a login).
function M.read_objects(ctx, members)
  for _, m in ipairs(members) do
    m.objects = not ctx.check and M.client(ctx):objects(m.token, ctx.params.co_password) or { keys = {}, count = 0 }
  end
end

-- Whether the members' objects differ: synchronize's checks.
function M.drifting(ctx, members)
  M.read_objects(ctx, members)
  return ha.compare(members).drift ~= nil
end

-- verify_synchronized(ctx, label, read) -> {objects=}: a step, after a
-- synchronize: the members read() gives (read afresh: on a resumed run the
-- comparison before was journaled) hold the same objects.  read() ->
-- members [, with_new]: with_new, when given, says whether a member that
-- must be compared (a new one) is among them - a member that cannot be
-- compared proves nothing, nor does a lone one.
function M.verify_synchronized(ctx, label, read)
  return ctx:step(("verify every member of %s holds the same objects"):format(label), function()
    if ctx.check then
      ctx:would("compare the members' objects again")
      return { planned = true }
    end
    local members, with_new = read()
    local why = with_new == false and "the new member cannot be compared (no slot in lunacm's listing, or no "
        .. "appliance of the inventory lists it)"
      or (with_new ~= nil and #members < 2 or #members == 0) and "fewer than two members can be compared (alive, "
        .. "with a slot)"
      or M.drifting(ctx, members) and "the members still differ after synchronize"
    if why then dhsm.error { kind = "luna", code = "StillDrifting", message = ("group %s: %s"):format(label, why) } end
    return { members = #members, objects = members[1].objects.count }
  end)
end

-- A playbook's context (dhsm.play.context): what every step here is given.
local KINDS = { context = { test = function(v)
  return type(v) == "table" and type(v.step) == "function" and type(v.params) == "table"
end, expected = "a playbook's context (the run's ctx)" }, group = { test = function(v)
  return type(v) == "table" and type(v.members) == "table"
end, expected = "an HA group {members=} (as the client's groups() lists it)" } }

schema.check_arguments("steps", M, {
  client = "ctx:context",
  auto_recovery = "ctx:context",
  comparable = "ctx:context g:group",
  read_objects = "ctx:context members:table",
  drifting = "ctx:context members:table",
  verify_synchronized = "ctx:context label:string read:function",
}, KINDS)

return M
