-- bench/loop_bench.lua: what the scheduler costs.  dhsm exec bench/loop_bench.lua
-- Prints figures; baselines are in bench/README.md.  Not a test.
local N = tonumber((...)) or 10000

local function timed(label, fn)
  collectgarbage()
  local t0 = dhsm.now()
  local extra = fn()
  local dt = dhsm.now() - t0
  print(("%-44s %8.3f s  %s"):format(label, dt, extra or ""))
  return dt
end

timed(("spawn + join %d empty tasks"):format(N), function()
  local ts = {}
  local t0 = dhsm.now()
  for i = 1, N do ts[i] = dhsm.spawn(function() return i end) end
  for i = 1, N do ts[i]:join() end
  return ("%.0f tasks/s"):format(N / (dhsm.now() - t0))
end)

timed(("%d tasks sleeping 0.5 s at once"):format(N), function()
  local before = collectgarbage("count")
  local ts = {}
  for i = 1, N do ts[i] = dhsm.spawn(dhsm.sleep, 0.5) end
  dhsm.sleep(0)
  local kib = (collectgarbage("count") - before) / N
  for i = 1, N do ts[i]:join() end
  return ("%.2f KiB per waiting task"):format(kib)
end)

timed(("%d timers with random deadlines (heap)"):format(N), function()
  local late = 0
  dhsm.parallel((function() local t = {} for i = 1, N do t[i] = i end return t end)(), function()
    local d = math.random() * 0.5
    local t0 = dhsm.now()
    dhsm.sleep(d)
    late = math.max(late, dhsm.now() - t0 - d)
  end)
  return ("worst lateness %.1f ms"):format(late * 1000)
end)

timed("100000 switches between two tasks", function()
  local a = dhsm.spawn(function() for _ = 1, 50000 do coroutine.yield() end end)
  local b = dhsm.spawn(function() for _ = 1, 50000 do coroutine.yield() end end)
  local t0 = dhsm.now()
  a:join() b:join()
  return ("%.2f us per switch"):format((dhsm.now() - t0) / 100000 * 1e6)
end)
