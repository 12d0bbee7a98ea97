-- dhsm.azure.deploy: template deployments, and what to read when one fails.
local dhsm = require "dhsm"

local M = {}

function M.path(c, name, group)
  return c:group_path(group) .. "/providers/Microsoft.Resources/deployments/" .. name
end

-- create(c, name, template, parameters, {group=, mode=}) -> the PUT response (wait with M.wait)
function M.create(c, name, template, parameters, opts)
  opts = opts or {}
  local p = {}
  for k, v in pairs(parameters or {}) do p[k] = { value = v } end
  return c:put(M.path(c, name, opts.group), { body = { properties = {
    mode = opts.mode or "Incremental", template = template, parameters = p } } })
end

-- The failed operations of a deployment: {resource=, type=, code=, message=}.
function M.failed_operations(c, name, group)
  local out = {}
  for _, op in ipairs(c:list(M.path(c, name, group) .. "/operations")) do
    local p = op.properties or {}
    if p.provisioningState == "Failed" then
      local e = p.statusMessage and p.statusMessage.error or {}
      local inner = e.details and e.details[1] or {}
      out[#out + 1] = { resource = p.targetResource and p.targetResource.resourceName,
        type = p.targetResource and p.targetResource.resourceType,
        code = inner.code or e.code, message = inner.message or e.message }
    end
  end
  return out
end

-- wait(c, response, {group=, timeout=, on_progress=}): a failed deployment
-- raises with the messages of its failed operations (what the portal hides).
function M.wait(c, response, opts)
  opts = opts or {}
  local ok, r = pcall(c.wait, c, response, opts)
  if ok then return r end
  if not dhsm.error.is(r, "azure") or response.check then error(r, 0) end
  local name = response.path:match("/deployments/([^/?]+)")
  local failed = M.failed_operations(c, name, opts.group)
  if #failed == 0 then error(r, 0) end
  local parts = {}
  for _, f in ipairs(failed) do parts[#parts + 1] = ("%s %s: %s"):format(f.resource or "?", f.code or "?", f.message or "") end
  dhsm.error { kind = "azure", code = failed[1].code or r.code, retryable = r.retryable,
    message = ("deployment %s failed: %s"):format(name, table.concat(parts, "; ")),
    details = { operations = failed, cause = r } }
end

function M.cancel(c, name, group)
  return c:post(M.path(c, name, group) .. "/cancel", { idempotent = true })
end

return M
