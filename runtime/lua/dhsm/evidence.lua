-- dhsm.evidence: proof that an appliance was seen zeroized, which
-- dhsm.azure.hsm.delete asks for before it deletes the HSM resource.
--
--   local ev = session:zeroized_evidence(inventory:hsm("hsm1"))   -- dhsm.luna makes it
--   ev.appliance, ev.serial, ev.addresses, ev.interface, ev.host, ev.resource, ev.checked_at, ev.at   -- read-only
--   evidence.check(ev, "hsm1", { nic_ip = "10.2.1.4", max_age = 900 })   -- the HSM delete's rule does this
--   evidence.cleared(clearance, hsm_serial, {partition serial...})   -- a last-copy clearance (dhsm.client.copies)
--
-- An evidence object holds what one LunaSH session read from the device
-- itself: `hsm show` said zeroized, with this HSM serial, and `network show`
-- gave this address for the interface carrying the session (not any
-- interface's: another's could have been set to any address).  It also holds the session's label (appliance),
-- the address it reached (host) and the resource the operator's inventory
-- says it stands for.  A delete accepts it only through Azure's own view:
-- the HSM resource's NIC private IP must be one of the addresses the
-- appliance reported (and so must the session's address, when that is an
-- IP literal other than loopback: a tunnel's 127.0.0.1 says nothing), and
-- the inventory's resource must be the one deleted.  A name the caller gives
-- a session, an inventory entry edited before the reading or a made-up
-- reading therefore cannot stand for another resource.  Evidence is made
-- by one function, handed once to dhsm.luna when it loads (which dhsm does
-- before any runbook runs); only objects it made count.
--
-- What this protects against: mistakes and misuse through dhsm's API - a
-- hand-built table ({zeroized = true}), evidence decoded from JSON or
-- replayed from a run journal (plain tables), hsm1's evidence passed to
-- delete hsm2, a session named after another appliance, evidence older
-- than max_age (the appliance may have been re-initialised since), fields
-- edited after the reading.
-- What it does not protect against: code that means to forge (the debug
-- library reaches any upvalue), an appliance that lies about its state or
-- its addresses, two Azure HSMs whose NICs have the same private IP in
-- different virtual networks while the operator's path reaches the wrong
-- one.  It is a guard rail, not an authentication.
local dhsm = require "dhsm"
local schema = require "dhsm.schema"
local sys = require "dhsm.sys"

local M = {}

M.MAX_AGE = 15 * 60          -- seconds a reading stays good for a delete, by default
M.MAX_AGE_LIMIT = 60 * 60    -- the most a caller may allow (max_age=): an hour

local genuine = setmetatable({}, { __mode = "k" })   -- evidence object -> its fields

local function refuse(code, fmt, ...)
  dhsm.error { kind = "safety", code = code, message = fmt:format(...) }
end

local Evidence = {
  __metatable = "dhsm.evidence",
  __newindex = function() refuse("EvidenceReadOnly", "zeroization evidence cannot be changed; read it again") end,
  __index = function(self, k) return genuine[self][k] end,
  __pairs = function(self) return next, genuine[self], nil end,
  __tostring = function(self)
    local f = genuine[self]
    return ("zeroization evidence: appliance %s (serial %s, %s) for resource %s, read %s"):format(
      f.appliance, tostring(f.serial), table.concat(f.addresses or {}, " "), f.resource, f.checked_at)
  end,
}

-- zeroized(show, addresses, {appliance=, host=, interface=, resource=, serial=})
-- -> evidence.  show: the parsed `hsm show` of one session; addresses: what
-- `network show` of that session gives for the interface carrying it;
-- serial, when the inventory knows it, must be the one the appliance
-- reports.  Handed to dhsm.luna only (issuer below).
local function zeroized(show, addresses, o)
  if not show.zeroized then
    refuse("NotZeroized", "%s is not zeroized (%s login attempts left before zeroization)",
      o.appliance, tostring(show.attempts_left))
  end
  if type(show.serial) ~= "string" or show.serial == "" then
    refuse("DeviceUnknown", "%s reports no HSM serial: its zeroized state cannot be tied to a device", o.appliance)
  end
  if o.serial and show.serial ~= o.serial then
    refuse("SerialMismatch", "%s reports serial %s, the inventory says %s: this is not the appliance the "
      .. "inventory describes, so its state proves nothing about resource %s", o.appliance, tostring(show.serial),
      o.serial, o.resource)
  end
  if #addresses == 0 then
    refuse("DeviceUnknown", "%s reports no address for the interface carrying this session (network show%s): its "
      .. "zeroized state cannot be tied to an Azure resource", o.appliance, o.interface and (", " .. o.interface) or "")
  end
  local ev = setmetatable({}, Evidence)
  genuine[ev] = { zeroized = true, appliance = o.appliance, serial = show.serial, addresses = addresses,
    interface = o.interface, host = o.host, resource = o.resource, at = sys.time(), checked_at = sys.rfc3339() }
  return ev
end

local issued = false

-- issuer() -> zeroized: the function that makes evidence, once per
-- process.  dhsm.luna takes it when it loads; any later caller is refused.
function M.issuer()
  if issued then
    refuse("EvidenceIssuer", "zeroization evidence is made by dhsm.luna from the device's own readings "
      .. "(session:zeroized_evidence()), not by hand")
  end
  issued = true
  return zeroized
end

-- planned(appliance, resource) -> evidence that stands for a zeroization
-- a --check run only planned (nothing was sent, so nothing is there to
-- read).  It lets the plan go on to the delete and show that request;
-- check() refuses it outside check mode, so it can never delete anything.
function M.planned(appliance, resource)
  local ev = setmetatable({}, Evidence)
  genuine[ev] = { planned = true, appliance = appliance, resource = resource, at = sys.time(),
    checked_at = "planned (check mode)" }
  return ev
end

function M.is(v)
  return genuine[v] ~= nil
end

-- A plain copy, for a journal or a report (it is no longer evidence).
function M.describe(ev)
  local out = {}
  for k, v in pairs(genuine[ev] or {}) do out[k] = v end
  return out
end

local function is_ip_literal(host)
  return type(host) == "string" and (host:match("^%d+%.%d+%.%d+%.%d+$") ~= nil or host:find(":", 1, true) ~= nil)
end

local function is_loopback(host)
  return host:match("^127%.") ~= nil or host:lower():match("^::ffff:127%.") ~= nil or host == "::1"
end

local function listed(list, value)
  for _, v in ipairs(list or {}) do
    if v == value then return true end
  end
  return false
end

-- The age a caller allows: finite, positive, at most MAX_AGE_LIMIT;
-- anything but the default is audited.
local function allowed_age(max_age, resource)
  if max_age == nil then return M.MAX_AGE end
  if math.type(max_age) == nil or max_age ~= max_age or max_age <= 0 or max_age > M.MAX_AGE_LIMIT then
    dhsm.error { kind = "usage", message = ("evidence max_age: expected seconds, more than 0 and at most %d, got %s")
      :format(M.MAX_AGE_LIMIT, tostring(max_age)) }
  end
  if max_age ~= M.MAX_AGE then
    dhsm.audit.write { action = "safety.override", target = resource, outcome = "evidence_max_age", max_age = max_age }
  end
  return max_age
end

-- check(ev, resource, {nic_ip=, max_age=, now=}): raises a safety error
-- unless ev is genuine evidence of the appliance standing for `resource`
-- - whose NIC private IP (nic_ip, read from Azure) the appliance reported
-- - and recent.
function M.check(ev, resource, opts)
  opts = schema.argument("evidence.check", "opts", opts, { type = "table" }) or {}
  local max_age = allowed_age(opts.max_age, resource)
  local f = genuine[ev]
  if not f then
    refuse("EvidenceNotGenuine", "not deleting HSM %s: the zeroization evidence given is %s, not a reading "
      .. "dhsm.luna made (session:zeroized_evidence()); a hand-built or replayed table proves nothing",
      resource, type(ev) == "table" and "a plain table" or type(ev))
  end
  if f.planned and not require("dhsm.act").checking() then
    refuse("EvidencePlanned", "not deleting HSM %s: the zeroization of appliance %s was only planned (check mode)",
      resource, f.appliance)
  end
  if f.resource ~= resource then
    refuse("EvidenceForOtherHsm", "not deleting HSM %s: the zeroization evidence is of appliance %s (serial %s), "
      .. "which stands for resource %s", resource, f.appliance, tostring(f.serial), tostring(f.resource))
  end
  if f.planned then return f end          -- a plan's stand-in: nothing was read to compare with Azure
  if type(opts.nic_ip) ~= "string" or opts.nic_ip == "" then
    refuse("EvidenceUnbound", "not deleting HSM %s: its NIC's private IP cannot be read from Azure, so nothing ties "
      .. "appliance %s's zeroized state to this resource", resource, f.appliance)
  end
  if not listed(f.addresses, opts.nic_ip) then
    refuse("EvidenceForOtherHsm", "not deleting HSM %s: its NIC's private IP is %s, but the zeroized appliance %s "
      .. "(serial %s) reports %s: it is another appliance's state", resource, opts.nic_ip, f.appliance,
      tostring(f.serial), table.concat(f.addresses, ", "))
  end
  if is_ip_literal(f.host) and not is_loopback(f.host) and not listed(f.addresses, f.host) then
    refuse("EvidenceForOtherHsm", "not deleting HSM %s: the session reached %s, which is not one of the zeroized "
      .. "appliance's addresses (%s)", resource, f.host, table.concat(f.addresses, ", "))
  end
  local age = (opts.now or sys.time()) - f.at
  if age > max_age then
    refuse("EvidenceStale", "not deleting HSM %s: appliance %s was seen zeroized at %s, %d s ago, more than "
      .. "the %d s allowed; read it again (it may have been initialised since)", resource, f.appliance,
      f.checked_at, math.floor(age), max_age)
  end
  return f
end

---------------------------------------------------------------------------
-- last-copy clearances

-- A clearance is dhsm.client.copies's word, read now, that destroying the
-- key material of the appliance with this HSM serial loses no object but
-- those found elsewhere or named by the operator.  dhsm.luna's rule for a
-- command that destroys key material (hsm zeroize, partition delete, hsm
-- init of a used HSM, a zeroization by failed logins) asks for one.  It is
-- made by one function, claimed once: dhsm.client.copies takes it when it
-- loads (a caller that claims it first makes that module fail to load,
-- loudly); only objects it made count, for CLEARANCE_MAX_AGE seconds.
M.CLEARANCE_MAX_AGE = 15 * 60

local cleared = setmetatable({}, { __mode = "k" })     -- clearance -> its fields
local Clearance = {
  __metatable = "dhsm.evidence.clearance",
  __newindex = function() refuse("ClearanceReadOnly", "a last-copy clearance cannot be changed; check again") end,
  __index = function(self, k) return cleared[self][k] end,
  __tostring = function(self)
    local f = cleared[self]
    return ("last-copy clearance: HSM serial %s, %d object(s) accounted for, read %s"):format(f.serial, f.objects,
      f.checked_at)
  end,
}

local clearance_issued = false

-- clearance_issuer() -> make(serial, objects, partitions): once per
-- process; partitions: {serial = true} of the partitions it read.
function M.clearance_issuer()
  if clearance_issued then
    refuse("ClearanceIssuer", "last-copy clearances are made by dhsm.client.copies from the objects it read, not by hand")
  end
  clearance_issued = true
  return function(serial, objects, partitions)
    local c = setmetatable({}, Clearance)
    cleared[c] = { serial = serial, objects = objects, partitions = partitions, at = sys.time(),
      checked_at = sys.rfc3339() }
    return c
  end
end

-- cleared(c, serial, partitions [, now]) -> whether c is a clearance made
-- for the appliance of this HSM serial, young enough, that read each of
-- `partitions` ({serial, ...}: those holding objects now)
function M.cleared(c, serial, partitions, now)
  local f = cleared[c]
  if not (f ~= nil and f.serial == serial and (now or sys.time()) - f.at <= M.CLEARANCE_MAX_AGE) then return false end
  for _, sn in ipairs(partitions) do
    if not f.partitions[sn] then return false end
  end
  return true
end

return M
