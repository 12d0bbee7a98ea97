-- dhsm.azure.hsm: dedicated HSM resources (Microsoft.HardwareSecurityModules/dedicatedHSMs).
--
--   local hsm = require "dhsm.azure.hsm"
--   hsm.preflight(c, spec)          -- quota, capacity, subnet delegation, gateway (the guide's causes)
--   hsm.create(c, "hsm3", spec, {on_progress=})   -- refuses what preflight would fail
--   hsm.delete(c, "hsm1", {zeroized = evidence})   -- only with fresh evidence that hsm1's appliance is zeroized
--   hsm.list(c [, group]); hsm.list_all(c); hsm.get(c, name); hsm.summary(c); hsm.orphans(c)
local dhsm = require "dhsm"
local evidence = require "dhsm.evidence"
local network = require "dhsm.azure.network"

local M = {}

M.PROVIDER = "/providers/Microsoft.HardwareSecurityModules/dedicatedHSMs"
M.SKU = "SafeNet Luna Network HSM A790"
M.QUOTA_PER_STAMP, M.QUOTA_PER_REGION, M.CAPACITY_PER_STAMP = 2, 4, 12

local function usage(fmt, ...)
  dhsm.error { kind = "usage", message = fmt:format(...) }
end

function M.check_name(name)
  if type(name) ~= "string" or not name:match("^[%w%-]+$") or #name < 3 or #name > 24 then
    usage("dedicated HSM name %q: expected 3-24 letters, digits or '-'", tostring(name))
  end
  return name
end

function M.path(c, name, group)
  return c:group_path(group) .. M.PROVIDER .. "/" .. M.check_name(name)
end

function M.get(c, name, group)
  return c:find(M.path(c, name, group))
end

function M.list(c, group)
  return c:list(c:group_path(group) .. M.PROVIDER)
end

function M.list_all(c)
  return c:list(("/subscriptions/%s%s"):format(c.subscription, M.PROVIDER))
end

-- "/subscriptions/s/resourceGroups/G/providers/..." -> "G"
function M.group_of(resource)
  return resource.id and resource.id:match("/resource[Gg]roups/([^/]+)/")
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

-- Counts per region and stamp at subscription scope.  Failed HSMs count
-- against the quota (the guide: delete failed deployments first).
function M.summary(c)
  local regions = {}
  for _, h in ipairs(M.list_all(c)) do
    local region = h.location or "?"
    local stamp = h.properties and h.properties.stampId or "unassigned"
    local r = regions[region] or { total = 0, failed = 0, stamps = {} }
    regions[region] = r
    r.total = r.total + 1
    if h.properties and h.properties.provisioningState == "Failed" then r.failed = r.failed + 1 end
    r.stamps[stamp] = (r.stamps[stamp] or 0) + 1
  end
  return { regions = regions, limits = { per_stamp = M.QUOTA_PER_STAMP, per_region = M.QUOTA_PER_REGION,
    capacity_per_stamp = M.CAPACITY_PER_STAMP } }
end

-- HSMs listed at subscription scope whose resource group is gone: still billed.
function M.orphans(c)
  local out, groups = {}, {}
  for _, h in ipairs(M.list_all(c)) do
    local g = M.group_of(h)
    if groups[g] == nil then groups[g] = c:find(c:group_path(g)) ~= nil end
    if not groups[g] then out[#out + 1] = { name = h.name, group = g, id = h.id, location = h.location } end
  end
  return out
end

---------------------------------------------------------------------------
-- preflight: the guide's deployment failures, checked before a PUT

local function check(results, rule, ok, message)
  results[#results + 1] = { rule = rule, ok = ok, message = message }
end

-- preflight(c, spec) -> list of {rule=, ok=, message=}
function M.preflight(c, spec, group)
  local results = {}
  local location = spec.location or c.location
  local counts = M.summary(c).regions[location] or { total = 0, stamps = {} }
  check(results, "quota per region", counts.total < M.QUOTA_PER_REGION,
    ("%d of %d HSMs in %s (failed ones count: delete them first)"):format(counts.total, M.QUOTA_PER_REGION, location))
  if spec.stamp then
    local n = counts.stamps[spec.stamp] or 0
    check(results, "quota per stamp", n < M.QUOTA_PER_STAMP,
      ("%d of %d HSMs in %s"):format(n, M.QUOTA_PER_STAMP, spec.stamp))
  end
  local d = network.check_delegation(c, spec.vnet, spec.subnet, group, spec.subnet_id)
  check(results, "subnet delegation", d.ok, d.message)
  local gw = network.vnet_gateway(c, spec.vnet, group, spec.subnet_id)
  check(results, "ExpressRoute gateway", gw ~= nil and gw.state == "Succeeded",
    gw and ("gateway %s is %s"):format(gw.name, gw.state) or "no gateway in the HSM's virtual network")
  return results
end

local function failed_checks(results)
  local bad = {}
  for _, r in ipairs(results) do
    if not r.ok then bad[#bad + 1] = r.rule .. ": " .. r.message end
  end
  return bad
end

---------------------------------------------------------------------------
-- create and delete

-- create(c, name, spec, {group=, wait=true, timeout=, on_progress=, skip_preflight=})
function M.create(c, name, spec, opts)
  opts = opts or {}
  local path = M.path(c, name, opts.group)
  if opts.skip_preflight then
    dhsm.audit.write { action = "safety.override", target = name, outcome = "skip_preflight" }
  else
    local bad = failed_checks(M.preflight(c, spec, opts.group))
    if #bad > 0 then
      dhsm.error { kind = "safety", code = "PreflightFailed",
        message = ("not creating %s: %s"):format(name, table.concat(bad, "; ")), details = { failed = bad } }
    end
  end
  local r = c:put(path, { body = M.body(c, spec, opts.group) })
  if opts.wait == false then return r end
  return c:wait(r, opts)
end

-- delete(c, name, {zeroized = evidence | allow_unzeroized = true, group=,
--   evidence_max_age=900, wait=true, ...})
-- The guide: an HSM resource is deleted only once its appliance is
-- zeroized.  `evidence` is what dhsm.luna's session:zeroized_evidence()
-- returns (dhsm.evidence): genuine, of the appliance standing for this
-- resource, and read at most evidence_max_age seconds ago; anything else
-- is refused.  allow_unzeroized lifts the rule explicitly and is audited.
function M.delete(c, name, opts)
  opts = opts or {}
  M.check_name(name)
  if opts.allow_unzeroized then
    dhsm.audit.write { action = "safety.override", target = name, outcome = "allow_unzeroized" }
  elseif opts.zeroized == nil then
    dhsm.error { kind = "safety", code = "NotZeroized",
      message = ("not deleting HSM %s: its appliance has not been shown to be zeroized "
        .. "(zeroize it first; the resource cannot be deleted before)"):format(name) }
  else
    local ev = evidence.check(opts.zeroized, name, { max_age = opts.evidence_max_age })
    dhsm.audit.write { action = "safety.evidence", target = name, outcome = "zeroized",
      appliance = ev.appliance, serial = ev.serial, checked_at = ev.checked_at }
  end
  local r = c:delete(M.path(c, name, opts.group))
  if opts.wait == false or r.status == 200 or r.status == 204 then return r end
  c:wait(r, opts)
  return r
end

return M
