-- Zeroization evidence (dhsm.evidence): made only by dhsm.luna from what the
-- appliance says, tied through Azure's own view (the resource's NIC private
-- IP among the addresses the appliance reports) to the resource it stands
-- for, and to a time; dhsm.azure.hsm.delete refuses anything else - before
-- any DELETE is sent, counted from the estate's own request log.
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

-- The DELETEs of HSM resources that reached ARM, from the estate's log.
local function deletes()
  return #estate:mutations("DELETE /subscriptions/")
end

t.test("evidence names the appliance, its serial and addresses, the resource it stands for and when", function()
  local entry = estate.inventory:hsm("hsm1")
  t.eq({ ev1.zeroized, ev1.appliance, ev1.serial, ev1.resource }, { true, "hsm1", entry.serial, "hsm1" })
  local nic = hsm.private_ip(c, hsm.get(c, "hsm1"))
  t.ok(nic and nic:match("^10%."), tostring(nic))
  t.eq(ev1.addresses, { nic }, "network show reports the Azure NIC's address")
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

t.test("a name, an edited entry or a made-up reading gives no evidence for another resource", function()
  local before = deletes()
  local function refused(ev, code)
    local err = t.raises(function() hsm.delete(c, "hsm2", { zeroized = ev }) end, code or "EvidenceForOtherHsm")
    t.eq(err.kind, "safety")
    return err
  end
  -- 1. an entry naming hsm1 whose resource says hsm2
  local err = refused(s1:zeroized_evidence({ name = "hsm1", resource = "hsm2" }))
  t.ok(err.message:find("NIC's private IP is 10%.") and err.message:find("zeroized appliance hsm1", 1, true), err.message)
  -- 2. a session to hsm1 named hsm2
  local alias = luna.open(estate.inventory:hsm("hsm1"), { name = "hsm2" })
  t.cleanup(function() alias:close() end)
  refused(alias:zeroized_evidence())
  -- 3. the inventory entry edited before the reading
  local edited = {}
  for k, v in pairs(estate.inventory:hsm("hsm1")) do edited[k] = v end
  edited.resource = "hsm2"
  refused(s1:zeroized_evidence(edited))
  -- 4. hsm2's address set on another interface of hsm1 (not the one carrying the session)
  local hsm2_ip = (hsm.private_ip(c, hsm.get(c, "hsm2")))
  s1:run(("network interface static -device eth1 -ip %s -netmask 255.255.255.0 -force"):format(hsm2_ip),
    { proceed = true })
  t.cleanup(function() s1:run("network interface dhcp -device eth1", { proceed = true }) end)
  local ev = s1:zeroized_evidence({ name = "hsm1", resource = "hsm2" })
  t.eq({ ev.interface, ev.addresses }, { "eth0", { (hsm.private_ip(c, hsm.get(c, "hsm1"))) } }, "the session's interface only")
  refused(ev)
  -- 5. a reading made by hand: the maker is dhsm.luna's alone
  t.eq(evidence.zeroized, nil, "no public maker")
  t.raises(function() evidence.issuer() end, "EvidenceIssuer")
  refused({ zeroized = true, appliance = "hsm2", resource = "hsm2", addresses = { "10.2.1.5" } }, "EvidenceNotGenuine")
  t.eq(deletes(), before, "no DELETE reached ARM")
  t.ok(hsm.get(c, "hsm2"), "hsm2 is still there")
end)

t.test("old evidence is stale: read it again; the age allowed is bounded, and audited", function()
  local audit = t.audit_log()
  local nic = hsm.private_ip(c, hsm.get(c, "hsm1"))
  local err = t.raises(function()
    evidence.check(ev1, "hsm1", { nic_ip = nic, now = ev1.at + evidence.MAX_AGE + 1 })
  end, "EvidenceStale")
  t.ok(err.message:find("more than the 900 s allowed", 1, true), err.message)
  local before = deletes()
  for _, age in ipairs { -1, 0, math.huge, 0 / 0, evidence.MAX_AGE_LIMIT + 1, "900" } do
    err = t.raises(function() hsm.delete(c, "hsm1", { zeroized = ev1, evidence_max_age = age }) end,
      "max_age")
    t.eq(err.kind, "usage", tostring(age) .. ": " .. err.message)
  end
  t.eq(deletes(), before, "no DELETE reached ARM")
  t.ok(hsm.get(c, "hsm1"), "hsm1 is still there")
  t.eq(evidence.check(ev1, "hsm1", { nic_ip = nic, max_age = 1800 }).serial, ev1.serial)
  local overrides = {}
  for _, r in ipairs(t.audit_records(audit)) do
    if r.action == "safety.override" then overrides[#overrides + 1] = r.outcome .. " " .. math.floor(r.max_age) end
  end
  t.eq(overrides, { "evidence_max_age 1800" })
end)

t.test("evidence without Azure's view of the resource is refused", function()
  t.raises(function() evidence.check(ev1, "hsm1", {}) end, "EvidenceUnbound")
  t.raises(function() evidence.check(ev1, "hsm1", { nic_ip = "10.9.9.9" }) end, "EvidenceForOtherHsm")
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
