-- dhsm.azure.groups: resource groups.  The rule that protects billing -
-- never delete a group that still holds a dedicated HSM (the HSM would be
-- orphaned and billed on; only Microsoft support can clean it up) - lives
-- in dhsm.azure.rules, where every DELETE of a group meets it, whoever
-- sends it.
local rules = require "dhsm.azure.rules"

local M = {}

function M.get(c, name)
  return c:find(c:group_path(name))
end

-- check_empty(c, name): raises GroupHoldsHsm while the group holds a
-- dedicated HSM (in check mode, not counting those the plan deletes first).
function M.check_empty(c, name)
  rules.group_empty(c, name)
end

-- delete(c, name, {wait=true, timeout=, on_progress=})
function M.delete(c, name, opts)
  opts = opts or {}
  local r = c:delete(c:group_path(name))
  if opts.wait == false or r.status == 200 or r.status == 204 then return r end
  c:wait(r, opts)
  return r
end

require("dhsm.schema").check_arguments("azure.groups", M, {
  -- name nil: the client's own group (c:group_path())
  get = "c:client name:string?",
  check_empty = "c:client name:string?",
  delete = "c:client name:string? opts:table?",
}, rules.ARGUMENT_KINDS)

return M
