-- dhsm.luna against the simulated appliances: sessions and host keys,
-- every command family, the failed-login guard, the reboot and network
-- rules, check mode, audit, timeouts and dropped connections.
local t = require "dhsm.test"
local luna = require "dhsm.luna"
local parse = require "dhsm.luna.parse"
local util = require "dhsm.util"

local estate = require("support.estate").start { set = { reboot_seconds = 0.3 } }

local function inv_entry(name)
  return estate.inventory:hsm(name)
end

-- A clean slate of faults and an audit log of its own for each test.
local function fresh()
  estate:clear()
  return t.audit_log()
end

local function open(name, opts) return estate:luna_session(name, opts) end

local audit_records = t.audit_records

---------------------------------------------------------------------------
-- sessions

t.test("a session opens the LunaSH shell; hsm show is parsed", function()
  fresh()
  local s = open("hsm1")
  t.eq(s.hostname, "hsm1")
  t.ok(s.banner:find("Luna Network HSM Command Line Shell v7.2.0-220", 1, true))
  local h = s:hsm_show()
  t.eq({ h.serial, h.firmware, h.software_version, h.attempts_left, h.zeroized, h.admin_logged_in },
       { inv_entry("hsm1").serial, "7.0.3", "7.2.0-220", 3, false, false })
  t.eq({ h.partitions_allowed, h.partitions_created, #h.partitions }, { 10, 0, 0 })
end)

t.test("host keys: strict refuses unknown, accept-new records, a changed key is refused with both fingerprints", function()
  fresh()
  local dir = t.tmpdir()
  local kh = dir .. "/known_hosts"
  t.write(kh, "")
  local err = t.raises(function() open("hsm1", { known_hosts = kh }) end, "HostKeyUnknown")
  t.eq(err.kind, "safety")
  t.ok(err.message:find("ssh-ed25519 SHA256:", 1, true), err.message)
  -- in check mode the key is taken for the session only: recording it is described, not done
  local checking = require("dhsm.act").check_scope(true)
  open("hsm1", { known_hosts = kh, host_key = "accept-new" }):close()
  checking:close()
  t.eq(util.read_file(kh), "", "a plan writes no known_hosts line")
  local s = open("hsm1", { known_hosts = kh, host_key = "accept-new" })
  s:close()
  t.ok(util.read_file(kh):find("[127.0.0.1]:" .. inv_entry("hsm1").ssh_port .. " ssh-ed25519 ", 1, true))
  open("hsm1", { known_hosts = kh }):close()          -- now known
  -- the appliance gets a new host key: refused, quoting both
  local old = s.hostkey.sha256
  estate:appliance("hsm1", "new-host-key")
  err = t.raises(function() open("hsm1", { known_hosts = kh }) end, "HostKeyMismatch")
  t.ok(err.message:find("known " .. old .. ", offered SHA256:", 1, true), err.message)
  t.eq(err.details.known, old)
  t.ok(err.details.offered ~= old)
end)

t.test("a wrong SSH password fails once, without retrying", function()
  fresh()
  local e = inv_entry("hsm2")
  local err = t.raises(function()
    luna.connect { host = e.host, port = e.ssh_port, password = dhsm.secret.value("nope"), known_hosts = e.known_hosts }
  end, "AuthenticationFailed")
  t.eq(err.kind, "luna")
  local syslog = util.read_file(estate:device("hsm2").syslog) or ""
  local _, failures = syslog:gsub("Failed password", "")
  t.eq(failures, 1)
end)

t.test("key authentication", function()
  fresh()
  local e = inv_entry("hsm2")
  local s = luna.connect { host = e.host, port = e.ssh_port, key = estate.json.appliances.client_key,
    known_hosts = e.known_hosts, name = "hsm2" }
  t.eq(s:hsm_show().serial, e.serial)
  s:close()
end)

t.test("bad input is refused before connecting", function()
  t.raises(function() luna.connect { host = "x", password = "plain" } end, "luna.connect: password: expected a secret")
  t.raises(function() luna.connect { host = "x", port = 70000, password = dhsm.secret.value("p") } end, "1%-65535")
  t.raises(function() luna.connect { host = "x" } end, "give password=")
  t.raises(function() luna.connect { host = "x", password = dhsm.secret.value("p"), host_key = "yes" } end, 'host_key: expected one of "strict", "accept%-new", got "yes"')
  local s = open("hsm1")
  t.raises(function() s:run("hsm show\nhsm zeroize") end, "one line of text")
  t.raises(function() luna.connect { host = "127.0.0.1", port = 1, password = dhsm.secret.value("p") } end, "ConnectionRefused")
end)

---------------------------------------------------------------------------
-- command families

t.test("partitions and clients: create, list, show, register, assign, delete", function()
  local audit = fresh()
  local s = open("hsm1")
  s:login_so(estate:secret("hsm1_so_password"))
  t.eq(s:hsm_show().admin_logged_in, true)
  s:must("partition create -partition p1 -force")
  local parts = parse.partition_list(s:must("partition list").text)
  t.eq({ #parts, parts[1].name, parts[1].objects }, { 1, "p1", 0 })
  local ps = parse.partition_show(s:must("partition show -partition p1").text)
  t.eq({ ps.name, ps.so_attempts_left, ps.co_attempts_left, ps.co_locked }, { "p1", 10, 10, false })
  t.eq(s:hsm_show().partitions[1].name, "p1")
  -- a client certificate copied over SCP, registered, given the partition
  local dir = t.tmpdir()
  local server = dir .. "/server.pem"
  t.ok(s:get("server.pem", server) > 100)
  t.ok(util.read_file(server):find("BEGIN CERTIFICATE", 1, true))
  t.write(dir .. "/c.pem", util.read_file(server))         -- any certificate will do here
  s:put(dir .. "/c.pem", "10.9.9.9.pem")
  s:must("client register -client app1 -ip 10.9.9.9")
  s:must("client assignPartition -client app1 -partition p1")
  t.eq(parse.client_list(s:must("client list").text), { "app1" })
  local cs = parse.client_show(s:must("client show -client app1").text)
  t.eq({ cs.id, cs.ip, cs.partitions }, { "app1", "10.9.9.9", { "p1" } })
  local dup = s:run("client register -client app2 -ip 10.9.9.9")
  t.eq(dup.ok, false)
  -- without an answer a proceed question is answered 'quit'
  local quit = s:run("partition delete -partition p1")
  t.eq({ quit.ok, quit.error.name }, { false, "RC_OPERATION_CANCELLED" })
  s:must("client delete -client app1", { proceed = true })
  s:must("partition delete -partition p1", { proceed = true })
  t.eq(parse.partition_list(s:must("partition list").text), {})
  -- every command was audited, the SO password nowhere
  local log = util.read_file(audit)
  t.ok(log:find('"action":"luna.command"', 1, true))
  t.ok(not log:find(util.read_file(estate.dir .. "/secrets/hsm1_so_password"):gsub("\n$", ""), 1, true))
end)

t.test("ntls, network, packages, syslog and status are parsed", function()
  fresh()
  local s = open("hsm2")
  local n = parse.ntls_show(s:must("ntls show").text)
  t.eq({ n.port, n.running }, { 1792, true })
  local net = s:network()
  t.eq(net.default_device, "eth0")
  t.ok(net.interfaces.eth0.ip:match("^10%.2%.1%.%d+$"))
  t.eq(require("dhsm.luna.parse").has_package(s:packages(), luna.REBOOT_FIX), nil)
  t.ok(s:must("status date").text:find("UTC", 1, true))
  local log = s:must("syslog tail -logname messages -entries 20").text
  t.ok(log:find("sshd%[%d+%]: Accepted"), log)
end)

t.test("unknown commands and bad options answer as LunaSH does", function()
  fresh()
  local s = open("hsm2")
  local r = s:run("frobnicate")
  t.eq(r.ok, false)
  t.eq(r.code, 65535)
  t.ok(r.error.lines[1]:find("Unknown command", 1, true), r.text)
  r = s:run("hsm show -bogus")
  t.ok(r.error.lines[1]:find("Unknown option", 1, true), r.text)
  t.raises(function() s:must("client show -client nobody") end, "luna")
end)

t.test("several appliances are driven in parallel", function()
  fresh()
  local shows = dhsm.parallel(estate.inventory.hsms, function(e)
    local s <close> = luna.open(e)
    return s:hsm_show().serial
  end)
  t.eq(shows, { inv_entry("hsm1").serial, inv_entry("hsm2").serial })
end)

---------------------------------------------------------------------------
-- safety

t.test("the SO login guard stops at 2 failures; an explicit override zeroizes", function()
  local audit = fresh()
  local s = open("hsm2")
  for i = 1, 2 do
    t.raises(function() s:login_so(dhsm.secret.value("wrong" .. i)) end, "LUNA_RET_UM_PIN_INCORRECT")
  end
  t.eq(s:hsm_show().attempts_left, 1)
  local err = t.raises(function() s:login_so(dhsm.secret.value("wrong3")) end, "LastLoginAttempt")
  t.eq(err.kind, "safety")
  t.eq(s:hsm_show().attempts_left, 1, "the refused attempt was not made")
  t.raises(function() s:run("hsm login -password x") end, "needs password=")   -- raw runs are guarded too
  -- the override, as the decommission playbook uses it to zeroize
  t.raises(function() s:login_so(dhsm.secret.value("wrong3"), { allow_destructive_login = true }) end, "luna")
  local h = s:hsm_show()
  t.eq({ h.zeroized, h.attempts_left }, { true, 0 })
  t.eq(s:zeroized_evidence().zeroized, true)
  err = t.raises(function() s:login_so(dhsm.secret.value("any")) end, "Zeroized")
  local overrides = {}
  for _, r in ipairs(audit_records(audit)) do
    if r.action == "safety.override" then overrides[#overrides + 1] = r.outcome end
  end
  t.eq(overrides, { "allow_destructive_login" })
  -- ARM now lets the resource go
  local c = estate:azure()
  require("dhsm.azure.hsm").delete(c, "hsm2", { zeroized = s:zeroized_evidence() })
  t.eq(require("dhsm.azure.hsm").get(c, "hsm2"), nil)
end, { timeout = 90 })

t.test("the failure count persists across sessions", function()
  fresh()
  local s = open("hsm1")
  t.raises(function() s:login_so(dhsm.secret.value("bad")) end, "luna")
  s:close()
  local guard = require "dhsm.guard"
  local key = guard.device("hsm", inv_entry("hsm1").serial)
  t.eq(guard.failures(key, "so"), 1)
  local s2 = open("hsm1")
  s2:login_so(estate:secret("hsm1_so_password"))
  t.eq(guard.failures(key, "so"), 0, "a success resets it")
  t.eq(guard.attempts_left(key, "so", nil), 3)
end)

t.test("the Auditor is locked after 10 failures; the guard stops at 9", function()
  fresh()
  local s = open("hsm1")
  for _ = 1, 9 do
    local r = s:run("audit login", { password = dhsm.secret.value("bad") })
    t.eq(r.ok, false)
  end
  -- the tenth could lock the Auditor: refused even with the right password...
  t.raises(function() s:run("audit login", { password = estate:secret("hsm1_audit_password") }) end, "LastLoginAttempt")
  -- ...unless the operator says so, knowing it is right
  t.ok(s:run("audit login", { password = estate:secret("hsm1_audit_password"), allow_destructive_login = true }).ok)
end)

t.test("a reboot needs the KB0019789 fix; with it the appliance comes back", function()
  fresh()
  local s = open("hsm1")
  local err = t.raises(function() s:run("sysconf appliance reboot -force") end, "RebootFixMissing")
  t.eq(err.kind, "safety")
  estate:appliance("hsm1", "install-fix")
  t.ok(require("dhsm.luna.parse").has_package(s:packages(), luna.REBOOT_FIX), "an entry holds the fix's name")
  pcall(s.run, s, "sysconf appliance reboot -force")         -- the session goes down with it
  dhsm.sleep(0.8)
  open("hsm1"):hsm_show()                                   -- back
  estate:appliance("hsm1", "uninstall-fix")
end)

t.test("a network change that would cut this session's path is refused", function()
  fresh()
  local s = open("hsm1")
  local cmd = "network interface static -device eth0 -ip 10.2.1.99 -netmask 255.255.255.0 -gateway 10.2.1.1 -force"
  local err = t.raises(function() s:run(cmd) end, "WouldCutPath")
  t.ok(err.message:find("eth0", 1, true))
  t.raises(function() s:run("network hostname other") end, "WouldCutPath")
  -- the device as LunaSH reads it: quotes gone, any case, abbreviated
  for _, spelled in ipairs { [[network interface static -device "eth0" -ip 10.9.9.9 -netmask 255.255.255.0]],
      "network interface dhcp -dev ETH0", "net int dhcp -d Eth0" } do
    t.raises(function() s:run(spelled, { proceed = true }) end, "WouldCutPath")
  end
  -- a letter beyond ASCII LunaSH may fold into another (a Kelvin sign is a k): dhsm cannot tell, so it refuses
  t.raises(function() s:run("networ\u{212A} interface dhcp -device eth0 -f") end, "NotAscii")
  -- a read that writes a file on the appliance is no read
  t.eq((require("dhsm.guard.commands").lunash("hsm showPolicies -exportTemplate t.xml")), "write")
  -- a line holding a question's words: its echo would be read as that question
  t.raises(function() s:run("partition show -par x\\ Password:") end, "LooksLikeQuestion")
  -- another interface is fine
  t.eq(s:run("network interface static -device eth1 -ip 10.3.0.5 -netmask 255.255.255.0 -gateway 10.3.0.1 -force").ok, true)
end)

---------------------------------------------------------------------------
-- check mode, failures of the path

t.test("check mode: reads are sent, changes are not", function()
  local audit = fresh()
  local s = open("hsm1")
  local plans = {}
  dhsm.context().would = function(w) plans[#plans + 1] = w end
  local checking = require("dhsm.act").check_scope(true)
  t.cleanup(function() checking:close() dhsm.context().would = nil end)
  t.eq(s:run("partition create -partition p9 -force").check, true)
  t.eq(s:run("par li").check, nil)
  checking:close()
  for _, p in ipairs(parse.partition_list(s:must("partition list").text)) do
    t.ok(p.name ~= "p9", "p9 was created in check mode")
  end
  t.eq(plans, { "run 'partition create -partition p9 -force' on hsm1" })
  t.ok(util.read_file(audit):find('"action":"check.would"', 1, true))
end)

t.test("get: into a scratch folder a read; anywhere else a file written through the gate", function()
  local audit = fresh()
  local s = open("hsm1")
  local dir = t.tmpdir()
  local checking = require("dhsm.act").check_scope(true)
  t.ok(s:get("server.pem", dir .. "/planned.pem") > 0)
  do
    local scratch, gone <close> = require("dhsm.act").scratch_dir("dhsm-get-")
    s:get("server.pem", scratch .. "/own.pem")
    t.ok(util.read_file(scratch .. "/own.pem"):find("BEGIN CERTIFICATE", 1, true), "a plan reads into its own folder")
  end
  checking:close()
  t.eq(util.read_file(dir .. "/planned.pem"), nil, "a plan writes no file of anyone else's")
  s:get("server.pem", dir .. "/real.pem")
  t.ok(util.read_file(dir .. "/real.pem"):find("BEGIN CERTIFICATE", 1, true))
  local writes = {}
  for _, r in ipairs(t.audit_records(audit)) do
    if r.action == "file.write" or (r.action == "check.would" and r.kind == "file") then writes[#writes + 1] = r.outcome end
  end
  t.eq(writes, { "planned", "sending", "ok" })
end)

t.test("a command that never answers times out and leaves the session unusable", function()
  fresh()
  local s = open("hsm1", { timeout = 0.5 })
  estate:appliance("hsm1", { hang_next = 1 })
  t.raises(function() s:run("hsm show") end, "Timeout")
  t.raises(function() s:run("hsm show") end, "connect again")
  open("hsm1"):hsm_show()
end)

t.test("a connection dropped mid-command is an error saying the outcome is unknown", function()
  fresh()
  local s = open("hsm1")
  estate:appliance("hsm1", { drop_next = 1 })
  local err = t.raises(function() s:run("partition list") end, "ConnectionLost")
  t.ok(err.message:find("what the appliance did is unknown", 1, true), err.message)
end)

t.test("a silent SSH port times out", function()
  local port = require("support.blackhole")()
  local t0 = dhsm.now()
  local err = t.raises(function()
    luna.connect { host = "127.0.0.1", port = port, password = dhsm.secret.value("x"), timeout = 0.3 }
  end, "Timeout")
  t.eq(err.kind, "net")
  t.ok(dhsm.now() - t0 < 2, "gave up at its timeout")
end)

t.test("a silent SSH port: the connect waits connect_timeout (default 10 s, not the command timeout) and names it", function()
  local port = require("support.blackhole")()
  local err = t.raises(function()
    luna.connect { host = "127.0.0.1", port = port, password = dhsm.secret.value("x"), timeout = 60, name = "hsm9" }
  end, "Timeout")
  t.ok(err.message:find("hsm9 (127.0.0.1:" .. port .. "): no answer to the SSH connect within 10 s", 1, true), err.message)
  t.ok(err.message:find("connect_timeout=", 1, true), err.message)
  err = t.raises(function()
    luna.connect { host = "127.0.0.1", port = port, password = dhsm.secret.value("x"), connect_timeout = 0.2 }
  end, "within 0%.2 s")
  t.eq(err.details.connect_timeout, 0.2)
  t.raises(function() luna.connect { host = "x", password = dhsm.secret.value("p"), connect_timeout = "10" } end,
    "connect_timeout: expected seconds")
end, { timeout = 60 })

t.test("an idle session whose appliance went away: 'connection lost' with the peer, not libssh2's words", function()
  fresh()
  local s = open("hsm1")
  s:hsm_show()
  estate:appliance("hsm1", "down")                 -- the session freezes...
  estate:appliance("hsm1", "up")                   -- ...and gets a RST when the appliance is back
  local e = inv_entry("hsm1")
  local err = t.raises(function() s:run("hsm show") end, "ConnectionLost")
  t.ok(err.message:find(("hsm1 (%s:%d): connection lost"):format(e.host, e.ssh_port), 1, true), err.message)
  t.ok(not err.message:find("draining", 1, true), err.message)
  t.raises(function() s:run("hsm show") end, "the connection was lost%); connect again")
end, { timeout = 60 })

t.test("an appliance that is down refuses connections", function()
  fresh()
  estate:appliance("hsm1", "down")
  t.cleanup(function() estate:appliance("hsm1", "up") end)
  local err = t.raises(function() open("hsm1", { timeout = 2 }) end, "net")
  t.ok(err.code == "ConnectionRefused" or err.code == "Timeout" or err.code == "ConnectionLost", err.code)
end)

t.test("NTLS syslog lines: luna.parse reads the appliance's log", function()
  local ev = parse.ntls_log("Nov 28 10:00:01 hsm1 NTLS[8508]: info : 0 : Incoming connection request... : 192.168.50.2/59415").events
  t.eq({ ev[1].event, ev[1].pid, ev[1].peer }, { "incoming", 8508, "192.168.50.2/59415" })
end)


t.test("the other families: policies, NTLS certificate and binding, zeroize and init", function()
  fresh()
  local s = open("hsm1")
  s:login_so(estate:secret("hsm1_so_password"))
  t.ok(s:must("hsm showPolicies").text:find("Enable SO reset of partition PIN", 1, true))
  s:must("hsm changePolicy -policy 15 -value 1 -force")
  local old = util.read_file(estate:device("hsm1").server_cert)
  s:must("sysconf regenCert -force")
  s:must("service restart ntls")
  t.ok(util.read_file(estate:device("hsm1").server_cert) ~= old, "a new server certificate")
  s:must("ntls bind eth0 -force")
  s:must("service restart ntls")                        -- a binding applies on restart, as on the appliance
  t.eq(parse.ntls_show(s:must("ntls show").text).device, "eth0")
  -- a client registered by host name, mapped to its address, revoked, unmapped
  local dir = t.tmpdir()
  s:get("server.pem", dir .. "/cert.pem")
  s:put(dir .. "/cert.pem", "app.example.com.pem")
  s:must("client register -client web -hostname app.example.com")
  s:must("client hostip map -client web -ip 10.1.1.1")
  t.eq(parse.client_show(s:must("client show -client web").text).hostname, "app.example.com")
  s:must("partition create -partition z1 -force")
  s:must("client assignPartition -client web -partition z1")
  s:must("client revokePartition -client web -partition z1")
  t.eq(parse.client_show(s:must("client show -client web").text).partitions, {})
  t.eq(s:run("client hostip map -client nobody -ip 10.1.1.2").error.name, "RC_OBJECT_NOT_IN_LIST")
  -- zeroize, then init from zeroized
  s:must("hsm zeroize -force")
  t.eq(s:hsm_show().zeroized, true)
  s:must("hsm init -label again -password N3w-SO-passw0rd -defaultdomain -force")
  local h = s:hsm_show()
  t.eq({ h.zeroized, h.label, #h.partitions }, { false, "again", 0 })
end)
