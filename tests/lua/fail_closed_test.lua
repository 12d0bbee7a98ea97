-- Reading the appliance fail-closed, through the public entry points and
-- against the simulated estate: an appliance that prints a count or a
-- serial in a layout no published output shows (the estate's `reword`
-- fault) gets no login, no zeroization and no deletion from dhsm, and the
-- refusal names the line.  What reached the estate is counted from its
-- own request log (estate.log), not from dhsm's output.
local t = require "dhsm.test"
local dhsm = require "dhsm"
local luna = require "dhsm.luna"
local support = require "support.estate"
local util = require "dhsm.util"

local estate = support.start { set = { delete_seconds = 0, hsm_step_seconds = 0 } }
local q = util.shell_quote

local function reword(name, rule)
  estate:clear()
  estate:appliance(name, { reword = rule })
end

-- how many LunaSH commands matching pattern hsm1 received so far
local function received(pattern)
  return support.count(estate:log(), "^hsm1 lunash: " .. pattern)
end

local function refused(fn, ...)
  local ok, err = pcall(fn, ...)
  t.eq(ok, false, "refused")
  return dhsm.error.normalize(err)
end

t.test("an SO attempts line worded otherwise: the HSM SO login is refused before any password is sent", function()
  reword("hsm1", "HSM Admin login attempts left=>HSM SO login attempts left")
  local s <close> = estate:luna_session("hsm1")
  local before = received("hsm login")
  -- the HSM's identity (its serial, the guard's key) comes from the same output: read first, refused first
  local e = refused(s.login_so, s, estate:secret("hsm1_so_password"))
  t.eq({ e.kind, e.code }, { "luna", "ParseError" })
  t.ok(e.message:find('cannot read the line "HSM SO login attempts left:', 1, true), e.message)
  t.eq(received("hsm login"), before, "no hsm login reached the appliance")
  -- the same through the generic entry point (run with a password), and with the override: unknown is not 1
  refused(s.run, s, "hsm login", { password = estate:secret("hsm1_so_password"), allow_destructive_login = true })
  t.eq(received("hsm login"), before, "no hsm login reached the appliance")
end)

t.test("an Auditor count worded otherwise, or dropped from audit show: the audit login is refused", function()
  reword("hsm1", "Audit Role Login Attempts Left=>Audit Role Login attempts remaining")
  local s <close> = estate:luna_session("hsm1")
  local before = received("audit login")
  local e = refused(s.run, s, "audit login", { password = estate:secret("hsm1_audit_password") })
  t.eq({ e.kind, e.code }, { "safety", "AttemptsUnreadable" })
  t.eq(received("audit login"), before)
  -- the count's line under another name: `audit show` shows a count here, so one dhsm cannot read is no
  -- "layout without a count" - the login is refused, not left to dhsm's own count
  reword("hsm1", "Audit Role Login Attempts Left:=>Audit Role:")
  e = refused(s.run, s, "audit login", { password = estate:secret("hsm1_audit_password") })
  t.eq({ e.kind, e.code }, { "safety", "AttemptsUnreadable" })
  t.ok(e.message:find('cannot read the line "Audit Role:', 1, true), e.message)
  t.eq(received("audit login"), before, "no audit login reached the appliance")
  -- a line of no `audit show` form in its place
  reword("hsm1", "Audit Role Login Attempts Left:=>Unable to communicate with HSM ")
  e = refused(s.run, s, "audit login", { password = estate:secret("hsm1_audit_password") })
  t.eq({ e.kind, e.code }, { "safety", "AttemptsUnreadable" })
  t.eq(received("audit login"), before, "no audit login reached the appliance")
end)

t.test("zeroization by failed logins meets an unreadable count: no wrong login is sent", function()
  reword("hsm1", "before HSM zeroization!=>tries before the HSM is zeroized")
  local s <close> = estate:luna_session("hsm1")
  local before = received("hsm login")
  local serial = estate:state().appliances.hsm1.hsm.serial
  local e = refused(s.zeroize_by_failed_logins, s, serial, { zeroize = true })
  t.eq({ e.kind, e.code }, { "luna", "ParseError" })
  t.ok(e.message:find("N before HSM zeroization!", 1, true), e.message)
  t.eq(received("hsm login"), before)
  t.eq(estate:control("GET", "/appliances").hsm1.zeroized, false)
end)

t.test("decommission meets an hsm show without a readable serial: nothing zeroized, nothing deleted", function()
  reword("hsm1", "Serial #=>Serial No.")
  local so = "-e so_password=file:" .. q(estate.dir .. "/secrets/hsm1_so_password")
  -- the estate's own control requests (the fault above) are logged once answered, maybe late: not counted
  local function changes()
    local out = {}
    for _, m in ipairs(estate:mutations()) do
      if not m:find("/_sim/", 1, true) then out[#out + 1] = m end
    end
    return out
  end
  local before = #changes()
  local r = estate:run("run decommission -e hsm=hsm1 -e backups_confirmed=true --yes " .. so,
    { state = t.tmpdir() })
  t.ok(r.status ~= 0, r.stdout)
  t.ok((r.stdout .. r.stderr):find("cannot read", 1, true), r.stdout .. r.stderr)
  local after = changes()
  t.eq(#after, before, "nothing that changes the estate reached it: " .. table.concat(after, "; ", before + 1))
  t.eq(estate:hsms().hsm1, "Succeeded")
end)
