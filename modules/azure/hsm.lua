-- dhsm.azure.hsm: dedicated HSM resources (Microsoft.HardwareSecurityModules/dedicatedHSMs).
--
--   local hsm = require "dhsm.azure.hsm"
--   hsm.create(c, "hsm3", spec, {on_progress=})   -- refuses what dhsm.azure.checks fails for it
--   hsm.delete(c, "hsm1", {zeroized = evidence})   -- only with fresh evidence that hsm1's appliance is zeroized
--   hsm.list(c [, group]); hsm.list_all(c); hsm.get(c, name); hsm.summary(c); hsm.orphans(c)
--   hsm.start(c, "hsm3", spec)      -- the checks and the PUT (its response carries the request ids)
--   hsm.wait(c, "hsm3", {on_progress=})            -- to Succeeded through the real states
--   hsm.private_ip(c, resource)     -- from the NIC, as the guide says to find it
--   hsm.features(c); hsm.leftovers(c, location); hsm.spec_conflicts(resource, spec)
--   hsm.delete_failed(c, "hsm3")    -- a Failed resource: never handed over, holds no key
local azure = require "dhsm.azure"
local dhsm = require "dhsm"
local network = require "dhsm.azure.network"
local schema = require "dhsm.schema"

local M = {}

M.PROVIDER = "/providers/Microsoft.HardwareSecurityModules/dedicatedHSMs"
M.SKU = "SafeNet Luna Network HSM A790"
M.QUOTA_PER_STAMP, M.QUOTA_PER_REGION, M.CAPACITY_PER_STAMP = 2, 4, 12

local usage = dhsm.usage

-- What Azure accepts as a dedicated HSM's name: the one rule, a schema spec
-- (dhsm.schema), for playbook parameters (provision's hsms) and check_name.
M.NAME = { type = "string", required = true, pattern = "^[%w%-]+$", min_length = 3, max_length = 24,
  expect = "3-24 letters, digits or '-'" }

function M.check_name(name)
  local problems = {}
  schema.check(name, M.NAME, "dedicated HSM name", problems)
  if #problems > 0 then usage("%s", problems[1]) end
  return name
end

function M.path(c, name, group)
  return c:group_path(group) .. M.PROVIDER .. "/" .. M.check_name(name)
end

-- What this module (and dhsm.azure.checks, and the playbooks) read of a
-- dedicated HSM resource, checked where it comes in (azure.conform).
local ID = { "object", id = "string", resourceId = "string" }
M.SHAPE = { "object", id = "string!", name = "string!", location = "string", tags = "object",
  sku = { "object", name = "string" },
  systemData = { "object", createdAt = "string", createdBy = "string", lastModifiedAt = "string" },
  properties = { "object!", provisioningState = "string", stampId = "string", statusMessage = "string",
    networkProfile = { "object", subnet = ID,
      networkInterfaces = { "objects", items = { "object!", id = "string", resourceId = "string",
        privateIpAddress = "string" } } } } }

function M.get(c, name, group)
  local path = M.path(c, name, group)
  return azure.conform(path, c:find(path), M.SHAPE)
end

function M.list(c, group)
  local path = c:group_path(group) .. M.PROVIDER
  return azure.conform_list(path, c:list(path), M.SHAPE)
end

function M.list_all(c)
  local path = ("/subscriptions/%s%s"):format(c.subscription, M.PROVIDER)
  return azure.conform_list(path, c:list(path), M.SHAPE)
end

-- "/subscriptions/s/resourceGroups/G/providers/..." -> "G" (however ARM spells "resourceGroups")
function M.group_of(resource)
  return (azure.id_part(resource.id, "resourceGroups"))
end

-- The PUT body for spec {location=, subnet_id= | vnet=, subnet=, ip=, stamp=, sku=, tags=}.
function M.body(c, spec, group)
  local subnet_id = spec.subnet_id or network.subnet_path(c, spec.vnet, spec.subnet, group)
  local nic = spec.ip and { { privateIpAddress = spec.ip } } or nil
  return {
    location = spec.location or c.location,
    sku = { name = spec.sku or M.SKU },
    tags = spec.tags,
    properties = {
      stampId = spec.stamp,
      networkProfile = { subnet = { id = subnet_id }, networkInterfaces = nic },
    },
  }
end

---------------------------------------------------------------------------
-- quota, capacity, orphans

-- Counts per region and stamp at subscription scope, with the names behind
-- them.  Failed HSMs count against the quota (the guide: delete failed
-- deployments first).  opts.hsms: the list to count, when the caller has
-- it (dhsm.azure.checks leaves out what a run re-creates or deletes).
-- Regions as azure.location spells them ("eastus").
function M.summary(c, opts)
  opts = opts or {}
  -- without a client the caller's list is all there is to summarize
  if c == nil and type(opts.hsms) ~= "table" then
    schema.bad_argument("azure.hsm.summary", "c", "an Azure client, or opts.hsms (a list of HSMs)", c)
  end
  local regions = {}
  for _, h in ipairs(opts.hsms or M.list_all(c)) do
    local region = azure.location(h.location) or "?"
    local stamp = h.properties and h.properties.stampId or "unassigned"
    local r = regions[region] or { total = 0, failed = 0, stamps = {}, names = {}, stamp_names = {} }
    regions[region] = r
    r.total = r.total + 1
    r.names[#r.names + 1] = h.name
    if h.properties and h.properties.provisioningState == "Failed" then r.failed = r.failed + 1 end
    r.stamps[stamp] = (r.stamps[stamp] or 0) + 1
    r.stamp_names[stamp] = r.stamp_names[stamp] or {}
    table.insert(r.stamp_names[stamp], h.name)
  end
  return { regions = regions, limits = { per_stamp = M.QUOTA_PER_STAMP, per_region = M.QUOTA_PER_REGION,
    capacity_per_stamp = M.CAPACITY_PER_STAMP } }
end

-- The allowlisting the guide's HSM Registration is about: each feature and its state.
M.FEATURES = { "Microsoft.HardwareSecurityModules/AzureDedicatedHSM", "Microsoft.Network/AllowBaremetalServers" }

function M.features(c)
  local out = {}
  for _, f in ipairs(M.FEATURES) do
    local ns, name = f:match("^([^/]+)/(.+)$")
    local path = ("/subscriptions/%s/providers/Microsoft.Features/providers/%s/features/%s"):format(
      c.subscription, ns, name)
    local r = azure.conform(path, c:find(path, { api_version = azure.API.features }),
      { "object", properties = { "object", state = "string" } })
    out[#out + 1] = { feature = f, state = r and r.properties and r.properties.state or "NotRegistered" }
  end
  return out
end

-- Failed HSM resources in location (every group of the subscription): the
-- leftovers of earlier failed deployments, which count against the quota.
-- "East US" is eastus (azure.location).
function M.leftovers(c, location, hsms)
  local out = {}
  location = azure.location(location)
  for _, h in ipairs(hsms or M.list_all(c)) do
    local p = h.properties or {}
    if p.provisioningState == "Failed" and (location == nil or azure.location(h.location) == location) then
      out[#out + 1] = { name = h.name, group = M.group_of(h), id = h.id, stamp = p.stampId,
        message = p.statusMessage, location = h.location }
    end
  end
  return out
end

-- What of spec an existing resource does not match (ARM refuses to change
-- anything but tags): list of "field: has X, asked Y".
function M.spec_conflicts(c, resource, spec, group)
  local p = resource.properties or {}
  local np = p.networkProfile or {}
  local have = {
    stamp = p.stampId,
    subnet = np.subnet and (np.subnet.id or np.subnet.resourceId),
    ip = np.networkInterfaces and np.networkInterfaces[1] and np.networkInterfaces[1].privateIpAddress,
    sku = resource.sku and resource.sku.name,
  }
  local want = { stamp = spec.stamp, ip = spec.ip, sku = spec.sku or M.SKU,
    subnet = spec.subnet_id or (spec.vnet and network.subnet_path(c, spec.vnet, spec.subnet, group)) }
  local out = {}
  for _, k in ipairs { "sku", "stamp", "subnet", "ip" } do
    if want[k] and have[k] and tostring(want[k]):lower() ~= tostring(have[k]):lower() then
      out[#out + 1] = ("%s: has %s, asked %s"):format(k, have[k], want[k])
    end
  end
  return out
end

-- The private IP of an HSM, read from its NIC (the guide: "the NIC resource
-- always follows the HSM"); nil while no NIC exists yet.
function M.private_ip(c, resource)
  local nics = resource.properties and resource.properties.networkProfile
    and resource.properties.networkProfile.networkInterfaces or {}
  local id = nics[1] and (nics[1].id or nics[1].resourceId)
  if not id then return nil end
  local nic = azure.conform(id, c:find(id), { "object", properties = { "object",
    ipConfigurations = { "objects", items = { "object!", properties = { "object", privateIPAddress = "string" } } } } })
  local cfg = nic and nic.properties and nic.properties.ipConfigurations and nic.properties.ipConfigurations[1]
  return cfg and cfg.properties and cfg.properties.privateIPAddress, id
end

-- HSMs listed at subscription scope whose resource group is gone: still
-- billed.  hsms: the subscription's list when the caller has it already.
function M.orphans(c, hsms)
  local out, groups = {}, {}
  for i, h in ipairs(hsms or M.list_all(c)) do
    local g = M.group_of(h)
    if not g then                              -- not a resource's id: no group to look for
      error(azure.bad_response("GET", ("/subscriptions/%s%s"):format(c.subscription, M.PROVIDER), { status = 200 },
        ("'value[%d].id' (%q) names no resource group"):format(i, tostring(h.id):sub(1, 200))), 0)
    end
    if groups[g] == nil then groups[g] = c:find(c:group_path(g)) ~= nil end
    if not groups[g] then
      local p, sd = h.properties or {}, h.systemData or {}
      out[#out + 1] = { name = h.name, group = g, id = h.id, location = h.location, stamp = p.stampId,
        sku = h.sku and h.sku.name, state = p.provisioningState, created_at = sd.createdAt,
        created_by = sd.createdBy, last_modified_at = sd.lastModifiedAt }
    end
  end
  return out
end

---------------------------------------------------------------------------
-- create and delete

-- start(c, name, spec, {group=, planned=, retry=, skip_preflight=}) -> the PUT response
-- (headers carry x-ms-request-id and the correlation id a support request
-- needs).  First the guide's checks for this one HSM (dhsm.azure.checks:
-- the quota with its own name not counted, the subnet delegation, the
-- gateway Succeeded); a FAIL refuses the PUT.  planned = {vnet=, gateway=}:
-- what the caller's run creates before (in check mode, only described): a
-- SKIP "created by this run", not a FAIL.  In check mode the checks read
-- the real state and the PUT describes itself.
function M.start(c, name, spec, opts)
  opts = opts or {}
  local path = M.path(c, name, opts.group)
  if opts.skip_preflight then
    dhsm.audit.write { action = "safety.override", target = name, outcome = "skip_preflight" }
  else
    local checks = require "dhsm.azure.checks"    -- it reads through this module: loaded once both exist
    local s = checks.scope(c, { group = opts.group, location = spec.location, vnet = spec.vnet, subnet = spec.subnet,
      subnet_id = spec.subnet_id, hsms = { { name = name, stamp = spec.stamp, ip = spec.ip } },
      planned = opts.planned, retry = opts.retry })
    checks.refuse(checks.run(s, checks.BEFORE_PUT), "not creating " .. name, "its PUT was not sent")
  end
  return c:put(path, { body = M.body(c, spec, opts.group) })
end

-- wait(c, name, {group=, timeout=, on_progress=}) -> the Succeeded resource;
-- a Failed one raises (code from its statusMessage when it has one).  In
-- check mode an HSM that does not exist was only described: nil (c:wait).
function M.wait(c, name, opts)
  opts = opts or {}
  return c:wait(M.path(c, name, opts.group), opts)
end

-- create(c, name, spec, {group=, wait=true, timeout=, on_progress=, planned=, retry=, skip_preflight=})
function M.create(c, name, spec, opts)
  opts = opts or {}
  local r = M.start(c, name, spec, opts)
  if opts.wait == false then return r end
  return c:wait(r, opts)
end

-- The DELETE, whose rule (dhsm.azure.rules) reads opts' evidence or
-- override; waits unless wait=false.
local function send_delete(c, name, opts, rule)
  rule.evidence_max_age = opts.evidence_max_age
  local r = c:delete(M.path(c, name, opts.group), rule)
  if opts.wait == false or r.status == 200 or r.status == 204 then return r end
  c:wait(r, opts)
  return r
end

-- delete_failed(c, name, {group=, ...}): delete an HSM resource that ended
-- Failed.  Its device was never handed over (no SO, no key material), so the
-- evidence is the resource's own state, read by the rule just before the
-- DELETE; anything else is refused - such an HSM goes through M.delete
-- with an appliance's zeroization evidence.  nil when it is already gone.
function M.delete_failed(c, name, opts)
  opts = opts or {}
  if M.get(c, name, opts.group) == nil then return nil end
  return send_delete(c, name, opts, { delete_failed = true })
end

-- delete(c, name, {zeroized = evidence | allow_unzeroized = true, group=,
--   evidence_max_age=900, wait=true, ...})
-- The guide: an HSM resource is deleted only once its appliance is
-- zeroized.  `evidence` is what dhsm.luna's session:zeroized_evidence()
-- returns (dhsm.evidence): genuine, of the appliance standing for this
-- resource, and read at most evidence_max_age seconds ago; anything else
-- is refused (by dhsm.azure.rules, which c:delete of the same path meets
-- too).  allow_unzeroized lifts the rule explicitly and is audited.
function M.delete(c, name, opts)
  opts = opts or {}
  M.check_name(name)
  return send_delete(c, name, opts, { zeroized = opts.zeroized, allow_unzeroized = opts.allow_unzeroized })
end

schema.check_arguments("azure.hsm", M, {
  check_name = "name:any",          -- its own check says what a name must be
  path = "c:client name:string group:string?",
  get = "c:client name:string group:string?",
  list = "c:client group:string?",
  list_all = "c:client",
  group_of = "resource:table",
  body = "c:client spec:table group:string?",
  summary = "c:client? opts:table?",
  features = "c:client",
  leftovers = "c:client location:string? hsms:table?",
  spec_conflicts = "c:client resource:table spec:table group:string?",
  private_ip = "c:client resource:table",
  orphans = "c:client hsms:table?",
  start = "c:client name:string spec:table opts:table?",
  wait = "c:client name:string opts:table?",
  create = "c:client name:string spec:table opts:table?",
  delete_failed = "c:client name:string opts:table?",
  delete = "c:client name:string opts:table?",
}, require("dhsm.azure.rules").ARGUMENT_KINDS)

return M
