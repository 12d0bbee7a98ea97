-- dhsm.azure against the simulated ARM: credentials, requests, retries,
-- errors, long-running operations, the HSM/network/group/deployment
-- helpers, check mode and audit.
local t = require "dhsm.test"
local azure = require "dhsm.azure"
local hsm = require "dhsm.azure.hsm"
local network = require "dhsm.azure.network"
local groups = require "dhsm.azure.groups"
local deploy = require "dhsm.azure.deploy"
local util = require "dhsm.util"

local estate = require("support.estate").start {
  set = { hsm_step_seconds = 0.05, delete_seconds = 0.1, network_seconds = 0.05, retry_after = 0 },
  args = "--appliances 0",   -- HSMs of its own only: seeded ones would count against the quota
}

local SPEC = { vnet = "hsm-vnet", subnet = "hsm", stamp = "stamp1" }

local function spec(extra)
  local s = {}
  for k, v in pairs(SPEC) do s[k] = v end
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

-- Each test starts from a clean slate of faults and its own audit log.
local function fresh()
  estate:clear()
  return estate:azure(), t.audit_log()
end

local audit_records = t.audit_records

local function service_requests(service)
  local s = estate:stats()
  return s.by_service[service] and s.by_service[service].requests or 0
end

local function cleanup_hsm(c, name)
  t.cleanup(function()
    if pcall(estate.control, estate, "POST", "/hsms/" .. name .. "/zeroized", { zeroized = true }) then
      pcall(hsm.delete, c, name, { allow_unzeroized = true })
    end
  end)
end

---------------------------------------------------------------------------
-- credentials

t.test("a client secret gets a bearer token, kept as a secret", function()
  local c = fresh()
  local tok = c:token()
  t.eq(tostring(tok), "<secret>")
  t.ok(dhsm.secret.is(tok))
  local r = c:get(c:group_path())
  t.eq({ r.status, r.body.name, r.body.location }, { 200, "hsm-rg", "eastus" })
  t.ok(r.headers["x-ms-request-id"])
end)

t.test("a wrong client secret is an AADSTS error naming the credential", function()
  local c = estate:azure { credential = { type = "client_secret", client_id = estate.inventory.azure.credential.client_id,
    secret = dhsm.secret.value("not-the-secret") } }
  local err = t.raises(function() c:get(c:group_path()) end, "azure")
  t.eq(err.code, "invalid_client")
  t.ok(err.message:find("cannot get a token (client secret of", 1, true), err.message)
  t.ok(err.message:find("AADSTS7000215", 1, true), err.message)
  t.eq(err.details.status, 401)
end)

t.test("concurrent requests share one token fetch; it is refreshed before expiry", function()
  estate:clear()
  estate:fault { token_lifetime = 1 }
  t.cleanup(function() estate:fault { token_lifetime = 3599 } end)
  local c = estate:azure()
  local before = service_requests("aad")
  dhsm.parallel({ 1, 2, 3, 4, 5 }, function() return c:get(c:group_path()).status end)
  t.eq(service_requests("aad") - before, 1, "five parallel requests, one token")
  dhsm.sleep(0.9)                                  -- past 80 % of the lifetime
  t.eq(c:get(c:group_path()).status, 200)
  t.eq(service_requests("aad") - before, 2, "refreshed once")
end)

t.test("an expired token is replaced once, at once", function()
  local c = fresh()
  c:get(c:group_path())
  estate:fault { expire_tokens = 1 }
  local before = service_requests("aad")
  t.eq(c:get(c:group_path()).status, 200)
  t.eq(service_requests("aad") - before, 1)
end)

t.test("managed identity and Azure CLI credentials", function()
  estate:clear()
  local mi = estate:azure { credential = { type = "managed_identity" } }
  t.eq(mi:get(mi:group_path()).status, 200)
  -- az_command is a program (run without a shell): a wrapper gives the simulated az its estate
  local az = t.tmpdir() .. "/az"
  t.write(az, ("#!/bin/sh\nDHSM_ESTATE_DIR=%s exec %s/sim/bin/az \"$@\"\n"):format(util.shell_quote(estate.dir),
    util.shell_quote(require("support.estate").launcher:match("^(.*)/sim/estate$"))))
  os.execute("chmod +x " .. util.shell_quote(az))
  local cli = estate:azure { credential = { type = "azure_cli" }, az_command = az }
  t.eq(cli:get(cli:group_path()).status, 200)
  estate:fault { managed_identity = 0 }
  local bad = estate:azure { credential = { type = "managed_identity" } }
  local err = t.raises(function() bad:get(bad:group_path()) end, "azure")
  t.ok(err.message:find("managed identity", 1, true), err.message)
  local none = estate:azure { credential = { type = "azure_cli" }, az_command = "false" }
  t.raises(function() none:get(none:group_path()) end, "AzureCliFailed")
end)

t.test("AZURE_CLIENT_ID/TENANT_ID/SECRET in the environment are used when no credential is configured", function()
  local inv = estate.inventory.azure
  local script = ([[
    local c = require("dhsm.azure").client{ subscription = %q, endpoint = %q, authority = %q, ca_file = %q }
    print(c.credential.type, c:get(c:group_path(%q)).status)
  ]]):format(inv.subscription, inv.endpoint, inv.authority, inv.ca_file, inv.resource_group)
  local secret_file = estate.dir .. "/secrets/azure_client_secret"
  local r = t.sh(("AZURE_CLIENT_ID=%s AZURE_TENANT_ID=%s AZURE_CLIENT_SECRET=\"$(cat %s)\" %s"):format(
    inv.credential.client_id, inv.tenant, util.shell_quote(secret_file), t.cmd("exec -e " .. util.shell_quote(script))))
  t.eq(r.stdout, "environment\t200\n", r.stderr)
end)

---------------------------------------------------------------------------
-- requests, retries, errors

t.test("404 is an azure error with ARM's code, status, request id and body; find() gives nil", function()
  local c = fresh()
  local err = t.raises(function() c:get(c:group_path("no-such-rg")) end, "ResourceGroupNotFound")
  t.eq(err.status, 404)
  t.eq(err.kind, "azure")
  t.eq(err.retryable, false)
  t.ok(err.details.request_id)
  t.ok(err.details.body:find("ResourceGroupNotFound", 1, true))
  t.ok(err.message:find("^GET /subscriptions/.*/resourceGroups/no%-such%-rg: "), err.message)
  t.eq(c:find(c:group_path("no-such-rg")), nil)
end)

t.test("429 and 5xx are retried, honouring Retry-After", function()
  local c = fresh()
  c:token()
  estate:fault { throttle = "2:resourceGroups", retry_after = 1 }
  local t0 = dhsm.now()
  t.eq(c:get(c:group_path()).status, 200)
  t.ok(dhsm.now() - t0 >= 1.9, "waited Retry-After twice: " .. (dhsm.now() - t0))
  estate:fault { fail5xx = 3, retry_after = 0 }
  t.eq(c:get(c:group_path()).status, 200)
end)

t.test("retries stop at the deadline and the last error is raised", function()
  local c = estate:azure { retry_deadline = 0.5 }
  estate:clear()
  c:token()
  estate:fault { fail5xx = 50, retry_after = 0 }
  local err = t.raises(function() c:get(c:group_path()) end, "azure")
  t.ok(err.status == 500 or err.status == 503)
  t.eq(err.retryable, true)
  t.ok(err.attempts > 1, "retried before giving up")
  estate:clear()
end)

t.test("a connection reset mid-reply is retried for PUT, not for POST", function()
  local c, audit = fresh()
  c:token()
  estate:fault { reset = "1:PUT" }
  local r = c:put(c:group_path("reset-rg"), { body = { location = "eastus" } })
  t.ok(r.status == 200 or r.status == 201)
  local recs = audit_records(audit)          -- sending, the retry (announced), the outcome
  t.eq({ recs[2].action, recs[2].outcome, recs[3].action, recs[3].attempts }, { "azure.retry", "transport", "azure.PUT", 2 })
  estate:fault { reset = "1:POST" }
  local err = t.raises(function()
    c:post(c:group_path() .. "/providers/Microsoft.Resources/deployments/none/cancel")
  end, "net")
  t.eq(err.code, "ReceiveFailed")
  c:delete(c:group_path("reset-rg"))
end)

t.test("TLS is verified: a CA that did not sign the server is refused, not retried", function()
  estate:clear()
  local c = estate:azure { ca_file = "/etc/ssl/certs/ca-certificates.crt", credential = { type = "managed_identity" } }
  local err = t.raises(function() c:get(c:group_path()) end, "net")
  t.eq({ err.code, err.retryable }, { "TlsVerificationFailed", false })
end)

t.test("a 404 while waiting for a delete means done", function()
  local c = fresh()
  t.eq(c:wait(hsm.path(c, "ghost-hsm"), { deleting = true }), nil)
  t.raises(function() c:wait(hsm.path(c, "ghost-hsm")) end, "disappeared while waiting")
end)

t.test("403 is not retried", function()
  local c = fresh()
  c:token()
  local before = estate:stats().requests
  estate:fault { forbid = 1 }
  local err = t.raises(function() c:get(c:group_path()) end, "AuthorizationFailed")
  t.eq({ err.status, err.retryable }, { 403, false })
  t.eq(estate:stats().requests - before, 1)
end)

t.test("a slow reply times out, retried within the deadline", function()
  local c = estate:azure { timeout = 0.2, retry_deadline = 1 }
  estate:clear()
  c:token()
  estate:fault { delay_ms = "600:resourceGroups" }
  local err = t.raises(function() c:get(c:group_path()) end, "net")
  t.eq(err.code, "Timeout")
  estate:clear()
end)

t.test("requests in dhsm.parallel overlap", function()
  local c = fresh()
  c:token()
  estate:fault { delay_ms = "300:resourceGroups" }
  local t0 = dhsm.now()
  local r = dhsm.parallel({ 1, 2, 3, 4, 5, 6 }, function() return c:get(c:group_path()).status end)
  t.eq(r, { 200, 200, 200, 200, 200, 200 })
  t.ok(dhsm.now() - t0 < 1.2, ("6 x 300 ms took %.2f s"):format(dhsm.now() - t0))
  estate:clear()
end)

t.test("bad input: paths, api-versions, non-JSON replies", function()
  local c = fresh()
  t.raises(function() c:get("subscriptions/x") end, "expected an ARM path starting with /")
  local err = t.raises(function() c:get(hsm.path(c, "hsm1"), { api_version = "2099-01-01" }) end, "azure")
  t.eq(err.code, "NoRegisteredProviderFound")
  t.raises(function() hsm.path(c, "x") end, "expected 3%-24 letters")
  t.raises(function() azure.client { subscription = "s", credential = { type = "password" } } end,
    "credential.type must be")
  t.raises(function() azure.client { subscription = "s", tenant = "t", credential = { type = "client_secret",
    client_id = "x", secret = "plain" } } end, "must be a secret")
  local e = azure.reply_error("GET", "https://h/p?api-version=1", { status = 502, headers = {},
    body = "<html>Bad Gateway</html>" }, nil)
  t.eq({ e.code, e.retryable, e.details.body }, { "HTTP502", true, "<html>Bad Gateway</html>" })
  t.eq(e.message, "GET /p: HTTP 502: <html>Bad Gateway</html>", "the status said, no request id to say")
end)

---------------------------------------------------------------------------
-- dedicated HSMs

t.test("ARM ids are read by their /key/name pairs, keys in any case, names as given", function()
  local subnet = "/subscriptions/S/resourcegroups/My-RG/providers/Microsoft.Network/virtualnetworks/V1/subnets/hsm"
  t.eq({ azure.id_part(subnet, "virtualNetworks") },
    { "V1", "/subscriptions/S/resourcegroups/My-RG/providers/Microsoft.Network/virtualnetworks/V1" })
  t.eq({ azure.id_part(subnet, "resourceGroups") }, { "My-RG", "/subscriptions/S/resourcegroups/My-RG" })
  t.eq(azure.id_part(subnet, "subnets"), "hsm")
  -- a name that spells a key is a name: a group called virtualNetworks names no VNet
  local odd = "/subscriptions/S/resourceGroups/virtualNetworks/providers/Microsoft.Network/publicIPAddresses/p"
  t.eq(azure.id_part(odd, "virtualNetworks"), nil)
  t.eq(azure.id_part(odd, "resourceGroups"), "virtualNetworks")
  t.eq({ azure.id_part("https://management.azure.com" .. subnet, "virtualNetworks") },
    { "V1", "https://management.azure.com/subscriptions/S/resourcegroups/My-RG/providers/Microsoft.Network/virtualnetworks/V1" })
  t.eq({ azure.id_part(nil, "x"), azure.id_part("no id", "resourceGroups"), azure.id_part("/a/b/c", "c") }, {})
end)

t.test("create polls provisioningState to Succeeded and reports progress", function()
  local c, audit = fresh()
  cleanup_hsm(c, "hsm-a1")
  local states = {}
  local h = hsm.create(c, "hsm-a1", spec { ip = "10.2.1.11" }, { on_progress = function(p) states[#states + 1] = p.state end })
  t.eq(h.properties.provisioningState, "Succeeded")
  t.eq(h.properties.networkProfile.networkInterfaces[1].privateIpAddress, "10.2.1.11")
  t.ok(#states >= 1 and states[1] == "CheckingQuota", table.concat(states, ","))
  t.eq(hsm.get(c, "hsm-a1").name, "hsm-a1")
  t.eq(hsm.get(c, "hsm-nope"), nil)
  local rec = audit_records(audit)
  t.eq({ rec[1].action, rec[1].outcome, rec[1].target }, { "azure.PUT", "sending", hsm.path(c, "hsm-a1") })
  t.eq({ rec[2].action, rec[2].outcome, rec[2].correlation_id }, { "azure.PUT", "200", rec[1].correlation_id })
end)

-- action/outcome of the azure.* records, in order
local function mutations(audit)
  local out = {}
  for _, r in ipairs(audit_records(audit)) do
    if r.action:match("^azure%.") then out[#out + 1] = r.action .. " " .. r.outcome end
  end
  return out
end

t.test("every mutation is audited as 'sending' before it leaves, then with its outcome", function()
  local c, audit = fresh()
  hsm.create(c, "hsm-i1", spec { stamp = "stamp2" })
  estate:control("POST", "/hsms/hsm-i1/zeroized", { zeroized = true })
  hsm.delete(c, "hsm-i1", { allow_unzeroized = true })
  c:put(c:group_path("intent-rg"), { body = { location = "eastus" } })
  groups.delete(c, "intent-rg")
  t.eq(mutations(audit), { "azure.PUT sending", "azure.PUT 200", "azure.DELETE sending", "azure.DELETE 202",
    "azure.PUT sending", "azure.PUT 201", "azure.DELETE sending", "azure.DELETE 202" })
  -- a structured record: the body by its digest (the same in intent and outcome), the path, the kind
  local puts = {}
  for _, r in ipairs(audit_records(audit)) do if r.action == "azure.PUT" then puts[#puts + 1] = r end end
  t.eq(puts[3].body_sha256, require("dhsm.sys").sha256(require("cjson").encode { location = "eastus" }))
  t.eq({ puts[4].body_sha256, puts[4].kind, puts[4].target }, { puts[3].body_sha256, "azure", puts[3].target })
  t.ok(puts[3].target:find("/resourceGroups/intent%-rg$"), puts[3].target)
  -- a refused request: the intent, then the refusal
  audit = t.audit_log()
  estate:fault { forbid = "1:DELETE" }
  t.raises(function() c:delete(c:group_path("intent-none")) end, "AuthorizationFailed")
  t.eq(mutations(audit), { "azure.DELETE sending", "azure.DELETE 403 AuthorizationFailed" })
end)

t.test("delete only with evidence of zeroization; then waits until it is gone", function()
  local c, audit = fresh()
  hsm.create(c, "hsm-d1", spec { stamp = "stamp2" })
  local err = t.raises(function() hsm.delete(c, "hsm-d1") end, "NotZeroized")
  t.eq(err.kind, "safety")
  -- the rule is the DELETE's, not hsm.delete's: the generic client meets it, however spelled
  local deletes = #estate:mutations("DELETE")
  t.raises(function() c:delete(hsm.path(c, "hsm-d1")) end, "NotZeroized")
  t.raises(function() c:request("delete", (hsm.path(c, "hsm-d1"):gsub("dedicatedHSMs", "dedicatedhsms"))) end,
    "NotZeroized")
  t.eq(#estate:mutations("DELETE"), deletes, "no DELETE reached ARM")
  -- a path ARM would read as another one is not sent at all: dot segments, %-escapes, another host
  local path = hsm.path(c, "hsm-d1")
  for _, odd in ipairs { path .. "/x/..", path:gsub("/providers/", "/./providers/", 1), (path:gsub("dedicatedHSMs",
      "dedicated%%48SMs")), (c:group_path():gsub("resourceGroups", "resource%%47roups")) } do
    t.raises(function() c:delete(odd) end, "ARM would read as another path")
  end
  t.raises(function() c:delete("https://elsewhere.example" .. path) end, "go to ARM only")
  -- a read cannot carry a second request: no line end in a header, no body on a GET (curl would POST it)
  local smuggled = "a\r\n\r\nDELETE " .. c:group_path() .. "?api-version=2021-04-01 HTTP/1.1\r\nHost: x\r\nX-Pad: "
  t.raises(function() c:get(c:group_path(), { headers = { ["X-A"] = smuggled } }) end, "holds a line end")
  t.raises(function() c:get(c:group_path(), { correlation_id = "x\r\nX-B: y" }) end, "holds a line end")
  t.raises(function() c:get(c:group_path(), { body = {} }) end, "carries no body")
  t.raises(function() c:get(c:group_path(), { headers = { ["X-A: b\r\nX"] = "y" } }) end, "is not a token")
  t.raises(function() c:get(c:group_path() .. " HTTP/1.1") end, "blank or control character")
  t.eq(#estate:mutations("DELETE"), deletes, "no DELETE reached ARM")
  -- the client's transport is its own: no method sends around the gate
  t.eq({ c.exchange, c.retrying, c.session }, {}, "no exchange, retrying or session on the client")
  -- ARM itself refuses too, with the HSM RP's innererror shape (dhsm's rule lifted, audited)
  local arm = t.raises(function() c:delete(hsm.path(c, "hsm-d1"), { allow_unzeroized = true }) end, "HsmNotZeroized")
  t.eq(arm.status, 409)
  t.ok(arm.details.innererror)
  estate:control("POST", "/hsms/hsm-d1/zeroized", { zeroized = true })
  -- a hand-built table is not evidence (tests/lua/evidence_test.lua has the rest);
  -- hsm-d1 has no appliance to read, so the rule is lifted explicitly
  t.raises(function() hsm.delete(c, "hsm-d1", { zeroized = { zeroized = true, appliance = "test" } }) end,
    "EvidenceNotGenuine")
  hsm.delete(c, "hsm-d1", { allow_unzeroized = true })
  t.eq(hsm.get(c, "hsm-d1"), nil)
  local overrides = 0
  for _, r in ipairs(audit_records(audit)) do if r.action == "safety.override" then overrides = overrides + 1 end end
  t.eq(overrides, 2)
end)

t.test("lists follow nextLink; summary and orphans", function()
  local c = fresh()
  cleanup_hsm(c, "hsm-l1")
  cleanup_hsm(c, "hsm-l2")
  hsm.create(c, "hsm-l1", spec())
  hsm.create(c, "hsm-l2", spec { stamp = "stamp2" })
  estate:fault { page_size = 1 }
  local names = {}
  for _, h in ipairs(hsm.list(c)) do names[#names + 1] = h.name end
  table.sort(names)
  t.eq(names, { "hsm-l1", "hsm-l2" })
  t.eq(#hsm.list_all(c), 2)
  local s = hsm.summary(c)
  t.eq(s.regions.eastus.total, 2)
  t.eq(s.regions.eastus.stamps, { stamp1 = 1, stamp2 = 1 })
  t.eq(hsm.orphans(c), {})
end)

t.test("hsm.create's checks refuse the guide's deployment failures before any PUT", function()
  local c = fresh()
  local err = t.raises(function() hsm.create(c, "hsm-p1", spec { subnet = "compute" }) end, "PreflightFailed")
  t.eq(err.kind, "safety")
  t.ok(err.message:find("subnet delegation hsm-vnet/subnets/compute: subnet compute is not delegated to "
    .. "Microsoft.HardwareSecurityModules/dedicatedHSMs (delegations: none)", 1, true), err.message)
  t.eq(hsm.get(c, "hsm-p1"), nil, "nothing was sent")
  cleanup_hsm(c, "hsm-q1")
  cleanup_hsm(c, "hsm-q2")
  hsm.create(c, "hsm-q1", spec())
  hsm.create(c, "hsm-q2", spec())
  err = t.raises(function() hsm.create(c, "hsm-q3", spec()) end, "PreflightFailed")
  t.ok(err.message:find("quota stamp1: would hold 3 HSMs, the quota is 2 per stamp (in use: hsm-q1, hsm-q2)", 1, true),
    err.message)
end)

t.test("ARM's own failures surface with their code: quota, gateway race, allowlisting", function()
  local c = fresh()
  cleanup_hsm(c, "hsm-f1")
  cleanup_hsm(c, "hsm-f2")
  cleanup_hsm(c, "hsm-f3")
  estate:fault { quota_per_region = 0 }
  local err = t.raises(function() hsm.create(c, "hsm-f1", spec(), { skip_preflight = true }) end, "QuotaExceeded")
  t.ok(err.message:find("provisioning Failed", 1, true), err.message)
  estate:clear()
  estate:fault { gateway_race = 1 }
  t.raises(function() hsm.create(c, "hsm-f2", spec { stamp = "stamp2" }, { skip_preflight = true }) end, "GatewayNotReady")
  estate:clear()
  estate:fault { capacity_per_stamp = 0 }
  cleanup_hsm(c, "hsm-f4")
  t.raises(function() hsm.create(c, "hsm-f4", spec { stamp = "stamp2" }, { skip_preflight = true }) end, "InsufficientCapacity")
  estate:clear()
  estate:fault { not_allowlisted = 1 }
  err = t.raises(function() hsm.create(c, "hsm-f3", spec(), { skip_preflight = true }) end, "SubscriptionNotRegisteredForFeature")
  t.eq(err.status, 409)
  estate:clear()
end)

t.test("the gateway and the subnet delegation are read as the guide asks", function()
  local c = fresh()
  local gw = network.vnet_gateway(c, "hsm-vnet")
  t.eq({ gw.name, gw.state, gw.type }, { "hsm-ergw", "Succeeded", "ExpressRoute" })
  t.eq(network.wait_gateway(c, "hsm-ergw").properties.provisioningState, "Succeeded")
  t.eq(network.check_delegation(c, "hsm-vnet", "hsm").ok, true)
  t.eq(network.check_delegation(c, "hsm-vnet", "compute").ok, false)
  t.eq(network.check_delegation(c, "hsm-vnet", "nope").ok, false)
end)

---------------------------------------------------------------------------
-- resource groups and deployments

t.test("a group holding an HSM is never deleted; an empty one is, with 202 polling", function()
  local c = fresh()
  cleanup_hsm(c, "hsm-g1")
  hsm.create(c, "hsm-g1", spec())
  local err = t.raises(function() groups.delete(c, "hsm-rg") end, "GroupHoldsHsm")
  t.eq(err.kind, "safety")
  t.ok(groups.get(c, "hsm-rg"))
  c:put(c:group_path("empty-rg"), { body = { location = "eastus" } })
  local r = groups.delete(c, "empty-rg")
  t.eq(r.status, 202)
  t.eq(groups.get(c, "empty-rg"), nil)
end)

-- "2026-11-30 22:40:01,123 ..." -> seconds since midnight (the estate's log clock)
local function log_seconds(line)
  local h, m, sec, ms = line:match("^%d+%-%d+%-%d+ (%d+):(%d+):(%d+),(%d+)")
  return h and (h * 3600 + m * 60 + sec + ms / 1000)
end

t.test("the first poll of a long-running operation waits the Retry-After of the 202 that started it", function()
  local c = fresh()
  estate:fault { retry_after = 1 }
  c:put(c:group_path("ra-rg"), { body = { location = "eastus" } })
  groups.delete(c, "ra-rg")
  -- from the estate's own request log: when the DELETE was answered, when the first poll came
  -- (the estate logs a request once it has answered it: the last poll's line may come just after)
  local deleted, polled
  t.eventually(function()
    deleted, polled = nil, nil
    for line in util.read_file(estate.dir .. "/estate.log"):gmatch("[^\n]+") do
      if not deleted and line:find(" arm DELETE [^ ]*/resourceGroups/ra%-rg %-> 202") then deleted = log_seconds(line)
      elseif deleted and not polled and line:find(" arm GET [^ ]*/operationresults/") then polled = log_seconds(line) end
    end
    return deleted and polled
  end, "the DELETE and its first poll in the estate's log")
  t.ok(polled - deleted >= 0.999, ("the first poll came %.3f s after the 202 (Retry-After: 1)"):format(polled - deleted))
end)

t.test("deleting a group behind the module's back orphans its HSM, and orphans() finds it", function()
  local c = fresh()
  c:put(c:group_path("side-rg"), { body = { location = "eastus" } })
  c:put(network.vnet_path(c, "v2", "side-rg"), { body = { location = "eastus", properties = {
    addressSpace = { addressPrefixes = { "10.9.0.0/16" } },
    subnets = { { name = "hsm", properties = { addressPrefix = "10.9.1.0/24", delegations = {
      { name = "0", properties = { serviceName = network.DELEGATION } } } } } } } } })
  c:wait(network.vnet_path(c, "v2", "side-rg"))
  -- v2 has no gateway: the HSM fails, but a failed HSM is still a resource (and counts)
  hsm.create(c, "hsm-o1", { vnet = "v2", subnet = "hsm", stamp = "stamp2" },
    { group = "side-rg", skip_preflight = true, wait = false })
  -- dhsm refuses, by whatever route; nothing reaches ARM
  local deletes = #estate:mutations("DELETE")
  local err = t.raises(function() c:delete(c:group_path("side-rg")) end, "GroupHoldsHsm")
  t.ok(err.message:find("hsm-o1", 1, true), "the refusal names the HSM it holds: " .. err.message)
  t.raises(function() c:request("DELETE", (c:group_path("side-rg"):gsub("resourceGroups", "resourcegroups"))) end,
    "GroupHoldsHsm")
  -- a client of another subscription judges the group of the path's
  local other = estate:azure { subscription = "11111111-2222-3333-4444-555555555555" }
  t.raises(function() other:delete(c:group_path("side-rg")) end, "GroupHoldsHsm")
  t.eq(#estate:mutations("DELETE"), deletes, "no DELETE reached ARM")
  -- a Complete-mode deployment would delete it too, however its property is spelled
  local dep = ("/subscriptions/%s/resourceGroups/side-rg/providers/Microsoft.Resources/deployments/wipe"):format(c.subscription)
  for _, key in ipairs { "mode", "Mode", "MODE" } do
    t.raises(function() c:put(dep, { body = { properties = { [key] = "Complete", template = {} } } }) end, "GroupHoldsHsm")
  end
  -- read fail-closed: twice spelled, or a body the rule cannot decode
  t.raises(function() c:put(dep, { body = { properties = { Mode = "Incremental", mode = "Incremental", MODE = "x" } } }) end,
    "GroupHoldsHsm")
  t.raises(function() c:put(dep, { body = '{"x":"\\ud800","properties":{"mode":"Complete"}}' }) end, "GroupHoldsHsm")
  t.raises(function() c:put(dep, { body = '{"properties":{"mode":"Incremental"},' }) end, "GroupHoldsHsm")
  -- the bytes sent are judged, not what a table's __pairs says it holds
  local hidden = setmetatable({ properties = { mode = "Complete", template = {} } },
    { __pairs = function() return next, {}, nil end })
  t.raises(function() c:put(dep, { body = hidden }) end, "GroupHoldsHsm")
  estate:delete_group_around_dhsm(c, "side-rg")
  local orphans = hsm.orphans(c)
  t.eq({ #orphans, orphans[1].name, orphans[1].group }, { 1, "hsm-o1", "side-rg" })
end)

t.test("a failed deployment raises with the messages of its failed operations", function()
  local c = fresh()
  local template = {
    ["$schema"] = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
    contentVersion = "1.0.0.0",
    parameters = { name = { type = "string" } },
    resources = { {
      type = "Microsoft.HardwareSecurityModules/dedicatedHSMs", apiVersion = "2021-11-30",
      name = "[parameters('name')]", location = "[resourceGroup().location]",
      sku = { name = hsm.SKU },
      properties = { stampId = "stamp2", networkProfile = { subnet = {
        id = "[resourceId('Microsoft.Network/virtualNetworks/subnets', 'hsm-vnet', 'compute')]" } } },
    } },
  }
  cleanup_hsm(c, "hsm-t1")
  local r = deploy.create(c, "dep1", template, { name = "hsm-t1" })
  local err = t.raises(function() deploy.wait(c, r) end, "SubnetNotDelegated")
  t.ok(err.message:find("deployment dep1 failed: hsm-t1 SubnetNotDelegated", 1, true), err.message)
  t.eq(deploy.failed_operations(c, "dep1")[1].resource, "hsm-t1")
end)

t.test("a running deployment can be cancelled", function()
  local c = fresh()
  estate:fault { hsm_step_seconds = 2 }
  t.cleanup(function() estate:fault { hsm_step_seconds = 0.05 } end)
  cleanup_hsm(c, "hsm-t2")
  local template = { ["$schema"] = "x", contentVersion = "1.0.0.0", resources = { {
    type = "Microsoft.HardwareSecurityModules/dedicatedHSMs", apiVersion = "2021-11-30", name = "hsm-t2",
    location = "eastus", sku = { name = hsm.SKU }, properties = { stampId = "stamp2", networkProfile = {
      subnet = { id = "[resourceId('Microsoft.Network/virtualNetworks/subnets', 'hsm-vnet', 'hsm')]" } } } } } }
  deploy.create(c, "dep2", template, {})
  t.eq(deploy.cancel(c, "dep2").status, 204)
  local d = c:get(deploy.path(c, "dep2")).body
  t.eq(d.properties.provisioningState, "Canceled")
end)

---------------------------------------------------------------------------
-- check mode

t.test("check mode sends no mutation, says what it would do, and reads still happen", function()
  local c, audit = fresh()
  local before = estate:stats().requests
  local plans = {}
  dhsm.context().would = function(what) plans[#plans + 1] = what end
  local checking = require("dhsm.act").check_scope(true)
  t.cleanup(function() dhsm.context().would = nil end)
  local r = c:put(hsm.path(c, "hsm-c1"), { body = hsm.body(c, spec()) })
  t.eq({ r.check, r.status, r.method }, { true, 0, "PUT" })
  t.eq(c:wait(r), nil)
  t.eq(c:get(c:group_path()).status, 200)
  c:patch(hsm.path(c, "hsm-c1"), { body = { tags = { owner = "ops" },
    properties = { adminKey = require("dhsm.secret").value("s3cret-value") } } })
  checking:close()
  t.eq(hsm.get(c, "hsm-c1"), nil)
  t.eq(#plans, 2)
  t.ok(plans[1]:find("^PUT /subscriptions/.*/dedicatedHSMs/hsm%-c1 {"), plans[1])
  t.ok(plans[1]:find('"stampId":"stamp1"', 1, true), "the body is shown: " .. plans[1])
  t.ok(plans[2]:find('"adminKey":"<secret>"', 1, true) and plans[2]:find('"owner":"ops"', 1, true), plans[2])
  t.ok(not plans[2]:find("s3cret", 1, true), plans[2])
  local recs = audit_records(audit)
  t.eq({ recs[1].action, recs[1].outcome }, { "check.would", "planned" })
  t.ok(recs[1].what:find("^PUT /subscriptions/.*/dedicatedHSMs/hsm%-c1 {"), recs[1].what)
  t.eq({ recs[1].kind, recs[1].change }, { "azure", "azure.PUT" })
  t.ok(not util.read_file(audit):find("s3cret", 1, true), "the secret never reaches the audit log")
  t.ok(estate:stats().requests - before <= 3, "only reads (and a token) were sent")
end)
