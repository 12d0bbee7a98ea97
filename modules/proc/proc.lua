-- dhsm.proc: running local tools (lunacm, vtl, openssl ...) without a shell.
--
--   local r = proc.run{ argv = { "vtl", "verify" }, env = { ChrystokiConfigurationPath = dir },
--                       stdin = secret_or_text, cwd = dir, timeout = 30 }
--   --> {status=, signal=, stdout=, stderr=, duration=}; a timeout kills the
--   --  process group and raises a "timeout" error carrying what was captured.
--   local p <close> = proc.spawn{ argv = { "lunacm" } }
--   p:read_until("lunacm:>", 10); p:write("slot list\n"); p:wait(5)
--
-- Runs happen on the scheduler: many tools can run at once in dhsm.parallel.
-- Secrets go to stdin or env, never argv.  Every run is audited (argv only).
local dhsm = require "dhsm"
local util = require "dhsm.util"
local core = util.native(select(3, ...), "dhsm.proc.core")

local M = { spawn = core.spawn }

local function command_line(argv)
  local parts = {}
  for i, a in ipairs(argv) do parts[i] = tostring(a) end
  return table.concat(parts, " ")
end

function M.run(opts)
  if type(opts) ~= "table" then
    dhsm.error { kind = "usage", message = "proc.run: expected {argv = {...}, stdin=, env=, cwd=, timeout=}" }
  end
  local t0 = dhsm.now()
  local ok, r = pcall(core.run, opts)
  local argv = type(opts.argv) == "table" and opts.argv or {}
  dhsm.audit.write { action = "proc.run", target = tostring(argv[1]), command = command_line(argv),
    outcome = ok and ("exit " .. tostring(r.status)) or ("error " .. tostring(dhsm.error.normalize(r).code)),
    duration_ms = (dhsm.now() - t0) * 1000 }
  if not ok then error(r, 0) end
  return r
end

-- What read_until read past its match, per process (a userdata has no fields).
local pending = setmetatable({}, { __mode = "k" })

-- p:read_until(pattern, timeout) -> everything read up to and including the
-- first match of the Lua pattern; raises "timeout" (with .output) or, at the
-- end of the output, an error saying so.
function core.methods:read_until(pattern, timeout)
  timeout = timeout or 30
  local deadline = dhsm.now() + timeout
  local buf = pending[self] or ""
  while true do
    local _, e = buf:find(pattern)
    if e then
      pending[self] = buf:sub(e + 1)
      return buf:sub(1, e)
    end
    local left = deadline - dhsm.now()
    local data = left > 0 and self:read(left) or ""
    if data == nil then
      pending[self] = ""
      dhsm.error { kind = "net", code = "EndOfOutput", details = { output = buf },
        message = ("%s ended its output before %q appeared"):format(tostring(self), pattern) }
    end
    if data == "" then
      pending[self] = buf
      dhsm.error { kind = "timeout", code = "ProcessTimeout", retryable = true, details = { output = buf },
        message = ("%q did not appear within %g s"):format(pattern, timeout) }
    end
    buf = buf .. data
  end
end

return M
