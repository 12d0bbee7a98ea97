-- The scheduler as runbooks see it: spawn, join, sleep, parallel, deadline,
-- cancel, and coroutines inside tasks.
local t = require "dhsm.test"
local core = require "dhsm.core"

-- A <close>-able marker that counts how often it was closed.
local function closer(counter)
  return setmetatable({}, { __close = function() counter.n = counter.n + 1 end })
end

t.test("200 tasks sleeping 0.3 s finish together", function()
  local t0 = dhsm.now()
  local tasks = {}
  for i = 1, 200 do tasks[i] = dhsm.spawn(function() dhsm.sleep(0.3) return i end) end
  local sum = 0
  for _, task in ipairs(tasks) do sum = sum + task:join() end
  local wall = dhsm.now() - t0
  t.eq(sum, 200 * 201 // 2)
  t.ok(wall >= 0.29, "woke too early: " .. wall)
  t.ok(wall < 1.0, ("200 sleeps took %.2f s of wall time"):format(wall))
end)

t.test("spawn passes arguments and join returns every result", function()
  local task = dhsm.spawn(function(a, b) return a + b, "x", nil end, 2, 3)
  t.eq({ task:join() }, { 5, "x" })
  t.eq(select("#", task:join()), 3)
  t.eq(task:status(), "done")
  t.ok(tostring(task):match("^task %d+ %(done%)$"))
end)

t.test("join re-raises the task's own error object", function()
  local task = dhsm.spawn(function() dhsm.error { kind = "luna", code = "RC_X", message = "bad" } end)
  local err = t.raises(function() task:join() end, "RC_X")
  t.eq(err.kind, "luna")
  t.eq(task:status(), "failed")
  t.ok(task:traceback():find("stack traceback", 1, true))
end)

t.test("join with a timeout raises a retryable timeout", function()
  local task <close> = dhsm.spawn(dhsm.sleep, 5)
  local err = t.raises(function() task:join(0.05) end, "timeout")
  t.eq(err.retryable, true)
  t.eq(task:status(), "waiting")
end)

t.test("a task cannot join itself", function()
  local task
  task = dhsm.spawn(function() return task:join() end)
  t.raises(function() task:join() end, "cannot join itself")
end)

t.test("cancel closes the task's <close> variables", function()
  local closed = { n = 0 }
  local task = dhsm.spawn(function()
    local c <close> = closer(closed)
    dhsm.sleep(10)
  end)
  dhsm.sleep(0.01)
  task:cancel()
  t.eq(closed.n, 1)
  t.eq(task:status(), "cancelled")
  t.raises(function() task:join() end, "cancelled")
  task:cancel()                                  -- a second cancel is harmless
end)

t.test("a task may cancel itself", function()
  local after = false
  local task = dhsm.spawn(function(self_handle)
    dhsm.sleep(0)
    dhsm.current():cancel()
    after = true
  end)
  t.raises(function() task:join() end, "cancelled")
  t.eq(after, false)
end)

t.test("a <close> task handle cancels the task when leaving the scope", function()
  local closed = { n = 0 }
  local handle
  do
    local task <close> = dhsm.spawn(function()
      local c <close> = closer(closed)
      dhsm.sleep(10)
    end)
    handle = task
    dhsm.sleep(0)
  end
  t.eq(handle:status(), "cancelled")
  t.eq(closed.n, 1)
end)

t.test("deadline returns the results in time", function()
  t.eq({ dhsm.deadline(1, function(a) dhsm.sleep(0.01) return a, "b" end, "a") }, { "a", "b" })
end)

t.test("deadline fires, cancels the work and closes it", function()
  local closed = { n = 0 }
  local t0 = dhsm.now()
  local err = t.raises(function()
    dhsm.deadline(0.1, function()
      local c <close> = closer(closed)
      dhsm.sleep(5)
    end)
  end, "timeout")
  t.ok(dhsm.now() - t0 < 1)
  t.eq(err.message, "deadline of 0.1 s passed")
  t.eq(closed.n, 1)
end)

t.test("deadline passes the work's own error through", function()
  t.raises(function() dhsm.deadline(1, error, "inner failure") end, "inner failure")
end)

t.test("deadline rejects bad arguments", function()
  t.raises(function() dhsm.deadline(-1, print) end, "expected seconds >= 0")
  t.raises(function() dhsm.deadline(1, "nope") end, "expected a function")
end)

t.test("parallel returns results in input order", function()
  local r = dhsm.parallel({ 30, 10, 20 }, function(ms, i) dhsm.sleep(ms / 1000) return ms * 10 + i end)
  t.eq(r, { 301, 102, 203 })
  t.eq(dhsm.parallel({}, print), {})
  t.eq(require("cjson").encode(r), "[301,102,203]", "a JSON array, not an object with n")
end)

t.test("parallel never runs more than limit at once", function()
  local running, peak = 0, 0
  local items = {}
  for i = 1, 12 do items[i] = i end
  local t0 = dhsm.now()
  dhsm.parallel(items, function()
    running = running + 1
    peak = math.max(peak, running)
    dhsm.sleep(0.02)
    running = running - 1
  end, { limit = 3 })
  t.eq(peak, 3)
  t.ok(dhsm.now() - t0 >= 0.079, "12 items by 3 take at least 4 rounds")
end)

t.test("a parallel failure names its item, cancels and closes the others", function()
  local closed = { n = 0 }
  local finished = 0
  local hosts = { { name = "hsm1" }, { name = "hsm2" }, { name = "hsm3" } }
  local err = t.raises(function()
    dhsm.parallel(hosts, function(h)
      local c <close> = closer(closed)
      if h.name == "hsm2" then
        dhsm.sleep(0.02)
        dhsm.error { kind = "luna", code = "RC_SSL_FAILED_HANDSHAKE", message = "handshake failed" }
      end
      dhsm.sleep(5)
      finished = finished + 1
    end)
  end, "luna")
  t.eq(err.message, "item 2 (hsm2): handshake failed")
  t.eq(err.code, "RC_SSL_FAILED_HANDSHAKE")
  t.eq(err.item, 2)
  t.ok(err.traceback:find("loop_test.lua", 1, true), err.traceback)
  t.eq(closed.n, 3)
  t.eq(finished, 0)
end)

t.test("parallel checks its arguments", function()
  t.raises(function() dhsm.parallel("x", print) end, "expected a list")
  t.raises(function() dhsm.parallel({ 1 }, print, { limit = 0 }) end, "limit must be an integer >= 1")
end)

t.test("a coroutine.wrap generator may sleep inside a task", function()
  local gen = coroutine.wrap(function()
    for i = 1, 3 do
      dhsm.sleep(0.01)
      coroutine.yield(i)
    end
  end)
  local other = dhsm.spawn(function() return "ran meanwhile" end)
  t.eq({ gen(), gen(), gen() }, { 1, 2, 3 })
  t.eq(other:status(), "done")
end)

t.test("coroutine.resume reports errors and values as usual", function()
  local co = coroutine.create(function(a) local b = coroutine.yield(a + 1) error("bad " .. b, 0) end)
  t.eq({ coroutine.resume(co, 1) }, { true, 2 })
  t.eq({ coroutine.resume(co, "x") }, { false, "bad x" })
  t.eq({ coroutine.resume(co) }, { false, "cannot resume dead coroutine" })
  t.raises(coroutine.wrap(function() error("wrapped") end), "wrapped")
end)

t.test("a wait in a non-yieldable place blocks instead of failing", function()
  local items = { 3, 1, 2 }
  table.sort(items, function(a, b) dhsm.sleep(0.001) return a < b end)
  t.eq(items, { 1, 2, 3 })
end)

t.test("coroutine.yield at a task's top level lets the others run", function()
  local log = {}
  local a = dhsm.spawn(function() for i = 1, 3 do log[#log + 1] = "a" .. i coroutine.yield() end end)
  local b = dhsm.spawn(function() for i = 1, 3 do log[#log + 1] = "b" .. i coroutine.yield() end end)
  a:join() b:join()
  t.eq(table.concat(log, " "), "a1 b1 a2 b2 a3 b3")
end)

t.test("sleep and join need a task or say so", function()
  t.raises(function() table.sort({ 1, 2 }, function() return core.park() end) end, "needs a task")
  t.raises(function() dhsm.sleep(-1) end, "expected seconds >= 0")
end)

t.test("the context is inherited by spawned tasks", function()
  local ctx = dhsm.context()
  ctx.step = "outer step"
  local seen = dhsm.spawn(function() return dhsm.context().step end):join()
  t.eq(seen, "outer step")
  ctx.step = nil
end)

t.test("a semaphore admits n at once, in order, and survives cancellations", function()
  local sem = dhsm.semaphore(2)
  local running, peak, order = 0, 0, {}
  local function work(i)
    sem:run(function()
      running = running + 1
      local leave <close> = setmetatable({}, { __close = function() running = running - 1 end })
      peak = math.max(peak, running)
      order[#order + 1] = i
      dhsm.sleep(0.02)
    end)
  end
  local tasks = {}
  for i = 1, 6 do tasks[i] = dhsm.spawn(work, i) end
  dhsm.sleep(0.001)
  tasks[4]:cancel()                       -- cancelled while waiting: gives its place back
  tasks[1]:cancel()                       -- cancelled while holding: releases its slot
  for i, task in ipairs(tasks) do
    if i ~= 1 and i ~= 4 then task:join() end
  end
  t.eq(peak, 2)
  t.eq(order, { 1, 2, 3, 5, 6 })
  t.eq({ sem.used, #sem.waiters }, { 0, 0 })
  t.raises(function() dhsm.semaphore(0) end, "expected an integer >= 1")
end)
