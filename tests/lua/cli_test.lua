-- The command line: commands, options, exit statuses and messages.
local t = require "dhsm.test"
local cjson = require "cjson"
local util = require "dhsm.util"

local here = t.here()
local fixtures = here .. "/../fixtures"
local q = util.shell_quote

local function dhsm_run(args, opts)
  return t.sh(t.cmd(args), opts)
end

-- exit status 2 and exactly one line on stderr containing `text`
local function usage_fails(args, text)
  local r = dhsm_run(args)
  t.eq(r.status, 2, args .. "\n" .. r.stderr)
  t.eq(select(2, r.stderr:gsub("\n", "")), 1, "one line expected:\n" .. r.stderr)
  t.ok(r.stderr:find(text, 1, true), ("%q not in %q"):format(text, r.stderr))
  t.ok(not r.stderr:find("traceback", 1, true))
  return r
end

t.test("bad commands and options are one clear line and status 2", function()
  usage_fails("", "no command given; see 'dhsm --help'")
  usage_fails("frobnicate", "unknown command 'frobnicate'")
  usage_fails("rnu", "unknown command 'rnu' (did you mean 'run'?)")
  usage_fails("run --chek x", "unknown option '--chek' for 'run' (did you mean '--check'?)")
  usage_fails("--nope list", "unknown option '--nope'")
  usage_fails("run", "run needs a PLAYBOOK")
  usage_fails("run no-such-playbook", "no playbook 'no-such-playbook'")
  usage_fails("-I " .. fixtures .. "/playbooks run ecko", "no playbook 'ecko' (did you mean 'echo'?)")
  usage_fails("exec", "exec needs a FILE or -e CODE")
  usage_fails("exec /no/such/file.lua", "cannot read /no/such/file.lua")
  usage_fails("exec -e", "option '-e' needs a value")
  usage_fails("exec -e 'x = = 1'", "unexpected symbol")
  usage_fails("list --yes", "unknown option '--yes' for 'list'")
  usage_fails("help nosuch", "unknown command 'nosuch'")
  usage_fails("test /no/such/dir", "no such file or folder: /no/such/dir")
  usage_fails("-I " .. fixtures .. "/playbooks run broken", "field 'description' must be a string")
  usage_fails("run x --check=yes", "option '--check' takes no value")
end)

t.test("-e values keep quotes, commas and '=' intact", function()
  local value = [[a "quoted", 'b' = c,d]]
  local r = dhsm_run("-I " .. fixtures .. "/playbooks run echo -e " .. q("name=" .. value) .. " -e count=3")
  t.eq(r.status, 0, r.stderr)
  t.eq(cjson.decode(r.stdout), { name = value, count = 3 })
end)

t.test("-e @file.json loads many parameters and bad files are named", function()
  local dir = t.tmpdir()
  t.write(dir .. "/p.json", '{"name": "hsm1", "count": 2}')
  t.write(dir .. "/bad.json", '{"name": ')
  t.write(dir .. "/list.json", '["a"]')
  local r = dhsm_run(("-I %s/playbooks run echo -e @%s/p.json -e name=override"):format(fixtures, dir))
  t.eq(r.status, 0, r.stderr)
  t.eq(cjson.decode(r.stdout), { name = "override", count = 2 })
  local base = "-I " .. fixtures .. "/playbooks run echo "
  usage_fails(base .. "-e @" .. dir .. "/none.json", "cannot read parameters from -e @" .. dir .. "/none.json")
  usage_fails(base .. "-e @" .. dir .. "/bad.json", "-e @" .. dir .. "/bad.json: invalid JSON")
  usage_fails(base .. "-e @" .. dir .. "/list.json", "expected a JSON object of parameters")
  usage_fails(base .. "-e novalue", "-e 'novalue': expected KEY=VALUE or @FILE.json")
  usage_fails(base .. "-e 1x=2", "'1x' is not a parameter name")
end)

t.test("exit statuses: 1 failed, 3 refused by safety, 130 interrupted", function()
  local r = dhsm_run([[exec -e 'dhsm.error{kind="azure", code="Conflict", message="busy"}']])
  t.eq(r.status, 1)
  t.eq(r.stderr, "dhsm: azure/Conflict: busy\n")
  r = dhsm_run([[exec -e 'dhsm.error{kind="safety", message="HSM not zeroized"}']])
  t.eq(r.status, 3)
  t.eq(r.stderr, "dhsm: safety: HSM not zeroized\n")
  r = dhsm_run([[-v exec -e 'dhsm.error{kind="azure", message="x"}']])
  t.ok(r.stderr:find("stack traceback", 1, true), "--verbose shows the traceback")
end)

t.test("Ctrl-C cancels the run, closes what is open and exits 130", function()
  local dir = t.tmpdir()
  local script = t.write(dir .. "/wait.lua", ([[
    local mark = function(name) return setmetatable({}, { __close = function()
      local f = io.open(%q .. "/" .. name, "w") f:write("closed") f:close() end }) end
    local a <close> = mark("root")
    dhsm.spawn(function() local b <close> = mark("child") dhsm.sleep(30) end)
    io.stdout:write("ready\n") io.stdout:flush()
    dhsm.sleep(30)
  ]]):format(dir))
  -- start it, wait until it says "ready", then Ctrl-C
  local r = t.sh(("%s exec %s >%s & pid=$!; for i in $(seq 50); do [ -s %s ] && break; sleep 0.1; done; "
    .. "kill -INT $pid; wait $pid"):format(q(t.dhsm), q(script), q(dir .. "/ready"), q(dir .. "/ready")))
  t.eq(r.status, 130, r.stderr)
  t.eq(r.stderr, "dhsm: interrupted\n")
  t.eq(util.read_file(dir .. "/root"), "closed")
  t.eq(util.read_file(dir .. "/child"), "closed")
end)

t.test("Ctrl-C stops code that never waits, even inside pcall", function()
  local dir = t.tmpdir()
  for _, code in ipairs { "while true do end", "while true do pcall(function() while true do end end) end" } do
    -- Ctrl-C once the loop runs (it printed 'go'), however long the start took
    local out = q(dir .. "/out")
    local r = t.sh(("rm -f %s; %s exec -e %s >%s & pid=$!; while ! [ -s %s ]; do sleep 0.05; done; kill -INT $pid; wait $pid")
      :format(out, q(t.dhsm), q("print('go') io.stdout:flush() " .. code), out, out))
    t.eq(r.status, 130, code .. ": " .. r.stderr)
    t.eq(r.stderr, "dhsm: interrupted\n")
  end
end)

t.test("Ctrl-C that first met code unable to yield: the cancelled task's <close> handlers run to their end", function()
  -- the interrupt meets a Lua callback inside string.gsub (no yield across
  -- that C call): raised there and re-armed every 1000 instructions, it is
  -- swallowed by a pcall; the task then waits, and the loop cancels it: its
  -- cleanup must not be cut short by the re-armed interrupt
  local dir = t.tmpdir()
  local done = dir .. "/closed"
  local code = ([[local c <close> = setmetatable({}, { __close = function()
      local n = 0 for i = 1, 200000 do n = n + i end
      local f = io.open(%q, "w") f:write(n) f:close() end })
    print('go') io.stdout:flush()
    pcall(string.gsub, "x", "x", function() while true do end end)
    dhsm.sleep(30)]]):format(done)
  local out = q(dir .. "/out")
  local r = t.sh(("%s exec -e %s >%s & pid=$!; while ! [ -s %s ]; do sleep 0.05; done; kill -INT $pid; wait $pid")
    :format(q(t.dhsm), q(code), out, out))
  t.eq(r.status, 130, r.stderr)
  t.eq(util.read_file(done), "20000100000", "the <close> handler ran to its end")
end)

t.test("exec runs as a task with its arguments", function()
  local dir = t.tmpdir()
  local script = t.write(dir .. "/s.lua", [[#!/usr/bin/env dhsm
    local a, b = ...
    local task = dhsm.spawn(function() dhsm.sleep(0.01) return a .. "+" .. b end)
    print(task:join(), arg[0]:match("s%.lua$"), #arg)
  ]])
  local r = dhsm_run("exec " .. q(script) .. " one 'two words'")
  t.eq(r.stdout, "one+two words\ts.lua\t2\n", r.stderr)
  r = dhsm_run([[exec -e 'print(...)' x --y]])
  t.eq(r.stdout, "x\t--y\n")
end)

t.test("leftover tasks are cancelled with a warning when exec ends", function()
  local r = dhsm_run([[exec -e 'dhsm.spawn(dhsm.sleep, 10)']])
  t.eq(r.status, 0)
  t.eq(r.stderr, "dhsm: warning: 1 spawned task still running at the end was cancelled\n")
end)

t.test("Lua warnings go to stderr with the dhsm prefix", function()
  local r = dhsm_run([[exec -e 'warn("disk ", "almost full") warn("@off") warn("hidden") warn("@on") warn("back")']])
  t.eq(r.stderr, "dhsm: warning: disk almost full\ndhsm: warning: back\n")
end)

t.test("version names dhsm, Lua, libcurl, libssh2 and OpenSSL", function()
  local r = dhsm_run("version")
  t.eq(r.status, 0)
  local lines = {}
  for l in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = l:match("^(%S+)") end
  t.eq(lines, { "dhsm", "Lua", "libcurl", "libssh2", "OpenSSL" })
  t.eq(dhsm_run("--version").stdout, r.stdout)
end)

t.test("every command has --help, and help COMMAND says the same", function()
  local top = dhsm_run("--help")
  t.eq(top.status, 0)
  for _, name in ipairs { "run", "list", "doc", "repl", "exec", "test", "version", "help" } do
    t.ok(top.stdout:find("\n  " .. name .. " ", 1, true), name .. " missing from --help")
    local r = dhsm_run(name .. " --help")
    t.eq(r.status, 0, name)
    t.ok(r.stdout:find("^usage: dhsm " .. name), r.stdout)
    t.eq(dhsm_run("help " .. name).stdout, r.stdout)
  end
  t.eq(dhsm_run("help --man").status, 2, "the man page is docs/dhsm.1 (tools/man.lua), not a second source")
end)

t.test("list and doc read playbooks from -I folders and DHSM_PATH", function()
  local r = dhsm_run("-I " .. fixtures .. "/playbooks list")
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stdout:find("echo%s+Print the parameters it was given %(test fixture%)%.\n"), r.stdout)
  t.ok(r.stdout:find("broken%s+%(cannot describe"), r.stdout)
  local d = t.sh("DHSM_PATH=/nonexistent:" .. q(fixtures .. "/playbooks") .. " " .. t.cmd("doc echo"))
  t.eq(d.status, 0, d.stderr)
  t.ok(d.stdout:find("Second line of the description.", 1, true))
  t.ok(d.stdout:find("count%s+integer%s+1%s+how many"), d.stdout)
  usage_fails("doc", "doc needs a PLAYBOOK")
end)

t.test("-I and $DHSM_PATH add modules under other names and never shadow dhsm's own", function()
  local r = dhsm_run("-I " .. fixtures .. "/lib exec -e 'print(require(\"site.hello\").marker)'")
  t.eq(r.stdout, "site hello\n", r.stderr)
  r = dhsm_run("-I " .. fixtures .. "/lib exec -e 'print(require(\"dhsm.pretty\").marker)'")
  t.eq(r.stdout, "nil\n", "the embedded dhsm.pretty, not the user folder's copy: " .. r.stderr)
  r = t.sh("DHSM_PATH=" .. q(fixtures .. "/lib") .. " " .. t.cmd("exec -e 'print(require(\"dhsm.pretty\").marker)'"))
  t.eq(r.stdout, "nil\n", r.stderr)
  r = dhsm_run(("-I %s exec -e 'require(%q)'"):format(fixtures .. "/lib", "dhsm" .. ".extra"))  -- no such module
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find("dhsm.* names are dhsm's own", 1, true), r.stderr)
  t.ok(not r.stdout:find("user extra", 1, true), r.stdout)
end)

t.test("package.preload and package.loaded do not reach the modules a safety rule lives in", function()
  -- a runbook's own stand-in for how lunacm lines are read: every line a read
  local code = table.concat({
    'local fake = { lunacm = function() return "read", "role show" end, is_lunacm = function() return true end,',
    '  lunacm_words = function() return {} end, LUNACM_NEW_PASSWORD = {} }',
    'package.preload["dhsm.guard.commands"] = function() return fake end',
    'package.loaded["dhsm.guard.commands"] = fake',
    'local ok, err = pcall(require("dhsm.proc").run, { argv = { "lunacm", "-c", "role", "login", "-name", "co" } })',
    'print(ok, err.code)',
    'package.loaded["dhsm.guard.commands"] = nil',
    'print(require("dhsm.guard.commands") == fake)',
  }, "\n")
  local r = dhsm_run("exec -e " .. q(code))
  t.eq(r.stdout, "false\tUnguardedLogin\nfalse\n", r.stderr)
end)

t.test("every entry point's rules are loaded before a runbook's first line", function()
  -- every entry point's rules are in place before the first line of the
  -- user's code: the LunaSH shell's, PKCS#11's and lunacm's logins, ARM's
  -- deletes and their evidence; through exec, a playbook, a test file and the REPL
  local names = { "dhsm.guard", "dhsm.guard.commands", "dhsm.evidence", "dhsm.luna", "dhsm.pkcs11", "dhsm.proc",
    "dhsm.azure", "dhsm.azure.hsm", "dhsm.azure.groups" }
  local dir = t.tmpdir()
  local out = dir .. "/missing"
  local probe = ("do local f = io.open(%q, 'w'); for _, n in ipairs { %q%s } do f:write(package.loaded[n] and '' "
    .. "or n .. ' ') end; f:write('probed'); f:close() end"):format(out, names[1],
    (", %q"):rep(#names - 1):format(table.unpack(names, 2)))
  t.write(dir .. "/probe.lua", "return { description = 'p', run = function() " .. probe .. " end }\n")
  t.write(dir .. "/probe_test.lua", probe .. "\n")
  for how, args in pairs { exec = "exec -e " .. q(probe), run = "-I " .. q(dir) .. " run probe",
      test = "test " .. q(dir .. "/probe_test.lua"), repl = "repl" } do
    os.remove(out)
    local r = t.run(args, { stdin = how == "repl" and (probe .. "\n") or nil })
    t.eq({ how, util.read_file(out) }, { how, "probed" }, "not loaded before the user's code: " .. r.stderr)
  end
  local r = dhsm_run("exec -e " .. q('package.loaded["dhsm.guard.commands"] = { lunash = function() return "read" end }; '
    .. 'print((require("dhsm.luna").classify("hsm login")))'))
  t.eq(r.stdout, "login:so\n", r.stderr)
end)

t.test("a module that moved is named where it went", function()
  for old, new in pairs { ["dhsm.luna.guard"] = "dhsm.guard", ["dhsm.luna.ha"] = "dhsm.client.ha",
      ["dhsm.net.ntls"] = "dhsm.client.ntls", ["dhsm.luna.cli"] = "dhsm.guard.commands" } do
    local r = dhsm_run(("exec -e 'require(%q)'"):format(old))
    t.eq(r.status, 1, r.stderr)
    t.ok(r.stderr:find(("it is now '%s'"):format(new), 1, true), r.stderr)
    r = dhsm_run(("exec -e 'require(%q)'"):format(new))
    t.eq(r.status, 0, r.stderr)
  end
end)

t.test("a runbook's own Lua error is 'file:line: message', its traceback only with -v", function()
  local dir = t.tmpdir()
  local cases = {
    { "boom.lua", 'local x = 1\nerror("boom")\n', "boom.lua:2: boom" },
    { "nil.lua", "local t\nlocal function f() return t.field + 1 end\nf()\n", "nil.lua:2: attempt to index a nil value" },
    { "table.lua", "error({ code = 1 })\n", "table.lua:1: error object is a table value" },
  }
  for _, c in ipairs(cases) do
    local script = t.write(dir .. "/" .. c[1], c[2])
    local r = dhsm_run("exec " .. q(script))
    t.eq(r.status, 1, r.stderr)
    t.eq(select(2, r.stderr:gsub("\n", "")), 1, "one line expected:\n" .. r.stderr)
    t.ok(r.stderr:find("^dhsm: " .. q(dir):gsub("%p", "%%%0") .. "/" .. c[3]:gsub("%p", "%%%0")), r.stderr)
    r = dhsm_run("-v exec " .. q(script))
    t.eq(r.status, 1, r.stderr)
    t.ok(r.stderr:find("stack traceback:", 1, true), "-v keeps the traceback:\n" .. r.stderr)
  end
  local r = dhsm_run([[exec -e 'local t; print(t.x)']])
  t.eq(r.stderr, "dhsm: (command line):1: attempt to index a nil value (local 't')\n")
  -- an error inside dhsm itself is a bug: its traceback stays
  r = dhsm_run([[exec -e 'require("dhsm.util").trim(nil)']])
  t.ok(r.stderr:find("stack traceback:", 1, true), r.stderr)
end)
