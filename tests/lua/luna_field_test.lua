-- dhsm.luna against the simulated appliances as the field shows them: the
-- RSA host key, LunaSH layouts 5/6/7 over real SSH, the forced password
-- change of a first login, and the reboot fix matched by its configured name.
local t = require "dhsm.test"
local luna = require "dhsm.luna"
local parse = require "dhsm.luna.parse"
local util = require "dhsm.util"

local estate = require("support.estate").start { set = { reboot_seconds = 0.3 } }

local function entry(name, extra)
  local e = {}
  for k, v in pairs(estate.inventory:hsm(name)) do e[k] = v end
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

local function open(name, opts) return estate:luna_session(name, opts) end

-- A clean slate of faults and an audit log of its own for each test.
local function fresh()
  estate:clear()
  return t.audit_log()
end

t.test("the appliance offers RSA and ed25519; dhsm asks for the RSA key known_hosts holds", function()
  fresh()
  local s = open("hsm1")
  t.eq(s.hostkey.type, "ssh-rsa")
  t.ok(util.read_file(entry("hsm1").known_hosts):find("]:" .. entry("hsm1").ssh_port .. " ssh-rsa AAAA", 1, true))
  -- a known_hosts holding the ed25519 key instead is honoured the same way
  local kh = t.tmpdir() .. "/known_hosts"
  t.write(kh, "")
  local first = open("hsm1", { known_hosts = kh, host_key = "accept-new" })
  t.eq(first.hostkey.type, "ssh-ed25519")
  t.eq(open("hsm1", { known_hosts = kh }).hostkey.sha256, first.hostkey.sha256)
end)

-- hsm1 with two partitions and two clients (one by IP, one by host name).
local function populate()
  local s <close> = luna.open(entry("hsm1"))
  if #s:hsm_show().partitions > 0 then return end
  s:login_so(estate:secret("hsm1_so_password"))
  s:must("partition create -partition p1 -force")
  s:must("partition create -partition p2 -force")
  local dir = t.tmpdir()
  s:get("server.pem", dir .. "/c.pem")                   -- any certificate will do here
  s:put(dir .. "/c.pem", "10.9.9.9.pem")
  s:put(dir .. "/c.pem", "app2.example.pem")
  s:must("client register -client app1 -ip 10.9.9.9")
  s:must("client register -client app2 -hostname app2.example")
  s:must("client assignPartition -client app1 -partition p1")
  s:must("client assignPartition -client app2 -partition p1")
  s:must("client assignPartition -client app2 -partition p2")
end

-- What each layout says, read through the one set of parsers.
local LAYOUTS = {
  [7] = { model = "Luna K7", software = "7.2.0-220", banner = "Luna Network HSM Command Line Shell v7.2.0-220" },
  [6] = { model = "K6 Base", software = "6.2.2-5", banner = "Luna Network HSM Command Line Shell v6.2.2-5" },
  [5] = { model = "Luna K6", software = "5.3.0-11", banner = "Luna SA 5.4.7-1 Command Line Shell" },
}

for layout, want in pairs(LAYOUTS) do
  t.test(("lunash_layout=%d: hsm show, partition list, client show, package list parse over SSH"):format(layout), function()
    fresh()
    populate()
    estate:appliance("hsm1", { lunash_layout = tostring(layout) })
    local s = open("hsm1")
    t.ok(s.banner:find(want.banner, 1, true), s.banner)
    local h = s:hsm_show()
    t.eq({ h.model, h.software_version, h.serial, h.zeroized, h.attempts_left },
         { want.model, want.software, entry("hsm1").serial, false, 3 })
    local device = estate:state().appliances.hsm1
    local names = {}
    for name in pairs(device.partitions) do names[#names + 1] = name end
    table.sort(names)
    t.ok(#names > 0, "the estate's hsm1 has partitions")
    local listed = {}
    for _, p in ipairs(parse.partition_list(s:must("partition list").text)) do
      listed[#listed + 1] = p.name
      t.eq(p.serial, device.partitions[p.name].serial, p.name)
      t.eq(p.total, 102400, p.name)
    end
    table.sort(listed)
    t.eq(listed, names)
    t.eq(#h.partitions, #names)
    local clients = parse.client_list(s:must("client list").text)
    t.ok(#clients > 0, "hsm1 has registered clients")
    t.eq(#clients, 2)
    for _, name in ipairs(clients) do
      local c = parse.client_show(s:must("client show -client " .. name).text)
      local rec = device.clients[name]
      t.eq({ c.id, c.partitions }, { name, rec.partitions }, name)
      t.eq(rec.kind == "ip" and c.ip or c.hostname, rec.address, name)
    end
    t.eq(parse.has_package(s:packages(), luna.REBOOT_FIX) ~= nil, device.packages.KB0019789 == true)
  end)
end

t.test("a normal open on an appliance demanding the password change fails at once, saying so", function()
  local log = fresh()
  estate:appliance("hsm2", { force_password_change = "1" })
  local err = t.raises(function() luna.open(entry("hsm2"), { timeout = 600 }) end, "PasswordChangeRequired")
  t.eq(err.kind, "luna")
  -- the way through, as it is typed in dhsm exec or the REPL (no global `luna` there)
  t.ok(err.message:find('require("dhsm.luna").first_login(inv:hsm("hsm2"), {new_password = secret.prompt(', 1, true),
    err.message)
  t.eq(t.audit_records(log)[#t.audit_records(log)].outcome, "PasswordChangeRequired")
  -- nothing was answered: the demand stands, the old password is unchanged
  t.eq(estate:state().appliances.hsm2.faults.force_password_change, true)
end)

t.test("first_login over SSH: a weak password is refused with passwd's words, a good one changes it once", function()
  local log = fresh()
  estate:appliance("hsm2", { force_password_change = "1" })
  local function password() return util.trim(util.read_file(estate.dir .. "/secrets/hsm2_password")) end
  local old = password()
  t.raises(function() luna.first_login(entry("hsm2"), { new_password = "N3w-Passw0rd!" }) end, "luna.first_login: new_password: expected a secret")
  local err = t.raises(function()
    luna.first_login(entry("hsm2"), { new_password = dhsm.secret.value("short") })
  end, "PasswordChangeRejected")
  t.ok(err.message:find("BAD PASSWORD", 1, true), err.message)
  t.eq(password(), old)

  local new = dhsm.secret.value("N3w-Passw0rd!")
  local s = luna.first_login(entry("hsm2"), { new_password = new })
  t.cleanup(function() s:close() end)
  t.eq({ s.password_changed, s.hostname }, { true, "hsm2" })
  t.eq(s:hsm_show().serial, entry("hsm2").serial)        -- the session goes on at the prompt
  -- the estate's own record: the password changed, the demand is gone
  t.eq(password(), "N3w-Passw0rd!")
  t.eq(estate:state().appliances.hsm2.faults.force_password_change, false)
  t.raises(function() luna.open(entry("hsm2")) end, "AuthenticationFailed")
  local again = luna.first_login(entry("hsm2", { password = new }), { new_password = new })
  t.cleanup(function() again:close() end)
  t.eq(again.password_changed, false)
  local outcomes = {}
  for _, r in ipairs(t.audit_records(log)) do
    if r.action == "luna.first_login" then outcomes[#outcomes + 1] = r.outcome end
  end
  t.eq(outcomes, { "sending", "error PasswordChangeRejected", "sending", "changed" })
  t.eq(util.read_file(log):find("N3w-Passw0rd!", 1, true), nil)   -- never in the audit log
end)

t.test("the reboot fix is found by the inventory's reboot_fix_package, any case, in the real package layout", function()
  fresh()
  estate:appliance("hsm1", "install-fix")
  local s = open("hsm1")
  t.ok(parse.has_package(s:packages(), "kb0019789"))
  -- the name comes from the inventory entry the session was opened with (a field set later is for show)
  local luna = require "dhsm.luna"
  local other = luna.open(entry("hsm1", { reboot_fix_package = "no-such-fix" }))
  t.cleanup(function() other:close() end)
  local err = t.raises(function() other:check_reboot_fix("sysconf appliance reboot", {}) end, "RebootFixMissing")
  t.ok(err.message:find("reboot_fix_package", 1, true), err.message)
  local named = luna.open(entry("hsm1", { reboot_fix_package = "LUNASA-REBOOT-FIX" }))
  t.cleanup(function() named:close() end)
  named:check_reboot_fix("sysconf appliance reboot", {})
  local inv = require("dhsm.inventory")
  t.raises(function()
    inv.from_table { hsms = { { name = "x", host = "10.0.0.1", reboot_fix_package = "a b" } } }
  end, "reboot_fix_package")
  t.eq(inv.from_table { hsms = { { name = "x", host = "10.0.0.1" } } }:hsm("x").reboot_fix_package, "KB0019789")
end)
