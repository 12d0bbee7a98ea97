-- The gate (dhsm.act): every safety rule holds through every public entry
-- point - the module function, the generic client, a REPL line, a runbook
-- with --yes and a runbook without a terminal - and what reached the
-- estate is counted from its own request log, not from dhsm's output.
local t = require "dhsm.test"
local dhsm = require "dhsm"
local util = require "dhsm.util"

local q = util.shell_quote
local estate = require("support.estate").start { args = "--appliances 2" }
local c = estate:azure()

-- What a runbook, the REPL and the tests below have: inv, az, hsm "name", secret.
local function env()
  local luna = require "dhsm.luna"
  local sessions = {}
  return setmetatable({ inv = estate.inventory, az = c, secret = dhsm.secret, hsm = function(name)
    sessions[name] = sessions[name] or luna.open(estate.inventory:hsm(name))
    return sessions[name]
  end }, { __index = _G }), sessions
end

local function in_process(code)
  local e, sessions = env()
  local ok, err = pcall(assert(load(code, "=rule", "t", e)))
  for _, s in pairs(sessions) do s:close() end
  return ok, dhsm.error.normalize(err)
end

-- The entry points a rule is tried through, each -> (held?, what it said).
local ENTRIES = {
  { "module function", function(rule) local ok, e = in_process(rule.module) return not ok and e.code == rule.code, tostring(e) end },
  { "generic client", function(rule) local ok, e = in_process(rule.generic) return not ok and e.code == rule.code, tostring(e) end },
  { "REPL line", function(rule)
    local r = estate:run("repl", { stdin = rule.generic .. "\n" })
    return r.stderr:find(rule.code, 1, true) ~= nil, r.stderr
  end },
  { "runbook with --yes", function(rule)
    local r = estate:run("exec --yes -e " .. q(rule.generic))
    return r.status == 3 and r.stderr:find(rule.code, 1, true) ~= nil, r.stderr
  end },
  { "runbook without a terminal", function(rule)
    local r = estate:run("exec -e " .. q(rule.generic))
    return r.status == 3 and r.stderr:find(rule.code, 1, true) ~= nil, r.stderr
  end },
}

local HSM_PATH = "require('dhsm.azure.hsm').path(az, inv:hsm('hsm1').resource)"

local RULES = {
  { name = "a group holding an HSM is not deleted", code = "GroupHoldsHsm",
    module = "require('dhsm.azure.groups').delete(az)",
    generic = "az:request('delete', (az:group_path():gsub('resourceGroups', 'resourcegroups')))" },
  { name = "an HSM resource is deleted only on its appliance's evidence", code = "NotZeroized",
    module = "require('dhsm.azure.hsm').delete(az, inv:hsm('hsm1').resource)",
    generic = "az:delete(" .. HSM_PATH .. ")" },
  { name = "the login guard refuses the last HSM SO attempt", code = "LastLoginAttempt",
    module = "hsm('hsm2'):login_so(secret.value('not-the-password'))",
    generic = "hsm('hsm2'):run('HSM LOGI', { password = secret.value('not-the-password') })" },
  { name = "no reboot without the reboot fix", code = "RebootFixMissing",
    module = "hsm('hsm1'):must('sysconf reboot')",
    generic = "hsm('hsm1'):run('sys reb')" },
  { name = "no network change on the session's own path", code = "WouldCutPath",
    module = "hsm('hsm1'):must('network interface -device eth0 -ip 10.9.9.9 -netmask 255.255.255.0')",
    generic = "hsm('hsm1'):run('net int -dev eth0 -ip 10.9.9.9 -netmask 255.255.255.0')" },
}

t.test("every rule holds through every entry point, and nothing reaches the estate", function()
  estate:appliance("hsm1", "uninstall-fix")
  -- hsm2's HSM SO has one attempt left on the device: the next is refused
  local s = estate:luna_session("hsm2")
  for _ = 1, 2 do
    t.raises(function() s:login_so(dhsm.secret.value("wrong")) end, "PIN_INCORRECT")
  end
  local before = estate:mutations()
  local held, failures = 0, {}
  for _, rule in ipairs(RULES) do
    for _, entry in ipairs(ENTRIES) do
      local ok, said = entry[2](rule)
      if ok then held = held + 1 else failures[#failures + 1] = ("%s, by %s: %s"):format(rule.name, entry[1], said) end
    end
  end
  t.eq(failures, {})
  t.eq(held, #RULES * #ENTRIES)
  t.eq(estate:mutations(), before, "nothing reached ARM or an appliance (the estate's own log)")
end, { timeout = 300 })

t.test("dhsm.proc runs no remote shell or copy, however the appliance's host is written", function()
  local entry = estate.inventory:hsm("hsm1")
  local before = estate:mutations()
  local port = tostring(entry.ssh_port)
  local routes = {
    { "ssh", "-p", port, "tenantadmin@" .. entry.host, "hsm zeroize -force" },
    { "ssh", "-p", port, "tenantadmin@localhost", "hsm zeroize -force" },
    { "ssh", "-l", "tenantadmin", "ssh://" .. entry.host .. ":" .. port, "hsm show" },
    { "ssh", "-oHostName=" .. entry.host, "-p", port, "anything", "hsm show" },
    { "/usr/bin/scp", "-P", port, "/etc/hostname", entry.host .. ":x.pem" },
    { "sftp", "-o", "HostName=" .. entry.host, "hsm1" },
    { "sshpass", "-e", "ssh", entry.host, "hsm zeroize -force" },
    { "slogin", "-p", port, entry.host, "hsm show" },
  }
  -- ssh under a name of its own: what runs is what counts
  local alias = t.tmpdir() .. "/shell"
  t.sh(("ln -s \"$(command -v ssh)\" %s"):format(q(alias)))
  routes[#routes + 1] = { alias, "-p", port, entry.host, "hsm show" }
  local proc = require "dhsm.proc"
  for _, argv in ipairs(routes) do
    local err = t.raises(function() proc.run { argv = argv } end, "AroundTheRules")
    t.ok(err.message:find("runs no remote shell or copy", 1, true), err.message)
    t.raises(function() proc.spawn { argv = argv } end, "AroundTheRules")
  end
  -- through a runbook, with --yes too
  local r = estate:run("exec --yes -e " .. q(("require('dhsm.proc').run { argv = { 'ssh', '-p', '%d', %q, 'hsm show' } }")
    :format(entry.ssh_port, "tenantadmin@" .. entry.host)))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("AroundTheRules", 1, true), r.stderr)
  t.eq(estate:mutations(), before, "nothing reached an appliance")
end)

t.test("what a session shows is not what its rules read; a refused login is counted in a plan", function()
  -- hsm1 has no reboot fix (the first test took it away); its fields are for show
  local s = estate:luna_session("hsm1")
  s.reboot_fix_package, s.host = "", nil
  t.raises(function() s:run("sysconf reboot") end, "RebootFixMissing")
  t.raises(function() s:run("network interface dhcp -device eth0 -f") end, "WouldCutPath")
  -- hsm2's HSM SO is at its last attempt (the first test): a login refused inside a plan counts, caught or not
  local act = require "dhsm.act"
  local checking = act.check_scope(true)
  local s2 = estate:luna_session("hsm2")
  local ok, err = pcall(s2.login_so, s2, dhsm.secret.value("wrong"))
  local refused = act.tally().refused
  checking:close()
  t.eq({ ok, err.code, refused }, { false, "LastLoginAttempt", 1 })
end)

t.test("under concurrency: parallel tasks each asked, two processes each refused; the estate's log agrees", function()
  local before = #estate:mutations("partition delete")
  local deletes = #estate:mutations("DELETE")
  local code = [[
    local s = hsm("hsm1")
    local r = dhsm.parallel({ 1, 2, 3, 4, 5 }, function(i)
      local ok, err = pcall(s.run, s, ("partition delete -partition gone%d -f"):format(i))
      return ok and "sent" or dhsm.error.normalize(err).code
    end)
    print(table.concat(r, ","))]]
  -- five tasks at once, no terminal, no --yes: each destruction refused on its own
  local r = estate:run("exec -e " .. q(code))
  t.eq(r.stdout, "NotConfirmed,NotConfirmed,NotConfirmed,NotConfirmed,NotConfirmed\n", r.stderr)
  t.eq(#estate:mutations("partition delete"), before, "none reached the appliance")
  -- with --yes each is confirmed in advance and recorded before it is sent
  local state = t.tmpdir()
  r = estate:run("exec --yes -e " .. q(code), { state = state })
  t.eq(r.stdout, "sent,sent,sent,sent,sent\n", r.stderr)
  t.eq(#estate:mutations("partition delete"), before + 5)
  local confirmed, intents = 0, 0
  for _, rec in ipairs(t.audit_records(state .. "/audit.jsonl")) do
    if rec.action == "confirm" and rec.outcome == "skipped (--yes)" then confirmed = confirmed + 1 end
    if rec.action == "luna.command" and rec.outcome == "sending" then intents = intents + 1 end
  end
  t.eq({ confirmed, intents }, { 5, 5 })
  -- two processes at once deleting the group that holds the HSMs: both refused, nothing sent
  local group = "az:delete(az:group_path())"
  local a = estate:run("exec --yes -e " .. q(group) .. " & " .. t.cmd("-i " .. q(estate.dir .. "/inventory.json")
    .. " exec --yes -e " .. q(group)) .. "; wait")
  t.eq(select(2, a.stderr:gsub("GroupHoldsHsm", "")), 2, a.stderr)
  t.eq(#estate:mutations("DELETE"), deletes, "no DELETE reached ARM")
end, { timeout = 120 })
