-- dhsm.azure.deploy: template deployments, and what to read when one fails.
--
--   local tmpl, params = deploy.read_files("hsm.json", "hsm.parameters.json")  -- the operator's files
--   local r = deploy.create(c, "dhsm-provision", tmpl, params)
--   deploy.wait(c, r, {on_progress=})        -- raises with the failed operations' messages
--   deploy.support_facts(c, name)            -- what a support request needs
local azure = require "dhsm.azure"
local dhsm = require "dhsm"
local util = require "dhsm.util"

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

local function read_json(path, what)
  local text, err = util.read_file(path)
  if not text then dhsm.error { kind = "usage", message = ("%s %s: cannot read it: %s"):format(what, path, err) } end
  local doc, why = util.json_object(text)        -- a byte order mark skipped, a syntax error by line and column
  if not doc then dhsm.error { kind = "usage", message = ("%s %s: %s"):format(what, path, why) } end
  return doc
end

-- read_files(template_path [, parameters_path]) -> template, {name = value}
-- The parameters file is ARM's ({"parameters": {"p": {"value": v}}}); a
-- Key Vault reference cannot be resolved here and is refused by name.
function M.read_files(template_path, parameters_path)
  local tmpl = read_json(template_path, "ARM template")
  if type(tmpl.resources) ~= "table" then
    dhsm.error { kind = "usage", message = ("ARM template %s: no 'resources' list"):format(template_path) }
  end
  local values = {}
  if parameters_path then
    local doc = read_json(parameters_path, "parameters file")
    for k, v in pairs(doc.parameters or {}) do
      if type(v) ~= "table" or v.value == nil then
        dhsm.error { kind = "usage", message = ("parameters file %s: parameter %s has no 'value' (Key Vault "
          .. "references are not supported: give the value)"):format(parameters_path, k) }
      end
      values[k] = v.value
    end
  end
  return tmpl, values
end

-- What is read of a deployment and of its operations, checked where each
-- comes in (azure.conform): a reply of another shape is a BadResponse.
local ERROR_SHAPE = { "object", code = "string", message = "string",
  details = { "objects", items = { "object!", code = "string", message = "string" } } }
local DEPLOYMENT_SHAPE = { "object", name = "string", id = "string", properties = { "object",
  provisioningState = "string", correlationId = "string", timestamp = "string", duration = "string" } }
local OPERATION_SHAPE = { "object", operationId = "string", properties = { "object", trackingId = "string",
  provisioningState = "string", statusCode = "string", timestamp = "string",
  targetResource = { "object", resourceName = "string", resourceType = "string" },
  statusMessage = { "object|string", error = ERROR_SHAPE } } }

-- Every operation of a deployment, newest first as ARM lists them:
-- {id=, tracking_id=, resource=, type=, state=, status_code=, code=, message=, time=}
function M.operations(c, name, group)
  local out = {}
  local path = M.path(c, name, group) .. "/operations"
  for _, op in ipairs(azure.conform_list(path, c:list(path), OPERATION_SHAPE)) do
    local p = op.properties or {}
    local e = type(p.statusMessage) == "table" and p.statusMessage.error or {}
    local inner = e.details and e.details[1] or {}
    out[#out + 1] = { id = op.operationId, tracking_id = p.trackingId, state = p.provisioningState,
      resource = p.targetResource and p.targetResource.resourceName,
      type = p.targetResource and p.targetResource.resourceType, status_code = p.statusCode,
      code = inner.code or e.code, message = inner.message or e.message, time = p.timestamp }
  end
  return out
end

-- The failed operations of a deployment: {resource=, type=, code=, message=, ...}.
function M.failed_operations(c, name, group)
  local out = {}
  for _, op in ipairs(M.operations(c, name, group)) do
    if op.state == "Failed" then out[#out + 1] = op end
  end
  return out
end

-- What a support request about a failed deployment needs (the guide: the
-- detail the portal hides): correlation id, times, every failed operation.
function M.support_facts(c, name, group)
  local path = M.path(c, name, group)
  local d = azure.conform(path, c:find(path), DEPLOYMENT_SHAPE)
  if not d then return nil end
  local p = d.properties or {}
  return { deployment = d.id, correlation_id = p.correlationId, state = p.provisioningState,
    timestamp = p.timestamp, duration = p.duration, error = p.error,
    failed_operations = M.failed_operations(c, name, group) }
end

-- Failed deployments of a group: {name=, id=, correlation_id=, timestamp=}.
function M.failed(c, group)
  local out = {}
  local path = c:group_path(group) .. "/providers/Microsoft.Resources/deployments"
  for _, d in ipairs(azure.conform_list(path, c:list(path), DEPLOYMENT_SHAPE)) do
    local p = d.properties or {}
    if p.provisioningState == "Failed" then
      out[#out + 1] = { name = d.name, id = d.id, correlation_id = p.correlationId, timestamp = p.timestamp }
    end
  end
  return out
end

function M.delete(c, name, group)
  local r = c:delete(M.path(c, name, group))
  if r.status == 202 then c:wait(r) end
  return r
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

require("dhsm.schema").check_arguments("azure.deploy", M, {
  path = "c:client name:string group:string?",
  create = "c:client name:string template:table parameters:table? opts:table?",
  read_files = "template_path:string parameters_path:string?",
  operations = "c:client name:string group:string?",
  failed_operations = "c:client name:string group:string?",
  support_facts = "c:client name:string group:string?",
  failed = "c:client group:string?",
  delete = "c:client name:string group:string?",
  wait = "c:client response:table opts:table?",
  cancel = "c:client name:string group:string?",
}, require("dhsm.azure.rules").ARGUMENT_KINDS)

return M
