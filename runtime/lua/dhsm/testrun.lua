-- dhsm.testrun: what `dhsm test [PATHS]` does.  Each file runs with its
-- own folder and the nearest folder above holding a support/ folder on
-- package.path (M.search_path).
local dhsm = require "dhsm"
local sys = require "dhsm.sys"
local t = require "dhsm.test"

local M = {}

local function collect(path, out)
  local st = sys.stat(path)
  if not st then
    dhsm.error { kind = "usage", message = ("no such file or folder: %s"):format(path) }
  end
  if st.type == "file" then
    out[#out + 1] = path
    return
  end
  for _, name in ipairs(sys.readdir(path) or {}) do
    local p = path .. "/" .. name
    local s = sys.stat(p)
    if s and s.type == "dir" then collect(p, out)
    elseif name:match("_test%.lua$") then out[#out + 1] = p end
  end
end

local function short_traceback(tb)
  return tb and ("\n" .. tb:gsub("\n[^\n]*dhsm/test%.lua:[^\n]*", "")) or ""
end

-- Run one test as its own task with a deadline.
-- Returns "pass" | "skip" | "fail", and the error and traceback.
local function run_one(test)
  local tb
  local function handler(e)
    if not t.is_failure(e) and not t.is_skip(e) then tb = debug.traceback("", 2):sub(2) end
    return e
  end
  t.in_test = true
  local ok, fine, err = pcall(dhsm.deadline, test.opts.timeout or 60, function()
    return xpcall(test.fn, handler)
  end)
  t.in_test = false
  t.run_cleanups()
  if not ok then return "fail", fine end          -- the deadline passed
  if fine then return "pass" end
  if t.is_skip(err) then return "skip", err end
  return "fail", err, tb
end

local function report_failure(file, test, err, tb, verbose)
  local where, message
  if t.is_failure(err) then
    where, message = err.where or test.where, err.message
  elseif dhsm.error.is(err, "timeout") then
    where, message = test.where, ("did not finish within %g s"):format(test.opts.timeout or 60)
  else
    where, message = test.where, tostring(err)
  end
  io.stdout:write(("FAIL %s: %s: %s%s\n"):format(where or file, test.name, message,
    verbose and short_traceback(tb) or ""))
end

local function is_dir(path)
  local st = sys.stat(path)
  return st ~= nil and st.type == "dir"
end

-- search_path(file, base) -> package.path for a test file: its own folder,
-- and the nearest folder at or above it that holds a support/ folder, so
-- `require "support.estate"` finds the shared helpers from any test
-- folder without a preamble of its own.
function M.search_path(file, base)
  local dir = file:match("^(.*)/[^/]*$") or "."
  local parts = { dir .. "/?.lua" }
  local up = sys.realpath(dir)              -- walked for real: "lua/x_test.lua" run from tests/ finds tests/support
  while up do
    if is_dir(up .. "/support") then
      parts[#parts + 1] = up .. "/?.lua"
      break
    end
    up = up ~= "/" and (up:match("^(.+)/[^/]+$") or "/") or nil
  end
  parts[#parts + 1] = base
  return table.concat(parts, ";")
end

function M.run(paths, opts)
  opts = opts or {}
  if #paths == 0 then paths = { "tests/lua" } end
  local files = {}
  for _, p in ipairs(paths) do collect(p, files) end
  local base_path = package.path
  local passed, failed, skipped = 0, 0, 0
  for _, file in ipairs(files) do
    package.path = M.search_path(file, base_path)
    t.registered = {}
    local chunk, err = loadfile(file, "t")
    local ok = chunk ~= nil
    if ok then ok, err = pcall(chunk) end
    if not ok then
      failed = failed + 1
      io.stdout:write(("FAIL %s: cannot load: %s\n"):format(file, tostring(err)))
    end
    for _, test in ipairs(t.registered) do
      if not opts.filter or test.name:find(opts.filter) then
        local t0 = dhsm.now()
        local outcome, e, tb = run_one(test)
        local secs = dhsm.now() - t0
        if outcome == "pass" then
          passed = passed + 1
          if opts.verbose then io.stdout:write(("ok   %s: %s (%.2f s)\n"):format(file, test.name, secs)) end
        elseif outcome == "skip" then
          skipped = skipped + 1
          io.stdout:write(("SKIP %s: %s: %s\n"):format(file, test.name, e.message))
        else
          failed = failed + 1
          report_failure(file, test, e, tb, opts.verbose)
        end
        io.stdout:flush()
      end
    end
    t.run_file_cleanups()
  end
  package.path = base_path
  local line = ("%d passed, %d failed"):format(passed, failed)
  if skipped > 0 then line = line .. (", %d skipped"):format(skipped) end
  io.stdout:write(line, "\n")
  return failed > 0 and 1 or 0
end

return M
