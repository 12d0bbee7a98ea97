-- The provision playbook end to end against the simulated estate, faults
-- included.  Every assertion that matters reads the estate: its state and
-- its own request log (estate.log), not dhsm's output alone.
local t = require "dhsm.test"
local cjson = require "cjson"
local util = require "dhsm.util"
local support = require "support.estate"

local q = util.shell_quote
-- Estate delays at zero: nothing waits on a clock; back-off tiny.
local FAST = { hsm_step_seconds = 0, gateway_seconds = 0, network_seconds = 0, delete_seconds = 0, retry_after = 0 }
local PAIR = "hsm-a:stamp1,hsm-b:stamp2"

local function estate(extra_args, set)
  local knobs = {}
  for k, v in pairs(FAST) do knobs[k] = v end
  for k, v in pairs(set or {}) do knobs[k] = v end
  return support.start { set = knobs, args = extra_args or "--appliances 0" }
end

-- run(e, args) -> {status, stdout, stderr}: dhsm run provision with the estate's inventory
local function run(e, args, playbook)
  return e:run(("run %s -e poll_interval=0.02 -e backoff=0.01 %s"):format(playbook or "provision", args))
end

-- Mutations that reached the estate, from its own request log (support.estate)
local function mutations(e, filter) return e:mutations(filter) end

local count = support.count
local function hsms(e) return e:hsms() end

local function world(e) return e:world() end

---------------------------------------------------------------------------

t.test("happy path: an HA pair in parallel, each Succeeded, reported with stamp and the NIC's IP", function()
  local e = estate()
  local r = run(e, "-e hsms=" .. PAIR .. " --yes --json")
  t.eq(r.status, 0, r.stderr)
  t.eq(hsms(e), { ["hsm-a"] = "Succeeded", ["hsm-b"] = "Succeeded" })
  local doc = cjson.decode(r.stdout)
  local rep = doc.steps[#doc.steps].result
  t.eq({ rep.hsms[1].name, rep.hsms[1].stamp, rep.hsms[2].stamp }, { "hsm-a", "stamp1", "stamp2" })
  local nic = e:state().resources[(rep.hsms[1].id:match("^(.-/resourceGroups/[^/]+)") ..
    "/providers/Microsoft.Network/networkInterfaces/hsm-a_HSMnic"):lower()]
  t.eq(rep.hsms[1].private_ip, nic.props.address)
  t.ok(r.stderr:find("(host " .. nic.props.address .. ", user tenantadmin)", 1, true), r.stderr)
  t.ok(r.stderr:find("run initialize -e hsm=hsm-a -e partition=par1 -e new_password=prompt", 1, true), "initialize, "
    .. "its first login included\n" .. r.stderr)
  t.ok(r.stderr:find("KB0019789", 1, true))
  t.eq(count(mutations(e), "dedicatedHSMs/hsm%-"), 2, "one PUT per HSM")
end)

-- The secrets of the initialize commands printed with prompt references,
-- typed with env: references instead, and --yes for the confirmation the
-- terminal would ask (no terminal in a test run): the command as printed
-- otherwise.
local INIT_SECRETS = { new_password = "Fresh-Passw0rd-1", so_password = "Hsm-SO-Passw0rd-1",
  cloning_domain = "defaultdomain", pso_password = "Par-SO-Passw0rd-1", co_password = "Co-Passw0rd-1" }

local function with_env_references(command)
  local env = { "env -u DHSM_INVENTORY" }
  for _, k in ipairs(util.sorted_keys(INIT_SECRETS)) do
    local var = "TYPED_" .. k:upper()
    env[#env + 1] = var .. "=" .. q(INIT_SECRETS[k])
    command = command:gsub("%-e " .. k .. "=prompt", "-e " .. k .. "=env:" .. var)
  end
  return command .. " --yes", table.concat(env, " ")
end

t.test("the initialize command the report prints takes the new, factory-fresh appliance to initialised, typed as it reads",
  function()
  local e = estate("--appliances 2 --spare 1 --client-ready")
  local r = run(e, "-e hsms=hsm3:stamp2 --yes")
  t.eq(r.status, 0, r.stderr)
  local printed = r.stderr:match("then initialise it %b(): dhsm ([^\n]+)")
  t.ok(printed and printed:find("run initialize -e hsm=hsm3 ", 1, true), r.stderr)
  t.ok(not printed:find("(", 1, true) and not printed:find("PARTITION", 1, true), "no prose, no placeholder: " .. printed)
  t.ok(not r.stderr:find("first_login", 1, true), "no separate first-login step: initialize makes it")
  local command, env = with_env_references(printed)
  t.eq(select(2, command:gsub("=env:", "")), 5, "every secret by reference: " .. command)
  local from = #e:log()
  r = t.run(command, { state = e.dir .. "/state", env = env })
  t.eq(r.status, 0, r.stderr)
  local n = e:count_since(from, { hsm_init = "^hsm3 lunash: hsm init .*%-> 0$",
    partition_create = "^hsm3 lunash: partition create .*%-> 0$", partition_init = "^lunacm: partition init .*%-> No Error$" })
  t.eq(n, { hsm_init = 1, partition_create = 1, partition_init = 1 })
  local hsm3 = e:state().appliances.hsm3
  t.eq({ hsm3.faults.force_password_change, util.trim(util.read_file(e.dir .. "/secrets/hsm3_password")) },
    { false, INIT_SECRETS.new_password }, "the first login's password change, on the appliance's own record")
end, { timeout = 180 })

-- diagnose's row of check on target, from its --json document
local function diagnosed(e, target, check)
  local r = e:run("run diagnose --json -e timeout=5 -e hsm=" .. target, { state = e.dir .. "/state" })
  for _, row in ipairs(cjson.decode(r.stdout).result.findings) do
    if row.check == check and row.target == target then return row end
  end
  error("no " .. check .. " row for " .. target .. ":\n" .. r.stdout .. r.stderr)
end

-- A new appliance, hsm3, provisioned and demanding its first-login
-- password change -> the estate, and diagnose's "ssh login" row for it.
local function demanding_password_change()
  local e = estate("--appliances 2 --spare 1 --client-ready")
  t.eq(run(e, "-e hsms=hsm3:stamp2 --yes").status, 0)
  local row = diagnosed(e, "hsm3", "ssh login")
  t.eq(row.status, "FAIL", row.finding)
  return e, row
end

t.test("diagnose's remedies for the new appliance, typed as they read: the first login's change, then initialize",
  function()
  -- the password the appliance demands: the exec command of the remedy, typed on a terminal of its own, the new
  -- password typed once the question is on the screen
  local e, row = demanding_password_change()
  local command = row.remedy:match("change it once %b(): dhsm (.-), then keep")
  t.ok(command and command:find('first_login(inv:hsm("hsm3")', 1, true), row.remedy)
  local dir = t.tmpdir()
  local screen = dir .. "/screen"
  local typed = t.sh(("(for i in $(seq 400); do grep -q 'new password: ' %s 2>/dev/null && break; sleep 0.05; done; "
    .. "printf 'N3w-Passw0rd!\\n') | script -qefc %s %s"):format(q(screen),
    q(("XDG_STATE_HOME=%s DHSM_AUDIT=%s/audit.jsonl %s"):format(q(dir), q(dir), t.cmd(command))), q(screen)))
  t.eq(typed.status, 0, typed.stdout)
  t.eq(util.trim(util.read_file(e.dir .. "/secrets/hsm3_password")), "N3w-Passw0rd!", "the appliance's own record")
  t.eq(e:state().appliances.hsm3.faults.force_password_change, false)
  -- then the HSM, never initialised: initialize's command, no first login in it any more
  row = diagnosed(e, "hsm3", "hsm state")
  t.eq(row.status, "FAIL", row.finding)
  t.ok(row.finding:find("no label: never initialized", 1, true) and not row.remedy:find("hsm init", 1, true), row.remedy)
  local printed = row.remedy:match(": dhsm (%-i %S+ run initialize [^\n]+)$")
  t.ok(printed and not printed:find("new_password", 1, true), row.remedy)
  command = with_env_references(printed)
  local env = select(2, with_env_references(""))
  local r = t.run(command, { state = e.dir .. "/state", env = env })
  t.eq(r.status, 0, r.stderr)
  t.eq(e:count_since(0, { hsm_init = "^hsm3 lunash: hsm init .*%-> 0$" }), { hsm_init = 1 })
  row = diagnosed(e, "hsm3", "hsm state")
  t.eq(row.status, "OK", row.finding)
end, { timeout = 180 })

t.test("diagnose's other remedy for the appliance demanding its first password change: initialize, typed as it reads",
  function()
  local e, row = demanding_password_change()
  local printed = row.remedy:match("which does it first: dhsm (.+)$")
  t.ok(printed and printed:find("run initialize -e hsm=hsm3 ", 1, true) and printed:find("-e new_password=prompt", 1, true),
    row.remedy)
  t.ok(not printed:find("...", 1, true), "the whole command, nothing left to guess: " .. printed)
  local command, env = with_env_references(printed)
  local r = t.run(command, { state = e.dir .. "/state", env = env })
  t.eq(r.status, 0, r.stderr)
  t.eq(e:count_since(0, { hsm_init = "^hsm3 lunash: hsm init .*%-> 0$" }), { hsm_init = 1 })
  t.eq({ e:state().appliances.hsm3.faults.force_password_change, util.trim(util.read_file(e.dir .. "/secrets/hsm3_password")) },
    { false, INIT_SECRETS.new_password }, "the first login's change, made by initialize")
end, { timeout = 180 })

t.test("a fresh network is created: VNet with delegated subnet, Standard public IP, ExpressRoute gateway", function()
  local e = estate()
  local r = run(e, "-e hsms=hsm-n:stamp1 -e vnet=new-vnet -e address_space=10.7.0.0/16 -e hsm_subnet_prefix=10.7.1.0/24 "
    .. "-e gateway_subnet_prefix=10.7.255.0/26 -e gateway=new-gw -e gateway_pip=new-gw-pip --yes")
  t.eq(r.status, 0, r.stderr)
  local res = e:state().resources
  local function find(suffix)
    for id, x in pairs(res) do if id:sub(-#suffix) == suffix:lower() then return x end end
  end
  t.eq(find("/subnets/hsm").props.delegations[1].serviceName, "Microsoft.HardwareSecurityModules/dedicatedHSMs")
  t.eq(find("/publicipaddresses/new-gw-pip").props.sku.name, "Standard")
  t.eq({ find("/virtualnetworkgateways/new-gw").state, find("/virtualnetworkgateways/new-gw").props.gatewayType },
    { "Succeeded", "ExpressRoute" })
  t.eq(hsms(e)["hsm-n"], "Succeeded")
  t.ok(r.stderr:find("wait for ExpressRoute gateway new-gw", 1, true), r.stderr)
end)

t.test("idempotent: a second run sends no PUT or DELETE and says nothing changed", function()
  local e = estate()
  t.eq(run(e, "-e hsms=" .. PAIR .. " --yes").status, 0)
  local before = #mutations(e)
  local r = run(e, "-e hsms=" .. PAIR .. " --yes")
  t.eq(r.status, 0, r.stderr)
  t.eq(#mutations(e), before, "no mutation reached ARM")
  t.ok(r.stderr:find("nothing was changed", 1, true), r.stderr)
end)

t.test("--check plans everything and the estate is identical afterwards", function()
  local e = estate()
  local before = world(e)
  local r = run(e, "-e hsms=" .. PAIR .. " -e vnet=plan-vnet -e gateway=plan-gw -e gateway_pip=plan-pip --check")
  t.eq(r.status, 0, r.stderr)
  t.eq(world(e), before)
  t.eq(mutations(e), {})
  t.ok(r.stderr:find("would PUT /subscriptions/[^ ]+/virtualNetworks/plan%-vnet"), r.stderr)
  t.ok(r.stderr:find("would PUT /subscriptions/[^ ]+/dedicatedHSMs/hsm%-a"), r.stderr)
  t.ok(r.stderr:find("would PUT /subscriptions/[^ ]+/dedicatedHSMs/hsm%-b"), r.stderr)
  -- through hsm.start like the real run, told the VNet and gateway are only planned: its checks read
  -- the subscription's HSMs again for each HSM (the estate's own log), and pass
  t.eq(count(e:log(), "^arm GET /subscriptions/[^/]+/providers/Microsoft%.HardwareSecurityModules/dedicatedHSMs %->"), 3,
    "the preflight's read, then one by each HSM's checks")
  t.ok(r.stderr:find("subnet delegation plan%-vnet/subnets/hsm: virtual network plan%-vnet does not exist yet %-> "
    .. "created by this run, delegated"), r.stderr)
end)

t.test("--check with a leftover to delete first: hsm.start is told its quota place is freed, as in the real run", function()
  local e = estate("--appliances 3", { quota_per_region = 0 })
  require("dhsm.azure.hsm").create(e:azure(), "hsm-old", { vnet = "hsm-vnet", subnet = "hsm", stamp = "stamp2" },
    { wait = false })
  e:clear()
  t.eq(hsms(e)["hsm-old"], "Failed")
  local before, sent = world(e), #mutations(e)
  local r = run(e, "-e hsms=hsm-new:stamp2 --check")        -- 3 HSMs and the leftover: the region's 4
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("would DELETE /subscriptions/[^ ]+/dedicatedHSMs/hsm%-old"), r.stderr)
  t.ok(r.stderr:find("would PUT /subscriptions/[^ ]+/dedicatedHSMs/hsm%-new"), r.stderr)
  t.eq(#mutations(e), sent, "nothing reached the estate")
  t.eq(world(e), before)
end)

t.test("--check with a requested HSM left Failed: its DELETE and PUT planned, not waited for; 0 as the real run",
  function()
  local e = estate(nil, { quota_per_region = 0 })
  require("dhsm.azure.hsm").create(e:azure(), "hsm-a", { vnet = "hsm-vnet", subnet = "hsm", stamp = "stamp1" },
    { wait = false })
  e:clear()
  t.eq(hsms(e), { ["hsm-a"] = "Failed" })           -- its statusMessage says QuotaExceeded
  local before, sent = world(e), #mutations(e)
  local r = run(e, "-e hsms=hsm-a:stamp1 --check --json")
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("would DELETE /subscriptions/[^ ]+/dedicatedHSMs/hsm%-a"), r.stderr)
  t.ok(r.stderr:find("would PUT /subscriptions/[^ ]+/dedicatedHSMs/hsm%-a"), r.stderr)
  local doc = cjson.decode(r.stdout)
  t.eq(doc.steps[#doc.steps].result.hsms, { { name = "hsm-a", planned = true } })
  t.eq(#mutations(e), sent, "nothing reached the estate (its request log)")
  t.eq(world(e), before)
  r = run(e, "-e hsms=hsm-a:stamp1 --yes")
  t.eq(r.status, 0, r.stderr)
  t.eq(hsms(e), { ["hsm-a"] = "Succeeded" })
  t.eq({ count(mutations(e), "^DELETE .*dedicatedHSMs/hsm%-a$"), count(mutations(e), "^PUT .*dedicatedHSMs/hsm%-a$") },
    { 1, 2 }, "the leftover's PUT, its DELETE, the new PUT")
end)

t.test("the gateway race, field-shaped (generic code, gateway reads Succeeded), is recovered by a redeploy", function()
  local e = estate(nil, { gateway_race_next = 1, field_errors = 1 })
  local r = run(e, "-e hsms=hsm-r:stamp1 --yes")
  t.eq(r.status, 0, r.stderr)
  t.eq(hsms(e)["hsm-r"], "Succeeded")
  t.eq(count(mutations(e), "dedicatedHSMs/hsm%-r$"), 2, "the PUT and one rerun")
  t.ok(r.stderr:find("hsm-r: race", 1, true), r.stderr)
end)

t.test("the race persisting: retries, then the failed HSM is deleted and redeployed once, then a support stop", function()
  local e = estate(nil, { gateway_race = 1 })
  local r = run(e, "-e hsms=hsm-p:stamp1 -e retries=2 --yes")
  t.eq(r.status, 1, r.stderr)
  local m = mutations(e, "dedicatedHSMs/hsm-p")
  t.eq(count(m, "^PUT"), 4, "first PUT, 2 reruns, 1 redeploy after the delete")
  t.eq(count(m, "^DELETE"), 1)
  t.eq(hsms(e)["hsm-p"], "Failed")
  t.ok(r.stderr:find("Issues configuring the Azure setup", 1, true), r.stderr)
  t.ok(r.stderr:find("correlation id %x+%-"), r.stderr)
end)

t.test("a creation refused (403 on one HSM's PUT) fails its step: the printed resume retries it, the other not PUT again",
  function()
  local e = estate()
  local az = e.inventory.azure
  local put_b = ("PUT /subscriptions/%s/resourceGroups/%s/providers/Microsoft.HardwareSecurityModules/dedicatedHSMs/hsm-b")
    :format(az.subscription, az.resource_group)
  e:fault { forbid = "9:" .. put_b }
  local state = t.tmpdir()
  local r = e:run("run provision -e poll_interval=0.02 -e backoff=0.01 -e hsms=" .. PAIR .. " --yes", { state = state })
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find("✗ create HSMs hsm-a, hsm-b", 1, true), "the step itself failed\n" .. r.stderr)
  t.eq(hsms(e), { ["hsm-a"] = "Succeeded" })
  local hint = r.stderr:match("'dhsm (run provision %-%-resume %S+ %-%-yes)' continues it")
  t.ok(hint, r.stderr)
  -- the cause gone, the hint typed as printed (from elsewhere, no inventory given): hsm-b created, hsm-a left alone
  e:clear()
  r = t.run(hint, { state = state, env = "env -u DHSM_INVENTORY" })
  t.eq(r.status, 0, r.stderr)
  t.eq(hsms(e), { ["hsm-a"] = "Succeeded", ["hsm-b"] = "Succeeded" })
  local log = e:log()
  t.eq({ count(log, "arm PUT %S+/dedicatedHSMs/hsm%-a %-> 2"), count(log, "arm PUT %S+/dedicatedHSMs/hsm%-b %-> 403"),
    count(log, "arm PUT %S+/dedicatedHSMs/hsm%-b %-> 2") }, { 1, 1, 1 }, "hsm-a PUT once; hsm-b refused, then PUT once")
end)

t.test("stops at once with the guide's remedy, nothing created: quota (naming the HSMs using it)", function()
  local e = estate("--appliances 4")
  local before = world(e)
  local r = run(e, "-e hsms=hsm-q:stamp1 --yes")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("quota eastus: would hold 5 HSMs, the quota is 4 per region (in use: hsm1, hsm2, hsm3, hsm4)",
    1, true), r.stderr)
  t.ok(r.stderr:find("quota stamp1: would hold 3 HSMs, the quota is 2 per stamp", 1, true), r.stderr)
  t.eq(world(e), before)
end)

t.test("stops: allowlisting and delegation reported together, nothing created", function()
  local e = estate(nil, { not_allowlisted = 1 })
  local before = world(e)
  local r = run(e, "-e hsms=hsm-x:stamp1 -e hsm_subnet=compute --yes")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("Microsoft.HardwareSecurityModules/AzureDedicatedHSM is NotRegistered", 1, true), r.stderr)
  t.ok(r.stderr:find("Microsoft Account Manager", 1, true))
  t.ok(r.stderr:find("subnet compute is not delegated", 1, true), r.stderr)
  t.ok(r.stderr:find("az network vnet subnet update %-%-subscription %S+ %-%-resource%-group hsm%-rg %-%-vnet%-name hsm%-vnet "
    .. "%-%-name compute %-%-delegations Microsoft.HardwareSecurityModules/dedicatedHSMs"), r.stderr)
  t.eq(world(e), before)
end)

t.test("stops: capacity (found at deployment, both error shapes), the failed HSM cleaned up", function()
  for _, shape in ipairs { 0, 1 } do
    local e = estate(nil, { capacity_per_stamp = 0, field_errors = shape })
    local r = run(e, "-e hsms=hsm-c:stamp2 --yes")
    t.eq(r.status, 1, r.stderr)
    t.ok(r.stderr:find("stopped, capacity", 1, true), r.stderr)
    t.ok(r.stderr:find("support ticket asking about capacity", 1, true), r.stderr)
    t.eq(count(mutations(e, "dedicatedHSMs/hsm-c"), "^PUT"), 1, "no retry of a capacity failure")
  end
end)

t.test("stops: a Basic public IP on the gateway, and a second gateway in the VNet", function()
  local e = estate()
  local c = e:azure()
  local net = require "dhsm.azure.network"
  c:wait(c:put(net.public_ip_path(c, "basic-pip"), { body = { location = "eastus",
    properties = { publicIPAllocationMethod = "Dynamic" } } }))
  local err = t.raises(function()
    c:put(net.gateway_path(c, "gw2"), { body = net.gateway_body { location = "eastus",
      subnet_id = net.subnet_path(c, "hsm-vnet", "GatewaySubnet"), pip_id = net.public_ip_path(c, "hsm-ergw-pip") } })
  end, "VirtualNetworkAlreadyHasGateway")
  t.eq(err.status, 400)
  err = t.raises(function()
    c:put(net.gateway_path(c, "hsm-ergw"), { body = net.gateway_body { location = "eastus",
      subnet_id = net.subnet_path(c, "hsm-vnet", "GatewaySubnet"), pip_id = net.public_ip_path(c, "basic-pip") } })
  end, "ExpressRouteGatewayRequiresStandardSkuPublicIp")
  local r = run(e, "-e hsms=hsm-g:stamp1 -e vnet=v3 -e gateway_pip=basic-pip --yes")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("public IP basic-pip is Basic SKU", 1, true), r.stderr)
end)

t.test("429/503 storms and AnotherOperationInProgress are ridden out", function()
  -- storms within the ARM client's attempts (8): it is the one layer that retries them
  -- (provision_outage_test: a longer one is not retried again by the steps)
  local e = estate(nil, { throttle = "6:dedicatedHSMs", fail5xx = "4:virtualNetworks", network_busy = "1:subnets" })
  local r = run(e, "-e hsms=hsm-s:stamp1 -e vnet=storm-vnet -e address_space=10.8.0.0/16 "
    .. "-e hsm_subnet_prefix=10.8.1.0/24 -e gateway_subnet_prefix=10.8.255.0/26 -e gateway=storm-gw "
    .. "-e gateway_pip=storm-pip --yes")
  t.eq(r.status, 0, r.stderr)
  t.eq(hsms(e)["hsm-s"], "Succeeded")
  local k = e:state().knobs
  t.eq({ k.throttle.n, k.fail5xx.n }, { 0, 0 }, "every fault was met")
end)

t.test("a Network operation that ends Failed is retried", function()
  local e = estate(nil, { network_fail = "1:virtualNetworkGateways" })
  local r = run(e, "-e hsms=hsm-f:stamp1 -e vnet=f-vnet -e address_space=10.9.0.0/16 -e hsm_subnet_prefix=10.9.1.0/24 "
    .. "-e gateway_subnet_prefix=10.9.255.0/26 -e gateway=f-gw -e gateway_pip=f-pip --yes")
  t.eq(r.status, 0, r.stderr)
  t.eq(count(mutations(e), "virtualNetworkGateways/f%-gw$"), 2)
end)

t.test("leftovers of a failed deployment are offered for deletion, and refused without confirmation", function()
  local e = estate(nil, { quota_per_region = 0 })
  local c = e:azure()
  local hsm = require "dhsm.azure.hsm"
  hsm.create(c, "hsm-old", { vnet = "hsm-vnet", subnet = "hsm", stamp = "stamp1" }, { wait = false })
  e:clear()
  t.eq(hsms(e)["hsm-old"], "Failed")
  local r = run(e, "-e hsms=hsm-new:stamp1")          -- no --yes, no terminal: refused
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("hsm provisioning hsm%-old: Failed %(quota%): .*; in group hsm%-rg, stamp stamp1, it counts against "
    .. "the quota %-> deleted by this run first"), r.stderr)
  t.eq(hsms(e), { ["hsm-old"] = "Failed" }, "nothing deleted silently")
  r = run(e, "-e hsms=hsm-new:stamp1 --yes")
  t.eq(r.status, 0, r.stderr)
  t.eq(hsms(e), { ["hsm-new"] = "Succeeded" })
end)

t.test("a re-PUT of an existing HSM with another spec is refused by ARM and caught by preflight", function()
  local e = estate()
  t.eq(run(e, "-e hsms=hsm-d:stamp1 --yes").status, 0)
  local c = e:azure()
  local hsm = require "dhsm.azure.hsm"
  t.raises(function() c:put(hsm.path(c, "hsm-d"), { body = hsm.body(c, { vnet = "hsm-vnet", subnet = "hsm", stamp = "stamp2" }) }) end,
    "it cannot be changed to 'stamp2'")
  local r = run(e, "-e hsms=hsm-d:stamp2 --yes")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("existing hsm hsm-d: exists with another spec (stamp: has stamp1, asked stamp2)", 1, true), r.stderr)
end)

t.test("an HSM named in another case is the same HSM: HSM-A after hsm-a is idempotent, HSM-A in another stamp refused",
  function()
  local e = estate()
  t.eq(run(e, "-e hsms=hsm-a:stamp1,hsm-b:stamp1 --yes").status, 0)     -- stamp1 full
  local sent = #mutations(e)
  local r = run(e, "-e hsms=HSM-A:stamp1 --yes")
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("nothing was changed", 1, true), r.stderr)
  r = run(e, "-e hsms=HSM-A:stamp2 --yes")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("existing hsm HSM-A: exists as hsm-a with another spec (stamp: has stamp1, asked stamp2)", 1, true),
    r.stderr)
  t.eq(#mutations(e), sent, "nothing reached the estate after the first run (its request log)")
  t.eq(hsms(e), { ["hsm-a"] = "Succeeded", ["hsm-b"] = "Succeeded" })
end)

-- "-e mode=template ..." with an operator's template of one HSM, hsm-t in stamp1, and its parameters file.
local function template_args()
  local dir = t.tmpdir()
  local template = {
    ["$schema"] = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
    contentVersion = "1.0.0.0",
    parameters = { hsmName = { type = "string" }, stamp = { type = "string" } },
    resources = { {
      type = "Microsoft.HardwareSecurityModules/dedicatedHSMs", apiVersion = "2021-11-30",
      name = "[parameters('hsmName')]", location = "[resourceGroup().location]",
      sku = { name = "SafeNet Luna Network HSM A790" },
      properties = { stampId = "[parameters('stamp')]", networkProfile = { subnet = {
        id = "[resourceId('Microsoft.Network/virtualNetworks/subnets', 'hsm-vnet', 'hsm')]" } } } } },
  }
  t.write(dir .. "/t.json", cjson.encode(template))
  t.write(dir .. "/p.json", cjson.encode { parameters = { hsmName = { value = "hsm-t" }, stamp = { value = "stamp1" } } })
  return ("-e hsms=hsm-t:stamp1 -e mode=template -e template=%s -e template_parameters=%s"):format(q(dir .. "/t.json"),
    q(dir .. "/p.json"))
end

t.test("template mode: the operator's template and parameters file; the race recovered", function()
  local e = estate(nil, { gateway_race_next = 1 })
  local r = run(e, template_args() .. " --yes")
  t.eq(r.status, 0, r.stderr)
  t.eq(hsms(e)["hsm-t"], "Succeeded")
  t.eq(count(mutations(e), "deployments/dhsm%-provision$"), 2, "deployed, raced, redeployed")
end)

-- A deployment that fails for good, not as the race: a capacity stop, and a
-- request Azure Policy denies (403, no missing permission: a failure of no
-- known cause).  Either fails the deploy step, so the printed resume, typed
-- once the cause is gone, deploys again.
local FOR_GOOD = {
  { why = "capacity", set = { capacity_per_stamp = 0 }, says = "stopped, capacity" },
  { why = "a policy deny", deny = true, says = "HTTP 403 RequestDisallowedByPolicy, not a missing permission" },
}

for _, case in ipairs(FOR_GOOD) do
t.test("template mode, the deployment failing for good (" .. case.why .. "): its step fails, the printed resume "
  .. "deploys again once the cause is gone", function()
  local e = estate(nil, case.set)
  local az = e.inventory.azure
  local put = ("PUT /subscriptions/%s/resourceGroups/%s/providers/Microsoft.Resources/deployments/dhsm-provision")
    :format(az.subscription, az.resource_group)
  if case.deny then e:fault { deny_policy = "9:" .. put } end
  local state = t.tmpdir()
  local r = e:run("run provision -e poll_interval=0.02 -e backoff=0.01 " .. template_args() .. " --yes", { state = state })
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find("✗ deploy ARM template", 1, true), "the step itself failed\n" .. r.stderr)
  t.ok(r.stderr:find(case.says, 1, true), r.stderr)
  t.ok(not r.stderr:find("credential's role", 1, true), "no permission is missing\n" .. r.stderr)
  if case.deny then
    t.ok(r.stderr:find("have its owner allow it", 1, true), "the policy's owner, not a support request\n" .. r.stderr)
    t.ok(not r.stderr:find("support request", 1, true), r.stderr)
  end
  local hint = r.stderr:match("'dhsm (run provision %-%-resume %S+ %-%-yes)' continues it")
  t.ok(hint, r.stderr)
  e:clear()
  r = t.run(hint, { state = state, env = "env -u DHSM_INVENTORY" })
  t.eq(r.status, 0, r.stderr)
  t.eq(hsms(e)["hsm-t"], "Succeeded")
  local log = e:log()
  t.eq({ count(log, "arm PUT %S+/deployments/dhsm%-provision %-> 403"), count(log, "arm PUT %S+/deployments/dhsm%-provision %-> 2") },
    { case.deny and 1 or 0, case.deny and 1 or 2 }, "refused once, or deployed and failed; then deployed once more")
end)
end

t.test("template mode with the gateway Updating: waited for until Succeeded, as its row says, then deployed once",
  function()
  local e = estate(nil, { gateway_seconds = 4 })
  e:reput_gateway(e:azure(), false)
  local r = run(e, template_args() .. " --yes")
  t.eq(r.status, 0, r.stderr)
  t.eq(hsms(e)["hsm-t"], "Succeeded")
  local row = r.stderr:find("gateway hsm%-vnet: hsm%-ergw Updating, .* %-> waited for by this run until Succeeded")
  local wait = r.stderr:find("✓ wait for ExpressRoute gateway hsm-ergw to be Succeeded", 1, true)
  local deployed = r.stderr:find("→ deploy ARM template", 1, true)
  t.ok(row and wait and deployed and row < wait and wait < deployed, r.stderr)
  t.eq(count(mutations(e), "deployments/dhsm%-provision$"), 1, "deployed once: no race (the estate's request log)")
end)

-- Killed (SIGKILL: resumed by --resume ID with the parameters again) or
-- interrupted (Ctrl-C: the hint it prints, typed as it reads, with no -i
-- and no parameters) while a leftover's DELETE is in flight.
local STOPS = {
  { how = "killed", signal = 9, resume = function(_, id) return { "-i", "INVENTORY", "run", "provision", "--yes",
    "-e", "hsms=hsm-new:stamp1", "-e", "poll_interval=0.02", "-e", "backoff=0.01", "--resume", id } end },
  { how = "interrupted", signal = 2, resume = function(stderr)
    local hint = stderr:match("'dhsm (run provision %-%-resume %S+ %-%-yes)' continues it")
    t.ok(hint, stderr)
    local words = {}
    for w in (hint or ""):gmatch("%S+") do words[#words + 1] = w end
    return words
  end },
}

for _, stop in ipairs(STOPS) do
t.test(stop.how .. " while a leftover's DELETE is in flight, then resumed: the DELETE is waited for, not sent again",
  function()
  local proc = require "dhsm.proc"
  local e = estate(nil, { quota_per_region = 0, delete_seconds = 3600 })
  local c = e:azure()
  require("dhsm.azure.hsm").create(c, "hsm-old", { vnet = "hsm-vnet", subnet = "hsm", stamp = "stamp1" }, { wait = false })
  e:clear()
  local dir = t.tmpdir()
  local function dhsm_run(args)
    local argv = { t.dhsm }
    for _, a in ipairs(args) do argv[#argv + 1] = a == "INVENTORY" and e.dir .. "/inventory.json" or a end
    return proc.spawn { argv = argv, env = { XDG_STATE_HOME = dir, DHSM_AUDIT = dir .. "/audit.jsonl" } }
  end
  local p <close> = dhsm_run { "-i", "INVENTORY", "run", "provision", "--yes", "-e", "hsms=hsm-new:stamp1",
      "-e", "poll_interval=0.02", "-e", "backoff=0.01" }
  local step = "delete leftover failed HSM hsm-old"
  while true do                         -- the audit log says the DELETE was accepted (202): stop it
    local hit
    for _, r in ipairs(t.audit_records(dir .. "/audit.jsonl")) do
      hit = hit or (r.step == step and r.action == "azure.DELETE" and r.outcome == "202")
    end
    if hit then break end
    local ok, exited = pcall(p.wait, p, 0.01)
    if ok then error("provision ended first: " .. tostring(exited.status) .. "\n" .. p:stderr(), 0) end
  end
  p:kill(stop.signal)
  local exited = p:wait(30)
  t.eq(stop.signal == 9 and exited.signal or exited.status, stop.signal == 9 and 9 or 130, p:stderr())
  t.eq(hsms(e)["hsm-old"], "Deleting")
  local id = require("dhsm.sys").readdir(dir .. "/dhsm/runs")[1]:match("^(.-)%.")
  local ticker = dhsm.spawn(function()   -- the estate's clock jumps over the hour-long delete
    while true do pcall(e.control, e, "POST", "/advance", { idle = true }) dhsm.sleep(0.05) end
  end)
  local q2 <close> = dhsm_run(stop.resume(p:stderr(), id))
  local status = q2:wait(45).status
  ticker:cancel()
  t.eq(status, 0, q2:stderr())
  t.ok(q2:stderr():find("finished by an earlier attempt of this run", 1, true), q2:stderr())
  t.eq(count(mutations(e, "dedicatedHSMs/hsm-old"), "^DELETE"), 1, "one DELETE in all")
  t.eq(hsms(e), { ["hsm-new"] = "Succeeded" })
end, { timeout = 60 })
end
