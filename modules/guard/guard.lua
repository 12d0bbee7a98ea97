-- dhsm.guard: the failed-login rule (troubleshooting guide, "Failed Logins").
--
--   HSM SO 3 -> HSM zeroized; Partition SO 10 -> partition zeroized;
--   Auditor 10 -> locked 10 minutes; Crypto Officer 10 -> locked out
--   (for good when HSM policy 15 is 0).
--
--   local hsm = guard.device("hsm", serial, "hsm1")         -- identity from what the device reports
--   local part = guard.device("partition", serial, "par1")
--   guard.attempt(hsm, role, opts, { device_left = fn(dev), try = fn })   -- -> what try returned
--   guard.attempt({m1, m2}, "co", opts, steps)   -- an HA group's login: every member at once
--   guard.check(dev, role, device_left, opts); guard.record(dev, role, ok [, device_left])
--   guard.failures(dev, role); guard.counts(); guard.attempts_left(dev, role, device_left); guard.forget(dev, role)
--   guard.zeroize_by_failures(hsm, "so", {zeroize=true, serial=}, {read=, fail=})  -- deliberate, audited
--   guard.dir()   -- the one folder of counts and locks on this host
--
-- Who a login is to is what the device says it is: the HSM serial for the
-- HSM roles (HSM SO, Auditor), the Luna partition serial for the partition
-- roles - the same key whether the login goes over LunaSH, LunaCM or
-- PKCS#11, and whatever name the caller gave the session (names are labels
-- for messages only).  A device that does not say its serial is not
-- guessed at: no login.  A login through an HA group's virtual slot is a
-- login on every member: attempt() is given them all, takes every member's
-- lock (in key order, so two such logins never deadlock), refuses when any
-- member is at its last attempt, and records the outcome on each.
--
-- A login is one critical section per device and role, among the tasks of
-- this process and among dhsm processes on this host (sys.lock): read what
-- the device says is left, take the smaller of that and what our own
-- persistent count allows, refuse the attempt that could be the last one
-- unless the caller passes allow_destructive_login (audited), make the
-- attempt, read the device again and record the outcome.  Two logins that
-- both read "2 left" and both fail are therefore impossible on one host.
-- A failed login is never retried by dhsm.
--
-- One guard per host: the counts (logins.json) and locks live in one
-- system folder, /var/lib/dhsm (group dhsm, setgid: docs/safety.md says how
-- to make it and add an operator), whatever the user's state folder.
-- $DHSM_GUARD_DIR points it elsewhere - for tests; it splits the guard from
-- every process that does not share the variable.  Two jump hosts are not
-- protected from each other: the device's own counter is the only shared
-- truth, which is why it is read again before every attempt.
--
-- A read login (a census's CO login) is made in check mode too: its
-- failures are kept beside the locks (locks/check-failures.json, the one
-- place check mode writes) until the next record folds them in.
--
-- Locks: one per device and role (locks/KEY.ROLE.lock) held for the whole
-- attempt, so logins to different devices do not wait on each other's
-- round trips; and one for logins.json itself, held only for a
-- read-modify-write, so records for different devices are never lost.  The
-- order is always device locks (sorted), then the file lock: no deadlock.
local act = require "dhsm.act"
local cjson = require "cjson"
local dhsm = require "dhsm"
local paths = require "dhsm.paths"
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

local SHARED = tonumber("660", 8)      -- counts and locks: for every operator of the folder's group

-- dir() -> the folder of counts and locks, made when $DHSM_GUARD_DIR names
-- one that is missing; the system folder is made by an administrator
-- (make install), never by a login, which would make it the user's own.
function M.dir()
  local dir = paths.guard_dir()
  local st = sys.stat(dir)
  if st and st.type == "dir" then return dir end
  if dir ~= paths.SYSTEM_GUARD_DIR and not st then
    sys.mkdir(dir, tonumber("700", 8))
    st = sys.stat(dir)
    if st and st.type == "dir" then return dir end
  end
  -- the remedy for what is there: something else in its place, or no folder at all
  local remedy = st and ("move %s away (it is no folder of dhsm's) and log in again"):format(dir)
    or ("make it once per host as root: groupadd -f dhsm && install -d -m 2770 -g dhsm %s, then add each "
      .. "operator: usermod -aG dhsm USER (docs/safety.md)"):format(dir)
  dhsm.error { kind = "safety", code = "GuardFolderMissing",
    message = ("the failed-login guard's folder %s %s; no login is attempted without it: %s"):format(dir,
      st and "is not a folder" or "does not exist", remedy) }
end

local function path()
  return M.dir() .. "/logins.json"
end

local function check_role(role)
  if not M.THRESHOLDS[role] then
    dhsm.error { kind = "usage", message = ("unknown role %q (so, pso, audit or co)"):format(tostring(role)) }
  end
end

local KINDS = { hsm = "HSM", partition = "partition" }

-- device(kind, serial [, label]) -> {key=, serial=, kind=, label=}: the
-- guard's identity of an HSM or a partition, from the serial the device
-- itself reported.  No serial, no identity: a safety error, not a login
-- counted under a name.
function M.device(kind, serial, label)
  if not KINDS[kind] then
    dhsm.error { kind = "usage", message = ("guard.device: kind %q is not hsm or partition"):format(tostring(kind)) }
  end
  local sn = type(serial) == "string" and serial:match("^%s*([%w%-]+)%s*$")
  if not sn then
    act.refusal { code = "DeviceUnknown",
      message = ("cannot tell which %s %s is: it reported no serial number (%s); no login is attempted on a "
        .. "device the failed-login count cannot be kept for"):format(KINDS[kind], tostring(label or "this"),
        serial == nil and "none" or ("%q"):format(tostring(serial))) }
  end
  return { key = kind .. ":" .. sn, serial = sn, kind = kind,
    label = label and ("%s (%s %s)"):format(label, KINDS[kind], sn) or (KINDS[kind] .. " " .. sn) }
end

-- A device's key and label: what the counts are kept under.
local function key_of(dev)
  if type(dev) == "table" and type(dev.key) == "string" then return dev.key, dev.label end
  dhsm.error { kind = "usage", message = ("dhsm.guard: expected a device (guard.device(kind, serial)), got %s")
    :format(type(dev) == "string" and ("%q"):format(dev) or type(dev)) }
end

-- A count we cannot read is not "no failures": refuse rather than guess.
local function read_counts(file)
  local data = util.read_file(file)
  if data == nil then return {} end
  local ok, t = pcall(cjson.decode, data)
  if not ok or type(t) ~= "table" then
    dhsm.error { kind = "safety", code = "LoginCountUnreadable",
      message = ("the failed-login counts in %s cannot be read; no login is attempted until it is repaired "
        .. "or removed (removing it forgets every count: check each device's attempts left first)"):format(file) }
  end
  return t
end

-- Failures met by a read login in check mode (dhsm.pkcs11's read_only, a
-- census's): check mode refuses writes to logins.json - clearing a count
-- is a change - but not to the lock folder, dhsm's own.  A count there only
-- grows; the next record outside check mode folds it into logins.json.
local function pending_path()
  return M.dir() .. "/locks/check-failures.json"
end

-- logins.json with the check-mode failures folded in (the larger count wins)
local function load()
  local t = read_counts(path())
  for k, v in pairs(read_counts(pending_path())) do
    if type(v) == "table" and (v.failures or 0) > ((t[k] or {}).failures or 0) then t[k] = v end
  end
  return t
end

local function save(t)
  local ok, err = sys.write_file(path(), cjson.encode(t), SHARED)
  if not ok then dhsm.error { kind = "audit", message = "cannot keep the failed-login count: " .. tostring(err) } end
  os.remove(pending_path())              -- folded in above
end

-- lock(file, what) -> a held lock, or a safety error naming the holder
local function lock(file, what)
  sys.mkdir(file:match("^(.*)/[^/]*$"), tonumber("2770", 8))
  local lk, holder = sys.lock(file, M.LOCK_TIMEOUT, SHARED)
  if not lk and math.type(holder) ~= "integer" and holder ~= "unknown" then
    dhsm.error { kind = "safety", code = "GuardFolderUnusable",
      message = ("%s: cannot take the guard's lock (%s); not attempting. The folder must be writable by every "
        .. "operator: its group (dhsm) and mode 2770 (docs/safety.md)"):format(what, tostring(holder)) }
  end
  if not lk then
    dhsm.error { kind = "safety", code = "LoginBusy", retryable = true,
      message = ("%s: another login holds %s (pid %s) after %d s; not attempting"):format(
        what, file, tostring(holder), M.LOCK_TIMEOUT) }
  end
  return lk
end

local function pending_lock()
  return lock(pending_path() .. ".lock", "the check-mode failed-login counts")
end

-- In check mode only a count that grew is kept, beside the locks; a
-- success or a forget leaves every count as it was.
local function update_pending(fn)
  local pk <close> = pending_lock()
  local t = load()
  local before = {}
  for k, v in pairs(t) do before[k] = type(v) == "table" and v.failures or 0 end
  local r = fn(t)
  local pending, grew = read_counts(pending_path()), false
  for k, v in pairs(t) do
    if type(v) == "table" and (v.failures or 0) > (before[k] or 0) then pending[k], grew = v, true end
  end
  if grew then
    local ok, err = sys.write_file(pending_path(), cjson.encode(pending), SHARED)
    if not ok then dhsm.error { kind = "audit", message = "cannot keep the failed-login count: " .. tostring(err) } end
  end
  return r
end

-- update(fn): fn(counts) changes the table; load and save under the file
-- lock (and the check-mode counts' lock, whose counts save folds in)
local function update(fn)
  if act.checking() then return update_pending(fn) end
  local lk <close> = lock(path() .. ".lock", "the failed-login counts")
  local pk <close> = pending_lock()
  local t = load()
  local r = fn(t)
  save(t)
  return r
end

local function entry(key, role)
  return key .. "/" .. role
end

function M.failures(dev, role)
  return (load()[entry(key_of(dev), role)] or {}).failures or 0
end

-- counts() -> {{key=, role=, label=, failures=, device_left=, updated=}, ...}:
-- every failed-login count kept, sorted (what a health check reports)
function M.counts()
  local out = {}
  for k, v in pairs(load()) do
    local key, role = k:match("^(.*)/(%w+)$")
    if key and type(v) == "table" then
      out[#out + 1] = { key = key, role = role, label = v.label or key, failures = v.failures or 0,
        device_left = v.device_left, updated = v.updated }
    end
  end
  table.sort(out, function(a, b) return a.key .. "/" .. a.role < b.key .. "/" .. b.role end)
  return out
end

-- attempts_left(dev, role, device_left) -> what may safely be assumed left
function M.attempts_left(dev, role, device_left)
  check_role(role)
  local threshold = M.THRESHOLDS[role]
  local by_count = threshold - M.failures(dev, role)
  if device_left == threshold and by_count < threshold then
    -- the device shows a clean slate (re-initialised); a plan only reads it so
    if not act.checking() then M.forget(dev, role) end
    by_count = threshold
  end
  if device_left then return math.min(device_left, by_count) end
  return by_count
end

-- check(dev, role, device_left, opts [, call]) -> attempts left; raises
-- "safety" when this attempt could be the last before the role's
-- consequence.  The refusal says how many attempts are left and, as the
-- remedy, the login call with the option that makes it anyway (call: as
-- the caller's module spells it, e.g. s:login_so(password, {...})); its
-- details.fact is the refusal without that remedy, for a caller whose
-- operator has another way on (decommission: -e method=failed-logins).
-- Alone it decides nothing for a login that is not made at once: logins
-- go through attempt(), which holds the device's lock from check to record.
function M.check(dev, role, device_left, opts, call)
  opts = opts or {}
  local key, label = key_of(dev)
  local left = M.attempts_left(dev, role, device_left)
  local what = ("%s login on %s"):format(M.ROLE_NAMES[role], label)
  -- a refused login is a refused change: a plan counts it even when a body catches it (dhsm.act)
  if left <= 0 then
    act.refusal { code = "NoLoginAttemptsLeft",
      message = ("refusing the %s: no attempt is left (%s)"):format(what, M.CONSEQUENCES[role]) }
  end
  if left == 1 then
    if not opts.allow_destructive_login then
      local fact = ("refusing the %s: %d attempt is left of %d, and one more failure and %s"):format(what, left,
        M.THRESHOLDS[role], M.CONSEQUENCES[role])
      act.refusal { code = "LastLoginAttempt", details = { fact = fact, attempts_left = left,
        threshold = M.THRESHOLDS[role], role = role, device = key },
        message = ("%s. Make sure of the password; then, to make this last attempt, add the option "
          .. "allow_destructive_login = true to the login call%s"):format(fact, call and (": " .. call) or "") }
    end
    dhsm.audit.write { action = "safety.override", target = key, label = label, outcome = "allow_destructive_login",
      role = role }
  end
  return left
end

-- record(dev, role, ok [, device_left]): after the attempt.  A failure
-- counts one more than we knew, or what the device says, whichever is more.
function M.record(dev, role, ok, device_left)
  check_role(role)
  local key, label = key_of(dev)
  local failures = update(function(t)
    local k = entry(key, role)
    if ok then
      t[k] = nil
      return 0
    end
    local n = ((t[k] or {}).failures or 0) + 1
    if device_left then n = math.max(n, M.THRESHOLDS[role] - device_left) end
    t[k] = { failures = n, device_left = device_left, label = label, updated = sys.rfc3339() }
    return n
  end)
  dhsm.audit.write { action = "login." .. role, target = key, label = label, outcome = ok and "ok" or "failed",
    failures = failures, device_left = device_left }
end

-- forget(dev, role): the count starts again (audited: it lifts what the
-- count alone protects, the Auditor's and the partition roles')
function M.forget(dev, role)
  check_role(role)
  local key, label = key_of(dev)
  update(function(t) t[entry(key, role)] = nil end)
  dhsm.audit.write { action = "login." .. role, target = key, label = label, outcome = "count forgotten" }
end

-- The lock file of one device and role.
local function key_lock(key, role)
  return ("%s/locks/%s.%s.lock"):format(M.dir(), key:gsub("[^%w%-_.]", "_"), role)
end

-- The devices of a login, each once, in key order (the order locks are taken in).
local function devices_of(targets)
  local list, seen = {}, {}
  for _, d in ipairs(type(targets) == "table" and targets.key == nil and targets or { targets }) do
    local key = key_of(d)
    if not seen[key] then
      seen[key] = true
      list[#list + 1] = d
    end
  end
  if #list == 0 then dhsm.error { kind = "usage", message = "dhsm.guard: a login to no device" } end
  table.sort(list, function(a, b) return a.key < b.key end)
  return list
end

-- Locks held together, released in reverse order when the holder closes.
local function lock_all(list, role, what)
  local held = setmetatable({}, { __close = function(t)
    for i = #t, 1, -1 do t[i]:unlock() end
  end })
  for _, d in ipairs(list) do
    held[#held + 1] = lock(key_lock(d.key, role), ("%s on %s"):format(what, d.label))
  end
  return held
end

-- What the device says is left before an attempt.  A count the device
-- shows in a form dhsm cannot read (luna/ParseError) is a refusal, as a
-- count of one would be: the login could be the last.  Other errors (a
-- lost session) raise as they are; nil (an interface without a count)
-- leaves the decision to dhsm's own count.
local function device_reading(d, role, steps)
  local ok, left = pcall(steps.device_left, d)
  if ok then return left end
  if dhsm.error.is(left, "luna") and left.code == "ParseError" then
    act.refusal { code = "AttemptsUnreadable", details = { parse = left.details },
      message = ("refusing the %s login on %s: it shows its attempts left in a form dhsm cannot read (%s); the "
        .. "login could be its last. Read them by hand; then log in by hand if it is safe"):format(M.ROLE_NAMES[role],
        d.label, left.message) }
  end
  error(left, 0)
end

-- attempt(devices, role, opts, steps) -> what steps.try returned
--   devices: one guard.device(), or the list of an HA group's members
--   steps.device_left(dev) -> attempts the device says are left, or nil
--   steps.call: the login call with allow_destructive_login, as the
--   caller's operator types it (the last attempt's remedy), or nil
--   steps.try() -> outcome, result: outcome true (logged in), false (wrong
--   credentials: counted on every device) or nil (no attempt was made, as
--   in check mode)
-- An error out of try leaves the attempt's outcome unknown: counted as a
-- failure, which errs on the side of refusing sooner.
function M.attempt(targets, role, opts, steps)
  check_role(role)
  local list = devices_of(targets)
  local held <close> = lock_all(list, role, ("the %s login"):format(M.ROLE_NAMES[role]))
  for _, d in ipairs(list) do M.check(d, role, device_reading(d, role, steps), opts, steps.call) end
  local ran, outcome, result = pcall(steps.try)
  if ran and outcome == nil then return result end
  for _, d in ipairs(list) do
    if ran and outcome then
      M.record(d, role, true)
    else
      local read, left = pcall(steps.device_left, d)     -- what the failure cost, from the device
      M.record(d, role, false, read and left or nil)
    end
  end
  if not ran then error(outcome, 0) end
  return result
end

local failed_logins

-- zeroize_by_failures(hsm, role, opts, steps) -> {attempts=, zeroized=}
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
-- One critical section (the HSM's lock) holds the whole sequence.  Each
-- attempt is recorded and followed by a fresh reading; the sequence stops
-- when the device says zeroized, and with an error when an attempt did
-- not lower the device's count or more attempts than the threshold would
-- be needed (whatever answers is not counting as an HSM does).  The wrong
-- logins are one change through the gate (dhsm.act): confirmed as `hsm
-- zeroize` is; in check mode the readings and refusals happen and no login
-- is sent.
function M.zeroize_by_failures(dev, role, opts, steps)
  local key, label = key_of(dev)
  if role ~= "so" then
    dhsm.error { kind = "usage", message = ("zeroize_by_failures: only the HSM SO's failures zeroize the HSM, not %s's")
      :format(tostring(role)) }
  end
  if not (opts and opts.zeroize == true) then
    dhsm.error { kind = "safety", code = "ZeroizeNotAsked",
      message = ("refusing wrong logins on %s: they zeroize the HSM; pass zeroize=true to mean it"):format(label) }
  end
  if type(opts.serial) ~= "string" or opts.serial == "" then
    dhsm.error { kind = "usage", message = "zeroize_by_failures: serial= (the appliance meant) is required" }
  end
  local lk <close> = lock(key_lock(key, role), ("zeroizing %s by failed logins"):format(label))
  local h = steps.read()
  if h.serial ~= opts.serial then
    dhsm.error { kind = "safety", code = "SerialMismatch",
      message = ("refusing wrong logins on %s: it reports serial %s, not %s, the appliance named for zeroization")
        :format(label, tostring(h.serial), opts.serial) }
  end
  if h.zeroized then return { attempts = 0, zeroized = true } end
  local left = tonumber(h.attempts_left) or M.THRESHOLDS[role]
  -- the gate (dhsm.act) inside the HSM's lock: no other login to this HSM
  -- while the operator confirms, and check mode describes it here
  return act.change({ kind = "luna", action = "zeroize_by_failed_logins", target = opts.target or label,
    destructive = true, where = key, fields = { serial = h.serial, device_left = left, role = role },
    what = ("send %d wrong HSM SO login(s) to %s (serial %s) until it zeroizes"):format(left, opts.target or label, h.serial),
    planned = { attempts = 0, zeroized = false, planned = left },
    outcome = function(r) return r.zeroized and "zeroized" or "not zeroized", { attempts = r.attempts } end,
  }, function() return failed_logins(dev, role, opts, steps, left) end)
end

-- The zeroization's wrong logins, each recorded and followed by a reading.
function failed_logins(dev, role, opts, steps, left)
  local key, label = key_of(dev)
  dhsm.audit.write { action = "safety.override", target = key, label = label, outcome = "zeroize_by_failed_logins",
    role = role, serial = opts.serial, device_left = left }
  for n = 1, M.THRESHOLDS[role] do
    local rejected = steps.fail()
    local after = steps.read()
    local now_left = tonumber(after.attempts_left)      -- nil when the device no longer says
    M.record(dev, role, false, after.zeroized and 0 or now_left)
    if after.zeroized then return { attempts = n, zeroized = true } end
    if not rejected or after.serial ~= opts.serial or not (now_left and now_left < left) then
      dhsm.error { kind = "luna", code = "NotCounting",
        message = ("stopped zeroizing %s by failed logins after %d attempt(s): the device %s; zeroize it with "
          .. "`hsm zeroize` instead"):format(label, n, not rejected and "accepted a login" or
            after.serial ~= opts.serial and "now reports another serial" or "did not count the failure") }
    end
    left = now_left
  end
  dhsm.error { kind = "luna", code = "NotZeroized",
    message = ("%s is not zeroized after %d failed HSM SO logins"):format(label, M.THRESHOLDS[role]) }
end

return util.sealed(M)
