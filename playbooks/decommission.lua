-- decommission: the guide's only safe way to give a dedicated HSM back.
--
--   dhsm run decommission -e hsm=hsm1 -e so_password=prompt -e backups_confirmed=true [-e delete_group=true]
--
-- The guide's order, one step each: show what will be destroyed -> the
-- operator confirms the keys are backed up -> zeroize the appliance (HSM SO
-- login, `hsm zeroize -force`) -> check it says zeroized -> delete the HSM
-- resource and wait until it is gone -> only when asked, and only once no
-- dedicated HSM is left in it, delete the resource group and wait.  Never
-- the group first: that orphans the HSM and billing goes on.
--
-- The destructive steps say how to tell they are done (done=), so a run
-- killed half-way and resumed (--resume ID) looks first: a zeroized
-- appliance is not zeroized again, a DELETE that ARM accepted is waited
-- for, not sent again.  Run with --check first to see the plan.
local azure = require "dhsm.azure"
local evidence = require "dhsm.evidence"
local groups = require "dhsm.azure.groups"
local hsm = require "dhsm.azure.hsm"
local luna = require "dhsm.luna"

return {
  description = "Zeroize an HSM, delete its Azure resource, then (optionally) its resource group, in the guide's order",
  params = {
    hsm = { type = "string", required = true, pattern = "^[%w%-_%.]+$", description = "the inventory's name of the HSM to give back" },
    so_password = { type = "secret", required = true, description = "the HSM SO password (env:, file: or prompt)" },
    backups_confirmed = { type = "boolean", default = false,
      description = "true once every key on the HSM is backed up: zeroizing destroys them" },
    delete_group = { type = "boolean", default = false,
      description = "also delete the resource group, once it holds no dedicated HSM" },
    group = { type = "string", required = true, from_inventory = "azure.resource_group", description = "the HSM's resource group" },
    timeout = { type = "integer", default = 1800, min = 1, description = "seconds to wait for each deletion" },
    poll_interval = { type = "number", default = 5, min = 0.01, description = "seconds between ARM polls while waiting" },
  },
  run = function(ctx, p)
    local cfg = setmetatable({ poll_interval = p.poll_interval }, { __index = ctx.inventory.azure })
    local c <close> = azure.client(cfg)
    local wait = { group = p.group, timeout = p.timeout, deleting = true,
      on_progress = function(pr) ctx:progress(pr.text) end }

    -- The appliance's shell, opened when first needed: a resumed run past
    -- the zeroize may find the appliance already gone with its resource.
    local entry, session
    local function appliance()
      entry = entry or ctx.inventory:hsm(p.hsm)
      session = session or luna.open(entry)
      return session
    end
    local closer <close> = setmetatable({}, { __close = function() if session then session:close() end end })

    local before = ctx:step("show what will be destroyed", function()
      local e = ctx.inventory:hsm(p.hsm)
      local res = hsm.get(c, e.resource, p.group)
      if not res then
        dhsm.error { kind = "usage", code = "NoSuchHsm",
          message = ("no dedicated HSM %s in resource group %s"):format(e.resource, p.group) }
      end
      local show = appliance():hsm_show()
      local props = res.properties or {}
      ctx:note(("HSM resource %s in %s: %s, stamp %s"):format(res.name, p.group, tostring(props.provisioningState),
        tostring(props.stampId)))
      ctx:note(("appliance %s, serial %s: %s, %d partition(s) whose keys zeroizing destroys"):format(p.hsm,
        tostring(show.serial), show.zeroized and "already zeroized" or "initialized", #show.partitions))
      return { resource = e.resource, serial = show.serial, partitions = #show.partitions, zeroized = show.zeroized }
    end)

    ctx:step("require confirmed backups", function()
      if not p.backups_confirmed then
        dhsm.error { kind = "safety", code = "BackupsNotConfirmed",
          message = ("zeroizing %s destroys every key in its %d partition(s); back them up, then run again with "
            .. "-e backups_confirmed=true"):format(p.hsm, before.partitions) }
      end
      dhsm.audit.write { action = "decommission.backups_confirmed", target = p.hsm, outcome = "confirmed" }
    end)

    ctx:step("zeroize " .. p.hsm, { destructive = true, target = p.hsm,
      done = function() return appliance():hsm_show().zeroized end,
    }, function()
      local s = appliance()
      s:login_so(p.so_password)
      s:must("hsm zeroize -force")
    end)

    ctx:step("verify " .. p.hsm .. " says zeroized", function()
      if dhsm.check_mode then                  -- the zeroize above was only planned
        ctx:would("find " .. p.hsm .. " zeroized")
        return { planned = true }
      end
      local s = appliance()
      return evidence.describe(s:zeroized_evidence(entry))
    end)

    -- Gone, or accepted for deletion by an earlier attempt (then waited for).
    local function deleted(find, path)
      local r = find()
      if r and (r.properties or {}).provisioningState == "Deleting" then
        c:wait(path, wait)
        r = nil
      end
      return r == nil, { deleted = path:match("([^/]+)$") }
    end

    ctx:step("delete the HSM resource " .. before.resource, { destructive = true, target = before.resource,
      done = function() return deleted(function() return hsm.get(c, before.resource, p.group) end,
        hsm.path(c, before.resource, p.group)) end,
    }, function()
      -- fresh evidence, read now: the reading above may be old on a resumed run
      local s = appliance()
      local proof = s:zeroized_evidence(entry)
      hsm.delete(c, before.resource, { zeroized = proof, group = p.group, timeout = p.timeout,
        on_progress = wait.on_progress })
      return { deleted = before.resource }
    end)

    if not p.delete_group then
      ctx:note(("resource group %s kept (-e delete_group=true deletes it once it holds no HSM)"):format(p.group))
      return
    end

    ctx:step("check that " .. p.group .. " holds no dedicated HSM", function()
      local left = {}
      for _, h in ipairs(hsm.list(c, p.group)) do
        if h.name ~= before.resource or not dhsm.check_mode then left[#left + 1] = h.name end
      end
      if #left > 0 then
        dhsm.error { kind = "safety", code = "GroupHoldsHsm",
          message = ("not deleting resource group %s: it still holds dedicated HSM %s; deleting it would orphan "
            .. "them and billing would go on (decommission them first)"):format(p.group, table.concat(left, ", ")) }
      end
      return { hsms = 0 }
    end)

    ctx:step("delete resource group " .. p.group, { destructive = true, target = p.group,
      done = function() return deleted(function() return groups.get(c, p.group) end, c:group_path(p.group)) end,
    }, function()
      groups.delete(c, p.group, wait)
      return { deleted = p.group }
    end)
  end,
}
