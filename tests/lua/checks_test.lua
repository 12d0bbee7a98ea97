-- dhsm.azure.checks against the simulated estate (real HTTPS ARM), each
-- fault of the guide put in place the way an operator meets it: the
-- subscription not allowlisted, the quota full (failed HSMs counting), a
-- capacity failure, the delegation missing, the gateway Updating, Failed,
-- with a Basic public IP, two gateways in one VNet, leftovers, an orphan.
-- Then the SKIP rule (a check standing on a failed one), hsm.start
-- refusing a FAIL and passing what a run plans in check mode - what
-- reached the estate counted from its own request log.
local t = require "dhsm.test"
local checks = require "dhsm.azure.checks"
local deploy = require "dhsm.azure.deploy"
local findings = require "dhsm.findings"
local hsm = require "dhsm.azure.hsm"
local network = require "dhsm.azure.network"
local support = require "support.estate"

local estate = support.start {
  set = { hsm_step_seconds = 0.02, delete_seconds = 0.02, network_seconds = 0.02, gateway_seconds = 0.05, retry_after = 0 },
  args = "--appliances 0",   -- HSMs of its own only: seeded ones would count against the quota
}
local c = estate:azure()
local SUB = estate.inventory.azure.subscription
local DIAGNOSIS = { "allowlisting", "hsms", "deployments", "delegation", "gateway", "quota", "orphans", "nic" }
local HSM_SUBNET = { vnet = "hsm-vnet", subnet = "hsm" }

-- The row of check on target (nil when there is none).
local function find(rows, check, target)
  for _, r in ipairs(rows) do
    if r.check == check and r.target == target then return r end
  end
end

-- "STATUS check target: finding" of every row that is not OK, for messages.
local function not_ok(rows)
  local out = {}
  for _, r in ipairs(rows) do
    if r.status ~= "OK" then out[#out + 1] = ("%s %s"):format(r.status, checks.line(r)) end
  end
  return table.concat(out, "\n")
end

-- The row of check on target, with that status.
local function expect(rows, check, target, status)
  local r = find(rows, check, target)
  t.ok(r, ("a row %s %s among:\n%s"):format(check, target, not_ok(rows)))
  t.eq(r.status, status, checks.line(r))
  return r
end

local function scope(opts)
  local o = { vnet = HSM_SUBNET.vnet, subnet = HSM_SUBNET.subnet }
  for k, v in pairs(opts or {}) do o[k] = v end
  if o.vnet == false then o.vnet, o.subnet = nil, nil end
  return checks.scope(c, o)
end

-- An HSM created straight on ARM, past the checks (what an earlier run left);
-- removed when the test ends.  -> its final state
local function make_hsm(name, spec, group)
  t.cleanup(function() estate:remove_hsm(c, name, group) end)
  local s = { vnet = "hsm-vnet", subnet = "hsm" }
  for k, v in pairs(spec or {}) do s[k] = v end
  return select(2, estate:put_hsm(c, name, s, group))
end

local function reput_gateway(wait) estate:reput_gateway(c, wait) end

-- The gateway hsm-ergw Updating until the test ends (the race's window).
local function gateway_updating()
  estate:fault { gateway_seconds = 3600 }
  reput_gateway(false)
  t.cleanup(function()
    estate:control("POST", "/advance", { idle = true })
    estate:fault { gateway_seconds = 0.05 }
  end)
end

local function fresh()
  estate:clear()
  t.cleanup(function() estate:clear() end)
end

---------------------------------------------------------------------------
-- every check, one at a time

t.test("a healthy group: every check OK, every row in the findings vocabulary", function()
  fresh()
  t.eq(make_hsm("hsm-h1", { stamp = "stamp1" }), "Succeeded")
  local rows = checks.run(scope { vnet = false }, DIAGNOSIS)
  t.eq(not_ok(rows), "")
  for _, r in ipairs(rows) do
    t.eq(findings.row(r), r, "a findings row: " .. r.check)
    t.eq({ r.remedy, r.guide, r.fix }, {}, "an OK row carries no advice: " .. r.check)
  end
  expect(rows, "hsm provisioning", "hsm-h1", "OK")
  expect(rows, "subnet delegation", "hsm-vnet/subnets/hsm", "OK")
  t.eq(expect(rows, "gateway", "hsm-vnet", "OK").finding,
    "hsm-ergw Succeeded, type ExpressRoute, SKU Standard, public IP Standard")
  expect(rows, "one gateway per vnet", "hsm-vnet", "OK")
  t.ok(expect(rows, "nic private ip", "hsm-h1", "OK").finding:find("^NIC hsm%-h1_HSMnic: 10%.2%.1%.%d+$"))
  expect(rows, "quota", "eastus", "OK")
  expect(rows, "orphaned hsms", SUB, "OK")
  expect(rows, "failed deployments", "hsm-rg", "OK")
end)

t.test("allowlisting not registered: FAIL, the guide's section apart; pending: WARN, FAIL for a run about to deploy",
  function()
  fresh()
  estate:fault { not_allowlisted = 1 }
  local r = checks.allowlisting(scope())[1]
  t.eq({ r.check, r.target, r.status }, { "allowlisting", SUB, "FAIL" })
  t.ok(r.finding:find("Microsoft.HardwareSecurityModules/AzureDedicatedHSM is NotRegistered", 1, true), r.finding)
  t.ok(r.remedy:find("contact your Microsoft Account Manager", 1, true), r.remedy)
  t.eq(r.guide, "HSM Registration")
  t.ok(not r.remedy:find("guide:", 1, true), "the remedy no longer spells out its section")
  -- asking for the feature leaves it Pending until Microsoft approves
  local feature = ("/subscriptions/%s/providers/Microsoft.Features/providers/Microsoft.HardwareSecurityModules/features/"
    .. "AzureDedicatedHSM"):format(SUB)
  local api = { api_version = require("dhsm.azure").API.features }
  c:post(feature .. "/register", api)
  t.cleanup(function() estate:clear() c:post(feature .. "/register", api) end)   -- approved: Registered again
  estate:clear()                                   -- the other feature reads Registered again
  t.eq(checks.allowlisting(scope())[1].status, "WARN")
  r = checks.allowlisting(scope { hsms = { { name = "hsm-new" } } })[1]
  t.eq({ r.status, r.finding }, { "FAIL", "registration pending: Microsoft.HardwareSecurityModules/AzureDedicatedHSM "
    .. "is Pending" })
end)

t.test("quota: per region and per stamp, its own name not counted, failed HSMs counted (named), unless deleted first",
  function()
  fresh()
  make_hsm("hsm-q1", { stamp = "stamp1" })
  make_hsm("hsm-q2", { stamp = "stamp1" })
  local rows = checks.quota(scope { hsms = { { name = "hsm-q3", stamp = "stamp1" } } })
  t.eq(expect(rows, "quota", "eastus", "OK").finding, "3 of 4 HSMs per region after this run")
  local stamp = expect(rows, "quota", "stamp1", "FAIL")
  t.eq(stamp.finding, "would hold 3 HSMs, the quota is 2 per stamp (in use: hsm-q1, hsm-q2)")
  t.ok(stamp.remedy:find("^Dedicated HSM has an initial quota of 2 HSMs per stamp and 4 per region: delete "), stamp.remedy)
  t.eq(stamp.guide, "Deployment failure based on quota")
  rows = checks.quota(scope { hsms = { { name = "hsm-q2", stamp = "stamp1" } } })
  t.eq(expect(rows, "quota", "stamp1", "OK").finding, "2 of 2 HSMs per stamp after this run", "a rerun takes no place")
  estate:fault { quota_per_region = 0 }
  t.eq(make_hsm("hsm-qf", { stamp = "stamp2" }), "Failed")
  estate:clear()
  local two = { { name = "hsm-q3", stamp = "stamp2" }, { name = "hsm-q4", stamp = "stamp3" } }
  t.eq(expect(checks.quota(scope { hsms = two }), "quota", "eastus", "FAIL").finding,
    "would hold 5 HSMs, the quota is 4 per region (in use: hsm-q1, hsm-q2, hsm-qf)")
  expect(checks.quota(scope { hsms = two, planned = { leftovers = true } }), "quota", "eastus", "OK")
  -- a diagnosis: the failed one holds a place, and is a FAIL of its own
  local diagnosis = checks.run(scope { vnet = false }, { "quota", "hsms" })
  t.ok(expect(diagnosis, "quota", "eastus", "WARN").finding:find("1 failed HSM(s) hold places", 1, true))
  local failed = expect(diagnosis, "hsm provisioning", "hsm-qf", "FAIL")
  t.ok(failed.finding:find("^Failed %(quota%): .*; in group hsm%-rg, stamp stamp2, it counts against the quota$"),
    failed.finding)
  -- a run about to deploy: a leftover it deletes first (fix), or a WARN the quota row counts
  local leftover = expect(checks.hsms(scope { hsms = two, planned = { leftovers = true } }), "hsm provisioning",
    "hsm-qf", "WARN")
  t.eq(leftover.fix, "deleted by this run first (a confirmed step)")
  t.eq(expect(checks.hsms(scope { hsms = two }), "hsm provisioning", "hsm-qf", "WARN").fix, nil)
end)

t.test("a location by its display name is the region: \"East US\" counts eastus's HSMs and leftovers, and the PUT "
  .. "is refused", function()
  fresh()
  t.cleanup(function() estate:remove_hsm(c, "hsm-e3") end)    -- what a PUT that got through would leave
  make_hsm("hsm-e1", { stamp = "stamp1" })
  make_hsm("hsm-e2", { stamp = "stamp1" })
  local err = t.raises(function()
    hsm.start(c, "hsm-e3", { location = "East US", vnet = "hsm-vnet", subnet = "hsm", stamp = "stamp1" })
  end, "PreflightFailed")
  t.ok(err.message:find("\n  quota stamp1: would hold 3 HSMs, the quota is 2 per stamp (in use: hsm-e1, hsm-e2)", 1,
    true), err.message)
  t.eq(estate:mutations("hsm-e3"), {}, "no PUT reached ARM (its request log)")
  estate:fault { quota_per_region = 0 }
  t.eq(make_hsm("hsm-ef", { stamp = "stamp2" }), "Failed")
  estate:clear()
  t.eq(#hsm.leftovers(c, "East US"), 1)
  local two = { { name = "hsm-e3", stamp = "stamp2" }, { name = "hsm-e4", stamp = "stamp3" } }
  t.eq(expect(checks.quota(scope { location = "East US", hsms = two }), "quota", "eastus", "FAIL").finding,
    "would hold 5 HSMs, the quota is 4 per region (in use: hsm-e1, hsm-e2, hsm-ef)")
end)

t.test("capacity: an earlier failure for capacity in the stamp is the only evidence there is", function()
  fresh()
  estate:fault { capacity_per_stamp = 0 }
  t.eq(make_hsm("hsm-c1", { stamp = "stamp2" }), "Failed")
  estate:clear()
  local r = checks.capacity(scope { hsms = { { name = "hsm-c2", stamp = "stamp2" } } })[1]
  t.eq({ r.check, r.target, r.status }, { "capacity", "eastus", "WARN" })
  t.eq(r.finding, "hsm-c1 failed for capacity in stamp2: a new HSM there may fail too")
  t.eq(r.guide, "Deployment failure based on capacity")
  r = checks.capacity(scope { hsms = { { name = "hsm-c2", stamp = "stamp1" } } })[1]
  t.eq({ r.status, r.finding }, { "OK", "no earlier failure for capacity (Azure publishes no free-device count)" })
end)

t.test("subnet delegation missing: FAIL with the az command; the run's own VNet: fixed or created by the run", function()
  fresh()
  local r = checks.delegation(scope { subnet = "compute" })[1]
  t.eq({ r.check, r.target, r.status }, { "subnet delegation", "hsm-vnet/subnets/compute", "FAIL" })
  t.eq(r.finding, "subnet compute is not delegated to Microsoft.HardwareSecurityModules/dedicatedHSMs (delegations: none)")
  t.ok(r.remedy:find(("az network vnet subnet update --subscription %s --resource-group hsm-rg --vnet-name hsm-vnet "
    .. "--name compute --delegations Microsoft.HardwareSecurityModules/dedicatedHSMs"):format(SUB), 1, true), r.remedy)
  t.eq(r.guide, "HSM Subnet Delegation")
  r = checks.delegation(scope { subnet = "compute", planned = { vnet = true } })[1]
  t.eq({ r.status, r.fix }, { "WARN", "delegated by this run" })
  r = checks.delegation(scope { subnet = "nope" })[1]
  t.eq({ r.status, r.finding }, { "FAIL", "subnet hsm-vnet/subnets/nope does not exist" })
  t.ok(r.remedy:find("az network vnet subnet create ", 1, true), r.remedy)
  local rows = checks.run(scope { vnet = "new-vnet" }, { "delegation", "gateway" })
  expect(rows, "subnet delegation", "new-vnet/subnets/hsm", "FAIL")
  t.eq(expect(rows, "gateway", "new-vnet", "SKIP").finding, "not checked: virtual network new-vnet does not exist")
  rows = checks.run(scope { vnet = "new-vnet", planned = { vnet = true, gateway = true } }, { "delegation", "gateway" })
  t.eq(expect(rows, "subnet delegation", "new-vnet/subnets/hsm", "SKIP").fix, "created by this run, delegated")
  t.eq(expect(rows, "gateway", "new-vnet", "SKIP").fix, "created by this run: its ExpressRoute gateway")
end)

t.test("a delegation whose service name is cased otherwise is the delegation ARM accepts: OK, and the HSM is created",
  function()
  fresh()
  local path = network.subnet_path(c, "hsm-vnet", "lc")
  c:wait(c:put(path, { body = { properties = { addressPrefix = "10.2.3.0/24", delegations = { { name = "0",
    properties = { serviceName = network.DELEGATION:lower() } } } } } }))
  t.cleanup(function() c:wait(c:delete(path)) end)
  t.cleanup(function() estate:remove_hsm(c, "hsm-d1") end)
  t.eq(expect(checks.delegation(scope { subnet = "lc" }), "subnet delegation", "hsm-vnet/subnets/lc", "OK").finding,
    "subnet lc is delegated to Microsoft.HardwareSecurityModules/dedicatedHSMs")
  local done = c:wait(hsm.start(c, "hsm-d1", { vnet = "hsm-vnet", subnet = "lc", stamp = "stamp1" }), { timeout = 30 })
  t.eq(done.properties.provisioningState, "Succeeded")
  t.eq(estate.count(estate:mutations("dedicatedHSMs/hsm-d1"), "^PUT "), 1, "the PUT reached ARM (its request log)")
end)

t.test("the gateway Updating: WARN, FAIL for an HSM deployed now, a fix when the run waits for it; Failed: FAIL", function()
  fresh()
  gateway_updating()
  local r = expect(checks.gateway(scope()), "gateway", "hsm-vnet", "WARN")
  t.ok(r.finding:find("^hsm%-ergw Updating, type ExpressRoute, .*: HSMs deployed now hit the race$"), r.finding)
  t.eq(r.guide, "HSM Deployment Using Terraform, Provisioning ExpressRoute")
  local deploying = { { name = "hsm-g1", stamp = "stamp1" } }
  expect(checks.gateway(scope { hsms = deploying }), "gateway", "hsm-vnet", "FAIL")
  r = expect(checks.gateway(scope { hsms = deploying, planned = { gateway = true } }), "gateway", "hsm-vnet", "WARN")
  t.eq(r.fix, "waited for by this run until Succeeded")
  estate:control("POST", "/advance", { idle = true })
  estate:fault { gateway_seconds = 0.05, network_fail = "1:virtualNetworkGateways" }
  reput_gateway(true)
  t.cleanup(function() estate:clear() reput_gateway(true) end)
  r = expect(checks.gateway(scope()), "gateway", "hsm-vnet", "FAIL")
  t.ok(r.finding:find("^hsm%-ergw Failed"), r.finding)
  t.ok(r.remedy:find("a Failed gateway must be redeployed", 1, true), r.remedy)
end)

t.test("a subnet id cased otherwise is the same subnet (the gateway Updating refuses the PUT); one naming no VNet is "
  .. "a FAIL of each check, never no row", function()
  fresh()
  gateway_updating()
  t.cleanup(function() estate:remove_hsm(c, "hsm-i1") end)    -- what a PUT that got through would leave
  local id = network.subnet_path(c, "hsm-vnet", "hsm"):gsub("/resourceGroups/", "/resourcegroups/")
    :gsub("/virtualNetworks/", "/virtualnetworks/"):gsub("/subnets/", "/Subnets/")
  local err = t.raises(function() hsm.start(c, "hsm-i1", { subnet_id = id, stamp = "stamp1" }) end, "PreflightFailed")
  t.ok(err.message:find("\n  gateway hsm-vnet: hsm-ergw Updating, type ExpressRoute, ", 1, true), err.message)
  t.eq(estate:mutations("hsm-i1"), {}, "no PUT reached ARM (its request log)")
  local rows = checks.run(scope { vnet = false, subnet_id = id }, { "delegation", "gateway" })
  expect(rows, "subnet delegation", "hsm-vnet/subnets/hsm", "OK")
  expect(rows, "one gateway per vnet", "hsm-vnet", "OK")
  -- all of it lower-cased, the provider too: read with the Network api-version still
  rows = checks.run(scope { vnet = false, subnet_id = id:lower() }, { "delegation" })
  expect(rows, "subnet delegation", "hsm-vnet/subnets/hsm", "OK")
  -- an id naming no VNet: each check says it could not look
  local bad = ("/subscriptions/%s/resourceGroups/hsm-rg/providers/Microsoft.Network/subnets/hsm"):format(SUB)
  rows = checks.run(scope { vnet = false, subnet_id = bad }, { "delegation", "gateway" })
  t.eq(#rows, 2, not_ok(rows))
  for _, check in ipairs { "subnet delegation", "gateway" } do
    t.eq(expect(rows, check, bad, "FAIL").finding, ("subnet id %s names no virtual network: expected /subscriptions/SUB/"
      .. "resourceGroups/GROUP/providers/Microsoft.Network/virtualNetworks/VNET/subnets/SUBNET"):format(bad))
  end
  err = t.raises(function() hsm.start(c, "hsm-i1", { subnet_id = bad, stamp = "stamp1" }) end, "PreflightFailed")
  t.eq(estate:mutations("hsm-i1"), {}, "refused too")
  -- the checks that cannot run (no group) still name a target
  rows = checks.run(scope { vnet = false, group = "nope-rg", subnet_id = bad }, { "resource_group", "gateway" })
  expect(rows, "gateway", bad, "SKIP")
  expect(rows, "one gateway per vnet", bad, "SKIP")
end)

t.test("a Basic public IP on the gateway, the name or IP of a gateway to create, and two gateways in one VNet", function()
  fresh()
  local pip = network.public_ip_path(c, "hsm-ergw-pip")
  c:wait(c:put(pip, { body = { location = "eastus", sku = { name = "Basic" },
    properties = { publicIPAllocationMethod = "Dynamic" } } }))
  t.cleanup(function() c:wait(c:put(pip, { body = network.public_ip_body { location = "eastus" } })) end)
  local r = expect(checks.gateway(scope()), "gateway", "hsm-vnet", "FAIL")
  t.eq(r.finding, "hsm-ergw Succeeded, type ExpressRoute, SKU Standard, public IP Basic")
  t.eq(r.guide, "Provisioning ExpressRoute")
  -- the gateway a run would create in a VNet without one: its name taken, its IP Basic
  c:wait(c:put(network.vnet_path(c, "gw-vnet"), { body = network.vnet_body { location = "eastus", prefix = "10.5.0.0/16",
    subnets = { { name = "hsm", prefix = "10.5.1.0/24", delegate = true }, { name = "GatewaySubnet",
    prefix = "10.5.255.0/26" } } } }))
  local rows = checks.gateway(scope { vnet = "gw-vnet", planned = { gateway = true },
    new_gateway = { name = "hsm-ergw", public_ip = "hsm-ergw-pip" } })
  local text = not_ok(rows)
  t.ok(text:find("gateway name hsm-ergw is taken by a gateway of another virtual network", 1, true), text)
  t.ok(text:find("public IP hsm-ergw-pip is Basic SKU: an ExpressRoute gateway needs Standard", 1, true), text)
  rows = checks.gateway(scope { vnet = "gw-vnet", planned = { gateway = true },
    new_gateway = { name = "gw2", public_ip = "gw2-pip" } })
  t.eq(expect(rows, "gateway", "gw-vnet", "SKIP").fix, "created by this run: ExpressRoute gateway gw2 with Standard "
    .. "public IP gw2-pip")
  -- ARM refuses a second gateway whose first IP configuration is in the VNet; one whose second is gets
  -- through, and serves both VNets
  c:wait(c:put(network.public_ip_path(c, "gw2-pip"), { body = network.public_ip_body { location = "eastus" } }))
  local two = network.gateway_body { location = "eastus", subnet_id = network.subnet_path(c, "gw-vnet", "GatewaySubnet"),
    pip_id = network.public_ip_path(c, "gw2-pip") }
  table.insert(two.properties.ipConfigurations, { name = "second", properties = { privateIPAllocationMethod = "Dynamic",
    subnet = { id = network.subnet_path(c, "hsm-vnet", "GatewaySubnet") } } })
  c:wait(c:put(network.gateway_path(c, "gw2"), { body = two }))
  t.cleanup(function() c:wait(c:delete(network.gateway_path(c, "gw2"))) end)
  r = expect(checks.gateway(scope()), "one gateway per vnet", "hsm-vnet", "FAIL")
  t.eq(r.finding, "2 gateways: gw2, hsm-ergw")
  t.ok(r.remedy:find("a virtual network can have one gateway", 1, true), r.remedy)
end)

t.test("a Succeeded ExpressRoute gateway without a public IP: WARN (not the guide's gateway), not OK", function()
  fresh()
  local gw = network.gateway(c, "hsm-ergw")
  local function put_gateway(pip_id)
    c:wait(c:put(network.gateway_path(c, "hsm-ergw"), { body = network.gateway_body { location = gw.location,
      subnet_id = network.subnet_path(c, "hsm-vnet", "GatewaySubnet"), pip_id = pip_id } }), { timeout = 30 })
  end
  put_gateway(nil)
  t.cleanup(function() put_gateway(network.public_ip_path(c, "hsm-ergw-pip")) end)
  local r = expect(checks.gateway(scope()), "gateway", "hsm-vnet", "WARN")
  t.eq(r.finding, "hsm-ergw Succeeded, type ExpressRoute, SKU Standard, public IP none: an ExpressRoute gateway for "
    .. "Dedicated HSM is expected to have a Standard public IP")
  t.eq(r.guide, "Provisioning ExpressRoute")
end)

t.test("leftovers: a failed deployment and its failed HSM are FAILs; a run about to deploy deletes them first", function()
  fresh()
  local template = { ["$schema"] = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
    contentVersion = "1.0.0.0", resources = { {
      type = "Microsoft.HardwareSecurityModules/dedicatedHSMs", apiVersion = "2021-11-30", name = "hsm-l1",
      location = "eastus", sku = { name = hsm.SKU }, properties = { stampId = "stamp1",
        networkProfile = { subnet = { id = network.subnet_path(c, "hsm-vnet", "compute") } } } } } }
  t.cleanup(function() deploy.delete(c, "dep-l1") estate:remove_hsm(c, "hsm-l1") end)
  pcall(deploy.wait, c, deploy.create(c, "dep-l1", template, {}), { timeout = 30 })
  local rows = checks.run(scope { vnet = false }, { "hsms", "deployments" })
  local d = expect(rows, "failed deployments", "dep-l1", "FAIL")
  t.ok(d.finding:find("hsm-l1 SubnetNotDelegated", 1, true), d.finding)
  t.eq(d.guide, "HSM Subnet Delegation")
  t.ok(expect(rows, "hsm provisioning", "hsm-l1", "FAIL").finding:find("^Failed %(delegation%)"))
  rows = checks.run(scope { hsms = { { name = "hsm-l2", stamp = "stamp1" } }, planned = { leftovers = true } },
    { "hsms", "deployments" })
  t.eq(expect(rows, "failed deployments", "dep-l1", "WARN").fix, "deleted by this run first (a confirmed step)")
  t.eq(expect(rows, "hsm provisioning", "hsm-l1", "WARN").fix, "deleted by this run first (a confirmed step)")
end)

t.test("orphans: an HSM whose resource group was deleted is a FAIL naming it", function()
  fresh()
  c:put(c:group_path("side-rg"), { body = { location = "eastus" } })
  t.cleanup(function()
    c:put(c:group_path("side-rg"), { body = { location = "eastus" } })
    estate:remove_hsm(c, "hsm-o1", "side-rg")
    c:wait(c:delete(c:group_path("side-rg")))
  end)
  make_hsm("hsm-o1", { vnet = false, subnet = false, subnet_id = network.subnet_path(c, "hsm-vnet", "hsm"),
    stamp = "stamp2" }, "side-rg")
  estate:delete_group_around_dhsm(c, "side-rg")
  local r = expect(checks.orphans(scope()), "orphaned hsms", "hsm-o1", "FAIL")
  t.eq(r.finding, "resource group side-rg is gone; the HSM (eastus, Succeeded) is still billed")
  t.eq(r.guide, "How to delete an HSM resource")
end)

---------------------------------------------------------------------------
-- the SKIP rule

t.test("SKIP: the HSM list refused is one FAIL; the checks standing on it SKIP naming it, never counted as FAIL", function()
  fresh()
  estate:fault { forbid = ("1000:GET /subscriptions/%s/providers/Microsoft.HardwareSecurityModules"):format(SUB) }
  local rows = checks.run(scope { vnet = false }, DIAGNOSIS)
  t.eq(findings.counts(rows), { OK = 1, WARN = 0, FAIL = 1, SKIP = 7 }, not_ok(rows))
  t.ok(expect(rows, "hsm provisioning", SUB, "FAIL").finding:find("^AuthorizationFailed: "))
  expect(rows, "allowlisting", SUB, "OK")
  for _, check in ipairs { "quota", "orphaned hsms", "nic private ip" } do
    t.eq(expect(rows, check, SUB, "SKIP").finding, "not checked: the dedicated HSMs could not be listed "
      .. "(AuthorizationFailed)")
  end
  for _, check in ipairs { "failed deployments", "subnet delegation", "gateway", "one gateway per vnet" } do
    expect(rows, check, "hsm-rg", "SKIP")
  end
  local firing = {}
  for labels, value in findings.prometheus(rows):gmatch("dhsm_check_status(%b{}) (%-?%d+)\n") do
    if tonumber(value) > 0 then firing[#firing + 1] = labels end
  end
  t.eq(firing, { ('{check="hsm provisioning",target="%s"}'):format(SUB) }, "an alert on > 0 fires once")
end)

t.test("a read denied by policy (403, not a permission) is told as such, the credential's role left out", function()
  fresh()
  local hsms = ("1000:GET /subscriptions/%s/providers/Microsoft.HardwareSecurityModules"):format(SUB)
  estate:fault { deny_policy = hsms }
  local r = expect(checks.run(scope { vnet = false }, DIAGNOSIS), "hsm provisioning", SUB, "FAIL")
  t.ok(r.finding:find("^RequestDisallowedByPolicy: "), r.finding)
  t.ok(r.remedy:find("other than a permission", 1, true) and not r.remedy:find("credential", 1, true), r.remedy)
  estate:clear()
  estate:fault { forbid = hsms }
  r = expect(checks.run(scope { vnet = false }, DIAGNOSIS), "hsm provisioning", SUB, "FAIL")
  t.ok(r.remedy:find("give the credential's role the permission ARM names", 1, true), r.remedy)
  estate:clear()
end)

t.test("SKIP: credentials that fail make every other check a SKIP; a missing group, the checks inside it", function()
  fresh()
  local bad = estate:azure { credential = { type = "client_secret", client_id = estate.inventory.azure.credential.client_id,
    secret = dhsm.secret.value("not-the-secret") } }
  local rows = checks.run(checks.scope(bad, HSM_SUBNET), { "credentials", "resource_group", "allowlisting", "quota" })
  t.ok(expect(rows, "credentials", SUB, "FAIL").finding:find("cannot read subscription " .. SUB .. ": ", 1, true))
  t.eq(findings.counts(rows), { OK = 0, WARN = 0, FAIL = 1, SKIP = 3 }, "one row per check, the others skipped")
  for _, r in ipairs(rows) do
    if r.check ~= "credentials" then
      t.eq(r.status, "SKIP", checks.line(r))
      t.eq(r.finding, "not checked: the credentials row failed", "the cause named, its message not repeated")
    end
  end
  rows = checks.run(scope { group = "nope-rg", hsms = { { name = "hsm-n1", stamp = "stamp1" } } },
    { "resource_group", "allowlisting", "quota", "delegation", "gateway", "existing" })
  local group = expect(rows, "resource group", "nope-rg", "FAIL")
  t.ok(group.remedy:find("az group create --name nope-rg --location eastus", 1, true), group.remedy)
  expect(rows, "allowlisting", SUB, "OK")
  expect(rows, "quota", "eastus", "OK")
  for check, target in pairs { ["subnet delegation"] = "hsm-vnet/subnets/hsm", gateway = "hsm-vnet",
    ["one gateway per vnet"] = "hsm-vnet", ["existing hsm"] = "nope-rg" } do
    t.eq(expect(rows, check, target, "SKIP").finding, "not checked: the resource group row failed", check)
  end
end)

t.test("a check that is not known, or a scope option of the wrong type, is one line naming it", function()
  t.raises(function() checks.run(scope(), { "quota", "qouta" }) end, 'azure checks: unknown check "qouta" %(known: ')
  t.raises(function() checks.scope(c, { planned = true }) end, "azure checks: planned: expected a table, got true")
  t.raises(function() checks.scope(c, { vnet = "v" }) end, "azure checks: subnet: missing")
  t.raises(function() checks.scope(c, { hsms = { { stamp = "stamp1" } } }) end, "azure checks: hsms%[1%]%.name: expected")
  t.raises(function() checks.scope(c, { hsms = { { name = "hsm-a" }, { name = "HSM-A" } } }) end,
    "azure checks: hsms%[2%]%.name: HSM%-A is hsms%[1%] again %(ARM's names are case%-insensitive%), expected each HSM once")
end)

---------------------------------------------------------------------------
-- hsm.start: the checks for one HSM before its PUT

t.test("hsm.start refuses a FAIL (safety PreflightFailed, listing it) and nothing reaches the estate", function()
  fresh()
  local err = t.raises(function() hsm.start(c, "hsm-s1", { vnet = "hsm-vnet", subnet = "compute", stamp = "stamp1" }) end,
    "PreflightFailed")
  t.eq(err.kind, "safety")
  t.ok(err.message:find("^not creating hsm%-s1: 1 problem; its PUT was not sent:\n  subnet delegation "
    .. "hsm%-vnet/subnets/compute: subnet compute is not delegated"), err.message)
  t.ok(err.message:find("(guide: HSM Subnet Delegation)", 1, true), err.message)
  t.eq(#err.details.findings, 5, "the rows: quota (region, stamp), delegation, gateway and one per VNet")
  t.eq(estate:mutations("hsm-s1"), {}, "no PUT reached ARM (its request log)")
  t.eq(hsm.get(c, "hsm-s1"), nil)
end)

t.test("hsm.start in check mode: the checks read the real state; a planned VNet and gateway pass, the PUT describes itself",
  function()
  fresh()
  local plans = {}
  dhsm.context().would = function(what) plans[#plans + 1] = what end
  local checking = require("dhsm.act").check_scope(true)
  t.cleanup(function() checking:close() dhsm.context().would = nil end)
  local spec = { vnet = "plan-vnet", subnet = "hsm", stamp = "stamp1" }
  local err = t.raises(function() hsm.start(c, "hsm-p1", spec) end, "PreflightFailed")
  t.ok(err.message:find("subnet delegation plan-vnet/subnets/hsm: virtual network plan-vnet does not exist", 1, true),
    err.message)
  t.eq(plans, {}, "refused: nothing described")
  local r = hsm.start(c, "hsm-p1", spec, { planned = { vnet = true, gateway = true } })
  t.eq({ r.check, r.method }, { true, "PUT" })
  t.eq(#plans, 1)
  t.ok(plans[1]:find("^PUT /subscriptions/[^ ]+/dedicatedHSMs/hsm%-p1 {"), plans[1])
  t.eq(hsm.wait(c, "hsm-p1"), nil, "nothing to wait for")
  checking:close()
  t.eq({ estate:mutations("hsm-p1"), estate:mutations("plan-vnet") }, { {}, {} }, "nothing reached the estate")
end)
