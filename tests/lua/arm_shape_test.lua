-- Every ARM reply the client reads further than its status - HSMs,
-- gateways, subnets, public IPs, NICs, features, deployments and their
-- operations - is checked where it comes in: a field of the wrong type is
-- an azure BadResponse naming the field and what was expected, never a Lua
-- error in the middle of a playbook.  First a table of the bad replies
-- seen (issue 22), then each good reply mutated field by field (the
-- fuzz-style part: every field replaced by a value of every other type).
local t = require "dhsm.test"
local azure = require "dhsm.azure"
local cjson = require "cjson"
local deploy = require "dhsm.azure.deploy"
local hsm = require "dhsm.azure.hsm"
local network = require "dhsm.azure.network"
local secret = require "dhsm.secret"

-- A client whose transport answers by URL: routes = {{plain substring, body | {status=, body=}}},
-- the first that the request's URL holds; anything else a 404.
local function client(routes)
  local stub = {}
  function stub.request(_, req)
    for _, route in ipairs(routes) do
      if req.url:find(route[1], 1, true) then
        local r = type(route[2]) == "table" and route[2] or { status = 200, body = route[2] }
        return { status = r.status, body = r.body, headers = { ["x-ms-request-id"] = "req-1" } }
      end
    end
    return { status = 404, body = '{"error": {"code": "NotFound", "message": "no such thing"}}', headers = {} }
  end
  local c = azure.client { subscription = "s", resource_group = "g", endpoint = "https://management.azure.com",
    transport = stub, max_attempts = 1 }
  c.bearer, c.refresh_at = secret.value("stub-token"), math.huge
  return c
end

local HSM_ID = "/subscriptions/s/resourceGroups/gone/providers/Microsoft.HardwareSecurityModules/dedicatedHSMs/hsm1"
local GOOD_HSM = { id = HSM_ID, name = "hsm1", location = "eastus", sku = { name = "SafeNet Luna Network HSM A790" },
  systemData = { createdAt = "2026-01-01", createdBy = "me" },
  properties = { stampId = "stamp1", provisioningState = "Failed", statusMessage = "InternalServerError: x",
    networkProfile = { subnet = { id = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/"
      .. "virtualNetworks/v/subnets/hsm" }, networkInterfaces = { { id = "/subscriptions/s/nic1",
      privateIpAddress = "10.0.0.4" } } } } }
local VNET = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/virtualNetworks/v"
local GOOD_GATEWAY = { name = "gw", id = "/subscriptions/s/gw", properties = { provisioningState = "Succeeded",
  gatewayType = "ExpressRoute", sku = { name = "Standard" }, ipConfigurations = { { properties = {
    subnet = { id = VNET .. "/subnets/GatewaySubnet" }, publicIPAddress = { id = "/subscriptions/s/pip" } } } } } }
local GOOD_OPERATION = { operationId = "op1", properties = { provisioningState = "Failed", statusCode = "Conflict",
  timestamp = "t", targetResource = { resourceName = "h", resourceType = "dedicatedHSMs" },
  statusMessage = { error = { code = "Outer", message = "m", details = { { code = "Inner", message = "n" } } } } } }
local function list(item) return { value = { item } } end

-- The functions that read replies: each with its routes (url substring ->
-- the good reply, decoded) and its call.
local READERS = {
  { "hsm.orphans", { { "/dedicatedHSMs?", list(GOOD_HSM) } }, function(c) return hsm.orphans(c) end },
  { "hsm.summary", { { "/dedicatedHSMs?", list(GOOD_HSM) } }, function(c) return hsm.summary(c) end },
  { "hsm.leftovers", { { "/dedicatedHSMs?", list(GOOD_HSM) } }, function(c) return hsm.leftovers(c, "eastus") end },
  { "hsm.get", { { "/dedicatedHSMs/hsm1?", GOOD_HSM } }, function(c) return hsm.get(c, "hsm1") end },
  { "hsm.features", { { "/features/", { properties = { state = "Registered" } } } },
    function(c) return hsm.features(c) end },
  { "hsm.private_ip", { { "/nic1?", { properties = { ipConfigurations = { { properties = {
    privateIPAddress = "10.0.0.4" } } } } } } }, function(c) return hsm.private_ip(c, GOOD_HSM) end },
  { "network.check_delegation", { { "/subnets/hsm?", { name = "hsm", properties = { delegations = { {
    properties = { serviceName = network.DELEGATION } } } } } } },
    function(c) return network.check_delegation(c, "v", "hsm") end },
  { "network.vnet_gateway", { { "/virtualNetworkGateways?", list(GOOD_GATEWAY) } },
    function(c) return network.vnet_gateway(c, "v") end },
  { "network.gateway", { { "/virtualNetworkGateways/gw?", GOOD_GATEWAY } }, function(c) return network.gateway(c, "gw") end },
  { "network.public_ip_sku", { { "/pip?", { sku = { name = "Standard" } } } },
    function(c) return network.public_ip_sku(c, GOOD_GATEWAY) end },
  { "deploy.operations", { { "/deployments/d/operations?", list(GOOD_OPERATION) } },
    function(c) return deploy.operations(c, "d") end },
  { "deploy.failed", { { "/deployments?", list { name = "d", id = "/d", properties = { provisioningState = "Failed",
    correlationId = "c", timestamp = "t" } } } }, function(c) return deploy.failed(c) end },
  { "deploy.support_facts", { { "/deployments/d/operations?", list(GOOD_OPERATION) }, { "/deployments/d?", {
    id = "/d", properties = { provisioningState = "Failed", correlationId = "c", timestamp = "t", duration = "PT1M" } } } },
    function(c) return deploy.support_facts(c, "d") end },
  { "hsm.delete_failed (its rule reads the resource)", { { "/dedicatedHSMs/hsm1?", GOOD_HSM } },
    function(c) return hsm.delete_failed(c, "hsm1") end },
  { "Client:gone", { { "/dedicatedHSMs/hsm1?", { properties = { provisioningState = "Succeeded" } } } },
    function(c) return c:gone(hsm.path(c, "hsm1")) end },
}

local function reader(name)
  for _, r in ipairs(READERS) do if r[1] == name then return r end end
end

-- call(name, routes) -> ok, result or error: reader name against replies
-- (the reader's own routes, the first replaced by routes' bodies, as JSON text)
local function call(name, bodies)
  local r = reader(name)
  local routes = {}
  for i, route in ipairs(r[2]) do
    local body = bodies and bodies[i] or route[2]
    routes[i] = { route[1], type(body) == "string" and body or cjson.encode(body) }
  end
  return pcall(r[3], client(routes))
end

t.test("every reader accepts its good reply", function()
  for _, r in ipairs(READERS) do
    local ok, err = call(r[1])
    t.ok(ok, r[1] .. ": " .. tostring(err))
  end
end)

-- The bad replies seen, each a BadResponse naming the field and what was expected.
local BAD = {
  { "hsm.orphans", '{"value":[{}]}', "'value[1].id' is missing, expected a string" },
  { "hsm.orphans", '{"value":[{"id":"/subscriptions/s/x","name":"h","properties":{}}]}', "'value[1].id' (\"/subscriptions/s/x\") "
    .. "names no resource group" },
  { "network.check_delegation", '{"properties":5}', "'properties' is a number (5), expected an object" },
  { "network.check_delegation", '{"properties":{"delegations":[{"properties":{"serviceName":[]}}]}}',
    "'properties.delegations[1].properties.serviceName' is an object or list, expected a string" },
  { "network.vnet_gateway", '{"value":[{"name":"gw","properties":{"ipConfigurations":[5]}}]}',
    "'value[1].properties.ipConfigurations[1]' is a number (5), expected an object" },
  { "network.vnet_gateway", '{"value":[{"properties":{}}]}', "'value[1].name' is missing, expected a string" },
  { "network.gateway", '{"name":"gw"}', "'properties' is missing, expected an object" },
  { "hsm.get", '{"id":"/x","name":"hsm1"}', "'properties' is missing, expected an object" },
  { "deploy.operations", '{"value":[{"properties":{"statusMessage":{"error":{"details":"x"}}}}]}',
    "'value[1].properties.statusMessage.error.details' is a string (\"x\"), expected a list of objects" },
  { "deploy.operations", '{"value":[{"properties":{"statusMessage":7}}]}',
    "'value[1].properties.statusMessage' is a number (7), expected an object or a string" },
  { "hsm.get", '{"id":"/x","name":"h","properties":{"networkProfile":{"networkInterfaces":"x"}}}',
    "'properties.networkProfile.networkInterfaces' is a string (\"x\"), expected a list of objects" },
  { "hsm.summary", '{"value":[{"id":"/x","name":"h","properties":"x"}]}',
    "'value[1].properties' is a string (\"x\"), expected an object" },
  { "hsm.features", '{"properties":{"state":1}}', "'properties.state' is a number (1), expected a string" },
  { "hsm.private_ip", '{"properties":{"ipConfigurations":[{"properties":7}]}}',
    "'properties.ipConfigurations[1].properties' is a number (7), expected an object" },
  { "network.public_ip_sku", '{"sku":"Standard"}', "'sku' is a string (\"Standard\"), expected an object" },
  { "deploy.failed", '{"value":[{"properties":3}]}', "'value[1].properties' is a number (3), expected an object" },
  { "deploy.support_facts", '{"properties":{"correlationId":{}}}',
    "'properties.correlationId' is an object or list, expected a string", 2 },
  { "hsm.delete_failed (its rule reads the resource)", '{"id":"/x","name":"hsm1","properties":{"provisioningState":5}}',
    "'properties.provisioningState' is a number (5), expected a string" },
  { "Client:gone", '{"properties":5}', "'properties' is a number (5), expected an object" },
}

for _, case in ipairs(BAD) do
  t.test(("%s on %s is a BadResponse: %s"):format(case[1], case[2], case[3]), function()
    local bodies = {}
    bodies[case[4] or 1] = case[2]
    local ok, err = call(case[1], bodies)
    t.eq(ok, false, "a malformed reply was accepted")
    t.ok(dhsm.error.is(err, "azure"), "not an azure error: " .. tostring(err))
    t.eq(err.code, "BadResponse", tostring(err))
    t.ok(err.message:find(case[3], 1, true), err.message)
  end)
end

---------------------------------------------------------------------------
-- every field of every good reply, replaced by a value of each other type

local function copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = copy(x) end
  return out
end

-- Every path (a list of keys) into v.
local function paths(v, prefix, out)
  for k, x in pairs(v) do
    local p = table.move(prefix, 1, #prefix, 1, {})
    p[#p + 1] = k
    out[#out + 1] = p
    if type(x) == "table" then paths(x, p, out) end
  end
  return out
end

local function replaced(doc, path, value)
  local out = copy(doc)
  local at = out
  for i = 1, #path - 1 do at = at[path[i]] end
  at[path[#path]] = value
  return out
end

local OTHERS = { 5, "x", {}, { 7 }, { x = 1 }, true, cjson.null }

t.test("fuzz: each reader, each field of its good reply of each other type: a result or a BadResponse, never a Lua error",
  function()
  local tried = 0
  for _, r in ipairs(READERS) do
    for i, route in ipairs(r[2]) do
      for _, path in ipairs(paths(route[2], {}, {})) do
        for _, value in ipairs(OTHERS) do
          local bodies = {}
          bodies[i] = replaced(route[2], path, value)
          local ok, err = call(r[1], bodies)
          tried = tried + 1
          if not ok then
            local where = ("%s, %s = %s"):format(r[1], table.concat(path, "."), cjson.encode(value))
            -- a BadResponse, or a safety rule refusing what the reply says (never a Lua error)
            t.ok(dhsm.error.is(err, "azure") and err.code == "BadResponse" or dhsm.error.is(err, "safety"),
              where .. ": " .. tostring(err))
          end
        end
      end
    end
  end
  t.ok(tried > 500, "tried " .. tried)
end)
