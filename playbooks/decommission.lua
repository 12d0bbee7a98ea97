-- decommission: the guide's only safe way to give dedicated HSMs back.
--
--   dhsm run decommission -e hsm=hsm1[,hsm2] [-e so_password=prompt] -e backups_confirmed=true
--        [-e method=command|failed-logins] [-e delete_group=true]
--        [-e backup=SERIAL[,SERIAL]] [-e destroy_last_copies=LABEL,...|id:HEX|all|all:N]
--
-- The guide's order ("How to delete an HSM resource"), which no parameter
-- changes: (1) show what will be destroyed - per HSM its resource, `hsm show`
-- and its partitions with their object counts and objects (the census, a
-- read-only Crypto Officer login per partition that holds any), and, when
-- the group is to go, every other resource in it -> no last copy: every
-- object must be found on what survives (the other members of its HA
-- group, a backup partition named), or be named by the operator ->
-- (2) the operator confirms the keys are
-- backed up -> then one HSM at a time: (3) zeroize the appliance, (4) check
-- it says zeroized, (5) delete its resource and wait until it is gone ->
-- (6) only when asked, and only once no dedicated HSM is left in it, delete
-- the resource group and wait.  Never the group first: that orphans the
-- HSM and billing goes on.
--
-- Zeroizing: method=command (HSM SO login, `hsm zeroize -force`) or
-- method=failed-logins (the guide's quickest way, no password needed:
-- wrong HSM SO logins until the HSM zeroizes itself, through the login
-- guard's own audited path, on the serial step (1) showed and no other).
--
-- The destructive steps say how to tell they are done (done=), so a run
-- killed half-way and resumed (--resume ID) looks first: a zeroized
-- appliance is not zeroized again, a DELETE that ARM accepted is waited
-- for, not sent again.  A re-run when everything is gone says so, and how it
-- knows (ARM's 404; the audit log's DELETE), and sends nothing.  Every name
-- must be one of the inventory's (a typo is bad input, exit 2, before
-- anything is journaled): the inventory keeps a given-back HSM's entry
-- until the run is done.  --check runs every read and safety rule and describes each
-- mutation.
local copies = require "dhsm.client.copies"
local evidence = require "dhsm.evidence"
local groups = require "dhsm.azure.groups"
local hsm = require "dhsm.azure.hsm"
local lastcopy = require "dhsm.client.lastcopy"
local schema = require "dhsm.schema"
local util = require "dhsm.util"

-- method=command's HSM SO password for name (an inventory HSM: the runner
-- refused any other name): -e so_password for every HSM, else its
-- inventory entry's.
local function so_password(p, inv, name)
  return p.so_password or inv:hsm(name).so_password
end

-- The rule the parameter specs cannot say, as it depends on the inventory's
-- entries (play.run asks it with the other parameter checks, before
-- anything is journaled).
local function check(p, inv)
  if p.method ~= "command" then return {} end
  local missing = {}
  for _, name in ipairs(p.hsm) do
    if not so_password(p, inv, name) then missing[#missing + 1] = name end
  end
  if #missing == 0 then return {} end
  return { ("method: command needs the HSM SO password of %s (give %s, or so_password in each inventory entry; "
    .. "or %s)"):format(table.concat(missing, ", "), schema.give("so_password=env:NAME|file:PATH|prompt"),
    schema.give("method=failed-logins")) }
end

-- The run's ARM client, polling at the pace asked for.
local function arm(ctx)
  return ctx:azure { poll_interval = ctx.params.poll_interval }
end

-- How the deletions are waited for: the done= checks wait for a DELETE an
-- earlier attempt left going, and the deletes show their progress.
local function waiting(ctx)
  return { group = ctx.params.group, timeout = ctx.params.timeout, deleting = true,
    on_progress = function(pr) ctx:progress(pr.text) end }
end

---------------------------------------------------------------------------
-- (1) show what will be destroyed

local function accepted_delete(r)
  return type(r.target) == "string" and tostring(r.action):lower() == "azure.delete"
    and tostring(r.outcome):match("^20%d$") ~= nil
end

-- deletes() -> find(path): the newest record of this host's audit log for
-- an accepted DELETE of the ARM path, or nil ({ts=, run=, outcome=}, the
-- audit's own fields).  The log is read once, when first asked: a step
-- asks for each HSM and for the group.
local function deletes()
  local by_path
  return function(path)
    if not by_path then
      by_path = {}
      for _, r in ipairs(util.audit_records(accepted_delete)) do by_path[r.target:lower()] = r end   -- newest last
    end
    return by_path[path:lower()]
  end
end

-- How the run knows an inventory HSM's resource is gone: ARM's 404, and
-- whether this host's audit log holds the DELETE that removed it.
local function gone_because(c, resource, group, deleted)
  local rec = deleted(hsm.path(c, resource, group))
  if rec then
    return ("ARM answers 404 for it, and the audit log (%s) has its DELETE, accepted (%s) at %s by run %s")
      :format(dhsm.audit.path(), tostring(rec.outcome), tostring(rec.ts), tostring(rec.run))
  end
  return ("ARM answers 404 for it; the audit log (%s) has no DELETE of it: it was deleted from elsewhere")
    :format(dhsm.audit.path())
end

-- Where the run's group came from, as the operator would correct it.
local function group_source(ctx)
  if (ctx.journal.given or {}).group ~= nil then return "-e group" end
  return ("the inventory's azure.resource_group (%s)"):format(tostring(ctx.opts.inventory))
end

-- ARM answers 404 for an HSM in a group that does not exist as for one
-- deleted: only reading the group (groups.get: nil on its 404,
-- ResourceGroupNotFound) tells the group missing from the HSM gone.  A
-- group is gone for good when this host's audit log holds its accepted
-- DELETE (a re-run after delete_group=true); otherwise the name is wrong
-- (or the group was deleted elsewhere, orphaning any HSM in it): refused,
-- as bad input, before anything is changed.  -> the group, or nil (gone)
local function check_group(ctx, c, deleted)
  local group = ctx.params.group
  local found = groups.get(c, group)
  if found or deleted(c:group_path(group)) then return found end
  dhsm.error { kind = "usage", code = "ResourceGroupNotFound", details = { group = group, bad_input = "group" },
    message = ("group: resource group %s does not exist in subscription %s (ARM answers ResourceGroupNotFound), "
      .. "and this host's audit log has no DELETE of it; the name came from %s: correct it and run again; nothing "
      .. "was changed (a group deleted elsewhere with HSMs in it leaves them orphaned and billed: dhsm run orphans)")
      :format(group, c.subscription, group_source(ctx)) }
end

-- For one HSM: its resource, its appliance, its partitions and their objects.
local function survey(ctx, name, deleted)
  local p, c = ctx.params, arm(ctx)
  local e = ctx.inventory:hsm(name)             -- the runner refused a name the inventory does not know
  local res = hsm.get(c, e.resource, p.group)
  if not res then
    ctx:note(("%s: HSM resource %s in %s is already deleted: %s"):format(name, e.resource, p.group,
      gone_because(c, e.resource, p.group, deleted)))
    return { name = name, resource = e.resource, gone = true }
  end
  -- the appliance's shell, opened only now: a resumed run past a zeroize
  -- may find that appliance already gone with its resource
  local s = ctx:appliance(name)
  local show = s:hsm_show()
  if e.serial and show.serial ~= e.serial then
    dhsm.error { kind = "safety", code = "SerialMismatch",
      message = ("%s reports serial %s, the inventory says %s: not the appliance named; nothing is destroyed")
        :format(name, tostring(show.serial), e.serial) }
  end
  local props = res.properties or {}
  ctx:note(("HSM resource %s in %s: %s, stamp %s"):format(res.name, p.group, tostring(props.provisioningState),
    tostring(props.stampId)))
  local parts = show.zeroized and {} or s:partitions()
  ctx:note(("appliance %s, serial %s: %s, %d partition(s) whose keys zeroizing destroys"):format(name,
    tostring(show.serial), show.zeroized and "already zeroized" or "initialized", #parts))
  local listed = {}
  for i, pt in ipairs(parts) do
    listed[i] = { name = pt.name, serial = pt.serial, objects = pt.objects, census = lastcopy.census(ctx, pt) }
    ctx:note(("  partition %s (serial %s): %s object(s)"):format(pt.name, pt.serial, tostring(pt.objects)))
    for _, o in ipairs(listed[i].census) do ctx:note("    " .. copies.describe(o)) end
  end
  -- what a plan of this run is made on (dhsm.play.plans): ARM's id and state of the resource, the appliance's
  -- serial and state, the partitions and their objects
  return { name = name, resource = e.resource, id = res.id, state = props.provisioningState, serial = show.serial,
    zeroized = show.zeroized, partitions = listed }
end

-- For the group (as check_group read it, nil: gone): every resource in it, HSMs or not.
local function survey_group(ctx, group)
  local p, c = ctx.params, arm(ctx)
  if not group then
    ctx:note(("resource group %s: already deleted"):format(p.group))
    return { gone = true }
  end
  local out = {}
  for i, r in ipairs(c:list(c:group_path(p.group) .. "/resources")) do
    out[i] = { type = r.type, name = r.name }
    ctx:note(("resource group %s holds %s %s: deleted with it"):format(p.group, tostring(r.type), tostring(r.name)))
  end
  return { resources = out }
end

-- -> {hsms = {survey...}, group = survey_group | nil}
local function show_what_goes(ctx)
  return ctx:step("show what will be destroyed", function()
    local deleted = deletes()
    local group = check_group(ctx, arm(ctx), deleted)
    local out = { hsms = {} }
    for i, name in ipairs(ctx.params.hsm) do out.hsms[i] = survey(ctx, name, deleted) end
    if ctx.params.delete_group then out.group = survey_group(ctx, group) end
    return out
  end)
end

---------------------------------------------------------------------------
-- (2) the operator confirms the keys are backed up

-- left: the HSMs still there, whose partitions zeroizing destroys.
local function require_backups(ctx, left)
  ctx:step("require confirmed backups", function()
    if #left > 0 and not ctx.params.backups_confirmed then
      local n = 0
      for _, h in ipairs(left) do n = n + #(h.partitions or {}) end
      dhsm.error { kind = "safety", code = "BackupsNotConfirmed", details = { new_run = { backups_confirmed = true } },
        message = ("zeroizing %d HSM(s) destroys every key in their %d partition(s); back them up, then run again "
          .. "with %s"):format(#left, n, schema.give("backups_confirmed=true")) }
    end
    dhsm.audit.write { action = "decommission.backups_confirmed", target = table.concat(ctx.params.hsm, ","),
      outcome = "confirmed" }
  end)
end

---------------------------------------------------------------------------
-- (3)-(5) per HSM h (from the survey): zeroize, verify, delete the resource

-- The guard's refusal of the HSM SO's last attempt, with decommission's
-- own way on instead of the login call's option (no parameter of this
-- playbook): its goal is the zeroization that attempt risks, and
-- method=failed-logins reaches it without the password, on a new run.
--
-- A wrong password is another matter: a resume reads the secret again
-- from its reference, so resumed as it is it spends one more HSM SO
-- attempt on the same wrong value.  The way on (dhsm.play.resume) names
-- the reference to correct first, never the value; a prompt has nothing
-- behind it: the right password is typed when the resume asks.
local function way_on(err, h, ctx)
  if dhsm.error.is(err, "luna") and err.code == "LUNA_RET_UM_PIN_INCORRECT" then
    local given = ctx.params.so_password
    local origin = (given or ctx.inventory:hsm(h.name).so_password):origin()
    local where = given and ("so_password's reference (%s)"):format(origin)
      or ("the inventory's hsms[%s].so_password reference (%s)"):format(h.name, origin)
    -- asked at the terminal: nothing behind the reference to correct, the resume asks again
    -- (the inventory's prompt asks "HSM SO password of NAME:", dhsm.inventory)
    local way = origin == "prompt" and { type_again = ("the right HSM SO password when the resume asks for %s"):format(
      given and "so_password" or ("'HSM SO password of " .. h.name .. "'")) } or { correct_first = "the value behind " .. where }
    local e = dhsm.error.normalize(err)
    e.details = util.merged(type(e.details) == "table" and e.details or {}, way)
    return e
  end
  if not (dhsm.error.is(err, "safety") and err.code == "LastLoginAttempt") then return err end
  local d = err.details or {}
  return dhsm.error.new { kind = "safety", code = err.code, details = util.merged(d, { new_run = { method = "failed-logins" } }),
    message = ("%s. To zeroize %s without the password, run decommission with %s (wrong HSM SO "
      .. "logins until the appliance zeroizes itself, counting the attempts left)"):format(d.fact or err.message, h.name,
      schema.give("method=failed-logins")) }
end

-- (3) method=command: the HSM SO's password, -e so_password else the
-- inventory entry's.  cleared() -> the last-copy clearance, read now.
local function zeroize(ctx, h, cleared)
  ctx:step("zeroize " .. h.name, { destructive = true, target = h.name,
    done = function() return ctx:appliance(h.name):hsm_show().zeroized end,
  }, function()
    local s = ctx:appliance(h.name)
    if ctx.params.method == "failed-logins" then
      return s:zeroize_by_failed_logins(h.serial, { zeroize = true, last_copies_cleared = cleared() })
    end
    local ok, err = pcall(s.login_so, s, (so_password(ctx.params, ctx.inventory, h.name)))
    if not ok then error(way_on(err, h, ctx), 0) end
    s:must("hsm zeroize -force", { last_copies_cleared = cleared() })
  end)
end

-- Proof that h's appliance is zeroized, read now.  In check mode a
-- zeroization that was only planned stands in (dhsm.evidence.planned),
-- so the plan goes on to show the delete; it deletes nothing for real.
local function proof(ctx, h)
  local s = ctx:appliance(h.name)
  if ctx.check and not s:hsm_show().zeroized then
    ctx:would(("find %s zeroized (its zeroization above is only planned)"):format(h.name))
    return evidence.planned(h.name, h.resource)
  end
  return s:zeroized_evidence(ctx.inventory:hsm(h.name))
end

-- (5) the resource, deleted on the appliance's own word, and waited for.
local function delete_resource(ctx, h)
  local c, p = arm(ctx), ctx.params
  ctx:step("delete the HSM resource " .. h.resource, { destructive = true, target = h.resource,
    done = function() return c:gone(hsm.path(c, h.resource, p.group), waiting(ctx)) end,
  }, function()
    -- fresh evidence, read now: the reading above may be old on a resumed run
    hsm.delete(c, h.resource, { zeroized = proof(ctx, h), group = p.group, timeout = p.timeout,
      on_progress = waiting(ctx).on_progress })
    return { deleted = h.resource }
  end)
end

local function give_back(ctx, h, cleared)
  zeroize(ctx, h, cleared)
  -- (4) the appliance's own word, before anything is deleted
  ctx:step("verify " .. h.name .. " says zeroized", function() return evidence.describe(proof(ctx, h)) end)
  delete_resource(ctx, h)
end

---------------------------------------------------------------------------
-- (6) the group, once it holds no dedicated HSM

-- (in check mode the rule does not count the HSMs whose DELETE the plan
-- describes before: dhsm.azure.rules)
local function delete_group(ctx)
  local c, p = arm(ctx), ctx.params
  ctx:step("check that " .. p.group .. " holds no dedicated HSM", function()
    groups.check_empty(c, p.group)
    return { hsms = 0 }
  end)
  ctx:step("delete resource group " .. p.group, { destructive = true, target = p.group,
    done = function() return c:gone(c:group_path(p.group), waiting(ctx)) end,
  }, function()
    groups.delete(c, p.group, { timeout = p.timeout, on_progress = waiting(ctx).on_progress })
    return { deleted = p.group }
  end)
end

return {
  description = "Zeroize HSMs, delete their Azure resources one by one, then (optionally) their resource group, in the guide's order",
  inventory = "the appliances to zeroize and the Azure resources to delete",
  params = {
    hsm = { type = "list", required = true, items = { type = "string", pattern = "^[%w%-_%.]+$", inventory = "hsm",
      expect = "an inventory HSM name (letters, digits, - _ .)" }, unique = true,
      description = "the inventory's names of the HSMs to give back (hsm1 or hsm1,hsm2: one by one)" },
    method = { type = "enum", values = { "command", "failed-logins" }, default = "command",
      description = "command: SO login and `hsm zeroize`; failed-logins: wrong SO logins until it zeroizes" },
    so_password = { type = "secret",
      description = "the HSM SO password (env:, file: or prompt) for method=command; default: each inventory entry's so_password" },
    backups_confirmed = { type = "boolean", default = false,
      description = "true once every key on the HSMs is backed up: zeroizing destroys them" },
    backup = { type = "list", items = { type = "string", pattern = "^%d+$", expect = "a partition serial (digits)" },
      unique = true, description = "partitions (by serial, visible to this client) that hold copies of the keys: "
        .. "an object found there is not a last copy" },
    destroy_last_copies = { type = "list", items = { type = "string", pattern = "^.+$",
      expect = "a label, id:HEX, all or all:N" }, unique = true,
      description = "the last copies to destroy anyway: every one by label (id:HEX where labels repeat), "
        .. "or all (the count typed at the prompt) or all:N (N their count, without a terminal)" },
    delete_group = { type = "boolean", default = false,
      description = "also delete the resource group, once it holds no dedicated HSM" },
    group = { type = "string", required = true, from_inventory = "azure.resource_group", description = "the HSMs' resource group" },
    timeout = { type = "integer", default = 1800, min = 1, description = "seconds to wait for each deletion" },
    poll_interval = { type = "number", default = 5, min = 0.01, description = "seconds between ARM polls while waiting" },
  },
  check = check,
  run = function(ctx, p)
    arm(ctx)                     -- a bad azure section stops the run here, before any step
    lastcopy.whole_groups(ctx)
    local before = show_what_goes(ctx)
    local left = {}
    for _, h in ipairs(before.hsms) do
      if not h.gone then left[#left + 1] = h end
    end
    if #left == 0 and not (p.delete_group and not before.group.gone) then
      ctx:note("everything is already gone: nothing was changed")
      return { changed = false }
    end
    local named = lastcopy.step(ctx, left).named
    require_backups(ctx, left)
    for _, h in ipairs(left) do
      give_back(ctx, h, function() return lastcopy.clearance(ctx, h, left, named) end)
    end
    if not p.delete_group then
      ctx:note(("resource group %s kept (%s deletes it once it holds no HSM)"):format(p.group, schema.give("delete_group=true")))
      return { changed = true }
    end
    delete_group(ctx)
    return { changed = true }
  end,
}
