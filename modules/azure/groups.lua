-- dhsm.azure.groups: resource groups, and the rule that protects billing:
-- never delete a group that still holds a dedicated HSM (the HSM would be
-- orphaned and billed on; only Microsoft support can clean it up).
local dhsm = require "dhsm"
local hsm = require "dhsm.azure.hsm"

local M = {}

function M.get(c, name)
  return c:find(c:group_path(name))
end

-- delete(c, name, {wait=true, timeout=, on_progress=})
function M.delete(c, name, opts)
  opts = opts or {}
  local held = hsm.list(c, name)
  if #held > 0 then
    local names = {}
    for _, h in ipairs(held) do names[#names + 1] = h.name end
    dhsm.error { kind = "safety", code = "GroupHoldsHsm",
      message = ("not deleting resource group %s: it still holds dedicated HSM %s; deleting it would "
        .. "orphan them and billing would go on (zeroize, delete the HSMs, then the group)"):format(
        name, table.concat(names, ", ")), details = { hsms = names } }
  end
  local r = c:delete(c:group_path(name))
  if opts.wait == false or r.status == 200 or r.status == 204 then return r end
  c:wait(r, opts)
  return r
end

return M
