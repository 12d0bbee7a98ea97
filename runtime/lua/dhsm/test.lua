-- dhsm.test: writing tests for dhsm itself and for operators' runbooks.
--
--   local t = require "dhsm.test"
--   t.test("gateway must be Succeeded", function()
--     t.eq(state(), "Succeeded")
--   end)
--
-- Each test runs as a task (it may sleep, wait and use dhsm.parallel) with a
-- deadline (60 s, or {timeout=s} as third argument).  `dhsm test` runs them.
local pretty = require "dhsm.pretty"
local sys = require "dhsm.sys"
local util = require "dhsm.util"
local errors = require "dhsm.errors"

local M = { registered = {} }

-- Failures are tables so the runner tells them from errors in the code.
local Failure = {}
Failure.__index = Failure
Failure.__tostring = function(f) return f.message end

local function where(level)
  local info = debug.getinfo(level + 1, "Sl")
  if info and info.currentline and info.currentline > 0 then
    return info.short_src .. ":" .. info.currentline
  end
end

local function fail(message, level)
  error(setmetatable({ message = message, where = where(level + 1) }, Failure), level + 1)
end

function M.is_failure(v)
  return getmetatable(v) == Failure
end

local function show(v)
  return pretty.format(v, { width = 60, max_lines = 20 })
end

-- The first difference between two values, or nil when deeply equal.
local function diff(a, b, path, seen)
  if a == b then return nil end
  if type(a) ~= "table" or type(b) ~= "table" then
    if type(a) == "number" and type(b) == "number" and a == b then return nil end
    return ("%s: expected %s, got %s"):format(path == "" and "value" or path, show(b), show(a))
  end
  seen[a] = seen[a] or {}
  if seen[a][b] then return nil end
  seen[a][b] = true
  local keys, seen_key = {}, {}
  for k in pairs(b) do if not seen_key[k] then seen_key[k] = true keys[#keys + 1] = k end end
  for k in pairs(a) do if not seen_key[k] then seen_key[k] = true keys[#keys + 1] = k end end
  table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)
  for _, k in ipairs(keys) do
    local sub = type(k) == "string" and k:match("^[%a_][%w_]*$") and (path .. "." .. k)
      or (path .. "[" .. show(k) .. "]")
    local d = diff(a[k], b[k], sub, seen)
    if d then return d end
  end
  return nil
end
M.diff = diff

-- eq(actual, expected [, msg]): deep equality with a readable difference.
function M.eq(actual, expected, msg)
  local d = diff(actual, expected, "", {})
  if d then fail((msg and (msg .. ": ") or "") .. d, 2) end
end

function M.ok(v, msg)
  if not v then fail(msg or ("expected a true value, got " .. show(v)), 2) end
  return v
end

-- raises(fn, expect [, ...args]): fn must raise; expect is a Lua pattern
-- matched against the message, or a dhsm error kind or code.  Returns the error.
function M.raises(fn, expect, ...)
  local ok, err = pcall(fn, ...)
  if ok then fail("expected an error" .. (expect and (" matching " .. show(expect)) or "") .. ", none was raised", 2) end
  if expect ~= nil and not M.is_failure(err) then
    local e = errors.normalize(err)
    local text = tostring(err)
    if not (e.kind == expect or e.code == expect or text:find(expect)) then
      fail(("expected an error matching %s, got: %s"):format(show(expect), text), 2)
    end
  elseif M.is_failure(err) then
    error(err, 0)
  end
  return err
end

-- eventually(fn [, what [, timeout]]): wait until fn() gives a true value
-- (returned), checking every 50 ms.  For a condition another process
-- brings about: waiting for it, not for a fixed time, keeps a test right
-- however slow the machine (sanitizers).  The timeout (default 30 s) is
-- a bound on a hang, not a measurement.
function M.eventually(fn, what, timeout)
  local deadline = require("dhsm").now() + (timeout or 30)
  while true do
    local v = fn()
    if v then return v end
    if require("dhsm").now() > deadline then
      fail(("still not %s after %g s"):format(what or "true", timeout or 30), 2)
    end
    require("dhsm").sleep(0.05)
  end
end

local Skip = {}
function M.skip(reason)
  error(setmetatable({ message = reason or "skipped" }, Skip), 2)
end
function M.is_skip(v) return getmetatable(v) == Skip end

function M.test(name, fn, opts)
  if type(name) ~= "string" then error("t.test: the name must be a string", 2) end
  if type(fn) ~= "function" then error("t.test: expected a function", 2) end
  M.registered[#M.registered + 1] = { name = name, fn = fn, opts = opts or {}, where = where(2) }
end

-- Helpers for tests that drive the dhsm program itself.

M.dhsm = sys.executable()

-- Cleanups registered inside a test run when it ends; those registered
-- while a file loads (shared set-up, such as a simulated estate) run after
-- the file's last test.
local cleanups = { test = {}, file = {} }
M.in_test = false

function M.cleanup(fn)
  local list = M.in_test and cleanups.test or cleanups.file
  list[#list + 1] = fn
end

-- tmpdir() -> a fresh folder removed at cleanup
function M.tmpdir()
  local dir = assert(sys.mkdtemp("dhsm-test-"))
  M.cleanup(function() os.execute("rm -rf " .. util.shell_quote(dir)) end)
  return dir
end

local function run_list(name)
  local list = cleanups[name]
  cleanups[name] = {}
  for i = #list, 1, -1 do
    local ok, err = pcall(list[i])
    if not ok then io.stderr:write("dhsm test: a cleanup failed: ", tostring(err), "\n") end
  end
end

function M.run_cleanups() run_list("test") end
function M.run_file_cleanups() run_list("file") end

-- here() -> the folder of the file that calls it (fixtures sit beside tests)
function M.here()
  local src = debug.getinfo(2, "S").source
  return src:match("^@(.*)/[^/]*$") or "."
end

-- audit_log() -> path: this test's audit records go to a file of its own
function M.audit_log()
  local audit = require "dhsm.audit"
  local path = M.tmpdir() .. "/audit.jsonl"
  audit.set_path(path)
  M.cleanup(function() audit.set_path(nil) end)
  return path
end

-- audit_records(path) -> the records of an audit log, decoded: whole lines
-- only (a log read while dhsm writes it may end in one half written)
function M.audit_records(path)
  local cjson = require "cjson"
  local out = {}
  for line in (util.read_file(path) or ""):gmatch("([^\n]*)\n") do
    if line ~= "" then out[#out + 1] = cjson.decode(line) end
  end
  return out
end

function M.write(path, data, mode)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
  if mode then os.execute(("chmod %o %s"):format(mode, util.shell_quote(path))) end
  return path
end

-- The words of a command line: a string is a shell command, read by
-- /bin/sh; a list is an argv, each word quoted so that no shell reads
-- anything into it.  Anything else is refused, naming what was expected.
local function command_line(cmd, what)
  if type(cmd) == "string" then return cmd end
  local function bad(got)
    error(errors.new { kind = "usage", message = ("%s: expected a string (a shell command) or a list of "
      .. "strings (an argv, no shell), got %s"):format(what, got) }, 3)
  end
  if type(cmd) ~= "table" then bad(type(cmd)) end
  local words = {}
  for k, w in pairs(cmd) do
    if math.type(k) ~= "integer" or k < 1 or k > #cmd then bad(("a table with the field %s"):format(tostring(k))) end
    if type(w) ~= "string" then bad(("a %s as word %d"):format(type(w), k)) end
    words[k] = util.shell_quote(w)
  end
  if #words == 0 then bad("an empty list") end
  return table.concat(words, " ")
end

-- sh(cmd [, {stdin=}]) -> {status=, stdout=, stderr=}: cmd through /bin/sh
-- (a list of words: that argv, quoted, so the shell reads nothing into it).
function M.sh(cmd, opts)
  cmd = command_line(cmd, "t.sh")
  opts = opts or {}
  local dir = M.tmpdir()
  local q = util.shell_quote
  local input = "/dev/null"
  if opts.stdin then input = M.write(dir .. "/in", opts.stdin) end
  -- the shell's own messages ("Killed") belong to the command's stderr
  local full = ("exec >%s 2>%s <%s\n%s"):format(q(dir .. "/out"), q(dir .. "/err"), q(input), cmd)
  local _, how, code = os.execute(full)
  return {
    status = how == "exit" and code or 128 + code,
    stdout = util.read_file(dir .. "/out") or "",
    stderr = util.read_file(dir .. "/err") or "",
  }
end

-- cmd("exec -e ...") -> the shell command running this very binary; with
-- a list of words (cmd{"exec", "-e", code}), each is one argument as it
-- stands, quoted for the shell
function M.cmd(args)
  return util.shell_quote(M.dhsm) .. " " .. command_line(args, "t.cmd")
end

-- run(args [, {state=, env=, stdin=}]) -> {status=, stdout=, stderr=}: this
-- very dhsm with args, its journals, failed-login counts and audit log in
-- a folder of the test's own, never the operator's ~/.local/state (state:
-- that folder, a new one by default; the audit log is STATE/audit.jsonl);
-- env: more "NAME=value" words before the command.
function M.run(args, opts)
  opts = opts or {}
  local q = util.shell_quote
  local state = opts.state or M.tmpdir()
  return M.sh(("XDG_STATE_HOME=%s DHSM_AUDIT=%s %s%s"):format(q(state), q(state .. "/audit.jsonl"),
    opts.env and (opts.env .. " ") or "", M.cmd(args)), opts)
end

return M
