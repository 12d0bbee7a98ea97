-- A command on a real terminal: a private tmux server, so a test can type
-- what an operator types (a confirmation, Ctrl-C) and read the screen.
--
--   local tty = require "support.tty"
--   if not tty.available() then ... end
--   local term = tty.start(t.cmd("repl"), { env = "FOO=1" })
--   term.wait_for("dhsm>$"); term.keys("1+1", "Enter"); term.screen()
local t = require "dhsm.test"
local util = require "dhsm.util"

local M = {}
local q = util.shell_quote

function M.available()
  return os.execute("command -v tmux >/dev/null 2>&1") == true
end

-- start(cmd [, {env=, keep=}]) -> term, cmd running in a 150x40 window with a
-- state folder and HOME of its own (term.dir); the server goes with the test.
function M.start(cmd, opts)
  opts = opts or {}
  local dir = t.tmpdir()
  local sock = "dhsm-test-" .. require("dhsm.sys").random_hex(4)
  local tm = "tmux -L " .. sock
  local line = ("env XDG_STATE_HOME=%s HOME=%s TERM=xterm %s%s"):format(q(dir), q(dir),
    opts.env and (opts.env .. " ") or "", cmd)
  -- keep: the window stays once the command ends, its exit status shown last ([exit N])
  if opts.keep then line = ("sh -c %s"):format(q(line .. '; echo "[exit $?]"; exec sleep 600')) end
  t.sh(("%s new-session -d -s r -x 150 -y 40 %s"):format(tm, q(line)))
  t.cleanup(function() t.sh(tm .. " kill-server") end)
  local term = { dir = dir }
  function term.keys(...)
    local words = {}
    for i, k in ipairs { ... } do words[i] = q(k) end
    t.sh(("%s send-keys -t r %s"):format(tm, table.concat(words, " ")))
  end
  -- the screen without trailing blanks (capture-pane drops them anyway) and empty last lines
  function term.screen()
    local lines = {}
    for l in (t.sh(tm .. " capture-pane -p -t r").stdout .. "\n"):gmatch("([^\n]*)\n") do
      lines[#lines + 1] = l:gsub("%s+$", "")
    end
    while #lines > 0 and lines[#lines] == "" do lines[#lines] = nil end
    return table.concat(lines, "\n")
  end
  -- wait until the screen shows pattern (a Lua pattern)
  function term.wait_for(pattern, timeout)
    local deadline = dhsm.now() + (timeout or 5)
    repeat
      local s = term.screen()
      if s:find(pattern) then return s end
      dhsm.sleep(0.05)
    until dhsm.now() > deadline
    error(("the screen never showed %q:\n%s"):format(pattern, term.screen()), 2)
  end
  return term
end

return M
