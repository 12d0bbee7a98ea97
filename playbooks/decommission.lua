-- decommission: the guide's only safe way to give dedicated HSMs back.
--
--   dhsm run decommission -e hsm=hsm1[,hsm2] [-e so_password=prompt] -e backups_confirmed=true
--        [-e method=command|failed-logins] [-e delete_group=true]
--
-- The guide's order ("How to delete an HSM resource"), which no parameter
-- changes: (1) show what will be destroyed - per HSM its resource, `hsm show`
-- and its partitions with their object counts, and, when the group is to
-- go, every other resource in it -> (2) the operator confirms the keys are
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
-- for, not sent again.  A re-run when everything is gone says so and sends
-- nothing.  --check runs every read and safety rule and describes each
-- mutation.
local azure = require "dhsm.azure"
local evidence = require "dhsm.evidence"
local groups = require "dhsm.azure.groups"
local hsm = require "dhsm.azure.hsm"
local luna = require "dhsm.luna"

-- method=command's HSM SO password for name: -e so_password for every HSM,
-- else its inventory entry's; and whether the inventory knows name (one
-- it no longer lists is tolerated: an inventory kept up to date drops what
-- was given back).
local function so_password(p, inv, name)
  local known, e = false, nil
  if inv then known, e = pcall(inv.hsm, inv, name) end
  return p.so_password or (known and e.so_password), known
end

-- The rule the parameter specs cannot say, as it depends on the inventory's
-- entries (play.run asks it with the other parameter checks, before
-- anything is journaled).
local function check(p, inv)
  if p.method ~= "command" then return {} end
  local missing = {}
  for _, name in ipairs(p.hsm) do
    local pw, known = so_password(p, inv, name)
    if known and not pw then missing[#missing + 1] = name end
  end
  if #missing == 0 then return {} end
  return { ("method: command needs the HSM SO password of %s (give -e so_password=env:NAME|file:PATH|prompt, "
    .. "or so_password in each inventory entry; or -e method=failed-logins)"):format(table.concat(missing, ", ")) }
end

-- Step (1) for one HSM: its resource, its appliance, its partitions.
local function survey(ctx, p, c, appliance, name)
  local known, e = pcall(ctx.inventory.hsm, ctx.inventory, name)
  if not known then             -- an inventory kept up to date drops what was given back
    if hsm.get(c, name, p.group) ~= nil then error(e, 0) end
    e = { resource = name }
  end
  local res = hsm.get(c, e.resource, p.group)
  if not res then
    ctx:note(("%s: no HSM resource %s in %s: already deleted"):format(name, e.resource, p.group))
    return { name = name, resource = e.resource, gone = true }
  end
  local s = appliance(name)
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
    listed[i] = { name = pt.name, serial = pt.serial, objects = pt.objects }
    ctx:note(("  partition %s (serial %s): %s object(s)"):format(pt.name, pt.serial, tostring(pt.objects)))
  end
  return { name = name, resource = e.resource, serial = show.serial, zeroized = show.zeroized, partitions = listed }
end

-- Step (1) for the group: every resource in it, HSMs or not.
local function survey_group(ctx, p, c)
  if not groups.get(c, p.group) then
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

return {
  description = "Zeroize HSMs, delete their Azure resources one by one, then (optionally) their resource group, in the guide's order",
  params = {
    hsm = { type = "list", required = true, items = { type = "string", pattern = "^[%w%-_%.]+$" },
      description = "the inventory's names of the HSMs to give back (hsm1 or hsm1,hsm2: one by one)" },
    method = { type = "enum", values = { "command", "failed-logins" }, default = "command",
      description = "command: SO login and `hsm zeroize`; failed-logins: wrong SO logins until it zeroizes" },
    so_password = { type = "secret",
      description = "the HSM SO password (env:, file: or prompt) for method=command; default: each inventory entry's so_password" },
    backups_confirmed = { type = "boolean", default = false,
      description = "true once every key on the HSMs is backed up: zeroizing destroys them" },
    delete_group = { type = "boolean", default = false,
      description = "also delete the resource group, once it holds no dedicated HSM" },
    group = { type = "string", required = true, from_inventory = "azure.resource_group", description = "the HSMs' resource group" },
    timeout = { type = "integer", default = 1800, min = 1, description = "seconds to wait for each deletion" },
    poll_interval = { type = "number", default = 5, min = 0.01, description = "seconds between ARM polls while waiting" },
  },
  check = check,
  run = function(ctx, p)
    local cfg = setmetatable({ poll_interval = p.poll_interval }, { __index = ctx.inventory.azure })
    local c <close> = azure.client(cfg)
    local wait = { group = p.group, timeout = p.timeout, deleting = true,
      on_progress = function(pr) ctx:progress(pr.text) end }

    -- Each appliance's shell, opened when first needed: a resumed run past
    -- a zeroize may find that appliance already gone with its resource.
    local sessions = {}
    local function appliance(name)
      sessions[name] = sessions[name] or luna.open(ctx.inventory:hsm(name))
      return sessions[name]
    end
    local closer <close> = setmetatable({}, { __close = function()
      for _, s in pairs(sessions) do s:close() end
    end })

    local before = ctx:step("show what will be destroyed", function()
      local out = { hsms = {} }
      for i, name in ipairs(p.hsm) do out.hsms[i] = survey(ctx, p, c, appliance, name) end
      if p.delete_group then out.group = survey_group(ctx, p, c) end
      return out
    end)

    local left, going = {}, {}
    for _, h in ipairs(before.hsms) do
      if not h.gone then left[#left + 1] = h end
      going[#going + 1] = h.resource
    end
    if #left == 0 and not (p.delete_group and not before.group.gone) then
      ctx:note("everything is already gone: nothing was changed")
      return { changed = false }
    end

    ctx:step("require confirmed backups", function()
      if #left > 0 and not p.backups_confirmed then
        local n = 0
        for _, h in ipairs(left) do n = n + #(h.partitions or {}) end
        dhsm.error { kind = "safety", code = "BackupsNotConfirmed",
          message = ("zeroizing %d HSM(s) destroys every key in their %d partition(s); back them up, then run again "
            .. "with -e backups_confirmed=true"):format(#left, n) }
      end
      dhsm.audit.write { action = "decommission.backups_confirmed", target = table.concat(p.hsm, ","), outcome = "confirmed" }
    end)

    -- Proof that h's appliance is zeroized, read now.  In check mode a
    -- zeroization that was only planned stands in (dhsm.evidence.planned),
    -- so the plan goes on to show the delete; it deletes nothing for real.
    local function proof(h)
      local s = appliance(h.name)
      if dhsm.check_mode and not s:hsm_show().zeroized then
        ctx:would(("find %s zeroized (its zeroization above is only planned)"):format(h.name))
        return evidence.planned(h.name, h.resource)
      end
      return s:zeroized_evidence(ctx.inventory:hsm(h.name))
    end

    for _, h in ipairs(left) do
      ctx:step("zeroize " .. h.name, { destructive = true, target = h.name,
        done = function() return appliance(h.name):hsm_show().zeroized end,
      }, function()
        local s = appliance(h.name)
        if p.method == "failed-logins" then
          return s:zeroize_by_failed_logins(h.serial, { zeroize = true })
        end
        s:login_so((so_password(p, ctx.inventory, h.name)))
        s:must("hsm zeroize -force")
      end)

      ctx:step("verify " .. h.name .. " says zeroized", function() return evidence.describe(proof(h)) end)

      ctx:step("delete the HSM resource " .. h.resource, { destructive = true, target = h.resource,
        done = function() return c:gone(hsm.path(c, h.resource, p.group), wait) end,
      }, function()
        -- fresh evidence, read now: the reading above may be old on a resumed run
        hsm.delete(c, h.resource, { zeroized = proof(h), group = p.group, timeout = p.timeout,
          on_progress = wait.on_progress })
        return { deleted = h.resource }
      end)
    end

    if not p.delete_group then
      ctx:note(("resource group %s kept (-e delete_group=true deletes it once it holds no HSM)"):format(p.group))
      return { changed = true }
    end

    ctx:step("check that " .. p.group .. " holds no dedicated HSM", function()
      groups.check_empty(c, p.group, { going = going })
      return { hsms = 0 }
    end)

    ctx:step("delete resource group " .. p.group, { destructive = true, target = p.group,
      done = function() return c:gone(c:group_path(p.group), wait) end,
    }, function()
      groups.delete(c, p.group, { going = going, timeout = p.timeout, on_progress = wait.on_progress })
      return { deleted = p.group }
    end)
    return { changed = true }
  end,
}
