-- dhsm: the core API of playbooks, runbooks, `dhsm exec` and the REPL.
--
--   dhsm.spawn(fn, ...)            run fn as a task; returns a handle (:join, :cancel, :status)
--   dhsm.sleep(s)                  let the other tasks run for s seconds
--   dhsm.parallel(items, fn, {limit=n})   fn(item, i) for each item; results in input order
--   dhsm.deadline(s, fn, ...)      fn(...) or a "timeout" error after s seconds
--   dhsm.error{kind=, code=, message=, retryable=, details=}   raise a dhsm error
--   dhsm.error.new{...} / dhsm.error.is(v, kind)
--   dhsm.try(fn, ...)              true, results... | false, err (always a dhsm error)
--   dhsm.usage(fmt, ...)           raise bad input (kind "usage", exit 2); dhsm.usage_in(where) prefixes it
--   dhsm.semaphore(n)              :run(fn, ...) with at most n at once
--   dhsm.check_mode                (read-only) true under --check: changes are only described
--                                  (dhsm.act.checking(); every change passes dhsm.act's gate)
--   dhsm.inventory()               the inventory of `dhsm exec -i`/the REPL (dhsm.cli.globals), or nil
--   dhsm.context()                 the current task's context (run, playbook, step, ...)
local core = require "dhsm.core"
local errors = require "dhsm.errors"

local M = {
  spawn = core.spawn,
  sleep = core.sleep,
  current = core.current,
  context = core.context,
  now = core.now,
  verbose = false,
  secret = require "dhsm.secret",
  audit = require "dhsm.audit",
  inventory = function() return nil end,   -- dhsm.cli.globals sets it for exec and the REPL
}

M.version = require("dhsm.sys").versions().dhsm

M.error = setmetatable({
  new = errors.new,
  is = errors.is,
  normalize = errors.normalize,
}, {
  __call = function(_, t) error(errors.new(t), 2) end,
})

-- usage(fmt, ...): raise bad input ("usage", exit status 2), the message
-- formatted - the one way every module says "you gave me the wrong thing".
-- usage_in(where) -> such a function whose messages start "where: ".
local function usage(fmt, ...)
  error(errors.new { kind = "usage", message = fmt:format(...) }, 2)
end
M.usage = usage

function M.usage_in(where)
  return function(fmt, ...) usage("%s: %s", where, fmt:format(...)) end
end

function M.try(fn, ...)
  local r = table.pack(pcall(fn, ...))
  if r[1] then return table.unpack(r, 1, r.n) end
  return false, errors.normalize(r[2])
end

-- deadline(seconds, fn, ...): fn runs as a child task; if it has not
-- finished in time it is cancelled (its <close> variables closed) and a
-- retryable "timeout" error is raised here.
function M.deadline(seconds, fn, ...)
  if type(seconds) ~= "number" or seconds < 0 then
    usage("dhsm.deadline: expected seconds >= 0, got %s", tostring(seconds))
  end
  if type(fn) ~= "function" then usage("dhsm.deadline: expected a function, got %s", type(fn)) end
  local t <close> = core.spawn(fn, ...)
  local r = table.pack(pcall(t.join, t, seconds))
  if r[1] then return table.unpack(r, 2, r.n) end
  local err = r[2]
  if errors.is(err, "timeout") and t:status() ~= "failed" and t:status() ~= "done" then
    error(errors.new { kind = "timeout", retryable = true,
      message = ("deadline of %g s passed"):format(seconds) }, 2)
  end
  error(err, 0)
end

-- semaphore(n): at most n holders at once.
--   local sem = dhsm.semaphore(2)
--   sem:run(fn, ...)         -- acquire, fn(...), release (also when cancelled)
-- A waiter that is cancelled gives its place back; a slot is handed
-- straight to the next waiter so nobody overtakes it.
local Semaphore = {}
Semaphore.__index = Semaphore

function M.semaphore(n)
  if math.type(n) ~= "integer" or n < 1 then usage("dhsm.semaphore: expected an integer >= 1, got %s", tostring(n)) end
  return setmetatable({ max = n, used = 0, waiters = {} }, Semaphore)
end

function Semaphore:acquire()
  if self.used < self.max then
    self.used = self.used + 1
    return
  end
  local entry = { task = core.current() or usage("dhsm.semaphore: acquire needs a task") }
  self.waiters[#self.waiters + 1] = entry
  local guard <close> = setmetatable({}, { __close = function()
    if entry.acquired then return end
    if entry.granted then
      self:release()                       -- handed a slot it will never use
    else
      for i, e in ipairs(self.waiters) do
        if e == entry then table.remove(self.waiters, i) break end
      end
    end
  end })
  repeat core.park() until entry.granted
  entry.acquired = true
end

function Semaphore:release()
  local entry = table.remove(self.waiters, 1)
  if entry then
    entry.granted = true
    core.wake(entry.task)
  else
    self.used = self.used - 1
  end
end

function Semaphore:run(fn, ...)
  self:acquire()
  local held <close> = setmetatable({}, { __close = function() self:release() end })
  return fn(...)
end

local function describe_item(item, i)
  if type(item) == "table" then
    local label = rawget(item, "name") or rawget(item, "host") or rawget(item, "id")
    if label ~= nil then return ("%d (%s)"):format(i, tostring(label)) end
  elseif type(item) == "string" or type(item) == "number" then
    return ("%d (%s)"):format(i, tostring(item))
  end
  return tostring(i)
end

-- A failure in parallel(): the item's error, named after the item, with
-- the traceback of where it was raised.
local function item_error(failure, item)
  local cause = errors.normalize(failure.err)
  local label = describe_item(item, failure.i)
  local e = errors.new {
    kind = cause.kind, code = cause.code, retryable = cause.retryable,
    message = ("item %s: %s"):format(label, cause.message),
    details = cause.details,
  }
  e.item, e.cause, e.traceback = failure.i, failure.err, failure.traceback
  return e
end

-- parallel(items, fn, {limit=n}): fn(item, i) for every item, at most n at
-- once (default: all).  Returns the results in input order, a plain
-- sequence (JSON encodes it as an array; a nil result leaves a hole, so
-- count by #items, not by # of the results).  The
-- first failure cancels the others, closing their <close> variables, and is
-- raised here naming its item.
function M.parallel(items, fn, opts)
  if type(items) ~= "table" then usage("dhsm.parallel: expected a list of items, got %s", type(items)) end
  if type(fn) ~= "function" then usage("dhsm.parallel: expected a function, got %s", type(fn)) end
  opts = opts or {}
  local n = #items
  local limit = opts.limit
  if limit ~= nil and (math.type(limit) ~= "integer" or limit < 1) then
    usage("dhsm.parallel: limit must be an integer >= 1, got %s", tostring(limit))
  end
  limit = limit or n
  local results = {}
  if n == 0 then return results end
  local me = core.current() or usage("dhsm.parallel needs a task (run it from a playbook, exec or the REPL)")
  local next_index, live, failure = 1, 0, nil

  local function capture(err)
    return { err = err, traceback = debug.traceback(tostring(err), 2) }
  end
  local function worker()
    while failure == nil and next_index <= n do
      local i = next_index
      next_index = i + 1
      local ok, r = xpcall(fn, capture, items[i], i)
      if ok then
        results[i] = r
      elseif failure == nil then
        r.i = i
        failure = r
      end
    end
    live = live - 1
    core.wake(me)
  end

  local workers <close> = setmetatable({}, { __close = function(ws)
    for _, w in ipairs(ws) do w:cancel() end
  end })
  for w = 1, math.min(limit, n) do
    live = live + 1
    workers[w] = core.spawn(worker)
  end
  while live > 0 and failure == nil do core.park() end
  if failure then error(item_error(failure, items[failure.i]), 2) end
  return results
end

-- check_mode is the running task's (dhsm.act), read here for runbooks;
-- it is not a field anyone can set.
return setmetatable(M, {
  __index = function(_, k)
    if k == "check_mode" then return require("dhsm.act").checking() end
  end,
  __newindex = function(t, k, v)
    if k == "check_mode" then
      error(errors.new { kind = "safety", code = "CheckModeLocked", message = "dhsm.check_mode cannot be set: "
        .. "check mode belongs to the run (dhsm run --check, the REPL's :check)" }, 2)
    end
    rawset(t, k, v)
  end,
})
