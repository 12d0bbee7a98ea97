-- dhsm.luna.guard: the failed-login rule (troubleshooting guide, "Failed Logins").
--
--   HSM SO 3 -> HSM zeroized; Partition SO 10 -> partition zeroized;
--   Auditor 10 -> locked 10 minutes; Crypto Officer 10 -> locked out
--   (for good when HSM policy 15 is 0).
--
-- Before a login: read what the device says is left, take the smaller of
-- that and what our own persistent count allows, and refuse the attempt
-- that could be the last one unless the caller passes
-- allow_destructive_login (audited).  After it: record the outcome.  A
-- failed login is never retried by dhsm.  The counts live in
-- $XDG_STATE_HOME/dhsm/logins.json, per appliance and role.
local cjson = require "cjson"
local dhsm = require "dhsm"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

M.THRESHOLDS = { so = 3, pso = 10, audit = 10, co = 10 }
M.ROLE_NAMES = { so = "HSM SO (admin)", pso = "Partition SO", audit = "Auditor", co = "Crypto Officer" }
M.CONSEQUENCES = {
  so = "the HSM is zeroized: every partition and key is gone",
  pso = "the partition is zeroized",
  audit = "the Auditor role is locked for 10 minutes",
  co = "the Crypto Officer is locked out (for good, with the partition's keys, when HSM policy 15 is 0)",
}

local function path()
  local state = os.getenv("XDG_STATE_HOME")
  if not state or state == "" then state = (os.getenv("HOME") or ".") .. "/.local/state" end
  return state .. "/dhsm/logins.json"
end

local function load()
  local data = util.read_file(path())
  local ok, t = pcall(cjson.decode, data or "{}")
  return ok and type(t) == "table" and t or {}
end

local function save(t)
  local dir = path():match("^(.*)/[^/]*$")
  sys.mkdir(dir, tonumber("700", 8))
  local ok, err = sys.write_file(path(), cjson.encode(t), tonumber("600", 8))
  if not ok then dhsm.error { kind = "audit", message = "cannot keep the failed-login count: " .. tostring(err) } end
end

local function check_role(role)
  if not M.THRESHOLDS[role] then
    dhsm.error { kind = "usage", message = ("unknown role %q (so, pso, audit or co)"):format(tostring(role)) }
  end
end

function M.failures(key, role)
  return (load()[key .. "/" .. role] or {}).failures or 0
end

-- attempts_left(key, role, device_left) -> what may safely be assumed left
function M.attempts_left(key, role, device_left)
  check_role(role)
  local threshold = M.THRESHOLDS[role]
  local by_count = threshold - M.failures(key, role)
  if device_left == threshold and by_count < threshold then
    M.forget(key, role)                        -- the device shows a clean slate (re-initialised)
    by_count = threshold
  end
  if device_left then return math.min(device_left, by_count) end
  return by_count
end

-- check(key, role, device_left, opts) -> attempts left; raises "safety"
-- when this attempt could be the last before the role's consequence.
function M.check(key, role, device_left, opts)
  opts = opts or {}
  local left = M.attempts_left(key, role, device_left)
  local what = ("%s login on %s"):format(M.ROLE_NAMES[role], key)
  if left <= 0 then
    dhsm.error { kind = "safety", code = "NoLoginAttemptsLeft",
      message = ("refusing the %s: no attempt is left (%s)"):format(what, M.CONSEQUENCES[role]) }
  end
  if left == 1 then
    if not opts.allow_destructive_login then
      dhsm.error { kind = "safety", code = "LastLoginAttempt",
        message = ("refusing the %s: it would be the last attempt; one more failure and %s. "
          .. "Make sure of the password, then pass allow_destructive_login=true"):format(what, M.CONSEQUENCES[role]) }
    end
    dhsm.audit.write { action = "safety.override", target = key, outcome = "allow_destructive_login", role = role }
  end
  return left
end

-- record(key, role, ok): after the attempt
function M.record(key, role, ok)
  check_role(role)
  local t = load()
  local k = key .. "/" .. role
  if ok then
    t[k] = nil
  else
    t[k] = { failures = ((t[k] or {}).failures or 0) + 1, updated = sys.rfc3339() }
  end
  save(t)
  dhsm.audit.write { action = "login." .. role, target = key, outcome = ok and "ok" or "failed",
    failures = ok and 0 or t[k].failures }
end

function M.forget(key, role)
  local t = load()
  t[key .. "/" .. role] = nil
  save(t)
end

return M
