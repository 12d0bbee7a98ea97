-- dhsm.repl: the interactive console (`dhsm repl`).
--
-- Input works like lua.c: an expression prints its value ("return" is tried
-- first), an incomplete statement continues on a second prompt, "=expr"
-- works.  Each entry runs as a task, so waits and dhsm.parallel work, and
-- Ctrl-C cancels only that entry.  Without a terminal there are no prompts
-- and the exit status is that of the last failing entry.
local dhsm = require "dhsm"
local core = require "dhsm.core"
local sys = require "dhsm.sys"
local pretty = require "dhsm.pretty"
local cli = require "dhsm.cli"

local M = {}

local function compile(src)
  local code = src:gsub("^=", "return ")
  local chunk, err = load("return " .. code .. ";", "=stdin", "t")
  if chunk then return chunk end
  return load(code, "=stdin", "t")
end

local function incomplete(err)
  return err and err:find("<eof>$") ~= nil
end

local function read_entry(tty)
  local line = sys.readline(tty and "dhsm> " or "")
  if line == nil then return nil end
  local chunk, err = compile(line)
  while not chunk and incomplete(err) do
    local more = sys.readline(tty and ">> " or "")
    if more == nil then break end
    line = line .. "\n" .. more
    chunk, err = compile(line)
  end
  if tty and line:find("%S") then sys.add_history(line) end
  return line, chunk, err
end

local function print_results(r)
  local parts = {}
  for i = 1, r.n do parts[#parts + 1] = pretty.format(r[i]) end
  if #parts > 0 then io.stdout:write(table.concat(parts, "\t"), "\n") end
  io.stdout:flush()
end

-- Run one entry as its own task; returns nil or the error raised.
local function eval(chunk)
  local task = dhsm.spawn(function() return table.pack(chunk()) end)
  core.set_interrupt_target(task)
  local ok, r = pcall(task.join, task)
  core.set_interrupt_target(nil)
  if ok then
    print_results(r)
    return nil
  end
  cli.report(r, dhsm.verbose and task:traceback() or nil)
  return r
end

function M.run()
  local tty = sys.isatty(0)
  local last_err
  if tty then
    io.stdout:write(("dhsm %s  (%s)  :quit or Ctrl-D to leave\n"):format(dhsm.version, _VERSION))
  end
  while true do
    local line, chunk, err = read_entry(tty)
    if line == nil or line == ":quit" then break end
    if line:find("%S") then
      if chunk then
        last_err = eval(chunk) or last_err
      else
        io.stderr:write("dhsm: ", err, "\n")
        last_err = dhsm.error.new { kind = "usage", message = err }
      end
    end
  end
  if tty then io.stdout:write("\n") end
  return last_err and cli.exit_code(last_err) or 0
end

return M
