-- provision: Azure Dedicated HSMs with their network, as the troubleshooting
-- guide (seeds/000_e0e260a0ba6df972.txt, "HSM Provisioning" and "Networking
-- Resources") says it goes wrong.  Each step names the paragraph it answers.
--
--   dhsm -i inventory.json run provision -e hsms=hsm-a:stamp1,hsm-b:stamp2
--   dhsm -i inventory.json run provision -e hsms=hsm-a:stamp1 -e mode=template \
--        -e template=hsm.json -e template_parameters=hsm.parameters.json
--
-- Idempotent (what exists as asked is left alone), resumable (--resume: the
-- steps re-read the state), and --check plans every call without a change.
local azure = require "dhsm.azure"
local classify = require "dhsm.azure.classify"
local deploy = require "dhsm.azure.deploy"
local hsm = require "dhsm.azure.hsm"
local network = require "dhsm.azure.network"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local OWNER_TAG = "dhsm-provision"   -- a VNet carrying it was created by this playbook

---------------------------------------------------------------------------
-- parameters and small helpers

-- One HSM to create: "name[:stamp[:ip]]" (or {"name":, "stamp":, "ip":}
-- in -e @file.json), arriving as {name=, stamp=, ip=}.  The name is Azure's
-- rule (hsm.NAME); `required` is said here too because `dhsm doc`
-- describes this table without loading the module.
local HSM_ITEM = { type = "record", separator = ":", fields = {
  { "name", setmetatable({ required = true }, { __index = hsm.NAME }) },
  { "stamp", { pattern = "^%w+$", expect = "a stamp name such as stamp1" } },
  { "ip", { pattern = "^%d+%.%d+%.%d+%.%d+$", expect = "an IPv4 address" } },
} }

local function names_of(list)
  local out = {}
  for i, h in ipairs(list) do out[i] = h.name end
  return table.concat(out, ", ")
end

local function spec_of(p, h)
  return { name = h.name, location = p.location, vnet = p.vnet, subnet = p.hsm_subnet, stamp = h.stamp, ip = h.ip }
end

local function hsm_state(resource)
  return resource and resource.properties and resource.properties.provisioningState
end

-- fn() again while Azure is only busy (429, 5xx, AnotherOperationInProgress,
-- a Network operation that ended Failed), honouring Retry-After; anything
-- else is raised at once.
local function through_transients(ctx, p, what, fn)
  for attempt = 1, p.retries + 1 do
    local ok, r = dhsm.try(fn)
    if ok then return r end
    local v = classify.failure { error = r }
    if v.class ~= "transient" or attempt > p.retries then error(r, 0) end
    local wait = util.backoff(attempt, { base = p.backoff, retry_after = v.retry_after })
    ctx:progress(("%s: %s, Azure busy (%s); again in %s"):format(what, tostring(r.code), v.reason, util.duration(wait)))
    dhsm.sleep(wait)
  end
end

-- PUT, then follow the operation; a Network operation that ends Failed (its
-- status says InternalServerError) is a transient: PUT again.
local function put_and_wait(ctx, p, c, what, path, body, wait)
  wait = wait or {}
  return through_transients(ctx, p, what, function()
    local r = c:put(path, { body = body })
    return c:wait(r, { timeout = wait.timeout or p.network_timeout,
      on_progress = function(pr) ctx:progress(wait.say and wait.say(pr) or (what .. ": " .. pr.text)) end })
  end)
end

local function gateway_wait_text(p, name)
  return function(pr)
    return ("waiting for ExpressRoute gateway %s to be Succeeded: %s (Azure takes 20-45 min, timeout %s)"):format(
      name, pr.text, util.duration(p.gateway_timeout))
  end
end

---------------------------------------------------------------------------
-- preflight: read-only, every finding at once

local Findings = {}
Findings.__index = Findings

local function findings() return setmetatable({ list = {} }, Findings) end

-- level: "ok", "info", "fix" (this run fixes it), "warn", "stop"
function Findings:add(check, level, message, remedy)
  self.list[#self.list + 1] = { check = check, level = level, message = message, remedy = remedy }
end

function Findings:stops()
  local out = {}
  for _, f in ipairs(self.list) do
    if f.level == "stop" then out[#out + 1] = ("%s: %s%s"):format(f.check, f.message, f.remedy and (" -> " .. f.remedy) or "") end
  end
  return out
end

-- Guide, "HSM Registration": the subscription must be allowlisted.
local function check_allowlisting(c, f)
  local missing = {}
  for _, x in ipairs(hsm.features(c)) do
    if x.state ~= "Registered" then missing[#missing + 1] = ("%s is %s"):format(x.feature, x.state) end
  end
  if #missing == 0 then return f:add("allowlisting", "ok", "both features Registered") end
  f:add("allowlisting", "stop", table.concat(missing, "; "), classify.REMEDY.allowlisting)
end

-- Guide, "Deployment failure based on quota": 2 per stamp, 4 per region,
-- failed HSMs count; the HSMs taking the places are named.
local function check_quota(p, all, requested, leftovers, f)
  local freed = {}
  if p.leftovers == "delete" then for _, l in ipairs(leftovers) do freed[l.id:lower()] = true end end
  local ours = {}
  for _, h in ipairs(requested) do ours[h.name] = true end
  local others = {}
  for _, h in ipairs(all) do
    local mine = ours[h.name] and hsm.group_of(h) == p.group
    if not freed[h.id:lower()] and not mine then others[#others + 1] = h end
  end
  local r = hsm.summary(nil, { hsms = others }).regions[p.location] or { total = 0, names = {}, stamp_names = {} }
  local want_region = r.total + #requested
  if want_region > hsm.QUOTA_PER_REGION then
    f:add("quota per region", "stop", ("%s would hold %d HSMs, the quota is %d (in use: %s)"):format(p.location,
      want_region, hsm.QUOTA_PER_REGION, #r.names > 0 and table.concat(r.names, ", ") or "none"), classify.REMEDY.quota)
  else
    f:add("quota per region", "ok", ("%d of %d in %s after this run"):format(want_region, hsm.QUOTA_PER_REGION, p.location))
  end
  local per_stamp = {}
  for _, h in ipairs(requested) do
    if h.stamp then per_stamp[h.stamp] = (per_stamp[h.stamp] or 0) + 1 end
  end
  for _, stamp in ipairs(util.sorted_keys(per_stamp)) do
    local used = r.stamp_names[stamp] or {}
    local n = #used + per_stamp[stamp]
    if n > hsm.QUOTA_PER_STAMP then
      f:add("quota per stamp", "stop", ("%s would hold %d HSMs, the quota is %d (in use: %s)"):format(stamp, n,
        hsm.QUOTA_PER_STAMP, #used > 0 and table.concat(used, ", ") or "none"), classify.REMEDY.quota)
    else
      f:add("quota per stamp", "ok", ("%d of %d in %s after this run"):format(n, hsm.QUOTA_PER_STAMP, stamp))
    end
  end
end

-- Guide, "Deployment failure based on capacity": no API shows a stamp's free
-- devices; an earlier failure that says capacity is the evidence there is.
local function check_capacity(requested, leftovers, f)
  local stamps = {}
  for _, h in ipairs(requested) do stamps[h.stamp or "any"] = true end
  for _, l in ipairs(leftovers) do
    local v = classify.failure { messages = { l.message }, states = { [l.name] = "Failed" } }
    if v.class == "capacity" and (stamps[l.stamp] or stamps.any) then
      f:add("capacity", "warn", ("%s failed for capacity in %s: a new HSM there may fail too"):format(l.name,
        tostring(l.stamp)), classify.REMEDY.capacity)
      return
    end
  end
  f:add("capacity", "ok", "no earlier failure for capacity (Azure publishes no free-device count)")
end

-- Guide, "Deployment failure based on quota": resources of earlier failed
-- deployments are deleted before new ones - offered, never silently.
local function check_leftovers(c, p, all, f)
  local leftovers = hsm.leftovers(c, p.location, all)
  local failed_deps = deploy.failed(c, p.group)
  local level = p.leftovers == "delete" and "fix" or "warn"
  for _, l in ipairs(leftovers) do
    f:add("leftover", level, ("HSM %s (group %s, %s) is Failed and counts against the quota: %s"):format(l.name,
      tostring(l.group), tostring(l.stamp), tostring(l.message)),
      level == "fix" and "offered for deletion (confirm)" or "delete it, or give -e leftovers=delete")
  end
  for _, d in ipairs(failed_deps) do
    f:add("leftover", level, ("deployment %s is Failed (correlation id %s)"):format(d.name, tostring(d.correlation_id)),
      level == "fix" and "offered for deletion (confirm)" or nil)
  end
  return leftovers, failed_deps
end

-- The gateway this run creates: its name free, its public IP Standard.
local function check_new_gateway(c, p, f, owned)
  if network.gateway(c, p.gateway, p.group) then
    f:add("gateway", "stop", ("gateway name %s is taken by a gateway of another virtual network"):format(p.gateway),
      "give another -e gateway=NAME (one gateway per virtual network)")
  end
  local pip = c:find(network.public_ip_path(c, p.gateway_pip, p.group))
  if pip and (pip.sku and pip.sku.name or "Basic") ~= "Standard" then
    f:add("gateway public IP", "stop", ("public IP %s is %s SKU"):format(p.gateway_pip, pip.sku and pip.sku.name or "Basic"),
      "an ExpressRoute gateway needs a Standard SKU public IP: give another gateway_pip name")
  end
  f:add("gateway", "fix", ("no gateway in %s: ExpressRoute gateway %s is created"):format(p.vnet, p.gateway))
  return { owned = owned }
end

-- Guide, "HSM Subnet Delegation" (the number one cause) and "Provisioning
-- ExpressRoute" (one gateway per VNet); a gateway's public IP must be Standard.
local function check_network(c, p, f)
  local vnet = c:find(network.vnet_path(c, p.vnet, p.group))
  local owned = vnet == nil or (vnet.tags and vnet.tags[OWNER_TAG] ~= nil)
  if vnet == nil then
    f:add("network", "fix", ("virtual network %s does not exist: %s"):format(p.vnet,
      p.mode == "template" and "the template creates it" or "created, with a delegated HSM subnet and GatewaySubnet"))
    if p.mode == "template" then return { owned = true } end
    return check_new_gateway(c, p, f, true)
  end
  local subnet = c:find(network.subnet_path(c, p.vnet, p.hsm_subnet, p.group))
  local fix = network.delegation_fix(c, p.vnet, p.hsm_subnet, p.group)
  if subnet == nil then
    f:add("subnet delegation", owned and "fix" or "stop", ("subnet %s/%s does not exist"):format(p.vnet, p.hsm_subnet),
      owned and "created, delegated" or ("create it delegated: " .. fix:gsub(" update ", " create ", 1)
        .. " --address-prefixes " .. p.hsm_subnet_prefix))
  else
    local d = network.check_delegation(c, p.vnet, p.hsm_subnet, p.group)
    if d.ok then
      f:add("subnet delegation", "ok", d.message)
    else
      f:add("subnet delegation", owned and "fix" or "stop", d.message,
        owned and "the delegation is added (this run created the VNet)" or ("the VNet is not this playbook's: "
          .. "delegate the subnet yourself, then run again: " .. fix))
    end
  end
  local gws = network.vnet_gateways(c, p.vnet, p.group)
  if #gws > 1 then
    local names = {}
    for i, g in ipairs(gws) do names[i] = g.name end
    f:add("gateway", "stop", ("virtual network %s has %d gateways (%s); the guide allows one per virtual network")
      :format(p.vnet, #gws, table.concat(names, ", ")), "remove the extra gateway; use another VNet for other connections")
  elseif #gws == 1 then
    local gw = gws[1]
    if gw.type ~= "ExpressRoute" then
      f:add("gateway", "stop", ("%s is a %s gateway, not ExpressRoute; one gateway per virtual network"):format(gw.name,
        tostring(gw.type)), "Dedicated HSM needs an ExpressRoute gateway: use another virtual network")
    else
      f:add("gateway", gw.name == p.gateway and "ok" or "info", ("ExpressRoute gateway %s is %s%s"):format(gw.name,
        tostring(gw.state), gw.name == p.gateway and "" or " (used: one gateway per virtual network)"))
    end
    local sku, pip = network.public_ip_sku(c, gw.resource)
    if sku and sku ~= "Standard" then
      f:add("gateway public IP", "stop", ("%s's public IP %s is %s SKU"):format(gw.name, pip:match("[^/]+$"), sku),
        "an ExpressRoute gateway needs a Standard SKU, static public IP: recreate the gateway with one")
    end
    return { owned = owned, gateway = gw.name }
  end
  if c:find(network.subnet_path(c, p.vnet, "GatewaySubnet", p.group)) == nil and not owned then
    f:add("gateway", "stop", ("virtual network %s has no gateway and no GatewaySubnet"):format(p.vnet),
      "add a GatewaySubnet (e.g. /26) to the VNet, or let this playbook create the network in a new VNet")
  end
  return check_new_gateway(c, p, f, owned)
end

-- Existing HSMs of the requested names: ARM refuses to change them.
local function check_existing(c, p, all, requested, f)
  local existing = {}
  for _, h in ipairs(all) do
    if hsm.group_of(h) == p.group then existing[h.name] = h end
  end
  local states = {}
  for _, want in ipairs(requested) do
    local have = existing[want.name]
    if have then
      states[want.name] = hsm_state(have)
      local diff = hsm.spec_conflicts(nil, have, { stamp = want.stamp, ip = want.ip,
        subnet_id = p.mode == "staged" and network.subnet_path(c, p.vnet, p.hsm_subnet, p.group) or nil })
      if #diff > 0 then
        f:add("existing HSM", "stop", ("%s exists with another spec (%s)"):format(want.name, table.concat(diff, "; ")),
          "only tags can change: choose another name, or decommission it first")
      else
        f:add("existing HSM", "info", ("%s exists, %s"):format(want.name, tostring(states[want.name])))
      end
    end
  end
  return states
end

local function preflight(ctx, p, c, requested)
  local f = findings()
  -- credentials: nothing else can be read without them
  local ok, err = dhsm.try(function() return c:get("/subscriptions/" .. c.subscription, { api_version = "2022-12-01" }) end)
  if not ok then
    dhsm.error { kind = "safety", code = "PreflightFailed",
      message = "credentials: cannot read subscription " .. c.subscription .. ": " .. err.message }
  end
  f:add("credentials", "ok", "subscription " .. c.subscription .. " readable")
  if c:find(c:group_path(p.group)) == nil then
    f:add("resource group", "stop", ("resource group %s does not exist in %s"):format(p.group, c.subscription),
      ("create it first: az group create --name %s --location %s"):format(p.group, p.location))
  end
  check_allowlisting(c, f)
  local all = hsm.list_all(c)
  local leftovers, failed_deps = check_leftovers(c, p, all, f)
  check_quota(p, all, requested, leftovers, f)
  check_capacity(requested, leftovers, f)
  local net = check_network(c, p, f)
  local states = check_existing(c, p, all, requested, f)
  for _, x in ipairs(f.list) do
    if x.level ~= "ok" then ctx:note(("%s %s: %s%s"):format(x.level == "stop" and "✗" or "•", x.check, x.message,
      x.remedy and (" -> " .. x.remedy) or "")) end
  end
  local stops = f:stops()
  if #stops > 0 then
    dhsm.error { kind = "safety", code = "PreflightFailed",
      message = ("preflight found %d problem%s; nothing was changed:\n  %s"):format(#stops, #stops > 1 and "s" or "",
        table.concat(stops, "\n  ")), details = { findings = f.list } }
  end
  return { findings = f.list, leftovers = leftovers, failed_deployments = failed_deps, owned = net.owned,
    gateway = net.gateway or p.gateway, states = states }
end

---------------------------------------------------------------------------
-- network (staged mode)

-- Guide, "HSM Subnet Delegation": the HSM subnet delegated, GatewaySubnet beside it.
local function ensure_vnet(ctx, p, c, owned)
  local subnets = { { name = p.hsm_subnet, prefix = p.hsm_subnet_prefix, delegate = true },
    { name = "GatewaySubnet", prefix = p.gateway_subnet_prefix } }
  local vpath = network.vnet_path(c, p.vnet, p.group)
  if c:find(vpath) == nil then
    put_and_wait(ctx, p, c, "virtual network " .. p.vnet, vpath, network.vnet_body { location = p.location,
      prefix = p.address_space, subnets = subnets, tags = { [OWNER_TAG] = ctx.run_id } })
    return { vnet = p.vnet, created = true }
  end
  local changed = {}
  for _, s in ipairs(subnets) do
    local path = network.subnet_path(c, p.vnet, s.name, p.group)
    local have = c:find(path)
    local fine = have and (not s.delegate or network.check_delegation(c, p.vnet, s.name, p.group).ok)
    if not fine and owned then
      put_and_wait(ctx, p, c, "subnet " .. s.name, path, network.subnet_body(s))
      changed[#changed + 1] = s.name
    end
  end
  if #changed == 0 then ctx:note("virtual network " .. p.vnet .. " is as required: nothing to change") end
  return { vnet = p.vnet, created = false, changed = changed }
end

-- Guide, "Provisioning ExpressRoute": one gateway per VNet, created or verified.
local function ensure_gateway(ctx, p, c, name)
  local gw = network.gateway(c, name, p.group)
  if gw then
    ctx:note(("ExpressRoute gateway %s exists (%s)"):format(name, tostring(gw.properties.provisioningState)))
    return { gateway = name, created = false, state = gw.properties.provisioningState }
  end
  local pip_path = network.public_ip_path(c, p.gateway_pip, p.group)
  if c:find(pip_path) == nil then
    put_and_wait(ctx, p, c, "public IP " .. p.gateway_pip, pip_path, network.public_ip_body { location = p.location })
  end
  local gw = put_and_wait(ctx, p, c, "gateway " .. name, network.gateway_path(c, name, p.group),
    network.gateway_body { location = p.location, subnet_id = network.subnet_path(c, p.vnet, "GatewaySubnet", p.group),
      pip_id = pip_path, sku = p.gateway_sku },
    { timeout = p.gateway_timeout, say = gateway_wait_text(p, name) })
  return { gateway = name, created = true, state = gw and gw.properties.provisioningState or "planned" }
end

-- Guide, "HSM Deployment Using Terraform": the gateway fully deployed
-- ("provisioningState is Succeeded") before any HSM.
local function wait_gateway(ctx, p, c, name)
  if dhsm.check_mode and network.gateway(c, name, p.group) == nil then
    ctx:would(("wait for ExpressRoute gateway %s to be Succeeded (20-45 min on Azure)"):format(name))
    return { gateway = name, planned = true }
  end
  local saw_updating = false
  local gw = through_transients(ctx, p, "gateway " .. name, function()
    return network.wait_gateway(c, name, { group = p.group, timeout = p.gateway_timeout,
      on_progress = function(pr)
        saw_updating = true
        ctx:progress(gateway_wait_text(p, name)(pr))
      end })
  end)
  return { gateway = name, state = gw.properties.provisioningState, ready_at = sys.time(), was_updating = saw_updating }
end

---------------------------------------------------------------------------
-- race-aware deployment

-- What the gateway's history says, for the classifier.
local function gateway_history(c, p, name, hist)
  local gw = name and network.gateway(c, name, p.group)
  hist = hist or {}
  local recent = hist.created or hist.was_updating
  return { state = gw and gw.properties.provisioningState or "Missing",
    was_ready_at_deploy = hist.ready_at ~= nil or not recent,
    ready_for = recent and hist.ready_at and (sys.time() - hist.ready_at) or nil }
end

local function ids_of(r)
  local h = r and r.headers or {}
  return h["x-ms-request-id"], h["x-ms-correlation-request-id"]
end

-- One failure, as the record a support request needs.
local function failure_record(attempt, started, err, resource, extra)
  local d = err and err.details or {}
  local rec = { attempt = attempt, started = started, failed = sys.rfc3339(),
    code = err and err.code, message = err and err.message,
    state = hsm_state(resource), status_message = resource and resource.properties and resource.properties.statusMessage,
    request_id = d.request_id, correlation_id = d.correlation_id }
  for k, v in pairs(extra or {}) do rec[k] = rec[k] or v end
  return rec
end

-- race_aware(ctx, p, label, attempt, before_retry) runs attempt(n) -> true, result |
-- false, facts (facts: error, messages, states, gateway, record) until it succeeds,
-- following the classifier: a stop raises at once with the guide's remedy, the
-- race and transients are retried up to p.retries times with a growing,
-- jittered back-off.  Returns {ok=, result=, history=, verdict=, exhausted=}.
local STOP_CODES = { quota = "QuotaExceeded", capacity = "InsufficientCapacity", delegation = "SubnetNotDelegated",
  allowlisting = "NotAllowlisted" }

local function support_text(history)
  local lines = {}
  for _, h in ipairs(history) do
    lines[#lines + 1] = ("attempt %d: started %s, failed %s, %s: %s (request id %s, correlation id %s)"):format(
      h.attempt, tostring(h.started), tostring(h.failed), tostring(h.class or h.code),
      tostring(h.status_message or h.message), tostring(h.request_id), tostring(h.correlation_id))
  end
  return table.concat(lines, "\n  ")
end

local function race_aware(ctx, p, label, attempt, before_retry)
  local history = {}
  for n = 1, p.retries + 1 do
    local ok, result, facts = attempt(n)
    if ok then return { ok = true, result = result, history = history } end
    local v = classify.failure(facts)
    facts.record.class, facts.record.reason = v.class, v.reason
    history[#history + 1] = facts.record
    if classify.stops(v) then
      dhsm.error { kind = "azure", code = STOP_CODES[v.class],
        message = ("%s: stopped, %s (%s): %s\n  %s"):format(label, v.class, v.reason, v.remedy, support_text(history)),
        details = { verdict = v, history = history } }
    end
    if not v.retry then return { ok = false, verdict = v, history = history } end
    if n > p.retries then return { ok = false, exhausted = true, verdict = v, history = history } end
    local wait = util.backoff(n, { base = p.backoff, retry_after = v.retry_after })
    ctx:progress(("%s: %s (%s); redeploying in %s (retry %d of %d)"):format(label, v.class, v.reason,
      util.duration(wait), n, p.retries))
    if v.class == "race" and before_retry then before_retry() end
    dhsm.sleep(wait)
  end
end

local function support_error(label, outcome, extra)
  dhsm.error { kind = "azure", code = outcome.exhausted and "RaceNotResolved" or "DeploymentFailed",
    message = ("%s: %s; raise a support request in the Azure portal, problem type \"Issues configuring the "
      .. "Azure setup\", with:\n  %s"):format(label, outcome.verdict and outcome.verdict.remedy or "failed",
      support_text(outcome.history)),
    details = { history = outcome.history, deployment = extra } }
end

-- Guide, "How do I see HSMs when provisioned": wait through the real states.
local function wait_hsm(ctx, p, c, name)
  return hsm.wait(c, name, { group = p.group, timeout = p.hsm_timeout, interval = p.poll_interval,
    on_progress = function(pr) ctx:progress(("%s: %s"):format(name, pr.text)) end })
end

-- Guide, "HSM Deployment Race Condition", staged: a direct PUT per HSM.
local function create_one(ctx, p, c, h, gw)
  local existing = hsm.get(c, h.name, p.group)
  if hsm_state(existing) == "Succeeded" then
    ctx:progress(h.name .. ": already Succeeded, nothing to do")
    return { ok = true, result = existing, history = {}, already = true }
  end
  local resume_wait = existing and hsm_state(existing) ~= "Failed"
  return race_aware(ctx, p, h.name, function(n)
    local started, put = sys.rfc3339(), nil
    local ok, res = dhsm.try(function()
      if dhsm.check_mode then      -- the network may be only planned: the module's preflight would refuse
        c:put(hsm.path(c, h.name, p.group), { body = hsm.body(c, spec_of(p, h), p.group) })
        return nil
      end
      if not (resume_wait and n == 1) then put = hsm.start(c, h.name, spec_of(p, h), { group = p.group }) end
      return wait_hsm(ctx, p, c, h.name)
    end)
    if ok then return true, res end
    if res.kind ~= "azure" and res.kind ~= "net" and res.kind ~= "timeout" then error(res, 0) end
    local resource = res.details and res.details.resource or hsm.get(c, h.name, p.group)
    local request_id, correlation_id = ids_of(put)
    return false, nil, { error = res,
      messages = { resource and resource.properties and resource.properties.statusMessage },
      states = { [h.name] = hsm_state(resource) }, gateway = gateway_history(c, p, gw.gateway, gw),
      record = failure_record(n, started, res, resource, { request_id = request_id, correlation_id = correlation_id }) }
  end, function() wait_gateway(ctx, p, c, gw.gateway) end)
end

-- done= of a delete-and-redeploy step: the redeploy an earlier attempt
-- sent is waited for; a Failed or missing HSM means the step must (re)act
-- (deleting a Failed HSM, or a missing one, twice is harmless).
local function redeployed(ctx, p, c, name)
  local state = hsm_state(hsm.get(c, name, p.group))
  if state == "Deleting" then c:gone(hsm.path(c, name, p.group), { timeout = p.hsm_timeout }) end
  if state == nil or state == "Failed" or state == "Deleting" then return false end
  return hsm_state(wait_hsm(ctx, p, c, name)) == "Succeeded", { name = name, redeployed = true }
end

-- Guide: "If not, deleting resources and then redeploying is often successful."
local function delete_and_redeploy(ctx, p, c, h, gw, outcome)
  return ctx:step(("delete failed HSM %s and redeploy it once"):format(h.name), { destructive = true, target = h.name,
    done = function() return redeployed(ctx, p, c, h.name) end },
    function()
      hsm.delete_failed(c, h.name, { group = p.group, timeout = p.hsm_timeout,
        on_progress = function(pr) ctx:progress(h.name .. ": deleting, " .. pr.text) end })
      local again = create_one(ctx, setmetatable({ retries = 0 }, { __index = p }), c, h, gw)
      if again.ok then return { name = h.name, redeployed = true } end
      for _, r in ipairs(again.history) do outcome.history[#outcome.history + 1] = r end
      support_error(h.name .. " still fails after " .. p.retries .. " reruns and one delete and redeploy", outcome)
    end)
end

---------------------------------------------------------------------------
-- template mode

local function deployment_facts(c, p, n, started, err, put, gw_name, gw_hist, requested)
  local messages, states = {}, {}
  for _, op in ipairs(deploy.failed_operations(c, p.deployment, p.group)) do messages[#messages + 1] = op.message end
  for _, h in ipairs(requested) do
    local r = hsm.get(c, h.name, p.group)
    states[h.name] = hsm_state(r)
    if r and r.properties then messages[#messages + 1] = r.properties.statusMessage end
  end
  local request_id, correlation_id = ids_of(put)
  return { error = err, messages = messages, states = states, gateway = gateway_history(c, p, gw_name, gw_hist),
    record = failure_record(n, started, err, nil, { request_id = request_id, correlation_id = correlation_id,
      operations = deploy.failed_operations(c, p.deployment, p.group) }) }
end

-- Guide, "HSM Provisioning": the ARM template Microsoft hands out, deployed as is.
local function deploy_template(ctx, p, c, requested, pre)
  local tmpl, values = deploy.read_files(p.template, p.template_parameters)
  local gw_hist = { created = pre.gateway_state == nil, was_updating = pre.gateway_state ~= "Succeeded" }
  local outcome = race_aware(ctx, p, "deployment " .. p.deployment, function(n)
    local started, put = sys.rfc3339(), nil
    local ok, res = dhsm.try(function()
      put = deploy.create(c, p.deployment, tmpl, values, { group = p.group })
      return deploy.wait(c, put, { group = p.group, timeout = p.hsm_timeout + p.gateway_timeout,
        on_progress = function(pr) ctx:progress(("deployment %s: %s"):format(p.deployment, pr.text)) end })
    end)
    if ok then return true, { deployment = p.deployment } end
    if res.kind ~= "azure" and res.kind ~= "net" and res.kind ~= "timeout" then error(res, 0) end
    local gw = network.vnet_gateway(c, p.vnet, p.group)
    if gw and gw.state == "Succeeded" and not gw_hist.ready_at then gw_hist.ready_at = sys.time() end
    return false, nil, deployment_facts(c, p, n, started, res, put, gw and gw.name, gw_hist, requested)
  end, function()
    local gw = network.vnet_gateway(c, p.vnet, p.group)
    if gw then gw_hist.ready_at = wait_gateway(ctx, p, c, gw.name).ready_at end
  end)
  return outcome
end

---------------------------------------------------------------------------
-- report

-- Guide, "How do I see HSMs when provisioned": the NIC gives the IP to SSH to.
local function report(ctx, p, c, requested)
  local out = {}
  for _, h in ipairs(requested) do
    local r = hsm.get(c, h.name, p.group)
    if r == nil then
      out[#out + 1] = { name = h.name, planned = true }
    else
      local ip = hsm.private_ip(c, r)
      out[#out + 1] = { name = h.name, id = r.id, stamp = r.properties.stampId, state = hsm_state(r), private_ip = ip }
      ctx:note(("%s: %s, stamp %s, private IP %s"):format(h.name, r.id, tostring(r.properties.stampId), tostring(ip)))
      ctx:note(("  next: add it to the inventory (host %s, user tenantadmin); change the password the appliance "
        .. "demands at first login with dhsm: luna.first_login(inv:hsm(%q), {new_password = secret.prompt(\"new "
        .. "password\")}); install the reboot fix KB0019789 before any reboot"):format(tostring(ip), h.name))
    end
  end
  return { hsms = out, next_steps = { "add each HSM to the inventory: its private IP, user tenantadmin",
    "change the password at first login: luna.first_login(entry, {new_password = secret}) (dhsm repl or exec)",
    "install the reboot fix (Thales KB0019789) before any reboot or power cycle" } }
end

---------------------------------------------------------------------------

return {
  description = "Create Dedicated HSMs and their network (VNet, delegated subnet, ExpressRoute gateway), "
    .. "checking everything the troubleshooting guide names first and riding out the gateway race",
  inventory = "Azure",
  params = {
    hsms = { type = "list", required = true, items = HSM_ITEM,
      description = "HSMs as name[:stamp[:ip]], e.g. hsm-a:stamp1,hsm-b:stamp2 (the guide's HA pair)" },
    group = { type = "string", required = true, from_inventory = "azure.resource_group", description = "resource group" },
    location = { type = "string", required = true, from_inventory = "azure.location", description = "region" },
    mode = { type = "enum", values = { "staged", "template" }, default = "staged", requires = { template = { "template" } },
      description = "staged: network, then each HSM by a direct PUT; template: the operator's ARM template" },
    template = { type = "string", description = "template mode: the ARM template file" },
    template_parameters = { type = "string", description = "template mode: its parameters file" },
    deployment = { type = "string", default = "dhsm-provision", description = "template mode: the deployment name" },
    vnet = { type = "string", default = "hsm-vnet", description = "virtual network" },
    address_space = { type = "string", default = "10.2.0.0/16", description = "its address space, if created" },
    hsm_subnet = { type = "string", default = "hsm", description = "the HSM subnet (delegated)" },
    hsm_subnet_prefix = { type = "string", default = "10.2.1.0/24", description = "its prefix, if created" },
    gateway_subnet_prefix = { type = "string", default = "10.2.255.0/26", description = "GatewaySubnet prefix, if created" },
    gateway = { type = "string", default = "hsm-ergw", description = "ExpressRoute gateway name, if created" },
    gateway_pip = { type = "string", default = "hsm-ergw-pip", description = "its public IP (Standard SKU)" },
    gateway_sku = { type = "enum", values = { "Standard", "HighPerformance", "UltraPerformance", "ErGw1AZ", "ErGw2AZ",
      "ErGw3AZ" }, default = "Standard", description = "ExpressRoute gateway SKU" },
    leftovers = { type = "enum", values = { "delete", "keep" }, default = "delete",
      description = "failed HSMs/deployments found: offer them for deletion (confirmed), or keep them" },
    retries = { type = "integer", default = 3, min = 0, max = 10, description = "redeploys after the gateway race" },
    backoff = { type = "number", default = 30, min = 0, description = "first back-off in seconds (grows, jittered)" },
    poll_interval = { type = "number", default = 10, min = 0, description = "seconds between state polls" },
    gateway_timeout = { type = "integer", default = 3600, min = 1, description = "seconds to wait for the gateway" },
    hsm_timeout = { type = "integer", default = 3600, min = 1, description = "seconds to wait for each HSM" },
    network_timeout = { type = "integer", default = 900, min = 1, description = "seconds for other network writes" },
  },
  run = function(ctx, p)
    local requested = p.hsms
    local cfg = setmetatable({ poll_interval = p.poll_interval, resource_group = p.group, location = p.location },
      { __index = ctx.inventory.azure })
    local c <close> = azure.client(cfg)

    -- Guide, "HSM Provisioning" to "Networking Resources": every known cause, read-only, reported together.
    local pre = ctx:step("preflight (read-only): credentials, allowlisting, quota, capacity, leftovers, network",
      function() return through_transients(ctx, p, "preflight", function() return preflight(ctx, p, c, requested) end) end)

    -- Guide, "Deployment failure based on quota": earlier failures are deleted first, each confirmed.
    if p.leftovers == "delete" then
      for _, l in ipairs(pre.leftovers) do
        ctx:step(("delete leftover failed HSM %s"):format(l.name), { destructive = true, target = l.name,
          done = function() return c:gone(hsm.path(c, l.name, l.group), { timeout = p.hsm_timeout }) end,
        }, function()
          hsm.delete_failed(c, l.name, { group = l.group, timeout = p.hsm_timeout,
            on_progress = function(pr) ctx:progress(l.name .. ": " .. pr.text) end })
          return { deleted = l.id }
        end)
      end
      for _, d in ipairs(pre.failed_deployments) do
        ctx:step(("delete failed deployment %s"):format(d.name), { destructive = true, target = d.name,
          done = function() return c:gone(deploy.path(c, d.name, p.group), { timeout = p.network_timeout }) end,
        }, function()
          deploy.delete(c, d.name, p.group)
          return { deleted = d.id }
        end)
      end
    end

    local changed = #pre.leftovers + #pre.failed_deployments > 0 and p.leftovers == "delete"
    if p.mode == "staged" then
      local vnet = ctx:step("virtual network " .. p.vnet .. " with delegated subnet " .. p.hsm_subnet .. " and GatewaySubnet",
        function() return ensure_vnet(ctx, p, c, pre.owned) end)
      changed = changed or vnet.created or #(vnet.changed or {}) > 0
      local made = ctx:step("ExpressRoute gateway " .. pre.gateway, function() return ensure_gateway(ctx, p, c, pre.gateway) end)
      local gw = ctx:step("wait for ExpressRoute gateway " .. pre.gateway .. " to be Succeeded",
        function() return wait_gateway(ctx, p, c, pre.gateway) end)
      gw.created = made.created
      changed = changed or made.created
      -- Guide, "HSM Deployment Race Condition": each HSM by its own PUT, in parallel, retried when the race hits.
      local results = ctx:step(("create HSMs %s (in parallel)"):format(names_of(requested)), function()
        local all = dhsm.parallel(requested, function(h)
          local o = create_one(ctx, p, c, h, gw)
          return { name = h.name, ok = o.ok, exhausted = o.exhausted, history = o.history, verdict = o.verdict,
            already = o.already }
        end)
        local out = {}
        for i = 1, #requested do out[i] = all[i] end
        return out
      end)
      for i, o in ipairs(results) do
        if not o.ok and o.exhausted then
          delete_and_redeploy(ctx, p, c, requested[i], gw, o)
        elseif not o.ok then
          support_error(o.name, o)
        end
        changed = changed or not o.already
      end
    else
      local gw_now = network.vnet_gateway(c, p.vnet, p.group)
      local o = ctx:step(("deploy ARM template %s as %s"):format(p.template, p.deployment), function()
        local r = deploy_template(ctx, p, c, requested, { gateway_state = gw_now and gw_now.state })
        return { ok = r.ok, exhausted = r.exhausted, history = r.history, verdict = r.verdict }
      end)
      changed = true
      if not o.ok and o.exhausted then
        ctx:step(("delete the failed HSMs of %s and redeploy once"):format(p.deployment),
          { destructive = true, target = p.deployment, done = function()
            for _, h in ipairs(requested) do
              if not redeployed(ctx, p, c, h.name) then return false end
            end
            return true, { redeployed = true }
          end }, function()
            for _, h in ipairs(requested) do
              if hsm_state(hsm.get(c, h.name, p.group)) == "Failed" then hsm.delete_failed(c, h.name, { group = p.group }) end
            end
            local again = deploy_template(ctx, setmetatable({ retries = 0 }, { __index = p }), c, requested,
              { gateway_state = "Succeeded" })
            if again.ok then return { redeployed = true } end
            support_error("deployment " .. p.deployment .. " still fails after " .. p.retries
              .. " reruns and one delete and redeploy", again, deploy.support_facts(c, p.deployment, p.group))
          end)
      elseif not o.ok then
        support_error("deployment " .. p.deployment, o, deploy.support_facts(c, p.deployment, p.group))
      end
    end

    return ctx:step("report: resource id, stamp, private IP and next steps per HSM", function()
      local r = report(ctx, p, c, requested)
      r.changed = changed
      if not changed then ctx:note("everything was already in place: nothing was changed") end
      return r
    end)
  end,
}
