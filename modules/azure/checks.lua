-- dhsm.azure.checks: the troubleshooting guide's Azure checks, each written
-- once, each giving dhsm.findings rows {check=, target=, status=, finding=,
-- remedy=, guide=, fix=} - for diagnose (the whole group), provision's
-- preflight (a run about to deploy) and hsm.start (one HSM before its PUT).
--
--   local checks = require "dhsm.azure.checks"
--   local s = checks.scope(c, {group=, location=, vnet=, subnet= | subnet_id=,
--     hsms = {{name=, stamp=, ip=, ...}},         -- HSMs about to be created; none: a diagnosis
--     planned = {vnet=, gateway=, leftovers=},    -- what this run creates, finishes or deletes first
--     new_gateway = {name=, public_ip=},          -- the gateway it creates in a VNet without one
--     expected = {{name=, resource=}}, addresses = {hsm = {"eth0 10.2.1.4"}},  -- an inventory's view
--     retry = function(what, fn) ... end})        -- how a read rides out a busy Azure
--   local rows = checks.run(s, {"credentials", "allowlisting", "quota", ...})   -- every check at once
--   checks.refuse(rows, "preflight", "nothing was changed")   -- a FAIL row: safety PreflightFailed listing each
--   checks.quota(s) -> rows            -- one check alone (it raises what it cannot read)
--
-- What a status means here: FAIL is what fails a deployment or is broken
-- now - when `hsms` names HSMs about to be created, what would fail *them*
-- (a registration still pending, the quota they would pass, a gateway not
-- Succeeded); WARN deserves attention but fails nothing yet; SKIP could not
-- be checked (its finding says why: a read another row reports failed, or
-- a resource that does not exist yet); a row with `fix` is what the run
-- makes right itself (a planned VNet or gateway: SKIP "created by this
-- run"; a leftover the run deletes: WARN) - never a FAIL.
--
-- Reads are shared: the subscription's HSMs, a group's gateways, a VNet
-- are read once per scope whichever checks ask (s:read).  Azure gives no
-- count of a stamp's free devices: the only capacity evidence is an
-- earlier failure for capacity.
local azure = require "dhsm.azure"
local classify = require "dhsm.azure.classify"
local deploy = require "dhsm.azure.deploy"
local dhsm = require "dhsm"
local findings = require "dhsm.findings"
local hsm = require "dhsm.azure.hsm"
local network = require "dhsm.azure.network"
local schema = require "dhsm.schema"
local util = require "dhsm.util"

local M = {}

-- Advice for what only these checks find, under the guide's section it
-- comes from; a caller reporting a failed read of its own says the same
-- (ADVICE.arm_read).  The classes of dhsm.azure.classify have theirs.
local ADVICE = findings.by_guide {
  ["HSM Deployment Using Terraform, Provisioning ExpressRoute"] = {
    gateway = "HSMs need the ExpressRoute gateway Succeeded before they are deployed (az resource show ... "
      .. "provisioningState); a Failed gateway must be redeployed",
  },
  ["Provisioning ExpressRoute"] = {
    gateway_sku = "Dedicated HSM needs an ExpressRoute gateway (gatewayType ExpressRoute) whose public IP is "
      .. "Standard SKU",
    gateway_name = "choose another gateway name (one gateway per virtual network)",
    gateway_subnet = "add a GatewaySubnet (e.g. /26) to the virtual network, or create the network in a new one",
    one_gateway = "a virtual network can have one gateway: keep the HSMs' ExpressRoute gateway and connect "
      .. "on-premises networks through another VNet",
  },
  ["How do I see HSMs when provisioned?"] = {
    missing = "check the inventory against Azure: dedicated HSMs are hidden types ('Show hidden types')",
  },
  ["How do I see HSMs when provisioned?, HSM Private IP Address"] = {
    nic = "the NIC follows the HSM and holds its private IP: find it with 'Show hidden types'",
  },
  ["HSM Deployment Failure Information"] = {
    provisioning = "wait for the deployment to finish",
    deployment_old = "an earlier failure whose resources have since succeeded: delete the deployment record to "
      .. "silence it",
  },
  ["Deployment failure based on quota"] = {
    leftover = "delete it before deploying: a failed HSM holds its place in the quota",
  },
  ["HSM Subnet Delegation"] = {
    vnet = "create the virtual network with a subnet delegated to " .. network.DELEGATION .. ", or name an existing one",
  },
  ["How to delete an HSM resource"] = {
    orphan = "an orphaned HSM is billed until Microsoft removes it: open a support request ('dhsm run orphans' "
      .. "prints what it needs)",
  },
  [""] = {
    arm_read = "Azure refused this read (ARM's code and message above); check the credential's access (Reader on the "
      .. "subscription and the group) and run again",
    group_missing = "the resource group the inventory names (azure.resource_group) does not exist in this "
      .. "subscription: correct the inventory, or create the group (dhsm run provision creates it)",
    bug = "the check itself failed: report it with this message",
    unavailable = "Azure is busy or down (throttled, a server error, no answer): run again later",
    credentials = "check the inventory's azure credential (tenant, client id, secret) and its role on the "
      .. "subscription",
    existing = "only tags can change: choose another name, or decommission it first",
    subnet_id = "name the HSM subnet by its full ARM id, or by its virtual network and subnet names",
  },
}
M.ADVICE = ADVICE

-- read_advice(err [, otherwise]) -> the advice for an ARM read that failed:
-- an outage (no answer, 429, 5xx) is not the credential's fault, a 403 for
-- a permission its role's (the permission the error names), another 403
-- (a policy deny) neither; else
-- otherwise when given (the read's own advice), a group that does not exist
-- is the inventory's mistake, anything else the credential's access.
function M.read_advice(err, otherwise)
  local status = err.status or (type(err.details) == "table" and err.details.status) or nil
  if err.kind ~= "azure" or status == 429 or (status or 0) >= 500 then return ADVICE.unavailable end
  -- signed in, not allowed: the role, not the secret (a policy deny's 403 is neither: its own text, below)
  if classify.lacks_permission(err) then return classify.ADVICE.permission end
  if status == 403 then return classify.ADVICE.refused end
  if otherwise then return otherwise end
  if err.code == "ResourceGroupNotFound" then return ADVICE.group_missing end
  return ADVICE.arm_read
end
local CLASS = classify.ADVICE

local CREATED = "created by this run"
local DELETED = "deleted by this run first (a confirmed step)"

-- row(check, target, status, finding [, advice [, fix]]) -> a findings row;
-- an OK row carries no advice.
local function row(check, target, status, finding, advice, fix)
  advice = status ~= "OK" and advice or {}
  return findings.row { check = check, target = target, status = status, finding = finding,
    remedy = advice.remedy, guide = advice.guide, fix = fix }
end

local function lower(s) return s and s:lower() or "" end

-- The parts of ARM ids, however they are cased (ARM compares them
-- case-insensitively; dhsm.azure.id_part), in the case they were given.
local function group_of_id(id) return (azure.id_part(id, "resourceGroups")) end
local function name_of_id(id) return id and id:match("[^/]+$") end

-- A subnet id's VNet (its id) and subnet name; nil unless the id names a
-- group, a VNet and a subnet of it (nothing to look up otherwise).
local function subnet_parts(id)
  local _, vnet_id = azure.id_part(id, "virtualNetworks")
  local subnet = vnet_id and group_of_id(vnet_id) and azure.id_part(id:sub(#vnet_id + 1), "subnets")
  if subnet then return vnet_id, subnet end
end

local function vnet_of_subnet(id) return (subnet_parts(id)) end

-- "…/virtualNetworks/v/subnets/s" -> "v/subnets/s", as the rows name a
-- subnet; an id that names none, as it is.
local function subnet_label(id)
  local vnet_id, subnet = subnet_parts(id)
  return vnet_id and ("%s/subnets/%s"):format(name_of_id(vnet_id), subnet) or id
end

-- The name of a subnet's VNet, as the gateway rows name their target; an
-- id that names none, as it is.
local function vnet_label(id) return name_of_id(vnet_of_subnet(id)) or id end

-- HSMs by name, lower-cased: ARM's names are case-insensitive (HSM-A is hsm-a).
local function by_name(list)
  local out = {}
  for _, h in ipairs(list) do out[lower(h.name)] = h end
  return out
end

local function hsm_state(h) return (h.properties or {}).provisioningState end

local function subnet_of(h)
  local sub = ((h.properties or {}).networkProfile or {}).subnet
  return sub and (sub.id or sub.resourceId)
end

---------------------------------------------------------------------------
-- the scope: what the checks look at, and the reads they share

local Scope = {}
Scope.__index = Scope

local SCOPE_OPTIONS = {
  group = { type = "string" }, location = { type = "string" }, vnet = { type = "string" },
  subnet = { type = "string" }, subnet_id = { type = "string" }, hsms = { type = "list", items = { type = "table" } },
  planned = { type = "table" }, new_gateway = { type = "table" }, expected = { type = "list", items = { type = "table" } },
  addresses = { type = "table" }, retry = { type = "function" },
}

local function direct(_, fn) return fn() end

-- scope(c, opts) -> the scope the checks run on (see the top of the file)
function M.scope(c, opts)
  opts = schema.options("azure checks", opts, SCOPE_OPTIONS) or {}
  if opts.vnet and not opts.subnet then dhsm.usage("azure checks: subnet: missing, expected the HSM subnet of vnet") end
  local seen = {}
  for i, h in ipairs(opts.hsms or {}) do
    if type(h.name) ~= "string" then dhsm.usage("azure checks: hsms[%d].name: expected an HSM name", i) end
    hsm.check_name(h.name)
    -- one resource asked for twice would be counted twice against the quota
    local first = seen[h.name:lower()]
    if first then
      dhsm.usage("azure checks: hsms[%d].name: %s is hsms[%d] again (ARM's names are case-insensitive), expected "
        .. "each HSM once", i, h.name, first)
    end
    seen[h.name:lower()] = i
  end
  local s = setmetatable({ c = c, group = opts.group or c.resource_group,
    location = azure.location(opts.location or c.location),     -- "East US" is eastus, in every comparison
    hsms = opts.hsms or {}, planned = opts.planned or {}, new_gateway = opts.new_gateway,
    expected = opts.expected or {}, addresses = opts.addresses, retry = opts.retry or direct, memo = {},
    foundation_errors = {} }, Scope)
  s.subnet_id = opts.subnet_id or (opts.vnet and network.subnet_path(c, opts.vnet, opts.subnet, s.group))
  s.deploying = #s.hsms > 0
  return s
end

-- read(key, fn, ...) -> fn(...)'s results, read once for every check of
-- the scope (a check asking while another reads waits for that read) and
-- through the scope's retry; a failure is raised to every asker.
function Scope:read(key, fn, ...)
  local m = self.memo[key]
  if not m then
    m = { gate = dhsm.semaphore(1) }
    self.memo[key] = m
  end
  local args = table.pack(...)
  m.gate:run(function()
    if m.result then return end
    m.result = table.pack(findings.attempt(self.retry, key, function() return fn(table.unpack(args, 1, args.n)) end))
  end)
  if not m.result[1] then error(m.result[2], 0) end
  return table.unpack(m.result, 2, m.result.n)
end

function Scope:find(path)
  return self:read("GET " .. path, self.c.find, self.c, path)
end

-- Every dedicated HSM of the subscription (quota and orphans are counted there).
function Scope:all_hsms()
  return self:read("dedicated HSMs", hsm.list_all, self.c)
end

-- The HSMs of the scope's group.
function Scope:group_hsms()
  local out = {}
  for _, h in ipairs(self:all_hsms()) do
    if lower(hsm.group_of(h)) == lower(self.group) then out[#out + 1] = h end
  end
  return out
end

-- Failed HSMs in the scope's region, in any group: leftovers of earlier
-- failed deployments, which count against the quota.
function Scope:leftovers()
  return hsm.leftovers(self.c, self.location, self:all_hsms())
end

function Scope:failed_deployments()
  return self:read("failed deployments", deploy.failed, self.c, self.group)
end

-- The gateways serving a VNet (its id), from its group's list read once.
function Scope:vnet_gateways(vnet_id)
  local group = group_of_id(vnet_id)
  local list = self:read("gateways of " .. lower(group), network.gateways, self.c, group)
  return network.vnet_gateways(self.c, name_of_id(vnet_id), group, vnet_id, list)
end

-- The distinct values of f(x) for the items of list (case aside), in order.
local function distinct(list, f)
  local seen, out = {}, {}
  for _, x in ipairs(list) do
    local v = f(x)
    if v and not seen[lower(v)] then
      seen[lower(v)] = true
      out[#out + 1] = v
    end
  end
  return out
end

-- The subnets the checks look at: the scope's own, else those the group's HSMs sit on.
function Scope:subnet_ids()
  if self.subnet_id then return { self.subnet_id } end
  return distinct(self:group_hsms(), subnet_of)
end

-- Their virtual networks (of the subnet ids that name one).
function Scope:vnet_ids()
  return distinct(self:subnet_ids(), vnet_of_subnet)
end

-- A FAIL for each subnet id the checks cannot read a VNet from (a caller's
-- subnet_id, an HSM's networkProfile): the check could not look, and says
-- so - no row at all would let a run deploy past it.
local function unreadable_subnets(s, check)
  local out = {}
  for _, id in ipairs(s:subnet_ids()) do
    if not vnet_of_subnet(id) then
      out[#out + 1] = row(check, id, "FAIL", ("subnet id %s names no virtual network: expected /subscriptions/SUB/"
        .. "resourceGroups/GROUP/providers/Microsoft.Network/virtualNetworks/VNET/subnets/SUBNET"):format(id),
        ADVICE.subnet_id)
    end
  end
  return out
end

-- FAIL rows that are Azure not answering a read (an outage, throttling,
-- a token endpoint down, a permission missing), with the error: refuse
-- raises that error rather than a safety refusal - nothing was found
-- wrong with what the run would do, Azure could not be asked.
local unanswered = setmetatable({}, { __mode = "k" })

local function azure_side(err)
  return err.kind == "azure" or err.kind == "net" or err.kind == "timeout"
end

-- The FAIL row of a read that failed with err (otherwise: the read's own
-- advice for Azure's refusal), remembered when Azure's side failed it.
local function read_failure(check, target, finding, err, otherwise)
  local r = row(check, target, "FAIL", finding, azure_side(err) and M.read_advice(err, otherwise) or ADVICE.bug)
  if azure_side(err) then unanswered[r] = err end
  return r
end

-- The row of a check that could not run: SKIP naming the cause when
-- the cause is a read another row already reports, else a FAIL.
local function failure_row(s, check, target, err)
  local cause = s.foundation_errors[err]
  if cause then return row(check, target, "SKIP", "not checked: " .. cause) end
  return read_failure(check, target, findings.error_text(err), err)
end

-- guarded(s, out, check, target, fn, ...) -> fn's results; a failed read
-- is a row of check on target instead (nil returned), so one refused read
-- costs one row, not the check's other targets.
local function guarded(s, out, check, target, fn, ...)
  local r = table.pack(findings.attempt(fn, ...))
  if r[1] then return table.unpack(r, 2, r.n) end
  out[#out + 1] = failure_row(s, check, target, r[2])
  return nil
end

---------------------------------------------------------------------------
-- credentials and the resource group (a run about to change things)

function M.credentials(s)
  local sub = s.c.subscription
  local ok, err = findings.attempt(s.read, s, "subscription", function()
    return s.c:get("/subscriptions/" .. sub, { api_version = "2022-12-01" })
  end)
  if ok then return { row("credentials", sub, "OK", "subscription " .. sub .. " readable") } end
  return { read_failure("credentials", sub, ("cannot read subscription %s: %s"):format(sub, findings.error_text(err)),
    err, ADVICE.credentials) }
end

function M.resource_group(s)
  if s:find(s.c:group_path(s.group)) then
    return { row("resource group", s.group, "OK", ("resource group %s exists"):format(s.group)) }
  end
  return { row("resource group", s.group, "FAIL", ("resource group %s does not exist in subscription %s"):format(
    s.group, s.c.subscription), { remedy = ("if the inventory misnames it, correct azure.resource_group; else "
    .. "create it first: az group create --name %s --location %s"):format(s.group, s.location) }) }
end

---------------------------------------------------------------------------
-- Guide, "HSM Registration": the subscription must be allowlisted.

function M.allowlisting(s)
  local sub = s.c.subscription
  local bad, pending = {}, {}
  for _, f in ipairs(s:read("features", hsm.features, s.c)) do
    local text = f.feature .. " is " .. tostring(f.state)
    if f.state == "Pending" or f.state == "Registering" then pending[#pending + 1] = text
    elseif f.state ~= "Registered" then bad[#bad + 1] = text end
  end
  local advice = CLASS.allowlisting
  if #bad > 0 then
    return { row("allowlisting", sub, "FAIL", "not allowlisted: " .. table.concat(bad, ", "), advice) }
  elseif #pending > 0 then
    -- on its way: nothing is broken, but an HSM created now fails
    return { row("allowlisting", sub, s.deploying and "FAIL" or "WARN",
      "registration pending: " .. table.concat(pending, ", "), advice) }
  end
  return { row("allowlisting", sub, "OK", "features registered: " .. table.concat(hsm.FEATURES, ", ")) }
end

---------------------------------------------------------------------------
-- Guide, "HSM Deployment Failure Information" and "Deployment failure
-- based on quota": each HSM's state; a failed one classified from its
-- messages, and a leftover that holds a place in the quota.

-- The state of the gateway serving an HSM's VNet, for the classifier
-- (a failure while it was not Succeeded is the race); nil when unknown.
local function gateway_state_of(s, h)
  local vnet_id = vnet_of_subnet(subnet_of(h))
  if not vnet_id then return nil end
  local ok, gws = findings.attempt(s.vnet_gateways, s, vnet_id)
  return ok and gws[1] and gws[1].state or nil
end

local function failed_hsm_row(s, h)
  local p = h.properties or {}
  local g = gateway_state_of(s, h)
  local v = classify.failure { messages = { p.statusMessage }, states = { [h.name] = "Failed" },
    gateway = g and { state = g } or nil }
  local finding = ("Failed (%s): %s; in group %s, stamp %s, it counts against the quota"):format(v.class,
    tostring(p.statusMessage), tostring(hsm.group_of(h)), tostring(p.stampId))
  if not s.deploying then return row("hsm provisioning", h.name, "FAIL", finding, v) end
  -- a run about to deploy deletes it first, or the quota row counts its place
  if s.planned.leftovers then return row("hsm provisioning", h.name, "WARN", finding, ADVICE.leftover, DELETED) end
  return row("hsm provisioning", h.name, "WARN", finding, ADVICE.leftover)
end

local function hsm_row(s, h)
  local p = h.properties or {}
  local state = p.provisioningState or "?"
  if state == "Succeeded" then
    return row("hsm provisioning", h.name, "OK", ("Succeeded (stamp %s, %s)"):format(tostring(p.stampId), h.location))
  elseif state == "Failed" then
    return failed_hsm_row(s, h)
  end
  return row("hsm provisioning", h.name, "WARN", ("%s: not Succeeded yet"):format(state), ADVICE.provisioning)
end

function M.hsms(s)
  local out, have = {}, by_name(s:group_hsms())
  for _, h in ipairs(s:group_hsms()) do out[#out + 1] = hsm_row(s, h) end
  if s.deploying then          -- leftovers in other groups hold places in the region's quota too
    for _, h in ipairs(s:all_hsms()) do
      local here = azure.location(h.location) == s.location
      if lower(hsm.group_of(h)) ~= lower(s.group) and here and hsm_state(h) == "Failed" then
        out[#out + 1] = failed_hsm_row(s, h)
      end
    end
  end
  if #out == 0 then out[1] = row("hsm provisioning", s.group, "OK", "no dedicated HSM in group " .. s.group) end
  for _, e in ipairs(s.expected) do
    local resource = e.resource or e.name
    local group_cause = s.causes and s.causes.group    -- the group's FAIL is the cause
    if not have[lower(resource)] and group_cause then
      out[#out + 1] = row("hsm provisioning", resource, "SKIP", "not checked: " .. group_cause)
    elseif not have[lower(resource)] then
      out[#out + 1] = row("hsm provisioning", resource, "FAIL", ("the inventory's %s stands for dedicated HSM %s, "
        .. "which group %s does not hold"):format(e.name, resource, s.group), ADVICE.missing)
    end
  end
  return out
end

-- A failed deployment, with its failed operations' messages; one whose
-- resources have all since succeeded is only a record to clean up.
local function deployment_row(s, d, have)
  local out = {}
  local ops = guarded(s, out, "failed deployments", d.name, deploy.failed_operations, s.c, d.name, s.group)
  if not ops then return out[1] end
  local parts, messages, still_failed = {}, {}, #ops == 0
  for _, op in ipairs(ops) do
    parts[#parts + 1] = ("%s %s: %s"):format(op.resource or "?", op.code or "?", op.message or "")
    messages[#messages + 1] = op.message
    local now = op.resource and have[lower(op.resource)]
    if not (now and hsm_state(now) == "Succeeded") then still_failed = true end
  end
  local v = classify.failure { messages = messages, error = ops[1] and ops[1].code and { code = ops[1].code } or nil,
    states = { x = "Failed" } }
  local text = ("failed %s (correlation %s): %s"):format(tostring(d.timestamp), tostring(d.correlation_id),
    #parts > 0 and table.concat(parts, "; ") or "no failed operation recorded")
  if s.deploying then
    return row("failed deployments", d.name, "WARN", text, ADVICE.deployment_old, s.planned.leftovers and DELETED or nil)
  end
  return row("failed deployments", d.name, still_failed and "FAIL" or "WARN", text,
    still_failed and v or ADVICE.deployment_old)
end

function M.deployments(s)
  local have = by_name(s:group_hsms())
  local failed = s:failed_deployments()
  if #failed == 0 then return { row("failed deployments", s.group, "OK", "no failed deployment in group " .. s.group) } end
  return dhsm.parallel(failed, function(d) return deployment_row(s, d, have) end)
end

---------------------------------------------------------------------------
-- Guide, "Deployment failure based on quota" (2 per stamp, 4 per region;
-- failed HSMs count, the HSMs taking the places are named) and "... on
-- capacity" (no free-device count exists: an earlier failure is the evidence).

-- The HSMs holding places: all of the subscription's, except those about
-- to be (re)created under the same name in the group, and the leftovers
-- the run deletes first.
local function place_holders(s)
  local mine, freed, out = by_name(s.hsms), {}, {}
  if s.planned.leftovers then
    for _, l in ipairs(s:leftovers()) do freed[lower(l.id)] = true end
  end
  for _, h in ipairs(s:all_hsms()) do
    local rerun = mine[lower(h.name)] and lower(hsm.group_of(h)) == lower(s.group)
    if not rerun and not freed[lower(h.id)] then out[#out + 1] = h end
  end
  return out
end

-- A diagnosis: each region's use, stamps inline; failed ones hold places.
local function quota_use(s)
  local summary = hsm.summary(nil, { hsms = s:all_hsms() })
  local out = {}
  for _, region in ipairs(util.sorted_keys(summary.regions)) do
    local r = summary.regions[region]
    local stamps = {}
    for stamp, n in pairs(r.stamps) do stamps[#stamps + 1] = ("%s %d/%d"):format(stamp, n, hsm.QUOTA_PER_STAMP) end
    table.sort(stamps)
    local text = ("%d of %d HSMs in %s (%s; a stamp's capacity is not published: a full one fails deployments with "
      .. "InsufficientCapacity)"):format(r.total, hsm.QUOTA_PER_REGION, region, table.concat(stamps, ", "))
    if r.failed > 0 then
      out[#out + 1] = row("quota", region, "WARN", text .. ("; %d failed HSM(s) hold places: delete them"):format(
        r.failed), CLASS.quota)
    elseif r.total >= hsm.QUOTA_PER_REGION then
      out[#out + 1] = row("quota", region, "WARN", text .. "; at the initial quota: a new HSM fails unless it was raised",
        CLASS.quota)
    else
      out[#out + 1] = row("quota", region, "OK", text)
    end
  end
  if #out == 0 then out[1] = row("quota", "subscription", "OK", "no dedicated HSM in the subscription") end
  return out
end

-- One limit after this run: `used` names the HSMs there, `adding` how many come.
local function limit_row(target, used, adding, limit, per)
  used = table.move(used, 1, #used, 1, {})
  table.sort(used)
  local n = #used + adding
  if n > limit then
    return row("quota", target, "FAIL", ("would hold %d HSMs, the quota is %d per %s (in use: %s)"):format(n, limit,
      per, #used > 0 and table.concat(used, ", ") or "none"), CLASS.quota)
  end
  return row("quota", target, "OK", ("%d of %d HSMs per %s after this run"):format(n, limit, per))
end

function M.quota(s)
  if not s.deploying then return quota_use(s) end
  local r = hsm.summary(nil, { hsms = place_holders(s) }).regions[s.location] or { names = {}, stamp_names = {} }
  local out = { limit_row(s.location, r.names, #s.hsms, hsm.QUOTA_PER_REGION, "region") }
  local per_stamp = {}
  for _, h in ipairs(s.hsms) do
    if h.stamp then per_stamp[h.stamp] = (per_stamp[h.stamp] or 0) + 1 end
  end
  for _, stamp in ipairs(util.sorted_keys(per_stamp)) do
    out[#out + 1] = limit_row(stamp, r.stamp_names[stamp] or {}, per_stamp[stamp], hsm.QUOTA_PER_STAMP, "stamp")
  end
  return out
end

function M.capacity(s)
  local stamps = {}
  for _, h in ipairs(s.hsms) do stamps[h.stamp or "any"] = true end
  for _, l in ipairs(s:leftovers()) do
    local v = classify.failure { messages = { l.message }, states = { [l.name] = "Failed" } }
    if v.class == "capacity" and (stamps[l.stamp] or stamps.any or not s.deploying) then
      return { row("capacity", s.location, "WARN", ("%s failed for capacity in %s: a new HSM there may fail too"):format(
        l.name, tostring(l.stamp)), CLASS.capacity) }
    end
  end
  return { row("capacity", s.location, "OK", "no earlier failure for capacity (Azure publishes no free-device count)") }
end

---------------------------------------------------------------------------
-- Guide, "HSM Subnet Delegation" (the number one cause).

-- The subnet is missing: because its VNet is (a planned one is created by
-- this run), or on its own.
local function missing_subnet_row(s, id)
  local target, vnet_id = subnet_label(id), vnet_of_subnet(id)
  local vnet_exists = s:find(vnet_id) ~= nil
  local what = vnet_exists and ("subnet %s does not exist"):format(target)
    or ("virtual network %s does not exist"):format(name_of_id(vnet_id))
  if s.planned.vnet then return row("subnet delegation", target, "SKIP", what .. " yet", nil, CREATED .. ", delegated") end
  if not vnet_exists then return row("subnet delegation", target, "FAIL", what, ADVICE.vnet) end
  local create = network.delegation_fix(s.c, name_of_id(vnet_id), name_of_id(id), group_of_id(id), "create")
  return row("subnet delegation", target, "FAIL", what, { remedy = "create it, delegated: " .. create,
    guide = CLASS.delegation.guide })
end

local function delegation_row(s, id)
  local target = subnet_label(id)
  local d = s:read("delegation of " .. lower(id), network.check_delegation, s.c, nil, nil, nil, id)
  if d.ok then return row("subnet delegation", target, "OK", d.message) end
  if d.missing then return missing_subnet_row(s, id) end
  if s.planned.vnet then return row("subnet delegation", target, "WARN", d.message, nil, "delegated by this run") end
  local fix = network.delegation_fix(s.c, name_of_id(vnet_of_subnet(id)), name_of_id(id), group_of_id(id))
  return row("subnet delegation", target, "FAIL", d.message, { remedy = "delegate it (" .. fix .. "), then delete "
    .. "any HSM that failed on it and redeploy", guide = CLASS.delegation.guide })
end

function M.delegation(s)
  local out = unreadable_subnets(s, "subnet delegation")
  for _, id in ipairs(s:subnet_ids()) do
    local r = vnet_of_subnet(id) and guarded(s, out, "subnet delegation", subnet_label(id), delegation_row, s, id)
    if r then out[#out + 1] = r end
  end
  return out
end

---------------------------------------------------------------------------
-- Guide, "Provisioning ExpressRoute": one ExpressRoute gateway per VNet,
-- Succeeded before any HSM (the race), its public IP Standard SKU.

-- An existing gateway: state, type, SKU, public IP.
local function gateway_row(s, vnet, g)
  local out = {}
  local p = g.resource.properties or {}
  local pip = guarded(s, out, "gateway", vnet, s.read, s, "public IP of " .. lower(g.resource.id or g.name),
    network.public_ip_sku, s.c, g.resource)
  if #out > 0 then return out[1] end
  local text = ("%s %s, type %s, SKU %s, public IP %s"):format(g.name, tostring(g.state), tostring(g.type),
    p.sku and p.sku.name or "?", tostring(pip or "none"))
  if g.state == "Failed" then return row("gateway", vnet, "FAIL", text, ADVICE.gateway) end
  if g.type ~= "ExpressRoute" or pip == "Basic" then return row("gateway", vnet, "FAIL", text, ADVICE.gateway_sku) end
  if g.state ~= "Succeeded" then
    if s.planned.gateway then
      return row("gateway", vnet, "WARN", text, ADVICE.gateway, "waited for by this run until Succeeded")
    end
    return row("gateway", vnet, s.deploying and "FAIL" or "WARN", text .. ": HSMs deployed now hit the race",
      ADVICE.gateway)
  end
  if pip == nil then
    -- ARM accepted it and it is Succeeded: nothing shows it fails an HSM,
    -- but it is not the gateway the guide's setup (and ours) builds
    return row("gateway", vnet, "WARN", text .. ": an ExpressRoute gateway for Dedicated HSM is expected to have a "
      .. "Standard public IP", ADVICE.gateway_sku)
  end
  local ng = s.new_gateway
  local used = ng and ng.name ~= g.name and (" (used instead of %s: one gateway per virtual network)"):format(ng.name)
  return row("gateway", vnet, "OK", text .. (used or ""))
end

-- What stands in the way of the gateway this run creates: its name taken,
-- its public IP not Standard, no GatewaySubnet in a VNet not the run's.
local function new_gateway_rows(s, vnet_id, vnet_exists)
  local vnet, ng, out = name_of_id(vnet_id), s.new_gateway, {}
  if ng and s:find(network.gateway_path(s.c, ng.name, s.group)) then
    out[#out + 1] = row("gateway", vnet, "FAIL", ("gateway name %s is taken by a gateway of another virtual network")
      :format(ng.name), ADVICE.gateway_name)
  end
  local pip_path = ng and network.public_ip_path(s.c, ng.public_ip, s.group)
  local pip = pip_path and azure.conform(pip_path, s:find(pip_path), network.PUBLIC_IP_SHAPE)
  if pip and (pip.sku and pip.sku.name or "Basic") ~= "Standard" then
    out[#out + 1] = row("gateway", vnet, "FAIL", ("public IP %s is %s SKU: an ExpressRoute gateway needs Standard")
      :format(ng.public_ip, pip.sku and pip.sku.name or "Basic"), ADVICE.gateway_sku)
  end
  if vnet_exists and not s.planned.vnet and s:find(vnet_id .. "/subnets/GatewaySubnet") == nil then
    out[#out + 1] = row("gateway", vnet, "FAIL", "no gateway and no GatewaySubnet to put one in", ADVICE.gateway_subnet)
  end
  if #out == 0 then
    local what = ng and ("ExpressRoute gateway %s with Standard public IP %s"):format(ng.name, ng.public_ip)
      or "its ExpressRoute gateway"
    out[1] = row("gateway", vnet, "SKIP", ("no gateway in %s yet"):format(vnet), nil, CREATED .. ": " .. what)
  end
  return out
end

-- A VNet without a gateway: the run's to create, or a FAIL (or a SKIP when
-- the VNet itself is missing: the delegation row reports that).
local function no_gateway_rows(s, vnet_id)
  local vnet = name_of_id(vnet_id)
  local exists = s:find(vnet_id) ~= nil
  if s.planned.gateway then return new_gateway_rows(s, vnet_id, exists) end
  if not exists then
    return { row("gateway", vnet, "SKIP", ("not checked: virtual network %s does not exist"):format(vnet)) }
  end
  return { row("gateway", vnet, "FAIL", "no gateway in virtual network " .. vnet, ADVICE.gateway) }
end

local function vnet_gateway_rows(s, vnet_id)
  local vnet = name_of_id(vnet_id)
  local gws = s:vnet_gateways(vnet_id)
  local out = {}
  if #gws > 1 then
    local names = {}
    for i, g in ipairs(gws) do names[i] = g.name end
    table.sort(names)
    out[1] = row("one gateway per vnet", vnet, "FAIL", ("%d gateways: %s"):format(#gws, table.concat(names, ", ")),
      ADVICE.one_gateway)
  else
    out[1] = row("one gateway per vnet", vnet, "OK", #gws == 1 and ("one gateway: " .. gws[1].name) or "no gateway")
  end
  if #gws == 0 then
    for _, r in ipairs(no_gateway_rows(s, vnet_id)) do out[#out + 1] = r end
  end
  for _, g in ipairs(gws) do out[#out + 1] = gateway_row(s, vnet, g) end
  return out
end

function M.gateway(s)
  local out = unreadable_subnets(s, "gateway")
  for _, vnet_id in ipairs(s:vnet_ids()) do
    for _, r in ipairs(guarded(s, out, "gateway", name_of_id(vnet_id), vnet_gateway_rows, s, vnet_id) or {}) do
      out[#out + 1] = r
    end
  end
  return out
end

---------------------------------------------------------------------------
-- What a run creating HSMs needs besides: an HSM of the same name is the
-- same resource, and ARM changes nothing of it but its tags.

function M.existing(s)
  local have = by_name(s:group_hsms())
  local out = {}
  for _, want in ipairs(s.hsms) do
    local h = have[lower(want.name)]
    if h then
      local diff = hsm.spec_conflicts(s.c, h, want, s.group)
      local as = h.name ~= want.name and (" as " .. h.name) or ""     -- asked in another case: the resource's own
      if #diff > 0 then
        out[#out + 1] = row("existing hsm", want.name, "FAIL", ("exists%s with another spec (%s)"):format(as,
          table.concat(diff, "; ")), ADVICE.existing)
      else
        out[#out + 1] = row("existing hsm", want.name, "OK", ("exists%s, %s"):format(as, tostring(hsm_state(h))))
      end
    end
  end
  if #out == 0 then out[1] = row("existing hsm", s.group, "OK", "none of the HSMs to create exists yet") end
  return out
end

---------------------------------------------------------------------------
-- Guide, "How do I see HSMs when provisioned" and "HSM Private IP
-- Address": the NIC follows the HSM and gives the IP to SSH to; against
-- the appliance's own addresses when the scope has them.

local function nic_row(s, h)
  local out = {}
  local ip, id = guarded(s, out, "nic private ip", h.name, hsm.private_ip, s.c, h)
  if #out > 0 then return out[1] end
  if not id then
    return row("nic private ip", h.name, "FAIL", "no NIC: the HSM reads Succeeded without a network interface", ADVICE.nic)
  elseif not ip then
    return row("nic private ip", h.name, "FAIL", "NIC " .. name_of_id(id) .. " has no private IP", ADVICE.nic)
  end
  local own = s.addresses and s.addresses[h.name] or {}
  local has = false
  for _, o in ipairs(own) do has = has or o:match("%S+$") == ip end
  if #own > 0 and not has then
    return row("nic private ip", h.name, "WARN", ("NIC %s says %s, the appliance has %s"):format(name_of_id(id), ip,
      table.concat(own, ", ")), ADVICE.nic)
  end
  -- said as far as it was checked: against the appliance's own addresses, or not (it did not answer)
  local compared = has and " (the appliance's own address)"
    or (s.addresses and #own == 0) and " (not compared with the appliance's addresses: none was read from it)" or ""
  return row("nic private ip", h.name, "OK", ("NIC %s: %s%s"):format(name_of_id(id), ip, compared))
end

function M.nic(s)
  local succeeded = {}
  for _, h in ipairs(s:group_hsms()) do
    if hsm_state(h) == "Succeeded" then succeeded[#succeeded + 1] = h end
  end
  return dhsm.parallel(succeeded, function(h) return nic_row(s, h) end)
end

---------------------------------------------------------------------------
-- Guide, "How to delete an HSM resource": a group deleted before its HSM
-- leaves it orphaned and billed.

function M.orphans(s)
  local out = {}
  for _, o in ipairs(s:read("orphans", hsm.orphans, s.c, s:all_hsms())) do
    out[#out + 1] = row("orphaned hsms", o.name, "FAIL", ("resource group %s is gone; the HSM (%s, %s) is still "
      .. "billed"):format(tostring(o.group), tostring(o.location), tostring(o.state)), ADVICE.orphan)
  end
  if #out == 0 then out[1] = row("orphaned hsms", s.c.subscription, "OK", "no HSM whose resource group is gone") end
  return out
end

---------------------------------------------------------------------------
-- running them

-- Each check: the rows it makes, where it looks (for a row saying it
-- could not run), and what it stands on: the group, the list of HSMs.
local CHECKS = {
  credentials = { rows = { "credentials" } },
  resource_group = { rows = { "resource group" }, in_group = true },
  allowlisting = { rows = { "allowlisting" } },
  hsms = { rows = { "hsm provisioning" }, lists = true },
  deployments = { rows = { "failed deployments" }, lists = true, in_group = true },
  quota = { rows = { "quota" }, lists = true },
  capacity = { rows = { "capacity" }, lists = true },
  delegation = { rows = { "subnet delegation" }, in_group = true, target = function(s) return s.subnet_id
    and subnet_label(s.subnet_id) end },
  gateway = { rows = { "gateway", "one gateway per vnet" }, in_group = true, target = function(s) return s.subnet_id
    and vnet_label(s.subnet_id) end },
  existing = { rows = { "existing hsm" }, lists = true, in_group = true },
  nic = { rows = { "nic private ip" }, lists = true },
  orphans = { rows = { "orphaned hsms" }, lists = true },
}

-- The checks before one HSM's PUT (hsm.start).
M.BEFORE_PUT = { "quota", "delegation", "gateway" }

-- The row reporting that the HSM list cannot be read: it is read before
-- the checks built on it, so that they do not fail together - one FAIL
-- row, and the others SKIP naming it.
local HSM_LIST_ROW = "hsm provisioning"

local function target_of(s, name)
  local spec = CHECKS[name]
  return spec.target and spec.target(s) or (spec.in_group and s.group) or s.c.subscription
end

local function skip_rows(s, name, cause)
  local out = {}
  for i, check in ipairs(CHECKS[name].rows) do out[i] = row(check, target_of(s, name), "SKIP", "not checked: " .. cause) end
  return out
end

-- The HSM list, read first; its failure is one FAIL row (once for the
-- scope, however many runs) and the cause of the SKIPs.
local function read_hsm_list(s, out)
  local ok, err = findings.attempt(s.all_hsms, s)
  if ok or s.foundation_errors[err] then return end
  s.foundation_errors[err] = ("the dedicated HSMs could not be listed (%s)"):format(err.code or err.kind)
  out[#out + 1] = read_failure(HSM_LIST_ROW, s.c.subscription, findings.error_text(err), err)
end

local function one_check(s, name)
  local fn = M[name]
  local ok, rows = findings.attempt(fn, s)
  if ok then return rows end
  if s.foundation_errors[rows] and CHECKS[name].rows[1] == HSM_LIST_ROW then return {} end  -- its row is out
  local out = {}
  for i, check in ipairs(CHECKS[name].rows) do out[i] = failure_row(s, check, target_of(s, name), rows) end
  return out
end

local function append(out, rows)
  for _, r in ipairs(rows) do out[#out + 1] = r end
end

-- Why a check cannot run: the credentials failed, or the group it looks
-- in (causes: {credentials=, group=}).
local function run_one(s, name, causes)
  local cause = causes.credentials or (CHECKS[name].in_group and causes.group)
  if cause then return skip_rows(s, name, cause) end
  return one_check(s, name)
end

-- The cause a SKIP names: the row that failed, not its message again -
-- that row prints it once (ten SKIPs repeating a 403's text hid it).
local function failure_of(rows)
  for _, r in ipairs(rows) do
    if r.status == "FAIL" then return ("the %s row failed"):format(r.check) end
  end
end

local FIRST = { { name = "credentials", cause = "credentials" }, { name = "resource_group", cause = "group" } }

-- run(s, names) -> rows: every check named, at once.  Credentials come
-- first (failed: every other check is a SKIP), then the resource group
-- (missing: the checks inside it are SKIPs), then the HSM list (see
-- above), then the rest in parallel.  A check that cannot read what it
-- needs is a FAIL row naming the error, never a raised error.
function M.run(s, names)
  local wanted, rest = {}, {}
  for _, name in ipairs(names) do
    if not CHECKS[name] then
      dhsm.usage("azure checks: unknown check %q (known: %s)", tostring(name), table.concat(util.sorted_keys(CHECKS), ", "))
    end
    wanted[name] = true
    if name ~= "credentials" and name ~= "resource_group" then rest[#rest + 1] = name end
  end
  -- the causes persist in the scope: a later run on it (diagnose's NIC rows) skips for them too
  s.causes = s.causes or {}
  local out, causes, lists = {}, s.causes, false
  for _, first in ipairs(FIRST) do
    if wanted[first.name] then
      local rows = run_one(s, first.name, causes)
      append(out, rows)
      causes[first.cause] = failure_of(rows)
    end
  end
  for _, name in ipairs(rest) do
    lists = lists or (CHECKS[name].lists and not (causes.credentials or (CHECKS[name].in_group and causes.group)))
  end
  if lists then read_hsm_list(s, out) end
  local results = dhsm.parallel(rest, function(name) return run_one(s, name, causes) end)
  for i = 1, #rest do append(out, results[i]) end
  return out
end

-- line(row) -> "check target: finding -> advice", for a message.
function M.line(r)
  local advice = findings.advice(r)
  return ("%s %s: %s%s"):format(r.check, r.target, r.finding, advice and (" -> " .. advice) or "")
end

-- Why Azure could not be read, in words: the FAIL lines under it carry
-- the rest (the azure error's text: HTTP status, request id, a 403's
-- missing permission), once.
local function unanswered_words(err)
  if classify.lacks_permission(err) then return "the credential lacks a permission (below)" end
  if err.status then return ("Azure answered HTTP %s (below)"):format(err.status) end
  return ("no answer from Azure (%s): run again when it answers"):format(tostring(err.code or err.kind))
end

-- Raises err itself (kind azure, net or timeout: exit status 1, not a
-- safety refusal) when Azure did not answer a read of the checks, with
-- every FAIL line once.
local function not_answered(err, bad, what, held, rows)
  local d = type(err.details) == "table" and err.details or {}
  dhsm.error { kind = err.kind, code = err.code, retryable = err.retryable,
    message = ("%s: Azure could not be read: %s; %s:\n  %s"):format(what, unanswered_words(err), held,
      table.concat(bad, "\n  ")),
    details = { status = err.status, request_id = d.request_id, permission = d.permission, cause = err,
      findings = rows } }
end

-- refuse(rows, what, held) -> rows, or raises safety PreflightFailed
-- listing every FAIL row: "what: N problem(s); held: ...".  held says
-- what the refusal kept from happening, no more: a caller that may come
-- after other changes (hsm.start, in a run that built the network) must
-- not claim that nothing was changed.
function M.refuse(rows, what, held)
  local bad, outage = {}, nil
  for _, r in ipairs(rows) do
    if r.status == "FAIL" then bad[#bad + 1] = M.line(r) end
    outage = outage or unanswered[r]
  end
  if #bad == 0 then return rows end
  if outage then not_answered(outage, bad, what, held, rows) end
  dhsm.error { kind = "safety", code = "PreflightFailed",
    message = ("%s: %d problem%s; %s:\n  %s"):format(what, #bad, #bad > 1 and "s" or "", held,
      table.concat(bad, "\n  ")), details = { findings = rows } }
end

-- A scope is what M.scope returns; the azure kinds (the client) beside it.
local KINDS = setmetatable({ scope = { test = function(v) return getmetatable(v) == Scope end,
  expected = "a scope of the checks (checks.scope(c, opts))" } }, { __index = require("dhsm.azure.rules").ARGUMENT_KINDS })

schema.check_arguments("azure.checks", M, {
  read_advice = "err:table otherwise:table?",
  scope = "c:client opts:table?",
  allowlisting = "s:scope",
  capacity = "s:scope",
  credentials = "s:scope",
  delegation = "s:scope",
  deployments = "s:scope",
  existing = "s:scope",
  gateway = "s:scope",
  hsms = "s:scope",
  nic = "s:scope",
  orphans = "s:scope",
  quota = "s:scope",
  resource_group = "s:scope",
  run = "s:scope names:table",
  line = "r:table",
  refuse = "rows:table what:string held:string",
}, KINDS)

return M
