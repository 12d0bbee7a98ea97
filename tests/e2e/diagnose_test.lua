-- The diagnose playbook against the simulated estate.  A healthy estate is
-- all OK (exit 0).  Then, for every fault the estate can inject - its ARM
-- faults (GET /_sim/faults, category "fault"), its appliance faults and
-- actions (estate.json) and the failures the sim README lists as needing
-- only state - one test injects it, finds the FAIL/WARN row (check and
-- target) and clears it to find OK again.  The tests are generated from the
-- estate's own lists, so a new fault without an entry in the tables below
-- fails a test.  A fault diagnose cannot see by design says why in its
-- entry, and its test checks that diagnose still reports no failure with it
-- switched on.  Also: --json, prometheus=FILE (parsed; a bad folder),
-- --check, and that diagnose sends nothing that changes the estate
-- (counted in the estate's own log).
local t = require "dhsm.test"
local cjson = require "cjson"
local deploy = require "dhsm.azure.deploy"
local hsm = require "dhsm.azure.hsm"
local net = require "dhsm.net"
local parse = require "dhsm.luna.parse"
local network = require "dhsm.azure.network"
local pkcs11 = require "dhsm.pkcs11"
local proc = require "dhsm.proc"
local util = require "dhsm.util"
local support = require "support.estate"

local q = util.shell_quote
local one_cause
-- reboot_seconds long: a rebooting appliance stays away until `advance`
local FAST = { hsm_step_seconds = 0.02, gateway_seconds = 0.05, network_seconds = 0.02, delete_seconds = 0.02,
  retry_after = 0, reboot_seconds = 3600 }
local e = support.start { set = FAST, args = "--appliances 2 --client-ready" }
local client = e.inventory.client
local STATE = t.tmpdir()            -- every run's XDG_STATE_HOME: dhsm's failed-login counts live there
local CO_FILE = e.dir .. "/secrets/hsm1_par1_co_pin"
local TIMEOUT = 5                   -- the probe timeout of every run: what a dead appliance costs
local SUB = e.inventory.azure.subscription
local c = e:azure()

---------------------------------------------------------------------------
-- the estate as an operator keeps it: the reboot fix installed, one HA group
-- of both appliances with auto-recovery on

local function lunacm_opts(args)
  local argv = { client.lunacm }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return { argv = argv, env = { ChrystokiConfigurationPath = client.chrystoki_conf:match("^(.*)/[^/]*$") }, timeout = 60 }
end

-- lunacm(args [, password]) -> the run (with a password: through the failed-login guard)
local function lunacm(args, password)
  local o = lunacm_opts(args)
  if password then
    o.password = password
    return proc.lunacm_login(o)
  end
  return proc.run(o)
end

local serials = {}
for _, s in ipairs(proc.lunacm_slots(lunacm_opts {})) do serials[s.label:match("^(hsm%d)%-par1$") or s.label] = s.serial end
for _, name in ipairs { "hsm1", "hsm2" } do e:appliance(name, "install-fix") end
assert(lunacm({ "-c", "hagroup", "createGroup", "-label", "myHA", "-serialNumber", serials.hsm1 }, e:secret("hsm1_par1_co_pin")).ok)
assert(lunacm({ "-c", "hagroup", "addMember", "-group", "myHA", "-serialNumber", serials.hsm2 }, e:secret("hsm1_par1_co_pin")).ok)
assert(lunacm { "-c", "hagroup", "retry", "-count", "-1" }.ok)

---------------------------------------------------------------------------
-- running diagnose and reading its rows

-- dhsm(args) -> {status, stdout, stderr}: this dhsm, its state (failed-login
-- counts, journal, audit log) in STATE
local function dhsm_sh(args)
  return t.run(args, { state = STATE })
end

-- diagnose(args [, estate]) -> the run {status, stdout, stderr}, the --json document (or nil)
local function diagnose(args, estate)
  local extra = estate and "" or ("-e co_password=file:" .. q(CO_FILE))
  local r = dhsm_sh(("-i %s run diagnose --json -e timeout=%g %s %s"):format(q((estate or e).dir .. "/inventory.json"),
    TIMEOUT, extra, args or ""))
  local ok, doc = pcall(cjson.decode, r.stdout)
  return r, ok and type(doc) == "table" and doc or nil
end

local function find(doc, check, target)
  for _, row in ipairs(doc and doc.result and doc.result.findings or {}) do
    if row.check == check and row.target == target then return row end
  end
end

local function not_ok(doc)
  local out = {}
  for _, row in ipairs(doc and doc.result and doc.result.findings or {}) do
    if row.status ~= "OK" then out[#out + 1] = ("%s %s %s: %s"):format(row.status, row.check, row.target, row.finding) end
  end
  return out
end

-- Every row OK and exit 0.
local function healthy(r, doc, when)
  t.ok(doc, "a JSON document\n" .. r.stdout .. r.stderr)
  t.eq(not_ok(doc), {}, when)
  t.eq(r.status, 0, when .. "\n" .. r.stderr)
end

---------------------------------------------------------------------------
-- acting on the estate

local HSM_SPEC = { vnet = "hsm-vnet", subnet = "hsm", stamp = "stamp2" }

-- An HSM created straight on ARM (what a provision would do); -> ok, its final state
local function create_hsm(name, spec, group)
  return e:put_hsm(c, name, spec or HSM_SPEC, group)
end

local function remove_hsm(name, group)
  e:remove_hsm(c, name, group)
end

-- The same deployment an operator's template makes: one dedicated HSM.
local function deploy_hsm(deployment, name)
  local template = { ["$schema"] = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
    contentVersion = "1.0.0.0", resources = { {
      type = "Microsoft.HardwareSecurityModules/dedicatedHSMs", apiVersion = "2021-11-30", name = name,
      location = "eastus", sku = { name = hsm.SKU },
      properties = { stampId = "stamp2", networkProfile = { subnet = { id = network.subnet_path(c, "hsm-vnet", "hsm") } } } } } }
  pcall(function() deploy.wait(c, deploy.create(c, deployment, template, {}), { timeout = 30 }) end)
end

local function delete_deployment(deployment, name)
  deploy.delete(c, deployment)
  remove_hsm(name)
end

-- PUT the gateway again as it is (a network change an operator makes).
local function reput_gateway(wait) e:reput_gateway(c, wait) end

-- The support request's power cycle of hsm2 (hard-reboot), done at once
-- (`advance` does not end a reboot).
local function power_cycle()
  e:fault { reboot_seconds = 0 }
  e:appliance("hsm2", "hard-reboot")
  t.eventually(function() return e:control("GET", "/appliances").hsm2.status == "up" end, "hsm2 up again")
  e:fault { reboot_seconds = FAST.reboot_seconds }
end

local function recover_ha()
  e:control("POST", "/client/ha/recover", { group = "myHA" })
end

local function luna_session(name)
  local s = require("dhsm.luna").open(e.inventory:hsm(name))
  return s
end

-- The outcome of the last client connection in appliance name's NTLS log.
local function last_ntls(name)
  local last
  for _, a in ipairs(parse.ntls_log(util.read_file(e.dir .. "/appliances/" .. name .. "/messages")).attempts) do
    if a.outcome ~= "pending" and a.outcome ~= "removed" and a.outcome ~= "probe" then last = a.outcome end
  end
  return last
end

-- The client connects to every appliance (as its applications do), and
-- hsm2 has logged it as `outcome` (it logs a connection once its side of
-- it ended, which may be after lunacm exited).
local function client_connects(outcome)
  lunacm { "-c", "slot", "list" }
  t.eventually(function() return last_ntls("hsm2") == outcome end, "hsm2 logging the client's connection " .. outcome)
end

local function pin(name) return util.trim(util.read_file(e.dir .. "/secrets/" .. name)) end

-- The remedy of the row diagnose gave (spec.row, set by fault_test) typed
-- back in as it reads: its `dhsm run ha-recover -e co_password=...`, the
-- Crypto Officer password given where it says "...".
local function run_remedy(spec)
  local remedy = spec.row and spec.row.remedy or ""
  local cmd = remedy:match("dhsm (run ha%-recover %-e co_password=)%.%.%.")
  t.ok(cmd, "the remedy names the command to run: " .. remedy)
  local r = dhsm_sh(("-i %s %sfile:%s"):format(q(e.dir .. "/inventory.json"), cmd, q(CO_FILE)))
  t.eq(r.status, 0, r.stderr)
end

-- fn(session) on a member token, logged in as its Crypto Officer
local function on_token(label, fn)
  local lib <close> = pkcs11.load(client.pkcs11_lib, { env = { SOFTHSM2_CONF = client.softhsm_conf,
    ChrystokiConfigurationPath = client.chrystoki_conf:match("^(.*)/") } })
  local s <close> = lib:open { label = label, rw = true }
  s:login("user", e:secret(label:gsub("%-", "_") .. "_co_pin"))
  fn(s)
  s:logout()
end

---------------------------------------------------------------------------
-- what each fault looks like to diagnose
--
-- An entry: set = the value injected (or a table of assignments); check,
-- target, status = the row expected; says = a pattern its finding matches;
-- shows = a pattern the progress output (stderr) matches;
-- warns = the WARN rows ("check / target") the same cause gives besides
-- (the one-cause matrix requires them, and no other WARN).
-- provoke() = what an operator does that meets the fault; clear() = what
-- brings the estate back (default: the estate's faults cleared).  Or
-- invisible = why diagnose cannot see it (then diagnose must still report
-- no failure with it switched on).  Or remedy_of = the entry whose clear()
-- uses this action to repair what that fault broke (an action that is a
-- repair, not a fault: its use is tested there).

-- An entry for a fault that an HSM creation meets: the new HSM ends Failed,
-- and diagnose says why (class: its classification, in the finding).
-- The Failed HSM holds its place in the quota (the guide's "Deployment
-- failure based on quota"): the quota row WARNs of it, the same cause.
local HOLDS_PLACE = { "quota / eastus" }

local function creation_fails(name, class, set, says)
  return { set = set, provoke = function() create_hsm(name) end, check = "hsm provisioning", target = name,
    status = "FAIL", says = says or ("%(" .. class .. "%)"), warns = HOLDS_PLACE,
    clear = function() e:clear() remove_hsm(name) end }
end

local ARM = {
  throttle = { set = "3", invisible = "transient: the Azure client retries a 429 after its Retry-After" },
  fail5xx = { set = "3", invisible = "transient: the Azure client retries a 500/503" },
  fail5xx_after = { set = "3", invisible = "transient: a read taken and answered 500/503 is retried (a DELETE reads "
    .. "the state first)" },
  reset = { set = "2", invisible = "transient: a read cut mid-response is retried" },
  forbid = { set = "1000", check = "credentials", target = SUB, status = "FAIL", says = "AuthorizationFailed" },
  deny_policy = { set = "1000", check = "credentials", target = SUB, status = "FAIL", says = "RequestDisallowedByPolicy" },
  delay_ms = { set = "200", invisible = "latency, not a failure: the run takes that much longer" },
  expire_tokens = { set = "1", invisible = "the Azure client fetches a new token on ExpiredAuthenticationToken" },
  gateway_race = { set = "1", provoke = function() deploy_hsm("diag-race", "diag-race") end,
    check = "failed deployments", target = "diag-race", status = "FAIL", says = "GatewayNotReady",
    -- the deployment's record and the Failed resource it left: two things to delete, each its row
    also_row = { check = "hsm provisioning", target = "diag-race", status = "FAIL" }, warns = HOLDS_PLACE,
    clear = function() e:clear() delete_deployment("diag-race", "diag-race") end },
  gateway_race_next = creation_fails("diag-next", "race", "1"),
  field_errors = creation_fails("diag-field", "quota", { field_errors = "1", quota_per_stamp = "0" },
    "%(quota%): Provisioning of the Dedicated HSM failed"),     -- the cause only in the prose
  network_fail = { set = "1:virtualNetworkGateways", provoke = function() reput_gateway(true) end,
    check = "gateway", target = "hsm-vnet", status = "FAIL", says = "Failed",
    clear = function() e:clear() reput_gateway(true) end },
  network_busy = { set = "5", invisible = "it refuses Network writes, which diagnose never sends (the test checks the "
    .. "fault's count is untouched), and leaves no state" },
  subnet_undelegated = creation_fails("diag-deleg", "delegation", "1"),
  not_allowlisted = { set = "1", check = "allowlisting", target = SUB, status = "FAIL", says = "NotRegistered" },
  quota_per_stamp = creation_fails("diag-stamp", "quota", "0"),
  quota_per_region = creation_fails("diag-region", "quota", "0"),
  capacity_per_stamp = creation_fails("diag-cap", "capacity", "0"),
  others_per_stamp = creation_fails("diag-others", "capacity", "12"),
  managed_identity = { set = "0", invisible = "the managed-identity endpoint: the inventory's credential is a client secret" },
  page_size = { set = "1", invisible = "paging: diagnose follows nextLink (one item a page here)" },
}

-- Appliance faults, on hsm2 unless said.
local APPLIANCE = {
  shell_delay_ms = { set = 100, invisible = "a slow shell is no failure (one slower than the timeout is hang_next's case)" },
  slow_command = { set = "300:hsm show", invisible = "one slow command is no failure (slower than the timeout: hang_next)" },
  hang_next = { set = 1, check = "hsm state", status = "FAIL", says = "within" },
  drop_next = { set = 1, check = "hsm state", status = "FAIL" },
  -- a client that connects meanwhile is rejected at the appliance's clock: that row may FAIL too
  clock_skew = { set = -7200, check = "appliance clock", status = "WARN", says = "7200 s behind",
    may_also = { "ntls handshakes / hsm2" },
    clear = function() e:clear() client_connects("ok") end },
  ntls = { set = "refuse", check = "tcp 1792", status = "FAIL", says = "refused",
    clear = function() e:clear() recover_ha() end,
    also = { set = "drop", says = "timeout" } },
  lunash_layout = { set = 6, invisible = "dhsm reads the 7.x, 6.x and 5.x layouts alike", also = { set = 5 } },
  force_password_change = { set = 1, check = "ssh login", status = "FAIL", says = "PasswordChangeRequired" },
  -- a question no published appliance asks, on the first command diagnose sends: reported, never answered
  ask_next = { set = "Proceed? [y/N] ", check = "hsm state", status = "FAIL", says = "UnansweredPrompt" },
  stall_next = { set = "300:Checking? ", invisible = "a line left open for less than luna.QUIET_SECONDS is output" },
  -- a count worded as no published hsm show words it: unknown, never the full count assumed
  reword = { set = "HSM Admin login attempts left=>HSM SO login attempts left", check = "hsm state", status = "FAIL",
    says = "unknown: ParseError: hsm show: cannot read the line \"HSM SO login attempts left:" },
}

local function known_hosts() return util.read_file(e.dir .. "/known_hosts") end

-- Appliance actions (estate appliance NAME ACTION), on hsm2.
local ACTIONS = {
  down = { check = "tcp 22", status = "FAIL", says = "timeout",
    shows = "waiting on hsm2: TCP %d+ and %d+ %(gives up after 5 s%)",
    clear = function() e:appliance("hsm2", "up") recover_ha() end },
  up = { remedy_of = "down" },
  reboot = { check = "tcp 22", status = "FAIL", says = "timeout",
    clear = function() power_cycle() recover_ha() end },
  ["hard-reboot"] = { remedy_of = "reboot" },
  ["support-reset"] = { check = "hsm state", status = "FAIL", says = "ZEROIZED", separate = true },
  ["install-fix"] = { remedy_of = "uninstall-fix" },
  ["uninstall-fix"] = { check = "reboot fix", status = "WARN", says = "KB0019789",
    clear = function() e:appliance("hsm2", "install-fix") end },
  zeroize = { check = "hsm state", status = "FAIL", says = "ZEROIZED", separate = true },
  ["new-host-key"] = { check = "ssh login", status = "FAIL",
    inject = function(self) self.old = known_hosts() e:appliance("hsm2", "new-host-key") self.new = known_hosts()
      t.write(e.dir .. "/known_hosts", self.old) end,
    clear = function(self) t.write(e.dir .. "/known_hosts", self.new) end },
}

-- Failures that need no switch, only state (tests/sim/README.md), and the
-- HA and login states the guide names.
local STATE_ONLY = {
  ["an HSM on the compute subnet"] = { check = "subnet delegation", target = "hsm-vnet/subnets/compute", status = "FAIL",
    also_row = { check = "hsm provisioning", target = "diag-compute", status = "FAIL" },   -- the Failed HSM it left
    warns = HOLDS_PLACE,
    inject = function() create_hsm("diag-compute", { vnet = "hsm-vnet", subnet = "compute", stamp = "stamp2" }) end,
    clear = function() remove_hsm("diag-compute") end },
  ["an HSM created while the gateway is Updating"] = { check = "hsm provisioning", target = "diag-updating",
    status = "FAIL", says = "%(race%)",
    inject = function()
      e:fault { gateway_seconds = 3600 }
      reput_gateway(false)
      create_hsm("diag-updating")
    end,
    also_row = { check = "gateway", target = "hsm-vnet", status = "WARN" }, warns = HOLDS_PLACE,
    clear = function()
      e:control("POST", "/advance", { idle = true })
      e:fault { gateway_seconds = FAST.gateway_seconds }
      remove_hsm("diag-updating")
    end },
  ["a third HSM in one stamp"] = { check = "hsm provisioning", target = "diag-third", status = "FAIL", says = "%(quota%)",
    inject = function()
      create_hsm("diag-second", { vnet = "hsm-vnet", subnet = "hsm", stamp = "stamp1" })
      create_hsm("diag-third", { vnet = "hsm-vnet", subnet = "hsm", stamp = "stamp1" })
    end,
    also_row = { check = "quota", target = "eastus", status = "WARN" },
    clear = function() remove_hsm("diag-third") remove_hsm("diag-second") end },
  ["the group holding an HSM deleted"] = { check = "orphaned hsms", target = "diag-orphan", status = "FAIL",
    inject = function()
      c:put(c:group_path("orphan-rg"), { body = { location = "eastus" } })
      create_hsm("diag-orphan", { subnet_id = network.subnet_path(c, "hsm-vnet", "hsm"), stamp = "stamp2" }, "orphan-rg")
      e:delete_group_around_dhsm(c, "orphan-rg")      -- dhsm itself refuses (GroupHoldsHsm)
    end,
    clear = function()
      c:put(c:group_path("orphan-rg"), { body = { location = "eastus" } })
      remove_hsm("diag-orphan", "orphan-rg")
      local r = c:delete(c:group_path("orphan-rg"))
      if r.status == 202 then c:wait(r, { timeout = 30 }) end
    end },
  ["deleting an HSM that is not zeroized"] = { invisible = "ARM refuses it (409 HsmNotZeroized): no state changes",
    inject = function() pcall(c.delete, c, hsm.path(c, "hsm2"), { allow_unzeroized = true }) end },   -- dhsm's rule lifted
  ["a reboot without the fix (hangs)"] = { check = "tcp 22", target = "hsm2", status = "FAIL",
    inject = function() e:appliance("hsm2", "uninstall-fix") e:appliance("hsm2", "reboot") end,
    clear = function()
      power_cycle()
      e:appliance("hsm2", "install-fix")
      recover_ha()
    end },
  ["ntls bound to an interface without the admin address, restarted"] = { check = "tcp 1792", target = "hsm2", status = "FAIL",
    inject = function()
      local s <close> = luna_session("hsm2")
      s:must("ntls bind eth1 -force")
      s:must("service restart ntls")
    end,
    clear = function()
      local s <close> = luna_session("hsm2")
      s:must("ntls bind eth0 -force")
      s:must("service restart ntls")
      recover_ha()
    end },
  ["sysconf regenCert and an NTLS restart"] = { check = "ntls certificate", target = "hsm2", status = "FAIL",
    says = "not among the certificates the client trusts",
    inject = function()
      local s <close> = luna_session("hsm2")
      s:login_so(e:secret("hsm2_so_password"))
      s:must("sysconf regenCert -force")
      s:must("service restart ntls")
      client_connects("server_cert_rejected")     -- the client tries, and fails
    end,
    also_row = { check = "ntls handshakes", target = "hsm2", status = "SKIP" },     -- one cause, one FAIL
    clear = function()
      local r = dhsm_sh(("-i %s run ntls-reexchange -e hsm=hsm2 --yes"):format(q(e.dir .. "/inventory.json")))
      t.eq(r.status, 0, r.stderr)
      client_connects("ok")
      recover_ha()
    end },
  ["no certificate exchange with an appliance yet (no server entry on the client)"] = { check = "ntls certificate",
    target = "hsm2", status = "FAIL", says = "the client has no server entry for 127%.0%.0%.1:%d+: no certificate "
      .. "exchange with it yet",
    inject = function()
      local h = e.inventory:hsm("hsm2")
      local r = proc.run { argv = { client.vtl, "deleteServer", "-n", h.host, "-p", tostring(h.ntls_port) },
        env = lunacm_opts({}).env, timeout = 60 }
      t.ok(r.stdout:find("successfully", 1, true) or r.stdout:find("deleted", 1, true), r.stdout)
    end,
    clear = function(spec)            -- the remedy typed back in as it reads
      local cmd = spec.row and spec.row.remedy:match("^exchange the certificates %(never done with this appliance%): "
        .. "dhsm (run ntls%-reexchange %-e hsm=hsm2)$")
      t.ok(cmd, "the remedy says there was no exchange yet, and how to make it: " .. tostring(spec.row and spec.row.remedy))
      local r = dhsm_sh(("-i %s %s --yes"):format(q(e.dir .. "/inventory.json"), cmd or "run ntls-reexchange -e hsm=hsm2"))
      t.eq(r.status, 0, r.stderr)
      recover_ha()
    end },
  -- dhsm's guard counted the failure too: the failed logins row says so
  ["a wrong HSM SO login"] = { check = "hsm state", target = "hsm2", status = "WARN", says = "2 of 3",
    warns = { "failed logins / hsm2" },
    inject = function()
      local s <close> = luna_session("hsm2")
      pcall(s.login_so, s, require("dhsm.secret").value("wrong-password"))
    end,
    clear = function()
      local s <close> = luna_session("hsm2")
      s:login_so(e:secret("hsm2_so_password"))
    end },
  ["a failed Crypto Officer login on a partition"] = { check = "failed logins", target = "hsm2", status = "WARN",
    says = "9 Crypto Officer attempts left",
    inject = function() e:control("POST", "/appliances/hsm2/partitions/par1/login", { role = "co", ok = false }) end,
    clear = function() e:control("POST", "/appliances/hsm2/partitions/par1/login", { role = "co", ok = true }) end },
  ["dhsm's own count of a failed login"] = { check = "failed logins", target = "hsm1", status = "WARN", says = "dhsm counted",
    inject = function()
      local r = dhsm_sh(("exec -e %s"):format(q(('local g = require("dhsm.guard"); g.record(g.device("hsm", "%s", "hsm1"), "audit", false)'):format(
        e.inventory:hsm("hsm1").serial))))
      t.eq(r.status, 0, r.stderr)
    end,
    clear = function()
      local r = dhsm_sh(("exec -e %s"):format(q(('local g = require("dhsm.guard"); g.forget(g.device("hsm", "%s"), "audit")'):format(
        e.inventory:hsm("hsm1").serial))))
      t.eq(r.status, 0, r.stderr)
    end },
  ["HA retry count 0"] = { check = "ha retry", target = "client", status = "WARN",
    inject = function() assert(lunacm { "-c", "hagroup", "retry", "-count", "0" }.ok) end,
    clear = run_remedy },
  ["HA members in different cloning domains"] = { invisible = "no appliance output shows a partition's cloning "
    .. "domain; only hagroup synchronize warns, and it clones (ha-recover runs it: tests/e2e/ha_recover_test.lua)",
    inject = function()
      e:control("POST", "/appliances/hsm2/partitions/par1/init", { domain = "another-domain",
        so_pin = pin("hsm2_par1_so_pin"), co_pin = pin("hsm2_par1_co_pin") })
    end,
    clear = function()
      e:control("POST", "/appliances/hsm2/partitions/par1/init", { domain = "defaultdomain",
        so_pin = pin("hsm2_par1_so_pin"), co_pin = pin("hsm2_par1_co_pin") })
      recover_ha()
    end },
  ["an object on one HA member only"] = { check = "ha objects", target = "myHA", status = "WARN", says = "lacks 1 object",
    inject = function()
      on_token("hsm1-par1", function(s) s:generate_aes { label = "drift-key", sensitive = false, extractable = true } end)
    end,
    clear = run_remedy },                           -- synchronized: the key on every member
}

---------------------------------------------------------------------------
-- the tests

t.test("a healthy estate: every check OK, exit 0; the table on stdout, the same rows with --json", function()
  local r = dhsm_sh(("-i %s run diagnose -e co_password=file:%s"):format(q(e.dir .. "/inventory.json"), q(CO_FILE)))
  t.eq(r.status, 0, r.stdout .. r.stderr)
  t.ok(r.stdout:find("\n[^\n]*0 WARN, 0 FAIL\n$"), r.stdout)
  local doc
  r, doc = diagnose()
  healthy(r, doc, "healthy estate")
  local seen = {}
  for _, row in ipairs(doc.result.findings) do
    seen[row.check] = true
    t.ok(r.stderr:find(row.check .. "%s+" .. row.target:gsub("%p", "%%%0") .. "%s+OK"), "the table shows " .. row.check)
  end
  for _, check in ipairs { "allowlisting", "hsm provisioning", "failed deployments", "subnet delegation", "gateway",
    "one gateway per vnet", "quota", "nic private ip", "orphaned hsms", "tcp 22", "tcp 1792", "ssh login", "hsm state",
    "failed logins", "reboot fix", "ntls certificate", "ntls handshakes", "appliance clock", "ha groups", "ha retry",
    "ha members", "ha objects" } do
    t.ok(seen[check], "check " .. check .. " reported")
  end
  t.eq(seen["ha cloning"], nil, "no row claims the members' cloning domains were checked")
  t.ok(r.stderr:find("the HA members' cloning domains are not checked: no appliance output shows a partition's", 1,
    true), "the run says so\n" .. r.stderr)
  t.eq(doc.result.counts, { OK = #doc.result.findings, WARN = 0, FAIL = 0, SKIP = 0 })
  t.eq(find(doc, "ha objects", "myHA").finding:match("^%d+ alive member"), "2 alive member")
end, { timeout = 120 })

t.test("-e hsm= probes only the named appliances; a name not in the inventory is refused (exit 2)", function()
  local r, doc = diagnose("-e hsm=hsm2")
  healthy(r, doc, "hsm2 alone")
  t.ok(find(doc, "tcp 22", "hsm2"), "hsm2 is probed")
  t.eq(find(doc, "tcp 22", "hsm1"), nil, "hsm1 is not")
  t.ok(find(doc, "hsm provisioning", "hsm1"), "the Azure checks still cover the whole group")
  r = diagnose("-e hsm=hsm2,nosuch")
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find('hsm[2]: no HSM "nosuch" in the inventory', 1, true), r.stderr)
  t.ok(r.stderr:find("(known: hsm1, hsm2", 1, true), "the known names are listed\n" .. r.stderr)
end, { timeout = 120 })

-- The finding matrix, generated from the tables above: under each fault,
-- every finding (check and target) FAILs or WARNs only when the fault's
-- entry says it does (its row, its also_row, with that status), so each
-- finding is tried against its own fault and against every neighbouring
-- one - a healthy estate has neither (healthy()), so any other is the
-- fault's doing; what the fault kept from being checked is a SKIP naming
-- its cause.  One cause, one FAIL, and no WARN it does not cause.  (No run
-- of its own: it reads the document each fault test already has.)
local FLAGGED = { FAIL = true, WARN = true }

one_cause = function(doc, spec, target)
  local expected = {}
  if FLAGGED[spec.status] then expected[spec.check .. " / " .. target] = spec.status end
  if spec.also_row and FLAGGED[spec.also_row.status] then
    expected[spec.also_row.check .. " / " .. spec.also_row.target] = spec.also_row.status
  end
  local warned = {}
  for _, key in ipairs(spec.warns or {}) do expected[key], warned[key] = "WARN", false end
  local extra, maybe, also = {}, {}, 0
  for _, key in ipairs(spec.may_also or {}) do maybe[key] = true end
  for _, row in ipairs(doc.result.findings) do
    local key = row.check .. " / " .. row.target
    if row.status == "FAIL" and maybe[key] then also = also + 1 end
    if warned[key] == false and row.status == "WARN" then warned[key] = true end
    if FLAGGED[row.status] and expected[key] ~= row.status and not maybe[key] then
      extra[#extra + 1] = ("%s %s: %s"):format(row.status, key, row.finding)
    end
    if row.status == "SKIP" then t.ok(row.finding:find("^not checked"), "a SKIP names its cause: " .. key .. ": " .. row.finding) end
  end
  t.eq(extra, {}, "no FAIL or WARN but the fault's own")
  for key, seen in pairs(warned) do t.ok(seen, "the WARN the same cause gives: " .. key) end
  -- an appliance that was not read: its NIC row says it was not compared with it, never a bare OK
  local read = {}
  for _, row in ipairs(doc.result.findings) do
    if row.check == "ssh login" and row.status == "OK" then read[row.target] = true end
  end
  for _, row in ipairs(doc.result.findings) do
    if row.check == "nic private ip" and row.status == "OK" and not read[row.target] then
      t.ok(row.finding:find("not compared", 1, true), "the NIC row says how far it was checked: " .. row.finding)
    end
  end
  t.eq(doc.result.counts.FAIL - also, spec.status == "FAIL" and (spec.also_row and spec.also_row.status == "FAIL" and 2 or 1)
    or 0, "the summary counts the cause once")
end

-- Inject, find the row, clear, find every row OK.  kind: arm | appliance | action | state
local function fault_test(kind, name, spec, value)
  local target = spec.target or (kind == "arm" and SUB or "hsm2")
  local function inject()
    if spec.inject then spec.inject(spec)
    elseif kind == "arm" then
      e:fault(type(value) == "table" and value or { [name] = value })
    elseif kind == "appliance" then e:appliance("hsm2", { [name] = value })
    elseif kind == "action" then e:appliance("hsm2", name) end
    if spec.provoke then spec.provoke() end
  end
  local cleared = false
  local function clear()
    if cleared then return end
    cleared = true
    if spec.clear then spec.clear(spec) else e:clear() end
  end
  t.cleanup(clear)                  -- a failing test leaves the estate healthy for the next
  inject()
  local r, doc = diagnose()
  t.ok(doc, "a JSON document\n" .. r.stdout .. r.stderr)
  if spec.invisible then
    t.eq(#not_ok(doc) > 0 and not_ok(doc) or {}, {}, name .. " is invisible to diagnose (" .. spec.invisible .. ")")
    t.eq(r.status, 0, r.stderr)
    if name == "network_busy" then
      t.eq(e:control("GET", "/faults").network_busy.value.n, 5, "diagnose sent no Network write")
    end
  else
    local row = find(doc, spec.check, target)
    spec.row = row                  -- for a clear() that types its remedy back in
    t.ok(row, ("a row %s / %s; rows not OK: %s"):format(spec.check, target, table.concat(not_ok(doc), "\n")))
    t.eq(row.status, spec.status, row.finding)
    if spec.says then t.ok(row.finding:find(spec.says), row.finding) end
    if spec.shows then t.ok(r.stderr:find(spec.shows), "shown while it waits\n" .. r.stderr) end
    if row.status ~= "OK" then t.ok(row.remedy and row.remedy ~= "", "a remedy for " .. spec.check) end
    if spec.also_row then
      local also = find(doc, spec.also_row.check, spec.also_row.target)
      t.eq(also and also.status, spec.also_row.status, also and also.finding or table.concat(not_ok(doc), "\n"))
    end
    one_cause(doc, spec, target)
    t.eq(r.status, doc.result.counts.FAIL > 0 and 1 or 0, "exit 1 exactly when a row FAILs")
  end
  clear()
  r, doc = diagnose()
  healthy(r, doc, name .. " cleared")
end

local function fault_tests(kind, names, table_of)
  for _, name in ipairs(names) do
    local spec = table_of[name]
    if spec == nil then
      t.test(("%s fault %s: diagnose has an entry for it"):format(kind, name), function()
        t.ok(false, ("the estate injects %s fault '%s' and diagnose_test.lua does not map it to a check (or say why "
          .. "diagnose cannot see it): add it"):format(kind, name))
      end)
    elseif spec.remedy_of then
      t.test(("%s %s: a repair, used by the test of %s"):format(kind, name, spec.remedy_of), function()
        local of = table_of[spec.remedy_of] or STATE_ONLY[spec.remedy_of]
        t.ok(of and of.check and of.clear, "the entry it repairs exists and has a clear()")
      end)
    elseif spec.separate then
      -- tested on an estate of its own below (it wipes the appliance)
    else
      local values = { n = spec.also and 2 or 1, spec.set, spec.also and spec.also.set }   -- set may be nil
      for i = 1, values.n do
        local value = values[i]
        local s = spec
        if i > 1 then s = setmetatable(spec.also, { __index = spec }) end
        local what = s.invisible and ("invisible: " .. s.invisible)
          or ("%s %s on %s"):format(s.check, s.status, s.target or (kind == "arm" and "the subscription" or "hsm2"))
        t.test(("%s %s%s: %s; OK when cleared"):format(kind, name, value ~= nil and ("=" .. cjson.encode(value)) or "", what),
          function() fault_test(kind, name, s, value) end, { timeout = 180 })
      end
    end
  end
end

local function sorted_names(map)
  local out = {}
  for k in pairs(map) do out[#out + 1] = k end
  table.sort(out)
  return out
end

local arm_faults = {}
for name, k in pairs(e:control("GET", "/faults")) do
  if k.category == "fault" then arm_faults[#arm_faults + 1] = name end
end
table.sort(arm_faults)
local appliance_faults = sorted_names(e.json.appliances.faults)
local actions = {}
for _, a in ipairs(e.json.appliances.actions) do actions[#actions + 1] = a end
table.sort(actions)

t.test("every fault and action the estate can inject is in diagnose's tables, and every entry is one it injects", function()
  local function covered(kind, names, map)
    local known = {}
    for _, n in ipairs(names) do
      known[n] = true
      t.ok(map[n], ("%s '%s' has no entry"):format(kind, n))
      t.ok(map[n].invisible or map[n].remedy_of or (map[n].check and map[n].status),
        ("%s '%s': a row, a reason or what it repairs"):format(kind, n))
    end
    for n in pairs(map) do t.ok(known[n], ("%s '%s' is not injected by the estate any more"):format(kind, n)) end
  end
  covered("ARM fault", arm_faults, ARM)
  covered("appliance fault", appliance_faults, APPLIANCE)
  covered("appliance action", actions, ACTIONS)
  t.ok(#arm_faults >= 19 and #appliance_faults >= 8 and #actions >= 9, "the estate's lists were read")
end)

fault_tests("arm", arm_faults, ARM)
fault_tests("appliance", appliance_faults, APPLIANCE)
fault_tests("action", actions, ACTIONS)
fault_tests("state", sorted_names(STATE_ONLY), STATE_ONLY)

t.test("diagnose sends nothing that changes the estate (its own log); --check changes nothing either", function()
  local before = e:mutations()
  local world = e:world()
  local lines = #util.lines(util.read_file(e.dir .. "/estate.log"), "log")
  local r, doc = diagnose()
  healthy(r, doc, "healthy")
  r, doc = diagnose("--check")
  healthy(r, doc, "check mode")
  t.ok(#util.lines(util.read_file(e.dir .. "/estate.log"), "log") > lines + 20, "the runs' reads are in the log")
  t.eq(e:mutations(), before, "no ARM write, no LunaSH command that changes anything")
  t.eq(e:world(), world)
end, { timeout = 120 })

t.test("prometheus=FILE: one gauge per check and target, HELP/TYPE, labels escaped, written whole; a bad folder is a clear error", function()
  local dir = t.tmpdir()
  local file = dir .. "/dhsm.prom"
  e:appliance("hsm2", { ntls = "refuse" })
  t.cleanup(function() e:clear() recover_ha() end)
  local r, doc = diagnose("-e prometheus=" .. q(file))
  t.eq(r.status, 1, r.stderr)
  local text = util.read_file(file)
  t.ok(text, "the file was written")
  local series, help, typ = {}, {}, {}
  for line in text:gmatch("[^\n]+") do
    local name = line:match("^# HELP (%S+) .+$")
    if name then help[name] = true
    else
      name = line:match("^# TYPE (%S+) gauge$")
      if name then typ[name] = true
      else
        local metric, labels, value = line:match('^([%a_:][%w_:]*)(%b{}) (%-?[%d.e+]+)$')
        if not metric then metric, value = line:match("^([%a_:][%w_:]*) (%-?[%d.e+]+)$") end
        t.ok(metric, "a sample line: " .. line)
        t.ok(help[metric] and typ[metric], "HELP and TYPE before " .. metric)
        if metric == "dhsm_check_status" then
          local check, target = labels:match('^{check="(.-)",target="(.-)"}$')
          t.ok(check, labels)
          t.eq(series[check .. "|" .. target], nil, "one series per check and target")
          series[check .. "|" .. target] = tonumber(value)
        end
      end
    end
  end
  local rows = 0
  for _, row in ipairs(doc.result.findings) do
    rows = rows + 1
    t.ok(series[row.check .. "|" .. row.target] ~= nil, "a gauge for " .. row.check .. " " .. row.target)
  end
  t.eq(series["tcp 1792|hsm2"], 2, "FAIL is 2")
  t.eq(series["tcp 1792|hsm1"], 0, "OK is 0")
  t.ok(text:find(('dhsm_diagnose_checks{status="FAIL"} %d\n'):format(doc.result.counts.FAIL), 1, true), text)
  local leftovers = {}
  for _, f in ipairs(require("dhsm.sys").readdir(dir)) do if f ~= "dhsm.prom" then leftovers[#leftovers + 1] = f end end
  t.eq(leftovers, {}, "no temporary file left beside it")
  -- label values are escaped
  local findings = require "dhsm.findings"
  t.eq(findings.label_value('a"b\\c\nd'), 'a\\"b\\\\c\\nd')
  t.ok(findings.prometheus({ { check = 'x"y', target = "a\\b", status = "WARN", finding = "f" } })
    :find('dhsm_check_status{check="x\\"y",target="a\\\\b"} 1', 1, true))
  -- a folder that does not exist: refused before anything runs, exit 2
  local before = #e:mutations()
  r = diagnose("-e prometheus=" .. q(dir .. "/missing/dhsm.prom"))
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("prometheus: cannot write " .. (dir .. "/missing/dhsm.prom"):gsub("%p", "%%%0"), 1), r.stderr)
  t.ok(not r.stderr:find("check Azure", 1, true), "nothing ran\n" .. r.stderr)
  t.eq(#e:mutations(), before)
  -- --check writes no file
  os.remove(file)
  r = diagnose("--check -e prometheus=" .. q(file))
  t.eq(util.read_file(file), nil, "check mode: no file written\n" .. r.stderr)
end, { timeout = 120 })

t.test("a Partition SO count worded otherwise: failed logins FAIL unknown, never read as a layout without a "
  .. "Partition SO", function()
  t.cleanup(function() e:clear() end)
  e:appliance("hsm2", { reword = "Partition SO Login Attempts Left=>Partition SO Login Tries Left" })
  local r, doc = diagnose()
  local row = find(doc, "failed logins", "hsm2")
  t.eq(row and row.status, "FAIL", r.stdout .. r.stderr)
  t.ok(row.finding:find('cannot read the line "Partition SO Login Tries Left:', 1, true), row.finding)
  e:clear()
  r, doc = diagnose()
  healthy(r, doc, "reword cleared")
end, { timeout = 180 })

t.test("an inventory HSM that Azure does not hold and whose appliance refuses: both said, the rest OK", function()
  local inv = cjson.decode(util.read_file(e.dir .. "/inventory.json"))
  local extra = {}
  for k, v in pairs(inv.hsms[1]) do extra[k] = v end
  extra.name, extra.resource, extra.serial, extra.ssh_port, extra.ntls_port = "hsm9", "hsm9", "9999999", 1, 1
  inv.hsms[#inv.hsms + 1] = extra
  local dir = t.tmpdir()
  t.write(dir .. "/inventory.json", cjson.encode(inv))
  local r, doc = diagnose(nil, { dir = dir })
  t.ok(doc, r.stderr)
  local row = find(doc, "hsm provisioning", "hsm9")
  t.eq(row and row.status, "FAIL", table.concat(not_ok(doc), "\n"))
  t.ok(row.finding:find("which group hsm%-rg does not hold"), row.finding)
  t.eq(find(doc, "tcp 22", "hsm9").status, "FAIL")
  t.ok(find(doc, "tcp 22", "hsm9").finding:find("refused", 1, true), find(doc, "tcp 22", "hsm9").finding)
  t.eq(find(doc, "hsm state", "hsm9").finding, "not checked: SSH (TCP 22) does not answer")
  for _, x in ipairs(not_ok(doc)) do t.ok(x:find("hsm9", 1, true), "only hsm9 is wrong: " .. x) end
  t.eq(r.status, 1)
end, { timeout = 120 })

-- Faults that wipe an appliance (zeroize, support-reset): an estate of
-- their own, so the shared one keeps its partitions and HA group.  Its
-- client is empty, so only the HSM's own rows are asserted.
local wiped = support.start { set = FAST, args = "--appliances 1" }


t.test("a client without a certificate (no --client-ready): one FAIL naming it, the appliances' NTLS rows SKIP; the remedy typed back in works", function()
  local r, doc = diagnose(nil, wiped)
  local row = find(doc, "ntls client", "client")
  t.eq(row and row.status, "FAIL", r.stdout .. r.stderr)
  t.ok(row.finding:find("^no client certificate at .*ClientNameCert%.pem %(Chrystoki%.conf's ClientCertFile%)$"), row.finding)
  t.ok(not row.remedy:find("SSH", 1, true), "not the appliance's SSH: " .. row.remedy)
  for _, check in ipairs { "ntls certificate", "ntls handshakes" } do
    t.eq(find(doc, check, "hsm1").status, "SKIP", find(doc, check, "hsm1").finding)
    t.eq(find(doc, check, "hsm1").finding, "not checked: the Luna client has no certificate (see ntls client)")
  end
  t.eq(doc.result.counts.FAIL, 1, table.concat(not_ok(doc), "\n"))
  t.eq({ doc.outcome, doc.unmet }, { "unmet", { "found 1 FAIL" } })
  -- the remedy as it reads: vtl createCert -n NAME, then dhsm run ntls-reexchange -e hsm=HSM
  local create, exchange = row.remedy:match("%((vtl createCert %-n) NAME, the client's name%), then exchange it with "
    .. "each appliance: dhsm (run ntls%-reexchange %-e hsm=)HSM$")
  t.ok(create and exchange, row.remedy)
  local conf_dir = wiped.inventory.client.chrystoki_conf:match("^(.*)/[^/]*$")
  local made = proc.run { argv = { wiped.inventory.client.vtl, "createCert", "-n", "jumphost" },
    env = { ChrystokiConfigurationPath = conf_dir }, timeout = 60 }
  t.ok(made.stdout:find("Certificate created", 1, true), made.stdout)
  -- (the estate's hsm1 has no partition, so the exchange's final vtl verify finds none to list)
  dhsm_sh(("-i %s %shsm1 --yes"):format(q(wiped.dir .. "/inventory.json"), exchange))
  r, doc = diagnose(nil, wiped)
  t.eq(find(doc, "ntls client", "client").status, "OK", find(doc, "ntls client", "client").finding)
  t.eq(find(doc, "ntls certificate", "hsm1").status, "OK", find(doc, "ntls certificate", "hsm1").finding)
end, { timeout = 120 })

t.test("a client certificate that cannot be read: one FAIL naming why (not a missing file), the NTLS rows SKIP", function()
  local ntls = require "dhsm.client.ntls"
  local path = ntls.client_cert_file(ntls.client(wiped.inventory))
  local kept = assert(util.read_file(path))
  t.cleanup(function() t.write(path, kept) end)
  t.write(path, "not a certificate\n")
  local r, doc = diagnose(nil, wiped)
  local row = find(doc, "ntls client", "client")
  t.eq(row and row.status, "FAIL", r.stdout .. r.stderr)
  t.ok(not row.finding:find("^no client certificate at"), row.finding)
  t.ok(row.finding ~= path, "the finding says why, not only where: " .. row.finding)
  t.eq(find(doc, "ntls certificate", "hsm1").finding, "not checked: the Luna client's certificate cannot be read (see ntls client)")
end, { timeout = 120 })

t.test("a resource group the inventory names that does not exist: one FAIL whose remedy names the inventory's field, "
  .. "not the credential's access; the rows inside it SKIP", function()
  local inv = cjson.decode(util.read_file(e.dir .. "/inventory.json"))
  inv.azure.resource_group = "hsm-rgg"
  local dir = t.tmpdir()
  t.write(dir .. "/inventory.json", cjson.encode(inv))
  local r, doc = diagnose(nil, { dir = dir })
  local row = find(doc, "resource group", "hsm-rgg")
  t.eq(row and row.status, "FAIL", table.concat(not_ok(doc), "\n"))
  t.ok(row.remedy:find("correct azure.resource_group", 1, true), row.remedy)
  t.ok(not row.remedy:find("credential", 1, true), row.remedy)
  t.eq(find(doc, "hsm provisioning", "hsm1").status, "SKIP", find(doc, "hsm provisioning", "hsm1").finding)
  t.eq(doc.result.counts.FAIL, 1, table.concat(not_ok(doc), "\n"))
  t.eq(r.status, 1)
  -- and a read that meets ResourceGroupNotFound anywhere else is advised the same, not the credential's access
  local advice = require("dhsm.azure.checks").read_advice { kind = "azure", code = "ResourceGroupNotFound" }
  t.ok(advice.remedy:find("azure.resource_group", 1, true) and not advice.remedy:find("credential", 1, true), advice.remedy)
  -- and an outage is Azure's, whichever read met it: never the credential's access
  for _, err in ipairs { { kind = "azure", status = 503 }, { kind = "azure", details = { status = 429 } },
    { kind = "net" }, { kind = "azure", code = "ResourceGroupNotFound", status = 500 } } do
    advice = require("dhsm.azure.checks").read_advice(err)
    t.ok(advice.remedy:find("Azure is busy or down", 1, true), advice.remedy)
  end
  inv.azure.resource_group = "hsm-rg"     -- corrected, as it says
  t.write(dir .. "/inventory.json", cjson.encode(inv))
  r, doc = diagnose(nil, { dir = dir })
  healthy(r, doc, "the inventory corrected")
end, { timeout = 120 })

-- After the support's reset the appliance is as Microsoft delivers one: new
-- host keys (known_hosts, the operator's file, still holds the old one) and a
-- factory admin password to change at the first login. Diagnose meets the
-- key first; the operator compares the key offered with the fingerprints the
-- support gave (the action's answer), replaces the old line, and makes the
-- first login's password change; only then is the HSM's state in view.
local function operator_after_support_reset(host_keys)
  local r, doc = diagnose(nil, wiped)
  local login = find(doc, "ssh login", "hsm1")
  t.eq(login.status, "FAIL", login.finding)
  t.ok(login.finding:find("does not match", 1, true), login.finding)
  local reload = function() wiped.inventory = require("dhsm.inventory").load(wiped.dir .. "/inventory.json") end
  reload()   -- the inventory's password file now holds the factory password (secrets are read once)
  local entry = wiped.inventory:hsm("hsm1")
  local ok, err = pcall(require("dhsm.luna").open, entry)
  t.ok(not ok and err.code == "HostKeyMismatch", tostring(err))
  local offered = err.details.offered
  t.ok(offered == host_keys.rsa or offered == host_keys.ed25519, offered .. " is one the support named")
  local kept = {}
  for line in util.read_file(entry.known_hosts):gmatch("[^\n]+") do
    if not line:find(("[127.0.0.1]:%d "):format(entry.ssh_port), 1, true) then kept[#kept + 1] = line end
  end
  t.write(entry.known_hosts, table.concat(kept, "\n") .. "\n")
  local s <close> = require("dhsm.luna").first_login(entry, { new_password = dhsm.secret.value("Fact0ry-N3w!"),
    host_key = "accept-new" })
  t.eq(util.trim(util.read_file(wiped.dir .. "/secrets/hsm1_password")), "Fact0ry-N3w!")
  reload()
end

for _, action in ipairs { "zeroize", "support-reset" } do
  t.test(("action %s: hsm state FAIL (zeroized) on hsm1; OK once re-initialized"):format(action), function()
    local r, doc = diagnose(nil, wiped)
    t.eq((find(doc, "hsm state", "hsm1") or {}).status, "OK", r.stdout .. r.stderr)
    local so = util.trim(util.read_file(wiped.dir .. "/secrets/hsm1_so_password"))   -- before the wipe
    local answer = wiped:appliance("hsm1", action)
    if action == "support-reset" then operator_after_support_reset(answer.host_keys) end
    r, doc = diagnose(nil, wiped)
    local row = find(doc, "hsm state", "hsm1")
    t.eq(row.status, "FAIL", row.finding)
    t.ok(row.finding:find("ZEROIZED", 1, true), row.finding)
    t.ok(row.finding:find("^HSM [^ ]") and not row.finding:find("  ", 1, true), "no empty label: " .. row.finding)
    t.eq(r.status, 1)
    -- the inventory read afresh: a password the first login changed is read from its file again
    local now = require("dhsm.inventory").load(wiped.dir .. "/inventory.json")
    local s <close> = require("dhsm.luna").open(now:hsm("hsm1"))
    local init = s:run("hsm init -label hsm1 -password " .. so .. " -defaultdomain -force")
    t.ok(init.ok, init.text)
    r, doc = diagnose(nil, wiped)
    t.eq(find(doc, "hsm state", "hsm1").status, "OK", find(doc, "hsm state", "hsm1").finding)
  end, { timeout = 120 })
end
