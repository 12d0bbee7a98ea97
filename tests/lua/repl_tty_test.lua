-- The REPL on a real terminal (tmux): prompt, completion, Ctrl-C, history.
local t = require "dhsm.test"
local util = require "dhsm.util"
local tty = require "support.tty"

local q = util.shell_quote

if not tty.available() then
  t.test("tmux is needed for the terminal tests", function() t.skip("tmux is not installed") end)
  return
end

-- A REPL in a private tmux server (support.tty): keys(...) types, screen() reads.
local function terminal(args)
  local term = tty.start(t.cmd("repl " .. (args or "")))
  term.wait_for("dhsm>$")
  return term
end

t.test("the prompt, and Tab completing globals, fields and methods", function()
  local term = terminal()
  term.wait_for("^dhsm %S+ %(Lua 5%.4%)")
  term.keys("dhsm.sle", "Tab")
  term.wait_for("dhsm> dhsm%.sleep")
  term.keys("C-u", "x = { alpha = 1, beta = 2 }", "Enter", "x.al", "Tab", "Enter")
  term.wait_for("dhsm> x%.alpha\n1\n")
  term.keys("cor", "Tab", "Tab")
  term.wait_for("coroutine")
  term.keys("C-u", ":he", "Tab", "Enter")
  term.wait_for("meta%-commands:")
end)

t.test("Ctrl-C cancels a long entry and closes what it opened; the prompt comes back", function()
  local term = terminal()
  local mark = term.dir .. "/closed"
  term.keys(("do local c <close> = setmetatable({}, {__close = function() io.open(%q, 'w'):close() end}) print('run' .. 'ning') dhsm.sleep(60) end"):format(mark), "Enter")
  term.wait_for("\nrunning$")                        -- Ctrl-C once the entry runs
  term.keys("C-c")
  term.wait_for("dhsm: interrupted\ndhsm>$")
  t.ok(io.open(mark), "the <close> handler ran")
  term.keys("1 + 1", "Enter")
  term.wait_for("\n2\ndhsm>$")
  term.keys("half typ", "C-c")                      -- at the prompt: the line goes, the REPL stays
  term.keys("2 + 2", "Enter")
  term.wait_for("\n4\ndhsm>$")
end)

t.test("history: 0600, multi-line entries whole, nothing that names a secret source", function()
  local term = terminal()
  term.keys("for i = 1, 2 do", "Enter", "io.write(i)", "Enter", " end", "Enter")  -- (a bare "end" is the End key)
  term.wait_for("12dhsm>$")
  term.keys("s = secret.value('x')", "Enter")
  term.keys("p = 'prompt'", "Enter")
  term.keys("y = 3", "Enter")
  term.wait_for("dhsm> y = 3\ndhsm>$")
  term.keys("C-d")
  local path = term.dir .. "/dhsm/history"
  t.eventually(function() return (util.read_file(path) or ""):find("y\\040=\\0403", 1, true) end, "the history written")
  t.eq(require("dhsm.sys").stat(path).mode, tonumber("600", 8))
  local h = util.read_file(path)
  t.ok(h:find("for\\040i\\040=\\0401,\\0402\\040do\\012io.write(i)\\012\\040end", 1, true), h)
  t.ok(not h:find("secret", 1, true) and not h:find("prompt", 1, true), h)
  t.ok(h:find("y\\040=\\0403", 1, true), h)
end)

t.test("a pasted tab in the middle of a line stays text", function()
  local term = terminal()
  term.keys("t = 'a", "Tab", "b'", "Enter", "#t", "Enter")             -- inside a string
  term.wait_for("\n3\ndhsm>$")
end)

t.test("with an inventory, HSM names complete inside hsm \"...\"", function()
  local estate = require("support.estate").start { args = "--appliances 1" }
  local term = terminal("-i " .. q(estate.dir .. "/inventory.json"))
  term.keys('s = hsm "h', "Tab")
  term.wait_for('dhsm> s = hsm "hsm1$')
  term.keys('"', "Enter", "s:hsm_show().zeroized", "Enter")
  term.wait_for("\nfalse\ndhsm>$")
  term.keys("p11:find_t", "Tab")                    -- the PKCS#11 proxy completes as the library it loads
  term.wait_for("dhsm> p11:find_token$")
  term.keys("C-u", "s:hsm_s", "Tab")
  term.wait_for("dhsm> s:hsm_show$")
  term.keys("C-u", "s:exch", "Tab")                 -- internals are not offered
  dhsm.sleep(0.3)
  t.ok(term.screen():find("dhsm> s:exch$"), term.screen())
end, { timeout = 60 })

t.test("a destructive module call asks for the target's name", function()
  local term = terminal()
  -- a lunacm stand-in that leaves a mark when it runs: `hagroup deleteGroup` cannot be undone
  local lunacm, mark = term.dir .. "/lunacm", term.dir .. "/deleted"
  t.write(lunacm, ("#!/bin/sh\ntouch %s\necho 'Command Result : No Error'\n"):format(q(mark)), tonumber("755", 8))
  local call = ("require('dhsm.proc').run{argv = {%q, '-c', 'hagroup', 'deleteGroup', '-group', 'g1'}}.ok"):format(lunacm)
  -- a line that stands in for the terminal answers nothing: the question reads the real one
  term.keys("io.stdin = { read = function() return 'g1' end }", "Enter")
  term.keys(call, "Enter")
  term.wait_for("deleteGroup %-group g1 is destructive%. Type g1 to go on:$")
  term.keys("g2", "Enter")
  term.wait_for("not confirmed: run .* was not done")
  t.eq(util.read_file(mark), nil, "lunacm did not run")
  term.keys(call, "Enter")
  term.wait_for("Type g1 to go on:$")
  term.keys("g1", "Enter")
  term.wait_for("g1\ntrue\ndhsm>$")
  t.eq(util.read_file(mark), "", "lunacm ran once, confirmed")
end)

t.test(":run asks for a destructive step's target on the terminal, as dhsm run does", function()
  local term = terminal("-I " .. q(t.here() .. "/../fixtures/playbooks"))
  local out = term.dir .. "/out"
  require("dhsm.sys").mkdir(out)
  term.keys(":run destroy dir=" .. out .. " hsm=h1", "Enter")
  term.wait_for("Step 'zeroize h1' is destructive: it acts on h1%.\nType h1 to go on, anything else to stop:$")
  term.keys("h2", "Enter")
  term.wait_for("did not match h1; nothing was done\n.*as the failed step says above\ndhsm>$")
  t.eq(util.read_file(out .. "/zeroized-h1"), nil, "not confirmed: not done")
  term.keys(":run destroy dir=" .. out .. " hsm=h1", "Enter")
  term.wait_for("Type h1 to go on, anything else to stop:$")
  term.keys("h1", "Enter")
  term.wait_for("run %S+: ok")
  t.eq(util.read_file(out .. "/zeroized-h1"), "", "confirmed: done once")
end)

t.test("background tasks run while the prompt waits", function()
  local term = terminal()
  local tick = term.dir .. "/tick"
  term.keys(("w = dhsm.spawn(function() while true do io.open(%q, 'a'):write('x'):close() dhsm.sleep(0.1) end end)")
    :format(tick), "Enter")
  term.wait_for("\ndhsm>$")                          -- back at the prompt, nothing typed
  local function size() return #(util.read_file(tick) or "") end
  local before = size()
  t.eventually(function() return size() >= before + 5 end, "the watcher writing while the prompt waits", 30)
  term.keys("w:cancel()", "Enter")
  term.wait_for("w:cancel%(%)\ndhsm>$")
end, { timeout = 60 })

t.test("Ctrl-R does not search (and run) another line: it says it is off", function()
  local term = terminal()
  term.keys("print('from ' .. 'history')", "Enter")
  term.wait_for("\nfrom history\ndhsm>$")
  term.keys("C-r")
  term.wait_for("history search with Ctrl%-R/Ctrl%-S is off")
  term.keys("print('typed')", "Enter")
  local screen = term.wait_for("\ntyped\ndhsm>$")
  t.eq(select(2, screen:gsub("\nfrom history\n", "")), 1, "the history line ran once, when it was typed")
end)

t.test("connecting to an appliance that does not answer says so, and the timeout names its option", function()
  local port = require("support.blackhole")()
  local inv = t.tmpdir() .. "/inventory.json"
  t.write(inv, ('{"hsms": [{"name": "dark", "host": "127.0.0.1", "ssh_port": %d, "password": "env:DHSM_NO_PASSWORD",'
    .. ' "connect_timeout": 0.5}]}'):format(port))
  local term = terminal("-i " .. q(inv))
  term.keys('hsm "dark"', "Enter")
  term.wait_for("connecting to dark %(127%.0%.0%.1:" .. port .. "%)…")
  term.wait_for("no answer to the SSH connect within 0%.5 s.*connect_timeout")
  term.wait_for("\ndhsm>$")
end, { timeout = 60 })
