-- A loopback port whose connections time out (support/blackhole.py): the
-- listener is stopped when the test ends.
--   local port = require("support.blackhole")()
local t = require "dhsm.test"
local proc = require "dhsm.proc"

local script = t.here() .. "/blackhole.py"

return function()
  local p = proc.spawn { argv = { "/usr/bin/python3", script } }
  t.cleanup(function() p:close_stdin() p:wait(5) p:close() end)
  return tonumber(p:read_until("\n", 10))
end
