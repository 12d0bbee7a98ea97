-- bench/azure_bench.lua: ARM requests through dhsm.azure against the
-- simulated estate: N GETs in parallel vs in sequence, and how many TCP
-- connections each opened (client and server counts).  Not a test.
--   ./dhsm -I tests exec bench/azure_bench.lua [N]
local t = require "dhsm.test"
local N = tonumber((...)) or 50

local estate = require("support.estate").start()
local c = estate:azure()
local path = c:group_path()

local function measure(label, fn)
  c:token()
  local before_client = c:stats().connections
  local before_server = estate:stats().connections
  local t0 = dhsm.now()
  fn()
  local dt = dhsm.now() - t0
  print(("%-38s %7.3f s  %6.1f req/s  new connections: client %d, simulator %d"):format(
    label, dt, N / dt, c:stats().connections - before_client, estate:stats().connections - before_server))
end

local items = {}
for i = 1, N do items[i] = i end
measure(("%d GETs in sequence"):format(N), function()
  for _ = 1, N do c:get(path) end
end)
measure(("%d GETs in parallel"):format(N), function()
  dhsm.parallel(items, function() return c:get(path) end)
end)
measure(("%d GETs in parallel, again"):format(N), function()
  dhsm.parallel(items, function() return c:get(path) end)
end)
c = estate:azure { max_connections = 16 }
measure(("%d GETs in parallel, 16 connections"):format(N), function()
  dhsm.parallel(items, function() return c:get(path) end)
end)
t.run_file_cleanups()
