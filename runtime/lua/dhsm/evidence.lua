-- dhsm.evidence: proof that an appliance was seen zeroized, which
-- dhsm.azure.hsm.delete asks for before it deletes the HSM resource.
--
--   local ev = session:zeroized_evidence(inventory:hsm("hsm1"))   -- dhsm.luna makes it
--   ev.appliance, ev.serial, ev.resource, ev.checked_at, ev.at     -- read-only
--   evidence.check(ev, "hsm1", { max_age = 900 })                  -- hsm.delete does this
--
-- An evidence object names the appliance (inventory name and serial), the
-- Azure resource it stands for (the inventory entry's `resource`) and when
-- `hsm show` said zeroized.  It is a read-only object registered here when
-- made; only registered objects count.
--
-- What this protects against: mistakes.  A hand-built table
-- ({zeroized = true}), evidence decoded from JSON or replayed from a run
-- journal (plain tables), hsm1's evidence passed to delete hsm2, evidence
-- older than max_age (the appliance may have been re-initialised since),
-- fields edited after the reading.
-- What it does not protect against: code that means to forge (it can call
-- M.zeroized with a made-up reading, or use the debug library), an
-- appliance that lies, an inventory that maps an appliance to the wrong
-- resource.  It is a guard rail, not an authentication.
local dhsm = require "dhsm"
local sys = require "dhsm.sys"

local M = {}

M.MAX_AGE = 15 * 60          -- seconds a reading stays good for a delete

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
    return ("zeroization evidence: appliance %s (serial %s) for resource %s, read %s"):format(
      f.appliance, tostring(f.serial), f.resource, f.checked_at)
  end,
}

-- zeroized(show, {appliance=, resource=, serial=}) -> evidence.  show is
-- the parsed `hsm show` (dhsm.luna.parse); serial, when the inventory
-- knows it, must be the one the appliance reports.  For dhsm.luna.
function M.zeroized(show, o)
  if not show.zeroized then
    refuse("NotZeroized", "%s is not zeroized (%s login attempts left before zeroization)",
      o.appliance, tostring(show.attempts_left))
  end
  if o.serial and show.serial ~= o.serial then
    refuse("SerialMismatch", "%s reports serial %s, the inventory says %s: this is not the appliance the "
      .. "inventory describes, so its state proves nothing about resource %s", o.appliance, tostring(show.serial),
      o.serial, o.resource)
  end
  local ev = setmetatable({}, Evidence)
  genuine[ev] = { zeroized = true, appliance = o.appliance, serial = show.serial, resource = o.resource,
    at = sys.time(), checked_at = sys.rfc3339() }
  return ev
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

-- check(ev, resource, {max_age=, now=}): raises a safety error unless ev
-- is genuine evidence, of the appliance standing for `resource`, recent.
function M.check(ev, resource, opts)
  opts = opts or {}
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
  local max_age = opts.max_age or M.MAX_AGE
  local age = (opts.now or sys.time()) - f.at
  if age > max_age then
    refuse("EvidenceStale", "not deleting HSM %s: appliance %s was seen zeroized at %s, %d s ago, more than "
      .. "the %d s allowed; read it again (it may have been initialised since)", resource, f.appliance,
      f.checked_at, math.floor(age), max_age)
  end
  return f
end

return M
