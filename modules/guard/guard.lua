-- dhsm.guard: the failed-login rule (troubleshooting guide, "Failed Logins").
--
--   HSM SO 3 -> HSM zeroized; Partition SO 10 -> partition zeroized;
--   Auditor 10 -> locked 10 minutes; Crypto Officer 10 -> locked out
--   (for good when HSM policy 15 is 0).
--
--   guard.attempt(key, role, opts, { device_left = fn, try = fn }) -> what try returned
--   guard.check(key, role, device_left, opts); guard.record(key, role, ok [, device_left])
--   guard.failures(key, role); guard.counts(); guard.attempts_left(key, role, device_left); guard.forget(key, role)
--   guard.zeroize_by_failures(key, "so", {zeroize=true, serial=}, {read=, fail=})  -- deliberate, audited
--
-- A login is one critical section per appliance (or token) and role,
-- among the tasks of this process and among dhsm processes (sys.lock):
-- read what the device says is left, take the smaller of that and what our
-- own persistent count allows, refuse the attempt that could be the last
-- one unless the caller passes allow_destructive_login (audited), make the
-- attempt, read the device again and record the outcome.  Two logins that
-- both read "2 left" and both fail are therefore impossible.  A failed
-- login is never retried by dhsm.  The counts live in
-- $XDG_STATE_HOME/dhsm/logins.json, per key and role.
--
-- Locks: one per key and role (logins.locks/KEY.ROLE.lock) held for the
-- whole attempt, so logins to different appliances do not wait on each
-- other's SSH round trips; and one for logins.json itself, held only for a
-- read-modify-write, so records for different keys are never lost.  The
-- order is always key lock, then file lock: no deadlock.
local act = require "dhsm.act"
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
-- How long a login waits for another one to the same key and role.
M.LOCK_TIMEOUT = 120

local function dir()
  local state = os.getenv("XDG_STATE_HOME")
  if not state or state == "" then state = (os.getenv("HOME") or ".") .. "/.local/state" end
  return state .. "/dhsm"
end

local function path()
  return dir() .. "/logins.json"
end

local function check_role(role)
  if not M.THRESHOLDS[role] then
    dhsm.error { kind = "usage", message = ("unknown role %q (so, pso, audit or co)"):format(tostring(role)) }
  end
end

-- A count we cannot read is not "no failures": refuse rather than guess.
local function load()
  local data = util.read_file(path())
  if data == nil then return {} end
  local ok, t = pcall(cjson.decode, data)
  if not ok or type(t) ~= "table" then
    dhsm.error { kind = "safety", code = "LoginCountUnreadable",
      message = ("the failed-login counts in %s cannot be read; no login is attempted until it is repaired "
        .. "or removed (removing it forgets every count: check each device's attempts left first)"):format(path()) }
  end
  return t
end

local function save(t)
  local ok, err = sys.write_file(path(), cjson.encode(t), tonumber("600", 8))
  if not ok then dhsm.error { kind = "audit", message = "cannot keep the failed-login count: " .. tostring(err) } end
end

-- lock(file, what) -> a held lock, or a safety error naming the holder
local function lock(file, what)
  sys.mkdir(file:match("^(.*)/[^/]*$"), tonumber("700", 8))
  local lk, holder = sys.lock(file, M.LOCK_TIMEOUT)
  if not lk then
    dhsm.error { kind = "safety", code = "LoginBusy", retryable = true,
      message = ("%s: another login holds %s (pid %s) after %d s; not attempting"):format(
        what, file, tostring(holder), M.LOCK_TIMEOUT) }
  end
  return lk
end

-- update(fn): fn(counts) changes the table; load and save under the file lock
local function update(fn)
  local lk <close> = lock(path() .. ".lock", "the failed-login counts")
  local t = load()
  local r = fn(t)
  save(t)
  return r
end

local function entry(key, role)
  return key .. "/" .. role
end

function M.failures(key, role)
  return (load()[entry(key, role)] or {}).failures or 0
end

-- counts() -> {{key=, role=, failures=, device_left=, updated=}, ...}: every
-- failed-login count kept, sorted (what a health check reports)
function M.counts()
  local out = {}
  for k, v in pairs(load()) do
    local key, role = k:match("^(.*)/(%w+)$")
    if key and type(v) == "table" then
      out[#out + 1] = { key = key, role = role, failures = v.failures or 0, device_left = v.device_left,
        updated = v.updated }
    end
  end
  table.sort(out, function(a, b) return a.key .. "/" .. a.role < b.key .. "/" .. b.role end)
  return out
end

-- attempts_left(key, role, device_left) -> what may safely be assumed left
function M.attempts_left(key, role, device_left)
  check_role(role)
  local threshold = M.THRESHOLDS[role]
  local by_count = threshold - M.failures(key, role)
  if device_left == threshold and by_count < threshold then
    -- the device shows a clean slate (re-initialised); a plan only reads it so
    if not act.checking() then M.forget(key, role) end
    by_count = threshold
  end
  if device_left then return math.min(device_left, by_count) end
  return by_count
end

-- check(key, role, device_left, opts) -> attempts left; raises "safety"
-- when this attempt could be the last before the role's consequence.
-- Alone it decides nothing for a login that is not made at once: logins
-- go through attempt(), which holds the key's lock from check to record.
function M.check(key, role, device_left, opts)
  opts = opts or {}
  local left = M.attempts_left(key, role, device_left)
  local what = ("%s login on %s"):format(M.ROLE_NAMES[role], key)
  -- a refused login is a refused change: a plan counts it even when a body catches it (dhsm.act)
  if left <= 0 then
    act.refusal { code = "NoLoginAttemptsLeft",
      message = ("refusing the %s: no attempt is left (%s)"):format(what, M.CONSEQUENCES[role]) }
  end
  if left == 1 then
    if not opts.allow_destructive_login then
      act.refusal { code = "LastLoginAttempt",
        message = ("refusing the %s: it would be the last attempt; one more failure and %s. "
          .. "Make sure of the password, then pass allow_destructive_login=true"):format(what, M.CONSEQUENCES[role]) }
    end
    dhsm.audit.write { action = "safety.override", target = key, outcome = "allow_destructive_login", role = role }
  end
  return left
end

-- record(key, role, ok [, device_left]): after the attempt.  A failure
-- counts one more than we knew, or what the device says, whichever is more.
function M.record(key, role, ok, device_left)
  check_role(role)
  local failures = update(function(t)
    local k = entry(key, role)
    if ok then
      t[k] = nil
      return 0
    end
    local n = ((t[k] or {}).failures or 0) + 1
    if device_left then n = math.max(n, M.THRESHOLDS[role] - device_left) end
    t[k] = { failures = n, device_left = device_left, updated = sys.rfc3339() }
    return n
  end)
  dhsm.audit.write { action = "login." .. role, target = key, outcome = ok and "ok" or "failed",
    failures = failures, device_left = device_left }
end

-- forget(key, role): the count starts again (audited: it lifts what the
-- count alone protects, the Auditor's and the partition roles')
function M.forget(key, role)
  check_role(role)
  update(function(t) t[entry(key, role)] = nil end)
  dhsm.audit.write { action = "login." .. role, target = key, outcome = "count forgotten" }
end

-- The lock file of one key and role: a name safe for any label.
local function key_lock(key, role)
  return ("%s/logins.locks/%s.%s.lock"):format(dir(), key:gsub("[^%w%-_.#]", "_"), role)
end

-- attempt(key, role, opts, steps) -> what steps.try returned
--   steps.device_left() -> attempts the device says are left, or nil
--   steps.try() -> outcome, result: outcome true (logged in), false (wrong
--   credentials: counted) or nil (no attempt was made, as in check mode)
-- An error out of try leaves the attempt's outcome unknown: counted as a
-- failure, which errs on the side of refusing sooner.
function M.attempt(key, role, opts, steps)
  check_role(role)
  local lk <close> = lock(key_lock(key, role), ("the %s login on %s"):format(M.ROLE_NAMES[role], key))
  M.check(key, role, steps.device_left(), opts)
  local ran, outcome, result = pcall(steps.try)
  if ran and outcome == nil then return result end
  if ran and outcome then
    M.record(key, role, true)
    return result
  end
  local read, left = pcall(steps.device_left)     -- what the failure cost, from the device
  M.record(key, role, false, read and left or nil)
  if not ran then error(outcome, 0) end
  return result
end

local failed_logins

-- zeroize_by_failures(key, role, opts, steps) -> {attempts=, zeroized=}
-- The guide's quickest way to zeroize an HSM being given back: wrong HSM
-- SO logins until the device zeroizes itself.  It is the one deliberate
-- spending of the attempts everything above protects, so it is a path of
-- its own, not attempt() in a loop:
--   opts.zeroize = true    the caller means it (audited as an override first)
--   opts.serial            the appliance meant, as the operator was shown it;
--                          any other device behind the session is refused
--   opts.target            the name the operator confirms (the appliance's)
--   steps.read() -> {serial=, zeroized=, attempts_left=}   the device, now
--   steps.fail() -> true when the device rejected the login (a wrong password)
-- One critical section (the key's lock) holds the whole sequence.  Each
-- attempt is recorded and followed by a fresh reading; the sequence stops
-- when the device says zeroized, and with an error when an attempt did
-- not lower the device's count or more attempts than the threshold would
-- be needed (whatever answers is not counting as an HSM does).  The wrong
-- logins are one change through the gate (dhsm.act): confirmed as `hsm
-- zeroize` is; in check mode the readings and refusals happen and no login
-- is sent.
function M.zeroize_by_failures(key, role, opts, steps)
  if role ~= "so" then
    dhsm.error { kind = "usage", message = ("zeroize_by_failures: only the HSM SO's failures zeroize the HSM, not %s's")
      :format(tostring(role)) }
  end
  if not (opts and opts.zeroize == true) then
    dhsm.error { kind = "safety", code = "ZeroizeNotAsked",
      message = ("refusing wrong logins on %s: they zeroize the HSM; pass zeroize=true to mean it"):format(key) }
  end
  if type(opts.serial) ~= "string" or opts.serial == "" then
    dhsm.error { kind = "usage", message = "zeroize_by_failures: serial= (the appliance meant) is required" }
  end
  local lk <close> = lock(key_lock(key, role), ("zeroizing %s by failed logins"):format(key))
  local h = steps.read()
  if h.serial ~= opts.serial then
    dhsm.error { kind = "safety", code = "SerialMismatch",
      message = ("refusing wrong logins on %s: it reports serial %s, not %s, the appliance named for zeroization")
        :format(key, tostring(h.serial), opts.serial) }
  end
  if h.zeroized then return { attempts = 0, zeroized = true } end
  local left = tonumber(h.attempts_left) or M.THRESHOLDS[role]
  -- the gate (dhsm.act) inside the key's lock: no other login to this HSM
  -- while the operator confirms, and check mode describes it here
  return act.change({ kind = "luna", action = "zeroize_by_failed_logins", target = opts.target or key,
    destructive = true, where = key, fields = { serial = h.serial, device_left = left, role = role },
    what = ("send %d wrong HSM SO login(s) to %s (serial %s) until it zeroizes"):format(left, key, h.serial),
    planned = { attempts = 0, zeroized = false, planned = left },
    outcome = function(r) return r.zeroized and "zeroized" or "not zeroized", { attempts = r.attempts } end,
  }, function() return failed_logins(key, role, opts, steps, left) end)
end

-- The zeroization's wrong logins, each recorded and followed by a reading.
function failed_logins(key, role, opts, steps, left)
  dhsm.audit.write { action = "safety.override", target = key, outcome = "zeroize_by_failed_logins", role = role,
    serial = opts.serial, device_left = left }
  for n = 1, M.THRESHOLDS[role] do
    local rejected = steps.fail()
    local after = steps.read()
    local now_left = tonumber(after.attempts_left)      -- nil when the device no longer says
    M.record(key, role, false, after.zeroized and 0 or now_left)
    if after.zeroized then return { attempts = n, zeroized = true } end
    if not rejected or after.serial ~= opts.serial or not (now_left and now_left < left) then
      dhsm.error { kind = "luna", code = "NotCounting",
        message = ("stopped zeroizing %s by failed logins after %d attempt(s): the device %s; zeroize it with "
          .. "`hsm zeroize` instead"):format(key, n, not rejected and "accepted a login" or
            after.serial ~= opts.serial and "now reports another serial" or "did not count the failure") }
    end
    left = now_left
  end
  dhsm.error { kind = "luna", code = "NotZeroized",
    message = ("%s is not zeroized after %d failed HSM SO logins"):format(key, M.THRESHOLDS[role]) }
end

return util.sealed(M)
