-- orphans: dedicated HSMs whose resource group is gone.
--
-- The troubleshooting guide, "How to delete an HSM resource": deleting the
-- resource group "will not delete the HSM resource, you will continue to be
-- billed as it places the HSM into a orphaned state ... contact Microsoft
-- Support."  This playbook only reads: it lists every orphan with the ids and
-- times that support request needs.  `--json` gives them as one document.
-- Finding any ends the run "goal not reached" (exit status 1): cron and CI
-- see them.
local azure = require "dhsm.azure"
local hsm = require "dhsm.azure.hsm"
local sys = require "dhsm.sys"

local ADVICE = "an orphaned HSM cannot be deleted by you (its resource group is gone, so ARM answers "
  .. "ResourceGroupNotFound) and is billed until Microsoft removes it: open a support request in the Azure "
  .. "portal (problem type \"Issues configuring the Azure setup\") asking to delete it, with the details below "
  .. "(guide: How to delete an HSM resource)"

return {
  description = "Find dedicated HSMs whose resource group was deleted (orphaned, still billed) and print what "
    .. "the support request to remove them needs; read-only",
  inventory = "Azure",
  params = {},
  run = function(ctx)
    local c <close> = azure.client(ctx.inventory.azure)
    return ctx:step("find HSMs whose resource group is gone (subscription " .. c.subscription .. ")", function()
      local found = hsm.orphans(c)
      if #found == 0 then
        ctx:note("no orphaned dedicated HSM in subscription " .. c.subscription)
        return { subscription = c.subscription, tenant = c.tenant, checked_at = sys.rfc3339(), orphans = found }
      end
      ctx:note(("%d orphaned dedicated HSM%s: %s"):format(#found, #found > 1 and "s" or "", ADVICE))
      for _, o in ipairs(found) do
        ctx:note(("%s: resource id %s; resource group %s (gone); region %s, stamp %s, SKU %s, state %s; "
          .. "created %s by %s, last modified %s"):format(o.name, o.id, tostring(o.group), tostring(o.location),
          tostring(o.stamp), tostring(o.sku), tostring(o.state), tostring(o.created_at), tostring(o.created_by),
          tostring(o.last_modified_at)))
      end
      ctx:note(("subscription %s, tenant %s, checked %s"):format(c.subscription, tostring(c.tenant), sys.rfc3339()))
      ctx:unmet(("found %d orphaned HSM%s, still billed: a support request removes them"):format(#found,
        #found > 1 and "s" or ""))
      return { subscription = c.subscription, tenant = c.tenant, checked_at = sys.rfc3339(), orphans = found,
        advice = ADVICE }
    end)
  end,
}
