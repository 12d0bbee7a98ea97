-- Zeroization evidence (dhsm.evidence): made only by dhsm.luna from what the
-- appliance says, tied to the resource its appliance stands for and to a
-- time; dhsm.azure.hsm.delete refuses anything else.
local t = require "dhsm.test"
local luna = require "dhsm.luna"
local hsm = require "dhsm.azure.hsm"
local evidence = require "dhsm.evidence"
local cjson = require "cjson"

local estate = require("support.estate").start { set = { delete_seconds = 0.1 } }

local function open(name)
  local s = luna.open(estate.inventory:hsm(name))
  t.cleanup(function() s:close() end)
  return s
end


estate:appliance("hsm1", "zeroize")
local c = estate:azure()
local s1 = open("hsm1")
local ev1 = s1:zeroized_evidence(estate.inventory:hsm("hsm1"))

t.test("evidence names the appliance, its serial, the resource it stands for and when", function()
  local entry = estate.inventory:hsm("hsm1")
  t.eq({ ev1.zeroized, ev1.appliance, ev1.serial, ev1.resource }, { true, "hsm1", entry.serial, "hsm1" })
  t.ok(ev1.checked_at:match("^%d%d%d%d%-%d%d%-%d%dT"), ev1.checked_at)
  t.ok(evidence.is(ev1))
  t.raises(function() ev1.resource = "hsm2" end, "EvidenceReadOnly")
  t.eq(evidence.describe(ev1).resource, "hsm1")
  -- an appliance that is not zeroized gives none
  t.raises(function() open("hsm2"):zeroized_evidence() end, "NotZeroized")
  -- nor does one whose serial is not the inventory's
  local wrong = {}
  for k, v in pairs(entry) do wrong[k] = v end
  wrong.serial = "999"
  t.raises(function() s1:zeroized_evidence(wrong) end, "SerialMismatch")
end)

t.test("hsm1's evidence does not delete hsm2", function()
  local err = t.raises(function() hsm.delete(c, "hsm2", { zeroized = ev1 }) end, "EvidenceForOtherHsm")
  t.eq(err.kind, "safety")
  t.ok(err.message:find("the zeroization evidence is of appliance hsm1", 1, true), err.message)
  t.ok(hsm.get(c, "hsm2"), "hsm2 is still there")
end)

t.test("a hand-built, decoded or replayed table is not evidence", function()
  for _, fake in ipairs {
    { zeroized = true, appliance = "hsm2", resource = "hsm2" },
    cjson.decode(cjson.encode(evidence.describe(ev1))),
  } do
    local err = t.raises(function() hsm.delete(c, "hsm1", { zeroized = fake }) end, "EvidenceNotGenuine")
    t.eq(err.kind, "safety")
  end
  t.ok(hsm.get(c, "hsm1"), "hsm1 is still there")
end)

t.test("old evidence is stale: read it again", function()
  local err = t.raises(function() evidence.check(ev1, "hsm1", { now = ev1.at + evidence.MAX_AGE + 1 }) end, "EvidenceStale")
  t.ok(err.message:find("more than the 900 s allowed", 1, true), err.message)
  err = t.raises(function() hsm.delete(c, "hsm1", { zeroized = ev1, evidence_max_age = -1 }) end, "EvidenceStale")
  t.eq(err.kind, "safety")
  t.ok(hsm.get(c, "hsm1"), "hsm1 is still there")
end)

t.test("fresh evidence of the right appliance deletes its resource, and says so in the audit log", function()
  local audit = t.audit_log()
  hsm.delete(c, "hsm1", { zeroized = s1:zeroized_evidence(estate.inventory:hsm("hsm1")) })
  t.eq(hsm.get(c, "hsm1"), nil)
  local rec
  for _, r in ipairs(t.audit_records(audit)) do if r.action == "safety.evidence" then rec = r end end
  t.eq({ rec.action, rec.target, rec.outcome, rec.appliance, rec.serial },
       { "safety.evidence", "hsm1", "zeroized", "hsm1", estate.inventory:hsm("hsm1").serial })
end)
