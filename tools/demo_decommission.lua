-- make demo, part 2: the guide's only safe way to give an HSM back, as a
-- playbook: zeroize the appliance -> delete the HSM resource -> (only then)
-- the resource group.  Run with --check first to see the plan.
local azure = require "dhsm.azure"
local hsm = require "dhsm.azure.hsm"
local groups = require "dhsm.azure.groups"
local luna = require "dhsm.luna"

return {
  name = "demo-decommission",
  description = "Rehearse the guide's decommission sequence on one HSM of the simulated estate",
  params = {
    hsm = { type = "string", required = true, pattern = "^[%w%-]+$", description = "the HSM to give back" },
    so_password = { type = "secret", required = true, description = "the HSM SO password (env:, file: or prompt)" },
    group = { type = "string", from_inventory = "azure.resource_group", required = true },
  },
  run = function(ctx, p)
    local c <close> = azure.client(ctx.inventory.azure)
    local entry = ctx.inventory:hsm(p.hsm)
    local s <close> = luna.open(entry)
    ctx:step("read " .. p.hsm .. " before anything", function()
      local show = s:hsm_show()
      ctx:note(("serial %s, %d partitions, %s SO attempts left"):format(show.serial, #show.partitions,
        tostring(show.attempts_left)))
      return { serial = show.serial, zeroized = show.zeroized }
    end)
    ctx:step("the resource group cannot go first", function()
      local ok, err = dhsm.try(groups.delete, c, p.group)
      ctx:note(ok and "unexpected: the group was deleted" or ("refused as it must be: " .. err.message))
      return { refused = not ok }
    end)
    ctx:step("log in and zeroize " .. p.hsm, { destructive = true, target = p.hsm }, function()
      s:login_so(p.so_password)
      s:must("hsm zeroize -force")
    end)
    local evidence = ctx:step("check the appliance says zeroized", function()
      if dhsm.check_mode then           -- the zeroize above was only planned
        ctx:would("find " .. p.hsm .. " zeroized")
        return { zeroized = true, planned = true }
      end
      return s:zeroized_evidence()
    end)
    ctx:step("delete the HSM resource " .. p.hsm, { destructive = true, target = p.hsm }, function()
      hsm.delete(c, p.hsm, { zeroized = evidence, group = p.group,
        on_progress = function(pr) ctx:progress(pr.text) end })
      return { deleted = p.hsm }
    end)
    ctx:step("the group still holds the other HSMs: still not deleted", function()
      local ok, err = dhsm.try(groups.delete, c, p.group)
      ctx:note(ok and "the group was empty and is gone" or err.message)
      return { refused = not ok }
    end)
  end,
}
