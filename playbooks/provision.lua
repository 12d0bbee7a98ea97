-- provision: Azure Dedicated HSMs with their network, as the troubleshooting
-- guide (seeds/000_e0e260a0ba6df972.txt, "HSM Provisioning" and "Networking
-- Resources") says it goes wrong.  Each step names the paragraph it answers.
--
--   dhsm -i inventory.json run provision -e hsms=hsm-a:stamp1,hsm-b:stamp2
--   dhsm -i inventory.json run provision -e hsms=hsm-a:stamp1 -e mode=template \
--        -e template=hsm.json -e template_parameters=hsm.parameters.json
--
-- Idempotent (what exists as asked is left alone), resumable (--resume: the
-- steps re-read the state), and --check plans every call without a change:
-- the HSMs' PUTs go through hsm.start and its checks like the real run's,
-- told what the earlier steps only planned.  The guide's checks are
-- dhsm.azure.checks' (the preflight and each HSM's); what steps share is
-- the run's: ctx.params and its ARM client, ctx:azure().
local checks = require "dhsm.azure.checks"
local classify = require "dhsm.azure.classify"
local deploy = require "dhsm.azure.deploy"
local findings = require "dhsm.findings"
local hsm = require "dhsm.azure.hsm"
local network = require "dhsm.azure.network"
local sys = require "dhsm.sys"
local typed = require "dhsm.play.typed"
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

-- The spec of one requested HSM in staged mode: in the run's HSM subnet.
local function spec_of(ctx, h)
  local p = ctx.params
  return { name = h.name, location = p.location, vnet = p.vnet, subnet = p.hsm_subnet, stamp = h.stamp, ip = h.ip }
end

local function hsm_state(resource)
  return resource and resource.properties and resource.properties.provisioningState
end

-- Set when a step only described its mutations (check mode): what the
-- later checks are told is planned rather than there.
local function described(ctx)
  return ctx.check or nil
end

-- fn() again while Azure is only busy (AnotherOperationInProgress, a
-- Network operation that ended Failed), honouring Retry-After; anything
-- else is raised at once - a 429, 5xx or dropped connection too, which the
-- ARM client already retried (one layer retries: classify's v.retry).
local function through_transients(ctx, what, fn)
  local p = ctx.params
  for attempt = 1, p.retries + 1 do
    local ok, r = dhsm.try(fn)
    if ok then return r end
    local v = classify.failure { error = r }
    if v.class ~= "transient" or not v.retry or attempt > p.retries then error(r, 0) end
    local wait = util.backoff(attempt, { base = p.backoff, retry_after = v.retry_after })
    ctx:progress(("%s: %s, Azure busy (%s); again in %s"):format(what, tostring(r.code), v.reason, util.duration(wait)))
    dhsm.sleep(wait)
  end
end

-- The checks' reads ride out a busy Azure the same way.
local function patiently(ctx)
  return function(what, fn) return through_transients(ctx, what, fn) end
end

-- PUT, then follow the operation; a Network operation that ends Failed (its
-- status says InternalServerError) is a transient: PUT again.
local function put_and_wait(ctx, what, path, body, wait)
  local c = ctx:azure()
  wait = wait or {}
  return through_transients(ctx, what, function()
    local r = c:put(path, { body = body })
    return c:wait(r, { timeout = wait.timeout or ctx.params.network_timeout,
      on_progress = function(pr) ctx:progress(wait.say and wait.say(pr) or (what .. ": " .. pr.text)) end })
  end)
end

-- A Failed HSM deleted and waited for, its progress shown.
local function delete_failed(ctx, name, group)
  local p = ctx.params
  hsm.delete_failed(ctx:azure(), name, { group = group or p.group, timeout = p.hsm_timeout,
    on_progress = function(pr) ctx:progress(name .. ": deleting, " .. pr.text) end })
end

local function gateway_wait_text(ctx, name)
  return function(pr)
    return ("waiting for ExpressRoute gateway %s to be Succeeded: %s (Azure takes 20-45 min, timeout %s)"):format(
      name, pr.text, util.duration(ctx.params.gateway_timeout))
  end
end

---------------------------------------------------------------------------
-- preflight: read-only, every finding at once (dhsm.azure.checks)

local PREFLIGHT = { "credentials", "resource_group", "allowlisting", "hsms", "deployments", "quota", "capacity",
  "delegation", "gateway", "existing" }

-- The run's VNet is its own to fix when it creates it or created it before
-- (the owner tag): then a missing subnet or delegation is a fix, not a stop.
local function owns_vnet(s, ctx)
  local p = ctx.params
  local vnet = s:find(network.vnet_path(ctx:azure(), p.vnet, p.group))
  return vnet == nil or (vnet.tags and vnet.tags[OWNER_TAG] ~= nil)
end

-- The rows that are neither OK nor FAIL (WARN, SKIP), as lines under the
-- step: the FAIL rows are the refusal's own list (checks.refuse), shown
-- once, in the step's failure.
local function show(ctx, rows)
  for _, r in ipairs(rows) do
    if r.status ~= "OK" and r.status ~= "FAIL" then ctx:note("• " .. checks.line(r)) end
  end
end

-- Guide, "HSM Provisioning" to "Networking Resources": the checks of a run
-- about to deploy `requested`; a FAIL stops it before any change.
local function preflight(ctx, requested)
  local p, c = ctx.params, ctx:azure()
  local specs = {}
  for i, h in ipairs(requested) do specs[i] = p.mode == "staged" and spec_of(ctx, h) or h end
  -- the gateway: both modes wait for the VNet's own until Succeeded before any HSM (gateway_steps,
  -- template_gateway); a VNet without one gets staged mode's, or the template's
  local s = checks.scope(c, { group = p.group, location = p.location, vnet = p.vnet, subnet = p.hsm_subnet,
    hsms = specs, planned = { gateway = true, leftovers = p.leftovers == "delete" }, retry = patiently(ctx),
    new_gateway = p.mode == "staged" and { name = p.gateway, public_ip = p.gateway_pip } or nil })
  local read, owned = findings.attempt(owns_vnet, s, ctx)    -- a read that fails: the checks report it
  s.planned.vnet = read and owned
  local rows = checks.run(s, PREFLIGHT)
  show(ctx, rows)
  checks.refuse(rows, "preflight", "nothing was changed")
  local gw = s:vnet_gateways(network.vnet_path(c, p.vnet, p.group))[1]
  return { findings = rows, owned = s.planned.vnet, gateway = gw and gw.name or p.gateway,
    leftovers = p.leftovers == "delete" and s:leftovers() or {},
    failed_deployments = p.leftovers == "delete" and s:failed_deployments() or {} }
end

-- Guide, "Deployment failure based on quota": earlier failures are deleted
-- first, each a confirmed step.  -> {deleted=, planned=} (planned: the
-- deletions were only described, check mode: the places count as freed)
local function delete_leftovers(ctx, pre)
  local p, c = ctx.params, ctx:azure()
  for _, l in ipairs(pre.leftovers) do
    ctx:step(("delete leftover failed HSM %s"):format(l.name), { destructive = true, target = l.name,
      done = function() return c:gone(hsm.path(c, l.name, l.group), { timeout = p.hsm_timeout }) end,
    }, function()
      delete_failed(ctx, l.name, l.group)
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
  local deleted = #pre.leftovers + #pre.failed_deployments > 0
  return { deleted = deleted, planned = deleted and described(ctx) or nil }
end

---------------------------------------------------------------------------
-- network (staged mode)

-- Guide, "HSM Subnet Delegation": the HSM subnet delegated, GatewaySubnet beside it.
local function ensure_vnet(ctx, owned)
  local p, c = ctx.params, ctx:azure()
  local subnets = { { name = p.hsm_subnet, prefix = p.hsm_subnet_prefix, delegate = true },
    { name = "GatewaySubnet", prefix = p.gateway_subnet_prefix } }
  local vpath = network.vnet_path(c, p.vnet, p.group)
  if c:find(vpath) == nil then
    put_and_wait(ctx, "virtual network " .. p.vnet, vpath, network.vnet_body { location = p.location,
      prefix = p.address_space, subnets = subnets, tags = { [OWNER_TAG] = ctx.run_id } })
    return { vnet = p.vnet, created = true, planned = described(ctx) }
  end
  local changed = {}
  for _, sn in ipairs(subnets) do
    local path = network.subnet_path(c, p.vnet, sn.name, p.group)
    local have = c:find(path)
    local fine = have and (not sn.delegate or network.check_delegation(c, p.vnet, sn.name, p.group).ok)
    if not fine and owned then
      put_and_wait(ctx, "subnet " .. sn.name, path, network.subnet_body(sn))
      changed[#changed + 1] = sn.name
    end
  end
  if #changed == 0 then ctx:note("virtual network " .. p.vnet .. " is as required: nothing to change") end
  return { vnet = p.vnet, created = false, changed = changed, planned = #changed > 0 and described(ctx) or nil }
end

-- Guide, "Provisioning ExpressRoute": one gateway per VNet, created or verified.
local function ensure_gateway(ctx, name)
  local p, c = ctx.params, ctx:azure()
  local gw = network.gateway(c, name, p.group)
  if gw then
    ctx:note(("ExpressRoute gateway %s exists (%s)"):format(name, tostring(gw.properties.provisioningState)))
    return { gateway = name, created = false, state = gw.properties.provisioningState }
  end
  local pip_path = network.public_ip_path(c, p.gateway_pip, p.group)
  if c:find(pip_path) == nil then
    put_and_wait(ctx, "public IP " .. p.gateway_pip, pip_path, network.public_ip_body { location = p.location })
  end
  gw = put_and_wait(ctx, "gateway " .. name, network.gateway_path(c, name, p.group),
    network.gateway_body { location = p.location, subnet_id = network.subnet_path(c, p.vnet, "GatewaySubnet", p.group),
      pip_id = pip_path, sku = p.gateway_sku },
    { timeout = p.gateway_timeout, say = gateway_wait_text(ctx, name) })
  return { gateway = name, created = true, state = gw and gw.properties.provisioningState or "planned" }
end

-- Guide, "HSM Deployment Using Terraform": the gateway fully deployed
-- ("provisioningState is Succeeded") before any HSM.
local function wait_gateway(ctx, name)
  local p, c = ctx.params, ctx:azure()
  local saw_updating = false
  local gw = through_transients(ctx, "gateway " .. name, function()
    return network.wait_gateway(c, name, { group = p.group, timeout = p.gateway_timeout,
      on_progress = function(pr)
        saw_updating = true
        ctx:progress(gateway_wait_text(ctx, name)(pr))
      end })
  end)
  if gw == nil then return { gateway = name, planned = true } end      -- check mode: only described
  return { gateway = name, state = gw.properties.provisioningState, ready_at = sys.time(), was_updating = saw_updating }
end

local function wait_gateway_step(ctx, name)
  return ctx:step("wait for ExpressRoute gateway " .. name .. " to be Succeeded",
    function() return wait_gateway(ctx, name) end)
end

-- The gateway made (or found) and waited for: two steps.
local function gateway_steps(ctx, name)
  local made = ctx:step("ExpressRoute gateway " .. name, function() return ensure_gateway(ctx, name) end)
  local gw = wait_gateway_step(ctx, name)
  gw.created = made.created
  return gw
end

---------------------------------------------------------------------------
-- race-aware deployment

-- What the gateway's history says, for the classifier: its state now
-- (nil: there is none) and what the run saw of it before (hist).
local function gateway_history(state, hist)
  hist = hist or {}
  local recent = hist.created or hist.was_updating
  return { state = state or "Missing",
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

-- The code a stop raises with: the guide's cause, or for a missing
-- permission ARM's own (AuthorizationFailed, LinkedAuthorizationFailed).
local STOP_CODES = { quota = "QuotaExceeded", capacity = "InsufficientCapacity",
  delegation = "SubnetNotDelegated", allowlisting = "NotAllowlisted" }

-- (a stop of another class - permission, refused - is a 403: ARM's code)
local function stop_code(v, err)
  return STOP_CODES[v.class] or err.code
end

local function support_text(history)
  local lines = {}
  for _, h in ipairs(history) do
    lines[#lines + 1] = ("attempt %d%s: started %s, failed %s, %s: %s (request id %s, correlation id %s)"):format(
      h.attempt, h.after and (" (" .. h.after .. ")") or "", tostring(h.started), tostring(h.failed), tostring(h.class or h.code),
      tostring(h.status_message or h.message), tostring(h.request_id), tostring(h.correlation_id))
  end
  return table.concat(lines, "\n  ")
end

-- race_aware(ctx, label, retries, attempt, before_retry) runs attempt(n) ->
-- true, result | false, facts (facts: error, messages, states, gateway,
-- record) until it succeeds, following the classifier: a stop raises at
-- once with the guide's remedy, the race and transients are retried up to
-- `retries` times with a growing, jittered back-off.
-- Returns {ok=, result=, history=, verdict=, exhausted=}.
local function race_aware(ctx, label, retries, attempt, before_retry)
  local history = {}
  for n = 1, retries + 1 do
    local ok, result, facts = attempt(n)
    if ok then return { ok = true, result = result, history = history } end
    local v = classify.failure(facts)
    facts.record.class, facts.record.reason = v.class, v.reason
    history[#history + 1] = facts.record
    if classify.stops(v) then
      dhsm.error { kind = "azure", code = stop_code(v, facts.error),
        message = ("%s: stopped, %s (%s): %s\n  %s"):format(label, v.class, v.reason, findings.advice(v),
          support_text(history)), details = { verdict = v, history = history } }
    end
    -- Azure busy past the client's own retries: its error as it is (an outage, not a support case)
    if v.class == "transient" and not v.retry then error(facts.error, 0) end
    if not v.retry then return { ok = false, verdict = v, history = history } end
    if n > retries then return { ok = false, exhausted = true, verdict = v, history = history } end
    local wait = util.backoff(n, { base = ctx.params.backoff, retry_after = v.retry_after })
    ctx:progress(("%s: %s (%s); redeploying in %s (retry %d of %d)"):format(label, v.class, v.reason,
      util.duration(wait), n, retries))
    if v.class == "race" and before_retry then before_retry() end
    dhsm.sleep(wait)
  end
end

local function support_error(label, outcome, extra)
  local v = outcome.verdict
  -- the verdict and why, as a stop says it (race_aware)
  local advice = v and ("%s (%s): %s"):format(v.class, v.reason, findings.advice(v)) or "failed"
  -- the race's remedy already ends in the support request: said once
  local ask = advice:find("support request", 1, true) and ""
    or "; raise a support request in the Azure portal, problem type \"Issues configuring the Azure setup\""
  dhsm.error { kind = "azure", code = outcome.exhausted and "RaceNotResolved" or "DeploymentFailed",
    message = ("%s: %s%s; it needs:\n  %s"):format(label, advice, ask, support_text(outcome.history)),
    details = { history = outcome.history, deployment = extra } }
end

-- A failed attempt's facts, for the classifier and the support request.
local function hsm_failure(ctx, name, n, started, err, put, gw)
  local resource = err.details and err.details.resource or hsm.get(ctx:azure(), name, ctx.params.group)
  local request_id, correlation_id = ids_of(put)
  return { error = err, messages = { resource and resource.properties and resource.properties.statusMessage },
    states = { [name] = hsm_state(resource) },
    gateway = gateway_history(hsm_state(network.gateway(ctx:azure(), gw.gateway, ctx.params.group)), gw),
    record = failure_record(n, started, err, resource, { request_id = request_id, correlation_id = correlation_id }) }
end

---------------------------------------------------------------------------
-- the HSMs (staged mode)

-- Guide, "How do I see HSMs when provisioned": wait through the real states.
local function wait_hsm(ctx, name)
  local p = ctx.params
  return hsm.wait(ctx:azure(), name, { group = p.group, timeout = p.hsm_timeout, interval = p.poll_interval,
    on_progress = function(pr) ctx:progress(("%s: %s"):format(name, pr.text)) end })
end

-- Guide, "HSM Deployment Race Condition", staged: a direct PUT per HSM,
-- through hsm.start and its checks; opts.planned says what the earlier
-- steps only described (check mode), opts.retries how often the race is rerun.
local function create_one(ctx, h, gw, opts)
  local p, c = ctx.params, ctx:azure()
  local existing = hsm.get(c, h.name, p.group)
  if hsm_state(existing) == "Succeeded" then
    ctx:progress(h.name .. ": already Succeeded, nothing to do")
    return { ok = true, history = {}, already = true }
  end
  local resume_wait = existing and hsm_state(existing) ~= "Failed"
  local start = { group = p.group, planned = opts.planned, retry = patiently(ctx) }
  return race_aware(ctx, h.name, opts.retries, function(n)
    local started, put = sys.rfc3339(), nil
    local ok, res = dhsm.try(function()
      if not (resume_wait and n == 1) then put = hsm.start(c, h.name, spec_of(ctx, h), start) end
      -- check mode: the PUT was only described, the HSM is planned; what
      -- exists under its name (a Failed leftover) is not what it would be
      if put and put.check then return nil end
      return wait_hsm(ctx, h.name)
    end)
    if ok then return true end
    if res.kind ~= "azure" and res.kind ~= "net" and res.kind ~= "timeout" then error(res, 0) end
    return false, nil, hsm_failure(ctx, h.name, n, started, res, put, gw)
  end, function() wait_gateway(ctx, gw.gateway) end)
end

-- done= of a delete-and-redeploy step: the redeploy an earlier attempt
-- sent is waited for; a Failed or missing HSM means the step must (re)act
-- (deleting a Failed HSM, or a missing one, twice is harmless).
local function redeployed(ctx, name)
  local p, c = ctx.params, ctx:azure()
  local state = hsm_state(hsm.get(c, name, p.group))
  if state == "Deleting" then c:gone(hsm.path(c, name, p.group), { timeout = p.hsm_timeout }) end
  if state == nil or state == "Failed" or state == "Deleting" then return false end
  return hsm_state(wait_hsm(ctx, name)) == "Succeeded", { name = name, redeployed = true }
end

-- Guide: "If not, deleting resources and then redeploying is often successful."
local function delete_and_redeploy(ctx, h, gw, outcome, planned)
  local p = ctx.params
  return ctx:step(("delete failed HSM %s and redeploy it once"):format(h.name), { destructive = true, target = h.name,
    done = function() return redeployed(ctx, h.name) end },
    function()
      delete_failed(ctx, h.name)
      local again = create_one(ctx, h, gw, { retries = 0, planned = planned })
      if again.ok then return { name = h.name, redeployed = true } end
      -- one list, numbered on: the redeploy's attempt follows the reruns (not a second "attempt 1")
      for _, r in ipairs(again.history) do
        r.attempt = #outcome.history + 1
        r.after = "after the delete"
        outcome.history[#outcome.history + 1] = r
      end
      support_error(h.name .. " still fails after " .. p.retries .. " reruns and one delete and redeploy", outcome)
    end)
end

-- Guide, "HSM Deployment Race Condition": every HSM at once, each retried
-- when the race hits, then deleted and redeployed once, then a support
-- stop; `planned`: what the earlier steps only described (hsm.start's
-- checks are told).  -> whether an HSM was created
--
-- A creation that failed for good fails the step itself, so a resume
-- tries the step again (an HSM already Succeeded is not PUT again:
-- create_one); journaled as the step's result, it would be re-raised from
-- the journal by every resume and never retried.  A race the reruns did
-- not resolve is the step's result: the next step deletes and redeploys it.
local function create_hsms(ctx, requested, gw, planned)
  local results = ctx:step(("create HSMs %s (in parallel)"):format(names_of(requested)), function()
    local out = dhsm.parallel(requested, function(h)
      local o = create_one(ctx, h, gw, { retries = ctx.params.retries, planned = planned })
      o.name = h.name
      return o
    end)
    for _, o in ipairs(out) do
      if not o.ok and not o.exhausted then support_error(o.name, o) end
    end
    return out
  end)
  local changed = false
  for i, o in ipairs(results) do
    if not o.ok then delete_and_redeploy(ctx, requested[i], gw, o, planned) end
    changed = changed or not o.already
  end
  return changed
end

---------------------------------------------------------------------------
-- template mode

-- gw: the VNet's gateway as the failed attempt left it (network.vnet_gateway), or nil
local function deployment_facts(ctx, n, started, err, put, gw, gw_hist, requested)
  local p, c = ctx.params, ctx:azure()
  local messages, states = {}, {}
  -- a PUT ARM refused made no deployment: there are no operations to read (ARM's 404 would hide the refusal)
  local failed_ops = put and deploy.failed_operations(c, p.deployment, p.group) or {}
  for _, op in ipairs(failed_ops) do messages[#messages + 1] = op.message end
  for _, h in ipairs(requested) do
    local r = hsm.get(c, h.name, p.group)
    states[h.name] = hsm_state(r)
    if r and r.properties then messages[#messages + 1] = r.properties.statusMessage end
  end
  local request_id, correlation_id = ids_of(put)
  return { error = err, messages = messages, states = states, gateway = gateway_history(gw and gw.state, gw_hist),
    record = failure_record(n, started, err, nil, { request_id = request_id, correlation_id = correlation_id,
      operations = failed_ops }) }
end

-- Guide, "HSM Provisioning": the ARM template Microsoft hands out, deployed
-- as is.  gw_hist: the VNet's gateway before it (template_gateway).
local function deploy_template(ctx, requested, gw_hist, retries)
  local p, c = ctx.params, ctx:azure()
  local tmpl, values = deploy.read_files(p.template, p.template_parameters)
  return race_aware(ctx, "deployment " .. p.deployment, retries, function(n)
    local started, put = sys.rfc3339(), nil
    local ok, res = dhsm.try(function()
      put = deploy.create(c, p.deployment, tmpl, values, { group = p.group })
      return deploy.wait(c, put, { group = p.group, timeout = p.hsm_timeout + p.gateway_timeout,
        on_progress = function(pr) ctx:progress(("deployment %s: %s"):format(p.deployment, pr.text)) end })
    end)
    if ok then return true, { deployment = p.deployment } end
    if res.kind ~= "azure" and res.kind ~= "net" and res.kind ~= "timeout" then error(res, 0) end
    local gw = network.vnet_gateway(c, p.vnet, p.group)      -- read once: the facts and the retry's wait
    gw_hist.name = gw and gw.name
    if gw and gw.state == "Succeeded" and not gw_hist.ready_at then gw_hist.ready_at = sys.time() end
    return false, nil, deployment_facts(ctx, n, started, res, put, gw, gw_hist, requested)
  end, function()
    if gw_hist.name then gw_hist.ready_at = wait_gateway(ctx, gw_hist.name).ready_at end
  end)
end

-- The template's failed HSMs deleted and the template deployed once more.
local function redeploy_template(ctx, requested)
  local p, c = ctx.params, ctx:azure()
  ctx:step(("delete the failed HSMs of %s and redeploy once"):format(p.deployment),
    { destructive = true, target = p.deployment, done = function()
      for _, h in ipairs(requested) do
        if not redeployed(ctx, h.name) then return false end
      end
      return true, { redeployed = true }
    end }, function()
      for _, h in ipairs(requested) do
        if hsm_state(hsm.get(c, h.name, p.group)) == "Failed" then delete_failed(ctx, h.name) end
      end
      local again = deploy_template(ctx, requested, {}, 0)      -- the gateway Succeeded since the first
      if again.ok then return { redeployed = true } end
      support_error("deployment " .. p.deployment .. " still fails after " .. p.retries
        .. " reruns and one delete and redeploy", again, deploy.support_facts(c, p.deployment, p.group))
    end)
end

-- Guide, "HSM Deployment Using Terraform": the VNet's gateway Succeeded
-- before the template's HSMs are deployed - waited for as in staged mode,
-- which is what the preflight's gateway row says this run does.  A VNet
-- without one: the template brings it (the race ridden out after).
-- -> the gateway's history for the classifier
local function template_gateway(ctx)
  local p, c = ctx.params, ctx:azure()
  local gw = network.vnet_gateway(c, p.vnet, p.group)
  if gw == nil then return { created = true } end
  local waited = wait_gateway_step(ctx, gw.name)
  return { was_updating = waited.was_updating, ready_at = waited.ready_at }
end

-- Guide, "HSM Deployment Race Condition" for the template: rerun, then
-- delete and redeploy once, then a support stop.  A deployment that failed
-- for good fails its step (as create_hsms does), so a resume deploys again.
local function template_steps(ctx, requested)
  local p, c = ctx.params, ctx:azure()
  local gw_hist = template_gateway(ctx)
  local o = ctx:step(("deploy ARM template %s as %s"):format(p.template, p.deployment), function()
    local o = deploy_template(ctx, requested, gw_hist, p.retries)
    if not o.ok and not o.exhausted then
      support_error("deployment " .. p.deployment, o, deploy.support_facts(c, p.deployment, p.group))
    end
    return o
  end)
  if not o.ok then redeploy_template(ctx, requested) end
end

---------------------------------------------------------------------------
-- report

-- The playbook that takes it from factory-fresh to an initialised HSM,
-- the first login's password change its own first step: as the operator
-- types it, with the run's inventory (dhsm.play.typed).
local function initialize_command(ctx, name)
  return typed.initialize(name, { inventory = ctx.opts.inventory, first_login = true })
end

-- Guide, "How do I see HSMs when provisioned": the NIC gives the IP to SSH to.
local function report(ctx, requested, changed)
  local p, c = ctx.params, ctx:azure()
  local out, initialize_commands = {}, {}
  local discover = typed.discover(p.group, ctx.opts.inventory)
  for _, h in ipairs(requested) do
    local initialize = initialize_command(ctx, h.name)
    initialize_commands[#initialize_commands + 1] = initialize
    local r = hsm.get(c, h.name, p.group)
    -- in check mode an HSM not Succeeded was only planned (a leftover under its name is deleted first)
    if r == nil or (ctx.check and hsm_state(r) ~= "Succeeded") then
      out[#out + 1] = { name = h.name, planned = true }
    else
      local ip = hsm.private_ip(c, r)
      out[#out + 1] = { name = h.name, id = r.id, stamp = r.properties.stampId, state = hsm_state(r), private_ip = ip }
      ctx:note(("%s: %s, stamp %s, private IP %s"):format(h.name, r.id, tostring(r.properties.stampId), tostring(ip)))
      ctx:note(("  next: add it to the inventory (host %s, user tenantadmin): %s; install the reboot fix KB0019789 "
        .. "before any reboot; store the credentials initialize sets as your policy requires (the guide's Lost "
        .. "Credentials), then initialise it (it changes the password the appliance demands at its first login; each "
        .. "secret is asked; -e ha_group=LABEL joins an HA group, -e new_ha_group=LABEL creates one): %s")
        :format(tostring(ip), discover, initialize))
    end
  end
  if not changed then ctx:note("everything was already in place: nothing was changed") end
  return { hsms = out, changed = changed, next_steps = { "add each HSM to the inventory: its private IP, user tenantadmin "
      .. "(" .. discover .. ")",
    "install the reboot fix (Thales KB0019789) before any reboot or power cycle",
    "store the credentials initialize sets, then initialize each (its first login's password change included): "
      .. table.concat(initialize_commands, "; ") } }
end

---------------------------------------------------------------------------

return {
  description = "Create Dedicated HSMs and their network (VNet, delegated subnet, ExpressRoute gateway), "
    .. "checking everything the troubleshooting guide names first and riding out the gateway race",
  inventory = "Azure",
  params = {
    hsms = { type = "list", required = true, items = HSM_ITEM, unique = "name",
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
    ctx:azure { poll_interval = p.poll_interval, resource_group = p.group, location = p.location }

    -- Guide, "HSM Provisioning" to "Networking Resources": every known cause, read-only, reported together.
    local pre = ctx:step("preflight (read-only): credentials, allowlisting, quota, capacity, leftovers, network",
      function() return preflight(ctx, requested) end)
    -- Guide, "Deployment failure based on quota": earlier failures are deleted first, each confirmed.
    local gone = delete_leftovers(ctx, pre)
    local changed = gone.deleted
    if p.mode == "template" then
      -- Guide, "HSM Provisioning": the operator's template, the race rerun.
      template_steps(ctx, requested)
      changed = true
    else
      -- Guide, "HSM Subnet Delegation" and "Provisioning ExpressRoute": the network, its gateway Succeeded.
      local net = ctx:step("virtual network " .. p.vnet .. " with delegated subnet " .. p.hsm_subnet .. " and GatewaySubnet",
        function() return ensure_vnet(ctx, pre.owned) end)
      local gw = gateway_steps(ctx, pre.gateway)
      -- Guide, "HSM Deployment Race Condition": each HSM by its own PUT, in parallel, retried when the race hits.
      local created = create_hsms(ctx, requested, gw, { vnet = net.planned, gateway = gw.planned,
        leftovers = gone.planned })
      changed = changed or net.created or #(net.changed or {}) > 0 or gw.created or created
    end

    -- Guide, "How do I see HSMs when provisioned": the resource id, stamp and private IP.
    return ctx:step("report: resource id, stamp, private IP and next steps per HSM",
      function() return report(ctx, requested, changed) end)
  end,
}
