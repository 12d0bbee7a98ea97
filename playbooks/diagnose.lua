-- diagnose: every check of the troubleshooting guide, read-only, on the
-- whole inventory at once.
--
--   dhsm run diagnose [-e timeout=10] [-e prometheus=/var/lib/node_exporter/textfile/dhsm.prom]
--                     [-e co_password=file:/path] [--json]
--
-- Azure (the run's client, reads only; dhsm.azure.checks over the
-- inventory's group): allowlisting (the subscription's features); the HSM
-- resources of the group with their provisioning state and, for a failed
-- one, the cause classified from its messages; failed deployments with
-- their operations' messages; the delegation of every subnet an HSM sits
-- on; the ExpressRoute gateway of each such VNet (state, type, SKU, its
-- public IP's SKU) and that there is one per VNet; quota use per region;
-- orphaned HSMs; and, once the appliances answered, each HSM's NIC and
-- private IP against the appliance's own addresses.
-- Each appliance (all at once): TCP 22 and NTLS (1792); then over one SSH
-- session: `hsm show` (zeroized; HSM SO attempts left, WARN below 3); the
-- failed-login counts (dhsm's own, dhsm.guard, and the partitions'
-- attempts left); the KB0019789 reboot fix; the NTLS certificates (the
-- appliance's server.pem fetched over SCP against the client's trusted copy,
-- the client certificate's expiry and registration - no TLS handshake, which
-- would only add lines to the appliance's log) and the latest NTLS
-- connection of every client in its syslog; the appliance clock.
-- The client (lunacm): HA groups - members down, retry count 0, and (with
-- co_password) objects missing on a member.  Not the members' cloning
-- domains: no appliance output shows a partition's, and the one output
-- that tells of a conflict, `hagroup synchronize`'s warning, comes from
-- a command that clones (ha-recover runs it); the run says so.
--
-- Output: one table row per check and target (OK, WARN, FAIL, or SKIP
-- for a check another one's failure kept from running; what was found; the
-- remedy and the guide's section) and the counts; when a row FAILs the run
-- ends "goal not reached: found N FAIL" (ctx:unmet), exit status 1.  --json: the same rows as data (the
-- document's result.findings and result.counts).  prometheus=FILE: the rows
-- as Prometheus gauges (dhsm_check_status{check=,target=} 0 OK, 1 WARN,
-- 2 FAIL, -1 SKIP), written atomically for node_exporter's textfile
-- collector, so the run can go in cron and alert; the folder is checked
-- before anything runs.
-- Time: everything runs at once, so a run takes about one probe timeout
-- (timeout=, for TCP, the SSH login and each command) plus the slowest Azure
-- read, however many HSMs; a dead appliance costs one timeout, and what the
-- run waits on is shown once it waits longer than a second.
local checks = require "dhsm.azure.checks"
local findings = require "dhsm.findings"
local guard = require "dhsm.guard"
local ha = require "dhsm.client.ha"
local luna = require "dhsm.luna"
local net = require "dhsm.net"
local ntls = require "dhsm.client.ntls"
local parse = require "dhsm.luna.parse"
local sys = require "dhsm.sys"
local typed = require "dhsm.play.typed"

local SO_MAX = guard.THRESHOLDS.so
local CLOCK_SKEW_WARN = 300        -- seconds between the appliance clock and ours worth a warning
-- Said once, in place of a row: a row would claim a check that cannot be made.
local UNKNOWN_DOMAINS = "the HA members' cloning domains are not checked: no appliance output shows a partition's, "
  .. "and only hagroup synchronize warns of a conflict (dhsm run ha-recover runs it when the members' objects differ)"

-- What to do about what the appliances and the client show, under the
-- guide's section it comes from (Azure's are dhsm.azure.checks').
local REMEDY = findings.by_guide {
  ["HSM Networking Configuration, HSM Device Reboot"] = {
    tcp22 = "the appliance does not answer SSH: check the NSG and routes through the ExpressRoute gateway; an "
      .. "appliance network change that cut the path needs a Microsoft support reset; a reboot that hung needs a "
      .. "hard-reboot support request",
    session = "the appliance stopped answering on SSH: check its state and the path to it",
  },
  ["Failed TCP Communication"] = {
    tcp1792 = "NTLS needs TCP 1792 from the client: open it (NSG, firewall, `ntls bind`) before looking at "
      .. "certificates",
  },
  ["HSM Initialization"] = {
    password_change = "the appliance demands its first-login password change: change it once (the new password is "
      .. "asked): %s, then keep the new password where the inventory's 'password' points; an appliance fresh from "
      .. "Microsoft is initialised instead, which does it first: %s",
    fresh = "an HSM never initialised (or reset by Microsoft): store the credentials the run sets as your policy "
      .. "requires (the guide's Lost Credentials: they cannot be recovered), then initialise it (each secret asked; "
      .. "-e ha_group=LABEL joins an HA group): %s",
  },
  ["Failed Logins, How to delete an HSM resource"] = {
    zeroized = "the HSM is zeroized: reinitialize it (hsm init) and restore from backup; if it is being given back, "
      .. "delete the resource now",
  },
  ["Failed Logins"] = {
    so_attempts = "log in once with the right HSM SO password to reset the count; never guess: at 0 the HSM zeroizes",
    logins = "find who is failing to log in and stop them; a success resets the count, a Crypto Officer lockout needs "
      .. "the Partition SO's role resetpw -name co",
  },
  ["HSM Device Reboot"] = {
    reboot_fix = "install KB0019789 from Thales (package update) before any reboot or power cycle",
  },
  ["NTLS Certificates out of sync"] = {
    ntls = "re-exchange the certificates: dhsm run ntls-reexchange -e hsm=%s",
    ntls_first = "exchange the certificates (never done with this appliance): dhsm run ntls-reexchange -e hsm=%s",
    client_missing = "the Luna client has no certificate yet: make one on this host (vtl createCert -n NAME, the "
      .. "client's name), then exchange it with each appliance: dhsm run ntls-reexchange -e hsm=HSM",
    client_unusable = "the Luna client's own side of NTLS cannot be used: fix what the finding names (the inventory's "
      .. "client section, Chrystoki.conf, the certificate file) and run again",
    client_expired = "make a new client certificate (vtl createCert), then dhsm run ntls-reexchange -e hsm=%s",
    clock = "set the appliance's clock (NTP): NTLS checks certificates at its time",
  },
  ["Failed HA Group Member Doesn't Recover"] = {
    ha_members = "once the appliance answers again, recover the member (hagroup recover): dhsm run ha-recover "
      .. "-e co_password=...",
    ha_retry = "set an auto-recovery retry count so members rejoin by themselves (hagroup retry): dhsm run ha-recover "
      .. "-e co_password=...",
  },
  ["HA Group Doesn't Sync"] = {
    ha_objects = "synchronize the group: dhsm run ha-recover -e co_password=...",
  },
  [""] = {
    ssh = "fix the SSH login (host key in known_hosts, the inventory's password or key) and run again",
    this_host = "the check could not be made from this host: fix what the finding names here and run again",
    unreadable = "dhsm could not read this output, so it tells nothing (a layout it has not seen: another software "
      .. "version?); read the command's output on the appliance yourself before any login or deletion",
  },
}

-- A remedy filled in: the appliance's name (REMEDY.ntls: "... -e hsm=%s"),
-- or the command to type (REMEDY.fresh).
local function filled(advice, ...)
  return { remedy = advice.remedy:format(...), guide = advice.guide }
end

-- Every check, in the order the table lists them.
local ORDER = { "credentials", "resource group", "allowlisting", "hsm provisioning", "failed deployments", "subnet delegation", "gateway",
  "one gateway per vnet", "quota", "nic private ip", "orphaned hsms", "tcp 22", "tcp 1792", "ssh login", "hsm state",
  "failed logins", "reboot fix", "ntls client", "ntls certificate", "ntls handshakes", "appliance clock", "ha groups", "ha retry",
  "ha members", "ha objects" }

-- The checks an SSH session answers, reported "not checked" without one.
local SESSION_CHECKS = { "hsm state", "failed logins", "reboot fix", "ntls certificate", "ntls handshakes",
  "appliance clock" }
local ARM_CHECKS = { "credentials", "resource group", "allowlisting", "hsm provisioning", "failed deployments", "subnet delegation", "gateway",
  "one gateway per vnet", "quota", "nic private ip", "orphaned hsms" }
-- The same, by the names dhsm.azure.checks knows them (the NIC's once the appliances answered).
local AZURE_CHECKS = { "credentials", "resource_group", "allowlisting", "hsms", "deployments", "delegation", "gateway", "quota", "orphans" }

local message_of = findings.error_text
local attempt = findings.attempt

-- The remedy of a check that raised, by the error's kind: Azure's read
-- advice, a lost session's; anything else happened on this host (a guard
-- folder, a file, the inventory) and its message says what.
local function session_lost() return REMEDY.session end
local REMEDY_OF_KIND = { azure = checks.read_advice, luna = session_lost, net = session_lost, timeout = session_lost }

---------------------------------------------------------------------------
-- the run: its findings and what it waits on

local Run = {}
Run.__index = Run

local function new_run(ctx, p)
  return setmetatable({ ctx = ctx, p = p, inv = ctx.inventory, timeout = p.timeout, F = findings.new { order = ORDER },
    waits = {}, own_ports = {}, ntls_broken = {} }, Run)
end

-- add(check, target, status, finding [, advice]): advice = {remedy=, guide=}
function Run:add(check, target, status, finding, advice)
  advice = advice or {}
  return self.F:add(check, target, status, finding, advice.remedy, advice.guide)
end

-- guarded(check, target, fn, ...): fn's results; an error becomes a FAIL
-- row of check on target, and nil is returned.  Around a whole part of the
-- run it keeps a bug in one check from ending the diagnosis.
function Run:guarded(check, target, fn, ...)
  local r = table.pack(attempt(fn, ...))
  if r[1] then return table.unpack(r, 2, r.n) end
  local e = r[2]
  if e.kind == "luna" and e.code == "ParseError" then     -- unknown, never a default: a FAIL naming the line
    self:add(check, target, "FAIL", "unknown: " .. message_of(e), REMEDY.unreadable)
    return nil
  end
  self:add(check, target, "FAIL", message_of(e), REMEDY_OF_KIND[e.kind] and REMEDY_OF_KIND[e.kind](e) or REMEDY.this_host)
  return nil
end

-- wait(target, what, fn, ...): fn(...), known to the watcher meanwhile, so
-- a wait of more than a second is shown with what it waits for.
function Run:wait(target, what, fn, ...)
  local w = { target = target, what = what, t0 = dhsm.now() }
  self.waits[w] = true
  local done <close> = setmetatable({}, { __close = function() self.waits[w] = nil end })
  return fn(...)
end

function Run:watch()
  while true do
    dhsm.sleep(0.25)
    for w in pairs(self.waits) do
      if not w.shown and dhsm.now() - w.t0 >= 1 then
        w.shown = true
        self.ctx:progress(("waiting on %s: %s (gives up after %g s)"):format(w.target, w.what, self.timeout))
      end
    end
  end
end

---------------------------------------------------------------------------
-- Azure

-- Every Azure check but the NIC's, group-wide and at once
-- (dhsm.azure.checks); -> the scope, for the NIC rows once the appliances
-- have said which addresses they have.
local function check_azure(run)
  if not (run.inv and run.inv.azure) then
    for _, check in ipairs(ARM_CHECKS) do run:add(check, "azure", "SKIP", "not checked: the inventory has no azure section") end
    return nil
  end
  local c = run:guarded("allowlisting", "azure", run.ctx.azure, run.ctx)
  if not c then return nil end
  local expected = {}
  for i, entry in ipairs(run.inv.hsms or {}) do expected[i] = { name = entry.name, resource = entry.resource } end
  local s = checks.scope(c, { expected = expected })
  run.F:extend(checks.run(s, AZURE_CHECKS))
  return s
end

---------------------------------------------------------------------------
-- an appliance

-- TCP 22 and NTLS's port.  When neither answers, the appliance (or the
-- path to it) is the one cause: tcp 22's FAIL, and NTLS's a SKIP naming it.
local function tcp_rows(run, entry, answers)
  local ports = { { "tcp 22", entry.ssh_port or 22, REMEDY.tcp22 }, { "tcp 1792", ntls.port(entry), REMEDY.tcp1792 } }
  for i, p in ipairs(ports) do
    local a = answers[i]
    if a.open then
      run:add(p[1], entry.name, "OK", ("port %d open (%d ms)"):format(p[2], math.floor(a.ms or 0)))
    elseif i == 2 and not answers[1].open then
      run:add(p[1], entry.name, "SKIP", ("not checked apart: port %d: %s, and SSH (tcp 22) does not answer either: "
        .. "the appliance or the path to it"):format(p[2], tostring(a.reason)))
    else
      run:add(p[1], entry.name, "FAIL", ("port %d: %s"):format(p[2], tostring(a.reason)), p[3])
    end
  end
end

local function hsm_state(run, name, h)
  if h.zeroized then
    local label = (h.label and h.label ~= "") and (h.label .. " ") or ""
    -- no label: never initialised (fresh, or reset): initialize's job, not a restore
    local advice = label == "" and filled(REMEDY.fresh, typed.initialize(name, { inventory = run.ctx.opts.inventory }))
      or REMEDY.zeroized
    run:add("hsm state", name, "FAIL", ("HSM %s(serial %s%s) IS ZEROIZED"):format(label, tostring(h.serial),
      label == "" and ", no label: never initialized, or reset" or ""), advice)
  elseif h.attempts_left < SO_MAX then
    run:add("hsm state", name, "WARN", ("%d of %d HSM SO login attempts left before zeroization"):format(
      h.attempts_left, SO_MAX), REMEDY.so_attempts)
  else
    run:add("hsm state", name, "OK", ("label %s, serial %s, firmware %s, %d of %d HSM SO attempts left"):format(
      tostring(h.label), tostring(h.serial), tostring(h.firmware), h.attempts_left, SO_MAX))
  end
end

-- Partitions with their `partition show` (attempts left, label).
local function partitions(s)
  local out = {}
  for _, p in ipairs(s:partitions()) do
    local show = parse.partition_show(s:must("partition show -partition " .. p.name).text)
    show.name, show.serial = p.name, p.serial
    out[#out + 1] = show
  end
  return out
end

-- dhsm's own failed-login counts for this appliance and its partitions
-- (dhsm.guard keeps them by the serials the devices report), and the
-- partitions' own attempts left.
local function failed_logins(run, name, serial, parts)
  local mine, bad, warn = {}, {}, {}
  local ours = {}
  if serial then ours[guard.device("hsm", serial).key] = true end
  for _, p in ipairs(parts) do
    if p.serial then ours[guard.device("partition", p.serial).key] = true end
  end
  for _, c in ipairs(guard.counts()) do
    if ours[c.key] and c.failures > 0 then
      mine[#mine + 1] = ("%s %s: %d"):format(c.label, guard.ROLE_NAMES[c.role] or c.role, c.failures)
    end
  end
  for _, p in ipairs(parts) do
    if p.so_zeroized then bad[#bad + 1] = p.name .. ": Partition SO zeroized" end
    if p.co_locked then bad[#bad + 1] = p.name .. ": Crypto Officer locked out" end
    -- read, never assumed (dhsm.luna.parse.partition_show raises otherwise); no Partition SO count: a
    -- layout that shows no Partition SO field at all (6.x) - one whose PSO fields cannot all be read
    -- raised, and this check is then FAIL unknown
    if p.so_attempts_left and p.so_attempts_left < guard.THRESHOLDS.pso then
      warn[#warn + 1] = ("%s: %d Partition SO attempts left"):format(p.name, p.so_attempts_left)
    end
    if not p.co_locked and p.co_attempts_left < guard.THRESHOLDS.co then
      warn[#warn + 1] = ("%s: %d Crypto Officer attempts left"):format(p.name, p.co_attempts_left)
    end
  end
  if #mine > 0 then warn[#warn + 1] = "dhsm counted failed logins (" .. table.concat(mine, "; ") .. ")" end
  if #bad > 0 then
    run:add("failed logins", name, "FAIL", table.concat(bad, "; ") .. (#warn > 0 and ("; " .. table.concat(warn, "; ")) or ""),
      REMEDY.logins)
  elseif #warn > 0 then
    run:add("failed logins", name, "WARN", table.concat(warn, "; "), REMEDY.logins)
  else
    run:add("failed logins", name, "OK", ("no failed login counted (serial %s, %d partition(s))"):format(
      tostring(serial), #parts))
  end
end

local function reboot_fix(run, entry, s)
  local found, want = s:reboot_fix()
  if found then
    run:add("reboot fix", entry.name, "OK", "installed: " .. found)
  else
    run:add("reboot fix", entry.name, "WARN", ("no package named like %s: a reboot may hang for up to 48 h"):format(want),
      REMEDY.reboot_fix)
  end
end

local OUTCOME = {
  server_cert_rejected = "the client rejected the appliance's certificate (%s): it trusts a stale server.pem",
  client_cert_unknown = "the appliance rejected the client's certificate (certificate verify failed): unregistered, "
    .. "replaced, or not valid at the appliance's clock",
  handshake_failed = "the TLS handshake failed (%s)",
}

local function ntls_rows(run, entry, client, s, workdir)
  local name = entry.name
  local d = ntls.inspect(entry, client, s, { workdir = workdir, own_ports = run.own_ports[name] })
  local fail, warn = {}, {}
  for _, f in ipairs(d.findings) do
    if f.code == "client_expiring" then warn[#warn + 1] = f.text else fail[#fail + 1] = f.text end
  end
  if (d.server_days_left or 365) < ntls.EXPIRY_WARN_DAYS then
    warn[#warn + 1] = ("%s's server certificate expires in %d days"):format(name, d.server_days_left)
  end
  local remedy = filled((d.client_days_left or 1) < 0 and REMEDY.client_expired
    or d.first_exchange and REMEDY.ntls_first or REMEDY.ntls, name)
  if #fail > 0 then
    run.ntls_broken[name] = "its NTLS certificates do not match (ntls certificate)"
    run:add("ntls certificate", name, "FAIL", table.concat(fail, "; "), remedy)
  elseif #warn > 0 then
    run:add("ntls certificate", name, "WARN", table.concat(warn, "; "), remedy)
  else
    run:add("ntls certificate", name, "OK", ("server.pem trusted by the client; client %s registered (partitions %s), "
      .. "its certificate valid %d more days"):format(tostring(d.client_name), table.concat(d.partitions or {}, ", "),
      d.client_days_left or 0))
  end
  local failed, seen = {}, 0
  for ip, a in pairs(d.last_attempts) do
    seen = seen + 1
    if a.outcome ~= "ok" then
      failed[#failed + 1] = ("last connection from %s at %s: %s"):format(ip, tostring(a.time),
        (OUTCOME[a.outcome] or a.outcome):format(tostring(a.alert or a.reason)))
    end
  end
  table.sort(failed)
  if #failed > 0 and #fail > 0 then       -- what the certificate row found explains them: one cause
    run:add("ntls handshakes", name, "SKIP", "not checked apart (see ntls certificate): " .. table.concat(failed, "; "))
  elseif #failed > 0 then
    run:add("ntls handshakes", name, "FAIL", table.concat(failed, "; "), filled(REMEDY.ntls, name))
  else
    run:add("ntls handshakes", name, "OK", seen > 0 and ("the last connection of each of %d client address(es) "
      .. "succeeded"):format(seen) or "no NTLS connection in the recent log")
  end
end

local function clock(run, name, s)
  local t0 = os.time()
  local text = s:must("status date").text
  local read, at = attempt(parse.status_date, text)
  if not read then
    run:add("appliance clock", name, "WARN", "status date: no date in its output", REMEDY.clock)
    return
  end
  local skew = at - t0
  if math.abs(skew) > CLOCK_SKEW_WARN then
    run:add("appliance clock", name, "WARN", ("the appliance clock is %d s %s of this host's"):format(math.abs(skew),
      skew > 0 and "ahead" or "behind"), REMEDY.clock)
  else
    run:add("appliance clock", name, "OK", ("within %d s of this host's clock"):format(math.abs(skew)))
  end
end

-- The client's side of NTLS, once for every appliance: its install and its
-- certificate.  -> the client, or nil after its FAIL row (each appliance's
-- NTLS rows are then SKIPs naming it: one cause, one FAIL).
local function ntls_client(run)
  local ok, client = attempt(ntls.client, run.inv)
  if not ok then
    run.client_error = "the Luna client's NTLS side cannot be used (see ntls client)"
    run:add("ntls client", "client", "FAIL", message_of(client), REMEDY.client_unusable)
    return nil
  end
  -- the file's name and the certificate in it are two readings, each its own failure
  local named, path = attempt(ntls.client_cert_file, client)
  local read, cert
  if named then read, cert = attempt(ntls.client_cert, client) end
  if read then
    run:add("ntls client", "client", "OK", ("client certificate %s valid %d more days"):format(path, cert.days_left))
    return client
  end
  if named and type(path) == "string" and not sys.stat(path) then
    run.client_error = "the Luna client has no certificate (see ntls client)"
    run:add("ntls client", "client", "FAIL", ("no client certificate at %s (Chrystoki.conf's ClientCertFile)")
      :format(path), REMEDY.client_missing)
  else
    run.client_error = "the Luna client's certificate cannot be read (see ntls client)"
    run:add("ntls client", "client", "FAIL", message_of(named and cert or path), REMEDY.client_unusable)
  end
  return nil
end

-- The readings of one SSH session, each on its own: a failed one is its
-- check's FAIL, and the others still run (a lost session fails them fast).
local function session_checks(run, entry, s, a)
  local name = entry.name
  local lost                    -- set once a check lost the session: what comes after is a SKIP naming it
  -- check(title, rows, what, fn, ...): fn as check title's reading over the session (what: what it waits on)
  local function check(title, rows, what, fn, ...)
    if lost then
      for _, row in ipairs(rows) do run:add(row, name, "SKIP", "not checked: " .. lost) end
      return nil
    end
    local r = table.pack(run:guarded(title, name, run.wait, run, name, what, fn, ...))
    if s.broken or s.closed then lost = ("the SSH session was lost during %s (see its FAIL)"):format(title) end
    return table.unpack(r, 1, r.n)
  end
  local h = check("hsm state", { "hsm state" }, "hsm show", s.hsm_show, s)
  if h then
    hsm_state(run, name, h)
    a.serial = h.serial
  end
  local parts = check("failed logins", { "failed logins" }, "partition list/show", partitions, s)
  if parts then
    a.partitions = parts
    run:guarded("failed logins", name, failed_logins, run, name, a.serial or entry.serial, parts)
  end
  check("reboot fix", { "reboot fix" }, "package list", reboot_fix, run, entry, s)
  if run.client then
    check("ntls certificate", { "ntls certificate", "ntls handshakes" }, "server.pem, client list, syslog", ntls_rows,
      run, entry, run.client, s, run.workdir)
  else                                    -- the client's own FAIL is the cause (ntls client)
    for _, row in ipairs { "ntls certificate", "ntls handshakes" } do
      run:add(row, name, "SKIP", "not checked: " .. run.client_error)
    end
  end
  check("appliance clock", { "appliance clock" }, "status date", clock, run, name, s)
  if lost then return end
  local ok, netw = attempt(run.wait, run, name, "network show", s.network, s)
  a.network = ok and netw or nil
end

-- Every check of one appliance; -> {name=, serial=, partitions=, network=}
local function check_appliance(run, entry)
  local name, T = entry.name, run.timeout
  local a = { name = name, resource = entry.resource or name }
  local answers = run:wait(name, ("TCP %d and %d"):format(entry.ssh_port or 22, ntls.port(entry)), net.tcp_many, {
    { host = entry.host, port = entry.ssh_port or 22, timeout = T },
    { host = entry.host, port = ntls.port(entry), timeout = T } })
  tcp_rows(run, entry, answers)
  if not answers[2].open then           -- its HA members down are this, not a cause of their own
    run.ntls_broken[name] = ("its NTLS port does not answer (%s)"):format(tostring(answers[2].reason))
  end
  run.own_ports[name] = { answers[2].local_port }      -- our probe's lines in the NTLS log are not a client's
  local why
  if not answers[1].open then
    why = "SSH (TCP 22) does not answer"
  else
    local ok, s = attempt(run.wait, run, name, "SSH login", luna.open, entry, { timeout = T })
    if ok then
      run:add("ssh login", name, "OK", ("logged in as %s"):format(tostring(entry.user or "tenantadmin")))
      local session <close> = s
      session_checks(run, entry, s, a)
      return a
    end
    local e = dhsm.error.normalize(s)
    if e.kind == "interrupted" or e.kind == "cancelled" then error(s, 0) end
    run:add("ssh login", name, "FAIL", message_of(e), e.code == "PasswordChangeRequired"
      and filled(REMEDY.password_change, typed.first_login(name, run.ctx.opts.inventory),
        typed.initialize(name, { inventory = run.ctx.opts.inventory, first_login = true })) or REMEDY.ssh)
    why = "no SSH session"
  end
  -- what the session would have answered: SKIP, the FAIL is tcp 22's or ssh login's
  if not answers[1].open then run:add("ssh login", name, "SKIP", "not checked: " .. why) end
  for _, check in ipairs(SESSION_CHECKS) do run:add(check, name, "SKIP", "not checked: " .. why) end
  return a
end

---------------------------------------------------------------------------
-- HA groups (the client)

-- Phase one, at the same time as the appliances: the groups and settings.
local function ha_groups(run)
  local ok, c = attempt(ha.client, run.inv)
  if not ok then return { error = message_of(c) } end
  c.timeout = run.timeout             -- lunacm probes the appliances too: the same bound
  local groups = run:guarded("ha groups", "client", run.wait, run, "client", "lunacm hagroup listGroups", c.groups, c)
  if not groups then return { failed = true } end
  return { client = c, groups = groups, settings = c:settings() }
end

local function member_names(list)
  local out = {}
  for i, m in ipairs(list) do out[i] = ("%s (%s)"):format(m.serial, m.hsm and m.hsm.name or "?") end
  return table.concat(out, ", ")
end

local function ha_objects(run, c, g, members)
  if not run.p.co_password then
    run:add("ha objects", g.label, "OK", "not compared: give co_password to compare the members' objects")
    return
  end
  if run.ctx.check then
    run:add("ha objects", g.label, "OK", "not compared in check mode (it logs in as the Crypto Officer)")
    return
  end
  local alive = {}
  for _, m in ipairs(members) do
    if m.alive and m.label then alive[#alive + 1] = m end
  end
  for _, m in ipairs(alive) do
    m.objects = run:guarded("ha objects", g.label, c.objects, c, m.label, run.p.co_password)
    if not m.objects then return end
  end
  local drift = ha.compare(alive).drift
  if drift then
    local parts = {}
    for serial, missing in pairs(drift) do
      parts[#parts + 1] = ("%s lacks %d object(s): %s"):format(serial, #missing, table.concat(missing, ", "))
    end
    table.sort(parts)
    run:add("ha objects", g.label, "WARN", table.concat(parts, "; "), REMEDY.ha_objects)
  else
    run:add("ha objects", g.label, "OK", ("%d alive member(s) hold the same %d object(s)"):format(#alive,
      alive[1] and #alive[1].objects.keys or 0))
  end
end

-- The row of a group's members that are down.  One whose appliance's
-- NTLS is known broken (silent: name -> why) is down for that reason, which
-- its appliance's own row FAILs: a SKIP naming it, unless a member whose
-- appliance answers is down too (that one is a cause of its own).
local function members_down(run, g, down, silent)
  local own, explained = {}, {}
  for _, m in ipairs(down) do
    local why = m.hsm and silent[m.hsm.name]
    if why then explained[#explained + 1] = ("%s (%s: %s)"):format(m.serial, m.hsm.name, why) else own[#own + 1] = m end
  end
  local text = ("%d of %d member(s) down: "):format(#down, #g.members)
  if #own == 0 then
    run:add("ha members", g.label, "SKIP", "not checked apart: " .. text .. table.concat(explained, ", ")
      .. "; recover once the appliance answers again (dhsm run ha-recover)")
    return
  end
  run:add("ha members", g.label, "FAIL", text .. member_names(own) .. (#explained > 0
    and ("; and " .. table.concat(explained, ", ")) or ""), REMEDY.ha_members)
end

-- Phase two, with the appliances' partitions: the members, their objects.
local function ha_checks(run, state, appliances)
  if state.error then
    run:add("ha groups", "client", "OK", "not checked: no Luna client install (" .. state.error .. ")")
    return
  end
  if state.failed then return end
  local groups, c = state.groups, state.client
  if #groups == 0 then
    run:add("ha groups", "client", "OK", "no HA group configured in " .. c.conf_path)
    return
  end
  run:add("ha groups", "client", "OK", ("%d HA group(s) in %s"):format(#groups, c.conf_path))
  if state.settings.retry == 0 then
    run:add("ha retry", "client", "WARN", "HA auto-recovery retry count is 0 (the default): a member that drops stays "
      .. "out until recovered by hand", REMEDY.ha_retry)
  else
    run:add("ha retry", "client", "OK", ("retry count %d, interval %d s"):format(state.settings.retry, state.settings.interval))
  end
  local by_serial, silent = {}, run.ntls_broken
  for _, a in ipairs(appliances) do
    for _, p in ipairs(a.partitions or {}) do by_serial[p.serial] = p end
  end
  for _, g in ipairs(groups) do
    local down, comparable = {}, {}
    for _, m in ipairs(g.members) do
      if m.status ~= "alive" then down[#down + 1] = m end
      local p = by_serial[m.serial]
      if p then
        comparable[#comparable + 1] = { serial = m.serial, label = p.label, alive = m.status == "alive",
          objects = { keys = {} } }
      end
    end
    if #down > 0 then
      members_down(run, g, down, silent)
    else
      run:add("ha members", g.label, "OK", ("%d member(s) alive"):format(#g.members))
    end
    ha_objects(run, c, g, comparable)
  end
  run.ctx:note(UNKNOWN_DOMAINS)
end

---------------------------------------------------------------------------
-- what Azure and the appliance say of the same address

-- The NIC of each HSM against its appliance's own addresses ("eth0 10.2.1.4").
local function nic_rows(run, scope, appliances)
  if not scope then return end
  local addresses = {}
  for _, a in ipairs(appliances) do
    local own = {}
    for dev, i in pairs(a.network and a.network.interfaces or {}) do
      if i.ip then own[#own + 1] = dev .. " " .. i.ip end
    end
    table.sort(own)
    addresses[a.resource] = own
  end
  scope.addresses = addresses
  run.F:extend(checks.run(scope, { "nic" }))
end

---------------------------------------------------------------------------

-- The inventory entries to probe: all of them, or those named by -e hsm=
-- (the runner made sure each is one: inventory = "hsm").
local function chosen_entries(inv, names)
  if not names then return inv.hsms or {} end
  local chosen = {}
  for i, name in ipairs(names) do chosen[i] = inv:hsm(name) end
  return chosen
end

return {
  description = "Run every check of the troubleshooting guide, read-only, on Azure, every HSM of the inventory (in "
    .. "parallel) and the client's HA groups: a table of OK/WARN/FAIL/SKIP with remedies; exit 1 on any FAIL; "
    .. "-e prometheus=FILE also writes the findings for node_exporter's textfile collector (for cron and alerts)",
  inventory = "the HSMs, Azure and the client install to check",
  params = {
    timeout = { type = "number", default = 10, min = 0.1, max = 600,
      description = "seconds a probe waits: TCP connect, the SSH login, each LunaSH command (a dead appliance costs this once)" },
    prometheus = { type = "string",
      description = "also write the findings to FILE in the Prometheus text format (atomically: node_exporter's textfile collector)" },
    hsm = { type = "list", items = { type = "string", pattern = "^[%w%-_%.]+$", inventory = "hsm",
      expect = "inventory HSM name" }, unique = true,
      description = "only these appliances of the inventory (comma-separated names; default every one); "
        .. "the Azure checks still cover the whole resource group" },
    co_password = { type = "secret",
      description = "the HA members' Crypto Officer password (env:, file:, prompt): compare the members' objects "
        .. "(logins go through the failed-login guard: a wrong one costs an attempt per member and run)" },
  },
  run = function(ctx, p)
    if p.prometheus then findings.check_output_dir(p.prometheus) end
    local run = new_run(ctx, p)
    run.workdir = ctx:scratch_dir()
    local entries = chosen_entries(ctx.inventory, p.hsm)
    local t0 = dhsm.now()
    local rows = ctx:step(("check Azure, %d HSM(s) and the client's HA groups (timeout %g s)"):format(#entries, p.timeout),
      function()
        run.client = ntls_client(run)
        local watcher <close> = dhsm.spawn(function() run:watch() end)
        local azure_task <close> = dhsm.spawn(function()
          return run:guarded("allowlisting", "azure", check_azure, run)
        end)
        local ha_task <close> = dhsm.spawn(function()
          return run:guarded("ha groups", "client", ha_groups, run) or { failed = true }
        end)
        local appliances = dhsm.parallel(entries, function(entry)
          return run:guarded("ssh login", entry.name, check_appliance, run, entry)
            or { name = entry.name, resource = entry.resource or entry.name }
        end)
        run:guarded("ha groups", "client", ha_checks, run, ha_task:join(), appliances)
        run:guarded("nic private ip", "azure", nic_rows, run, azure_task:join(), appliances)
        watcher:cancel()
        return run.F:rows()
      end)
    for _, line in ipairs(findings.lines(rows)) do io.stdout:write(line, "\n") end
    io.stdout:flush()
    local counts = findings.counts(rows)
    if p.prometheus then      -- through the gate: described in check mode
      findings.write_prometheus(p.prometheus, rows, { duration_s = dhsm.now() - t0 })
    end
    if counts.FAIL > 0 then ctx:unmet(("found %d FAIL"):format(counts.FAIL)) end
    return { findings = rows, counts = counts }
  end,
}
