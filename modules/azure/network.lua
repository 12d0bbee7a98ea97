-- dhsm.azure.network: what dedicated HSMs depend on in the virtual network:
-- the subnet's delegation and the ExpressRoute gateway.
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

function M.gateway(c, name, group)
  return c:find(M.gateway_path(c, name, group))
end

function M.gateways(c, group)
  return c:list(base(c, group) .. "/virtualNetworkGateways")
end

-- The gateway serving vnet (its ipConfigurations point into the VNet's
-- GatewaySubnet): {name=, state=, type=, resource=} or nil.
function M.vnet_gateway(c, vnet, group, subnet_id)
  local vnet_id = subnet_id and subnet_id:match("^(.-/virtualNetworks/[^/]+)") or M.vnet_path(c, vnet, group)
  vnet_id = vnet_id:lower()
  for _, gw in ipairs(M.gateways(c, group)) do
    for _, ip in ipairs(gw.properties and gw.properties.ipConfigurations or {}) do
      local sid = ip.properties and ip.properties.subnet and ip.properties.subnet.id
      if sid and sid:lower():sub(1, #vnet_id + 1) == vnet_id .. "/" then
        return { name = gw.name, state = gw.properties.provisioningState,
          type = gw.properties.gatewayType, resource = gw }
      end
    end
  end
end

-- wait_gateway(c, name, {group=, timeout=, interval=, on_progress=}): until Succeeded.
function M.wait_gateway(c, name, opts)
  opts = opts or {}
  return c:wait(M.gateway_path(c, name, opts.group), opts)
end

-- check_delegation(c, vnet, subnet [, group, subnet_id]) -> {ok=, message=, services=}
-- The guide's number one deployment failure: the HSM subnet is not delegated.
function M.check_delegation(c, vnet, subnet, group, subnet_id)
  local path = subnet_id and subnet_id:gsub("^https?://[^/]+", "") or M.subnet_path(c, vnet, subnet, group)
  local s = c:find(path)
  if not s then return { ok = false, services = {}, message = "subnet " .. path:match("[^/]+/[^/]+/[^/]+$") .. " not found" } end
  local services = {}
  for _, d in ipairs(s.properties and s.properties.delegations or {}) do
    services[#services + 1] = d.properties and d.properties.serviceName
  end
  for _, name in ipairs(services) do
    if name == M.DELEGATION then
      return { ok = true, services = services, message = ("subnet %s is delegated to %s"):format(s.name, M.DELEGATION) }
    end
  end
  return { ok = false, services = services,
    message = ("subnet %s is not delegated to %s (delegations: %s)"):format(s.name, M.DELEGATION,
      #services > 0 and table.concat(services, ", ") or "none") }
end

return M
