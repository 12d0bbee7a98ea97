-- dhsm.azure.network: what dedicated HSMs depend on in the virtual network:
-- the subnet's delegation and the ExpressRoute gateway.
--
--   network.vnet_body{location=, prefix=, subnets={{name=, prefix=, delegate=true}}, tags=}
--   network.gateway_body{location=, subnet_id=, pip_id=, sku=}; network.public_ip_body{location=}
--   network.vnet_gateways(c, vnet) -> every gateway whose ipConfigurations point into vnet
--   network.public_ip_sku(c, gateway_resource) -> "Standard" | "Basic" | nil
--   network.delegation_fix(c, vnet, subnet [, group, "create"]) -> the exact az command that delegates
--     the subnet (update), or creates it delegated
local azure = require "dhsm.azure"
local dhsm = require "dhsm"

local M = {}

M.DELEGATION = "Microsoft.HardwareSecurityModules/dedicatedHSMs"

local function base(c, group)
  return c:group_path(group) .. "/providers/Microsoft.Network"
end

function M.vnet_path(c, vnet, group)
  if type(vnet) ~= "string" then dhsm.error { kind = "usage", message = "expected a virtual network name" } end
  return base(c, group) .. "/virtualNetworks/" .. vnet
end

function M.subnet_path(c, vnet, subnet, group)
  if type(subnet) ~= "string" then dhsm.error { kind = "usage", message = "expected a subnet name" } end
  return M.vnet_path(c, vnet, group) .. "/subnets/" .. subnet
end

function M.gateway_path(c, name, group)
  return base(c, group) .. "/virtualNetworkGateways/" .. name
end

function M.public_ip_path(c, name, group)
  return base(c, group) .. "/publicIPAddresses/" .. name
end

---------------------------------------------------------------------------
-- request bodies (as the recordings in reference/arm-recorded.md send them)

local function delegation()
  return { { name = "0", properties = { serviceName = M.DELEGATION } } }
end

-- subnet_body{prefix=, delegate=}
function M.subnet_body(s)
  return { name = s.name, properties = { addressPrefix = s.prefix, delegations = s.delegate and delegation() or nil } }
end

-- vnet_body{location=, prefix=, subnets={{name=, prefix=, delegate=}}, tags=}
function M.vnet_body(v)
  local subnets = {}
  for i, s in ipairs(v.subnets or {}) do subnets[i] = M.subnet_body(s) end
  return { location = v.location, tags = v.tags,
    properties = { addressSpace = { addressPrefixes = { v.prefix } }, subnets = subnets } }
end

-- An ExpressRoute gateway needs a Standard SKU, static public IP.
function M.public_ip_body(p)
  return { location = p.location, sku = { name = "Standard", tier = "Regional" }, tags = p.tags,
    properties = { publicIPAllocationMethod = "Static", publicIPAddressVersion = "IPv4" } }
end

-- gateway_body{location=, subnet_id= (the GatewaySubnet), pip_id=, sku="Standard"}
function M.gateway_body(g)
  return { location = g.location, tags = g.tags, properties = {
    gatewayType = "ExpressRoute", vpnType = "RouteBased", activeActive = false,
    sku = { name = g.sku or "Standard", tier = g.sku or "Standard" },
    ipConfigurations = { { name = "vnetGatewayConfig0", properties = { privateIPAllocationMethod = "Dynamic",
      subnet = { id = g.subnet_id }, publicIPAddress = { id = g.pip_id } } } } } }
end

-- The az command that sets the delegation the guide's first cause is
-- about: on the subnet (verb "update", the default), or creating it
-- delegated ("create", with the prefix for the operator to fill in).
function M.delegation_fix(c, vnet, subnet, group, verb)
  verb = verb or "update"
  return ("az network vnet subnet %s --subscription %s --resource-group %s --vnet-name %s --name %s "
    .. "--delegations %s%s"):format(verb, c.subscription, group or c.resource_group, vnet, subnet, M.DELEGATION,
    verb == "create" and " --address-prefixes PREFIX" or "")
end

-- What is read of a gateway, a subnet and a public IP, checked where each
-- comes in (azure.conform): a reply of another shape is a BadResponse.
local ID = { "object", id = "string" }
M.GATEWAY_SHAPE = { "object", name = "string!", id = "string", location = "string",
  properties = { "object!", provisioningState = "string", gatewayType = "string",
    sku = { "object", name = "string", tier = "string" },
    ipConfigurations = { "objects", items = { "object!", properties = { "object", subnet = ID,
      publicIPAddress = ID } } } } }
local SUBNET_SHAPE = { "object", name = "string", properties = { "object",
  delegations = { "objects", items = { "object!", properties = { "object", serviceName = "string" } } } } }
M.PUBLIC_IP_SHAPE = { "object", sku = { "object", name = "string" } }

function M.gateway(c, name, group)
  local path = M.gateway_path(c, name, group)
  return azure.conform(path, c:find(path), M.GATEWAY_SHAPE)
end

function M.gateways(c, group)
  local path = base(c, group) .. "/virtualNetworkGateways"
  return azure.conform_list(path, c:list(path), M.GATEWAY_SHAPE)
end

-- Every gateway serving vnet (its ipConfigurations point into the VNet's
-- GatewaySubnet), as {name=, state=, type=, resource=}.  The guide: one per VNet.
-- subnet_id: the id of a subnet of it, or of the VNet itself (else vnet in
-- group); gateways: the group's list (M.gateways) when the caller has it already.
function M.vnet_gateways(c, vnet, group, subnet_id, gateways)
  local vnet_id = select(2, azure.id_part(subnet_id, "virtualNetworks")) or M.vnet_path(c, vnet, group)
  vnet_id = vnet_id:lower()
  local out = {}
  for _, gw in ipairs(gateways or M.gateways(c, group)) do
    for _, ip in ipairs(gw.properties and gw.properties.ipConfigurations or {}) do
      local sid = ip.properties and ip.properties.subnet and ip.properties.subnet.id
      if sid and sid:lower():sub(1, #vnet_id + 1) == vnet_id .. "/" then
        out[#out + 1] = { name = gw.name, state = gw.properties.provisioningState,
          type = gw.properties.gatewayType, resource = gw }
        break
      end
    end
  end
  return out
end

-- The gateway serving vnet: {name=, state=, type=, resource=} or nil.
function M.vnet_gateway(c, vnet, group, subnet_id)
  return M.vnet_gateways(c, vnet, group, subnet_id)[1]
end

-- The SKU of a gateway's public IP ("Standard", "Basic"), nil when it has none.
function M.public_ip_sku(c, gateway)
  for _, ip in ipairs(gateway.properties and gateway.properties.ipConfigurations or {}) do
    local pip = ip.properties and ip.properties.publicIPAddress and ip.properties.publicIPAddress.id
    if pip then
      local r = azure.conform(pip, c:find(pip), M.PUBLIC_IP_SHAPE)
      return r and r.sku and r.sku.name or "Basic", pip   -- ARM's default SKU is Basic
    end
  end
end

-- wait_gateway(c, name, {group=, timeout=, interval=, on_progress=}) -> the
-- Succeeded gateway.  In check mode a gateway that does not exist was only
-- described: nil (c:wait).
function M.wait_gateway(c, name, opts)
  opts = opts or {}
  return c:wait(M.gateway_path(c, name, opts.group), opts)
end

-- check_delegation(c, vnet, subnet [, group, subnet_id]) -> {ok=, message=, services=, missing=}
-- (missing: the subnet does not exist)
-- The guide's number one deployment failure: the HSM subnet is not delegated.
function M.check_delegation(c, vnet, subnet, group, subnet_id)
  local path = subnet_id and subnet_id:gsub("^https?://[^/]+", "") or M.subnet_path(c, vnet, subnet, group)
  local s = azure.conform(path, c:find(path), SUBNET_SHAPE)
  if not s then
    return { ok = false, missing = true, services = {}, message = "subnet " .. path:match("[^/]+/[^/]+/[^/]+$") .. " not found" }
  end
  local services = {}
  for _, d in ipairs(s.properties and s.properties.delegations or {}) do
    services[#services + 1] = d.properties and d.properties.serviceName
  end
  for _, name in ipairs(services) do
    if tostring(name):lower() == M.DELEGATION:lower() then   -- ARM compares service names case-insensitively
      return { ok = true, services = services, message = ("subnet %s is delegated to %s"):format(s.name, M.DELEGATION) }
    end
  end
  return { ok = false, services = services,
    message = ("subnet %s is not delegated to %s (delegations: %s)"):format(s.name, M.DELEGATION,
      #services > 0 and table.concat(services, ", ") or "none") }
end

require("dhsm.schema").check_arguments("azure.network", M, {
  vnet_path = "c:client vnet:string group:string?",
  subnet_path = "c:client vnet:string subnet:string group:string?",
  gateway_path = "c:client name:string group:string?",
  public_ip_path = "c:client name:string group:string?",
  subnet_body = "s:table", vnet_body = "v:table", public_ip_body = "p:table", gateway_body = "g:table",
  delegation_fix = "c:client vnet:string subnet:string group:string? verb:string?",
  gateway = "c:client name:string group:string?",
  gateways = "c:client group:string?",
  vnet_gateways = "c:client vnet:string? group:string? subnet_id:string? gateways:table?",
  vnet_gateway = "c:client vnet:string? group:string? subnet_id:string?",
  public_ip_sku = "c:client gateway:table",
  wait_gateway = "c:client name:string opts:table?",
  check_delegation = "c:client vnet:string? subnet:string? group:string? subnet_id:string?",
}, require("dhsm.azure.rules").ARGUMENT_KINDS)

return M
