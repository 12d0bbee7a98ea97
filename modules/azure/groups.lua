-- dhsm.azure.groups: resource groups, and the rule that protects billing:
-- never delete a group that still holds a dedicated HSM (the HSM would be
-- orphaned and billed on; only Microsoft support can clean it up).
local dhsm = require "dhsm"
local hsm = require "dhsm.azure.hsm"

local M = {}

function M.get(c, name)
  return c:find(c:group_path(name))
end

-- check_empty(c, name, {going = {hsm names}}): raises GroupHoldsHsm while
-- the group holds a dedicated HSM.  `going` names HSMs whose deletion a
-- --check run only planned; it counts in check mode only.
function M.check_empty(c, name, opts)
  local going = {}
  for _, n in ipairs(dhsm.check_mode and (opts or {}).going or {}) do going[n] = true end
  local names = {}
  for _, h in ipairs(hsm.list(c, name)) do
    if not going[h.name] then names[#names + 1] = h.name end
  end
  if #names > 0 then
    dhsm.error { kind = "safety", code = "GroupHoldsHsm",
      message = ("not deleting resource group %s: it still holds dedicated HSM %s; deleting it would "
        .. "orphan them and billing would go on (zeroize, delete the HSMs, then the group)"):format(
        name, table.concat(names, ", ")), details = { hsms = names } }
  end
end

-- delete(c, name, {wait=true, timeout=, on_progress=, going=})
function M.delete(c, name, opts)
  opts = opts or {}
  M.check_empty(c, name, opts)
  local r = c:delete(c:group_path(name))
  if opts.wait == false or r.status == 200 or r.status == 204 then return r end
  c:wait(r, opts)
  return r
end

return M
