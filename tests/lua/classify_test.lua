-- dhsm.azure.classify: the verdicts the provision playbook acts on, for both
-- shapes a failure comes in: the tidy code, and the field's generic code
-- with the cause only in text (and the gateway already reading Succeeded).
local t = require "dhsm.test"
local classify = require "dhsm.azure.classify"

local function err(status, code, message, kind)
  return { kind = kind or "azure", status = status, code = code, message = message, details = { status = status } }
end

local TIDY = {
  race = "Resource creation failed. GatewayNotReady: The ExpressRoute gateway 'gw' was in provisioning state 'Updating'",
  quota = "Resource creation failed. QuotaExceeded: Subscription 's' has reached its quota of 2 Dedicated HSMs in stamp",
  capacity = "Resource creation failed. InsufficientCapacity: Stamp 'stamp2' in region 'eastus' has no free device",
  delegation = "Resource creation failed. SubnetNotDelegated: The subnet 'x' is not delegated to 'Microsoft.Hardware...'",
}
local FIELD = {
  race = "Failed to connect the device to the virtual network 'v': a dependent network resource was not ready. Retry the operation.",
  quota = "Operation could not be completed as it results in exceeding approved Dedicated HSM quota (stamp 'stamp1').",
  capacity = "Allocation failed. There is not sufficient capacity for the requested Dedicated HSM.",
  delegation = "The device could not be attached: subnet 's' does not carry the delegation the service requires.",
}

t.test("tidy and field-shaped messages give the same verdict", function()
  for _, shape in ipairs { TIDY, FIELD } do
    for class, message in pairs(shape) do
      local v = classify.failure { error = err(nil, "ProvisioningFailed", "provisioning Failed"), messages = { message },
        states = { h = "Failed" }, gateway = { state = "Succeeded", was_ready_at_deploy = true } }
      t.eq(v.class, class, message)
      t.eq(v.retry, class == "race")
      t.eq(classify.stops(v), class ~= "race")
      t.ok(v.remedy and #v.remedy > 20)
    end
  end
end)

t.test("allowlisting from a 409 with a generic code: stop, not transient", function()
  local v = classify.failure { error = err(409, "Conflict",
    "Subscription s is not registered for feature Microsoft.HardwareSecurityModules/AzureDedicatedHSM required") }
  t.eq({ v.class, classify.stops(v) }, { "allowlisting", true })
  t.ok(v.remedy:find("Account Manager", 1, true))
end)

t.test("transients: 429, 503, AnotherOperationInProgress, a failed Network operation", function()
  t.eq(classify.failure { error = err(429, "SubscriptionRequestsThrottled", "too many") }.class, "transient")
  t.eq(classify.failure { error = err(503, "ServiceUnavailable", "later") }.class, "transient")
  t.eq(classify.failure { error = err(409, "AnotherOperationInProgress", "Another operation on this or dependent resource is in progress") }.class, "transient")
  t.eq(classify.failure { error = err(nil, "InternalServerError", "PUT gw: An error occurred.") }.class, "transient")
  t.eq(classify.failure { error = err(nil, "ReceiveFailed", "reset", "net") }.class, "transient")
  t.eq(classify.failure { error = err(nil, "TlsVerificationFailed", "bad CA", "net") }.class, "unknown")
end)

t.test("a 403 is the credential's permission, a stop: not a support request, not a race", function()
  -- a scope that names a gateway must not read as the race
  local e = err(403, "AuthorizationFailed", "PUT /x: HTTP 403: the credential lacks permission Microsoft.Network/"
    .. "virtualNetworkGateways/write on /subscriptions/s/resourceGroups/g/providers/Microsoft.Network/"
    .. "virtualNetworkGateways/gw")
  local v = classify.failure { error = e, states = { h = "Failed" }, gateway = { state = "Updating" } }
  t.eq({ v.class, v.retry, classify.stops(v), v.reason }, { "permission", false, true, "HTTP 403 AuthorizationFailed" })
  t.ok(v.remedy:find("give the credential's role the permission ARM names", 1, true), v.remedy)
  t.ok(not v.remedy:find("support request", 1, true), v.remedy)
end)

t.test("a 403 for another reason (an Azure Policy deny) is no missing permission: a stop, its owner's to lift - not the role, not a race, not a support request", function()
  local e = err(403, "RequestDisallowedByPolicy", "PUT /x: HTTP 403: Resource 'hsm-a' was disallowed by policy. "
    .. "Policy identifiers: '[{\"policyAssignment\":{\"name\":\"deny-sim\"}}]'.")
  t.eq(classify.lacks_permission(e), false)
  -- the gateway's history would say race: a request ARM refused is not one
  local v = classify.failure { error = e, gateway = { state = "Updating", was_ready_at_deploy = false } }
  t.eq({ v.class, v.retry, classify.stops(v) }, { "refused", false, true })
  t.ok(v.reason:find("HTTP 403 RequestDisallowedByPolicy, not a missing permission", 1, true), v.reason)
  t.ok(not v.remedy:find("credential's role", 1, true), v.remedy)
  t.ok(v.remedy:find("have its owner allow it", 1, true) and not v.remedy:find("support request", 1, true), v.remedy)
  -- the signals of a missing permission: ARM's codes, or the action the message named (details.permission)
  t.eq(classify.lacks_permission(err(403, "LinkedAuthorizationFailed", "linked")), true)
  local named = err(403, "Forbidden", "the credential lacks permission a/write on /s")
  named.details.permission = { action = "a/write", scope = "/s" }
  t.eq({ classify.lacks_permission(named), classify.failure { error = named }.class }, { true, "permission" })
  t.eq(classify.lacks_permission(err(401, "AuthorizationFailed", "not a 403")), false)
end)

t.test("an error the ARM client already retried is transient but not retried again (one layer retries)", function()
  local e = err(503, "ServiceUnavailable", "later")
  t.eq(classify.failure { error = e }.retry, true, "not retried yet: the caller's to retry")
  e.retries_spent = true
  local v = classify.failure { error = e }
  t.eq({ v.class, v.retry }, { "transient", false })
end)

t.test("a generic failure with no cause in its text: the gateway's history decides", function()
  local generic = { error = err(nil, "ResourceDeploymentFailure", "The resource write operation failed to complete successfully, "
    .. "because it reached terminal provisioning state 'Failed'."), states = { h = "Failed" } }
  generic.gateway = { state = "Succeeded", was_ready_at_deploy = true, ready_for = 120 }
  t.eq(classify.failure(generic).class, "race", "a gateway Succeeded two minutes ago")
  generic.gateway = { state = "Succeeded", was_ready_at_deploy = false }
  t.eq(classify.failure(generic).class, "race", "not Succeeded when the HSM was put")
  generic.gateway = { state = "Succeeded", was_ready_at_deploy = true, ready_for = 86400 }
  t.eq(classify.failure(generic).class, "unknown", "an old gateway: not the race")
  generic.gateway = nil
  t.eq(classify.failure(generic).class, "unknown")
end)

