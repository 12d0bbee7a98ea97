-- dhsm.azure.classify: why a Dedicated HSM deployment failed, from what the
-- field actually gives.
--
--   local classify = require "dhsm.azure.classify"
--   local v = classify.failure {
--     error = err,                         -- a dhsm error (HTTP status, code, details), or nil
--     messages = { "...", ... },           -- deployment operations' and the HSM's status messages
--     states = { ["hsm-a"] = "Failed" },   -- resource provisioning states
--     gateway = { state = "Succeeded", was_ready_at_deploy = true, ready_for = 40 },  -- its history
--   }
--   v.class   -- "race" | "transient" | "permission" | "refused" | "quota" | "capacity" | "delegation"
--                | "allowlisting" | "unknown"
--   v.retry   -- true for race and transient (not for an error the ARM client already retried:
--                err.retries_spent); v.retry_after (s) when ARM said so
--   v.reason, v.remedy  -- one sentence each, the remedy in the guide's words
--   v.guide             -- the guide's section the remedy comes from (nil for transient)
--
-- A real failure rarely carries a tidy code: the HSM or the deployment ends
-- Failed with ProvisioningFailed, ResourceDeploymentFailure or Conflict and
-- the cause is only in the message text; the ExpressRoute gateway may already
-- read Succeeded when the race hits.  So the verdict comes from the text of
-- every message first, then from the transport (status, code), then from
-- the gateway's history; a code alone decides nothing.
local findings = require "dhsm.findings"

local M = {}

-- A gateway that turned Succeeded less than this long ago may not carry
-- traffic yet: a generic failure then is most likely the race.
M.SETTLE_SECONDS = 1800

-- What to do about each class, {remedy=, guide=}: under the guide's
-- section it comes from (findings rows carry that apart, as `guide`).
M.ADVICE = findings.by_guide {
  ["HSM Registration"] = {
    allowlisting = "the subscription is not allowlisted for Dedicated HSM: contact your Microsoft Account Manager "
      .. "(features Microsoft.HardwareSecurityModules/AzureDedicatedHSM and Microsoft.Network/AllowBaremetalServers "
      .. "must read Registered)",
  },
  ["Deployment failure based on quota"] = {
    quota = "Dedicated HSM has an initial quota of 2 HSMs per stamp and 4 per region: delete the resources of "
      .. "earlier failed deployments, or submit a support ticket to raise the quota",
  },
  ["Deployment failure based on capacity"] = {
    capacity = "the stamp or region is near capacity (12 HSMs per stamp, 24 per region): submit a support ticket "
      .. "asking about capacity in the region or the fill level of the stamps",
  },
  ["HSM Subnet Delegation"] = {
    delegation = "the HSM subnet must be delegated to Microsoft.HardwareSecurityModules/dedicatedHSMs (the guide's "
      .. "number one cause of failed deployments); set the delegation, delete the failed HSM and redeploy",
  },
  ["HSM Deployment Race Condition"] = {
    race = "the HSM was deployed before the ExpressRoute gateway could carry it: rerun the deployment; if that "
      .. "fails, delete the resources and redeploy; then raise a support request, problem type \"Issues "
      .. "configuring the Azure setup\"",
  },
  ["HSM Deployment Failure Information"] = {
    unknown = "not one of the guide's known causes: raise a support request with the ids and messages below",
  },
  [""] = {
    permission = "give the credential's role the permission ARM names (Reader on the subscription and "
      .. "Contributor on the resource group cover them all) and run again",
    refused = "Azure refused this request for a reason other than a permission (ARM's message names it, e.g. an "
      .. "Azure Policy assignment that denies it): have its owner allow it, and run again",
    transient = "Azure was busy (throttling, a server error or another operation on the resource): retried after "
      .. "the time ARM asked for",
  },
}

-- What the text says, most specific first: {class, lowercase plain substrings}.
local TEXT_RULES = {
  { "allowlisting", { "notregisteredforfeature", "not registered for feature", "allowlist", "azurededicatedhsm",
    "allowbaremetalservers", "featurenotregistered" } },
  { "quota", { "quota" } },
  { "capacity", { "capacity", "allocation failed", "allocationfailed" } },
  { "delegation", { "delegat" } },
  { "race", { "gatewaynotready", "gateway", "dependent network resource", "network dependency",
    "dependency issue", "not ready" } },
  { "transient", { "anotheroperationinprogress", "another operation", "retryableerror", "too many requests",
    "throttl", "temporarily unavailable", "internal server error", "internalservererror",
    "serviceunavailable", "an error occurred" } },
}

local TRANSIENT_CODES = {
  AnotherOperationInProgress = true, RetryableErrorDueToAnotherOperation = true, InternalServerError = true,
  ServiceUnavailable = true, SubscriptionRequestsThrottled = true, TooManyRequests = true,
  OperationTimedOut = true, GatewayTimeout = true, ReceiveFailed = true, ConnectionRefused = true,
}

-- The texts ARM gave (messages, the error's message and code), as written.
local function texts_of(f)
  local out = {}
  for _, m in ipairs(f.messages or {}) do
    if type(m) == "string" and m ~= "" then out[#out + 1] = m end
  end
  local e = f.error
  if type(e) == "table" then
    if type(e.message) == "string" then out[#out + 1] = e.message end
    if type(e.code) == "string" then out[#out + 1] = e.code end
  end
  return out
end

-- The class a text names, and why in words the operator can check: the
-- word as ARM wrote it (GatewayNotReady), not dhsm's lower-case needle.
local function from_text(texts)
  for _, rule in ipairs(TEXT_RULES) do
    for _, text in ipairs(texts) do
      for _, needle in ipairs(rule[2]) do
        local at = text:lower():find(needle, 1, true)
        if at then
          local word = text:sub(at, at + #needle - 1)
          return rule[1], ("ARM's message says %q"):format(text:match("[%w_%-]*" .. word:gsub("%p", "%%%0") .. "[%w_%-]*") or word)
        end
      end
    end
  end
end

local function status_of(e)
  if type(e) ~= "table" then return nil end
  return e.status or (type(e.details) == "table" and e.details.status) or nil
end

local function retry_after_of(e)
  local d = type(e) == "table" and type(e.details) == "table" and e.details or {}
  return tonumber(d.retry_after) or tonumber(d.headers and d.headers["retry-after"])
end

-- Transport-level: throttling, 5xx, a busy resource, a dropped connection.
local function transient_transport(e)
  if type(e) ~= "table" then return false end
  local status = status_of(e)
  if status == 429 or (status and status >= 500) then return true end
  if TRANSIENT_CODES[e.code] then return true end
  return e.kind == "net" and e.retryable == true
end

-- A failure with no cause in its text: the gateway's history decides.
local function race_by_history(gw)
  if type(gw) ~= "table" then return false end
  if gw.was_ready_at_deploy == false then return true end
  if gw.state and gw.state ~= "Succeeded" then return true end
  return tonumber(gw.ready_for) ~= nil and gw.ready_for < M.SETTLE_SECONDS
end

local function any_failed(states)
  for _, s in pairs(states or {}) do
    if s == "Failed" then return true end
  end
  return false
end

-- Whether the ARM client already spent its retries on the error (429,
-- 5xx, a dropped connection): the client is the one layer that retries a
-- request, so the verdict does not ask for another round.
local function retried_by_client(e)
  return type(e) == "table" and e.retries_spent == true
end

local function verdict(class, reason, f)
  return { class = class, reason = reason, remedy = M.ADVICE[class].remedy, guide = M.ADVICE[class].guide,
    retry = class == "race" or (class == "transient" and not retried_by_client(f.error)),
    retry_after = class == "transient" and retry_after_of(f.error) or nil }
end

-- The codes ARM gives a 403 for a permission the credential's role lacks;
-- another 403 (an Azure Policy deny, RequestDisallowedByPolicy) is no
-- missing permission, and its text says what it is.
local PERMISSION_CODES = { AuthorizationFailed = true, LinkedAuthorizationFailed = true }

-- lacks_permission(err) -> whether err is ARM refusing the credential a
-- permission: a 403 with a permission code, or one whose message named the
-- action (dhsm.azure sets details.permission then).
function M.lacks_permission(e)
  if type(e) ~= "table" or status_of(e) ~= 403 then return false end
  return PERMISSION_CODES[e.code] == true or (type(e.details) == "table" and e.details.permission ~= nil)
end

-- A refusal of the credential: its role lacks a permission, whatever the
-- message mentions (a scope naming a gateway is no race).  The reason is
-- short: the error itself names the permission (dhsm.azure).
local function permission_refused(e)
  if not M.lacks_permission(e) then return nil end
  return ("HTTP 403 %s"):format(tostring(e.code))
end

-- A 403 for another reason (a policy deny): ARM refused the request itself,
-- so neither a rerun nor the gateway's history can make it the race, and
-- its remedy is the owner of what refused it (the policy), not a support
-- request nor the credential's role: a stop of its own, "refused".
local function refused_otherwise(e)
  if status_of(e) ~= 403 then return nil end
  return ("HTTP 403 %s, not a missing permission: ARM's message says why"):format(tostring(e.code))
end

-- failure(facts) -> verdict (see the top of the file)
function M.failure(f)
  f = f or {}
  local refused = permission_refused(f.error)
  if refused then return verdict("permission", refused, f) end
  local class, why = from_text(texts_of(f))
  -- a refusal with a stop class in its text is final whatever the status
  if class and class ~= "transient" and class ~= "race" then
    return verdict(class, why, f)
  end
  local refused_why = refused_otherwise(f.error)
  if refused_why then return verdict("refused", refused_why, f) end
  if transient_transport(f.error) and not any_failed(f.states) then
    return verdict("transient", ("%s %s"):format(tostring(status_of(f.error) or f.error.kind),
      tostring(f.error.code)), f)
  end
  if class then return verdict(class, why, f) end
  if race_by_history(f.gateway) then
    return verdict("race", "a generic failure while the ExpressRoute gateway was new or not yet Succeeded", f)
  end
  return verdict("unknown", "no known cause in the messages, and the gateway had long been Succeeded", f)
end

-- stops(verdict) -> true for the classes the guide says retrying cannot fix
function M.stops(v)
  return v.class == "permission" or v.class == "refused" or v.class == "quota" or v.class == "capacity"
    or v.class == "delegation" or v.class == "allowlisting"
end

return M
