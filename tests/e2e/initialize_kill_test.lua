-- The kill matrix of initialize: `dhsm run initialize` SIGKILLed at each
-- point where a resume could send a change twice or skip one - a command
-- answered but its step not recorded as done, a step begun - then resumed
-- (--resume) until it finishes.  What reached the estate is counted from
-- its own records (DIR/estate.log: LunaSH commands and the client tools'
-- lines; the appliance's syslog for the first login's password change):
-- every change exactly once, and the end state read from the estate.
--
-- make test runs the points marked `reduced`; DHSM_KILLS=full (make kills)
-- runs them all.  Not a point: a kill inside the Crypto Officer's C_InitPIN,
-- which dhsm makes in its own process: the simulated partition is a SoftHSM
-- token whose token.object SoftHSM rewrites in place, so a process killed
-- mid-write leaves the token unreadable for good - where a real appliance
-- applies the change or not (make check met it once).  The point between
-- partition init and the Crypto Officer is after `partition init` answered.
local t = require "dhsm.test"
local fresh = require "support.fresh"
local killrun = require "support.killrun"

local FULL = os.getenv("DHSM_KILLS") == "full"

local MATRIX = {
  { point = killrun.after_command("hsm init"), reduced = true },
  { point = killrun.after_command("partition create") },
  { point = killrun.after_command("client register") },
  -- between partition create (and init) and the Crypto Officer's password
  { point = killrun.after_command("partition init"), reduced = true },
  -- between addMember and synchronize
  { point = killrun.after_command("hagroup addMember"), reduced = true },
  { point = killrun.after_command("hagroup synchronize") },
}

local ONCE = { first_login = 1, hsm_init = 1, partition_create = 1, register = 1, assign = 1, add_server = 1,
  partition_init = 1, add_member = 1, synchronize = 1 }

for _, m in ipairs(MATRIX) do
  if FULL or m.reduced then
    t.test("killed " .. m.point.where .. ": resumed, each change sent once, hsm3 a member holding the key", function()
      local e = fresh.estate()
      local from = fresh.mark(e)
      local args = fresh.args(e, { "-e", "hsm=hsm3", "--yes" })
      local p <close> = killrun.spawn(e, "initialize", args)
      killrun.kill_at(e, p, m.point)
      local statuses = killrun.resume(e, "initialize", { "--yes" })
      t.eq(statuses[#statuses], 0, "the last resume finished: " .. table.concat(statuses, ","))
      t.eq(fresh.sent(e, from), ONCE)
      t.eq(fresh.objects(e, "hsm3-par1"), { "secret_key:" .. fresh.APP_KEY }, "the application's key is on hsm3")
      local members = {}
      for _, x in ipairs(e:control("GET", "/client").groups[1].members) do members[#members + 1] = x.status end
      t.eq(members, { "alive", "alive", "alive" })
      t.eq(killrun.run_state(e), "ok")
    end, { timeout = 300 })
  end
end
