-- What provision tells the operator, each fact once: a preflight problem,
-- a gateway race attempt and the support request are printed once, the
-- classifier's reason is ARM's own word, and the attempts are one list.
local t = require "dhsm.test"
local support = require "support.estate"

local FAST = { hsm_step_seconds = 0, gateway_seconds = 0, network_seconds = 0, delete_seconds = 0, retry_after = 0 }

local function provision(estate)
  return estate:run("run provision -e hsms=hsm-a:stamp1,hsm-b:stamp2 -e poll_interval=0.02 -e backoff=0.01 --yes")
end

local function count(text, plain)
  local n, at = 0, 1
  while true do
    local i = text:find(plain, at, true)
    if not i then return n end
    n, at = n + 1, i + #plain
  end
end

t.test("preflight problems are printed once each, and the last line names the refusal only", function()
  local estate = support.start { set = FAST, args = "--appliances 0" }
  estate:fault { not_allowlisted = 1 }
  local r = provision(estate)
  t.eq(r.status, 3, r.stderr)
  t.eq(count(r.stderr, "not allowlisted: Microsoft.HardwareSecurityModules/AzureDedicatedHSM is NotRegistered"), 1, r.stderr)
  t.eq(count(r.stderr, "safety/PreflightFailed: preflight: 1 problem; nothing was changed"), 1, r.stderr)
  t.ok(r.stderr:find("\ndhsm: safety/PreflightFailed: as the failed step says above\n$"), r.stderr)
  t.eq(#estate:mutations("dedicatedHSMs"), 0, "nothing was sent")
end, { timeout = 60 })

t.test("an unresolved gateway race: each attempt listed once, numbered on, the support request asked once", function()
  local estate = support.start { set = FAST, args = "--appliances 0" }
  estate:fault { gateway_race = 1 }
  local r = provision(estate)
  t.eq(r.status, 1, r.stderr)
  t.ok(not r.stderr:find("messages say so", 1, true), r.stderr)
  t.ok(r.stderr:find('race (ARM\'s message says "GatewayNotReady")', 1, true), r.stderr)
  local failure = r.stderr:match("\n✗ delete failed HSM (hsm%-%a) and redeploy it once: [^\n]*\n")
  t.ok(failure, r.stderr)
  t.eq(count(r.stderr, "support request"), 1, r.stderr)
  -- the attempts of the HSM that failed: 4 (3 reruns) and the redeploy's, numbered on, each once
  local ids = {}
  for n, id in r.stderr:gmatch("\n  attempt (%d)[^\n]-%(request id (%S+),") do ids[#ids + 1] = { tonumber(n), id } end
  t.eq(#ids, 5, r.stderr)
  for i, a in ipairs(ids) do
    t.eq(a[1], i)
    t.eq(count(r.stderr, a[2]), 1, a[2])
  end
  t.ok(r.stderr:find("attempt 5 (after the delete):", 1, true), r.stderr)
  t.ok(r.stderr:find("\ndhsm: azure/RaceNotResolved: as the failed step says above\n$"), r.stderr)
end, { timeout = 90 })
