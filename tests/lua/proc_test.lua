-- dhsm.proc: local tools without a shell, on the scheduler.
local t = require "dhsm.test"
local proc = require "dhsm.proc"
local util = require "dhsm.util"

t.test("run captures stdout, stderr, status and duration", function()
  local r = proc.run { argv = { "sh", "-c", "echo out; echo err >&2; exit 3" } }
  t.eq({ r.stdout, r.stderr, r.status, r.signal }, { "out\n", "err\n", 3, nil })
  t.ok(r.duration >= 0 and r.duration < 5)
end)

t.test("argv is not interpreted by a shell", function()
  local r = proc.run { argv = { "printf", "%s|", "a b", "$HOME", "'q'", ";ls" } }
  t.eq(r.stdout, "a b|$HOME|'q'|;ls|")
end)

t.test("stdin, env (secrets allowed) and cwd", function()
  local dir = t.tmpdir()
  local r = proc.run { argv = { "sh", "-c", 'read line; echo "$line/$PW/$(pwd)"' },
    stdin = { "from ", dhsm.secret.value("stdin-secret"), "\n" },
    env = { PW = dhsm.secret.value("env-secret"), HOME = false }, cwd = dir }
  t.eq(r.stdout, "from stdin-secret/env-secret/" .. dir .. "\n")
  t.eq(proc.run { argv = { "sh", "-c", 'echo "${HOME-unset}"' }, env = { HOME = false } }.stdout, "unset\n")
end)

t.test("secrets never go to argv", function()
  t.raises(function() proc.run { argv = { "echo", dhsm.secret.value("x") } } end,
    "argv%[2%] is a secret; pass secrets through stdin or env")
end)

t.test("runs overlap in dhsm.parallel", function()
  local t0 = dhsm.now()
  local r = dhsm.parallel({ 1, 2, 3, 4, 5 }, function(i)
    return proc.run { argv = { "sh", "-c", "sleep 0.3; echo " .. i } }.stdout
  end)
  t.eq(r, { "1\n", "2\n", "3\n", "4\n", "5\n" })
  t.ok(dhsm.now() - t0 < 1.2, ("5 x 0.3 s took %.2f s"):format(dhsm.now() - t0))
end)

t.test("a timeout kills the whole process group and keeps what was captured", function()
  local dir = t.tmpdir()
  local pidfile = dir .. "/grandchild"
  local err = t.raises(function()
    proc.run { argv = { "sh", "-c", "echo started; sleep 30 & echo $! > " .. pidfile .. "; wait" }, timeout = 0.3 }
  end, "ProcessTimeout")
  t.eq(err.kind, "timeout")
  t.eq(err.stdout, "started\n")
  local pid = util.read_file(pidfile):match("%d+")
  t.eventually(function()                 -- gone, or a zombie nobody reaped yet
    local stat = util.read_file("/proc/" .. pid .. "/stat")
    return stat == nil or stat:match("^%d+ %b() Z")
  end, "the grandchild killed too")
end)

t.test("a signal is reported as such", function()
  local r = proc.run { argv = { "sh", "-c", "kill -TERM $$" } }
  t.eq({ r.signal, r.status }, { 15, 143 })
end)

t.test("bad input names what was wrong", function()
  t.raises(function() proc.run { argv = {} } end, "'argv' is empty")
  t.raises(function() proc.run { argv = "ls" } end, "proc.run: argv: expected a list of strings")
  t.raises(function() proc.run { argv = { "/no/such/tool" } } end, "cannot run /no/such/tool: No such file or directory")
  t.raises(function() proc.run { argv = { "true" }, stdin = 42 } end, "proc.run: stdin: expected a string or a secret %(dhsm.secret%) or a table, got a number %(not shown%)")
  t.raises(function() proc.run { argv = { "true" }, env = { X = {} } } end, "env.X must be a string, a secret or false")
  t.raises(function() proc.run("ls") end, "proc.run: expected a table of options")
end)

t.test("a lunacm read gets no answer on its stdin: hagroup listGroups would log in to every member with it", function()
  t.raises(function() proc.run { argv = { "/nonexistent/lunacm", "-c", "hagroup", "listGroups" }, stdin = "wrong-pin\n" } end,
    "UnguardedLogin")
  t.raises(function() proc.run { argv = { "/nonexistent/lunacm", "-c", "hagroup", "listGroups" },
    stdin = { dhsm.secret.value("wrong-pin"), "\n" } } end, "UnguardedLogin")
end)

t.test("read-only is the tool itself, run as itself: not a file named so, not with an environment that changes it", function()
  local dir = t.tmpdir()
  t.write(dir .. "/vtl", "#!/bin/sh\nexit 0\n", tonumber("755", 8))
  t.eq(proc.read_only { dir .. "/vtl", "verify" }, false, "a file called vtl")
  t.eq(proc.read_only({ "./vtl", "verify" }, { cwd = dir }), false, "relative to the child's cwd")
  t.eq(proc.read_only({ "az", "account", "show" }, { env = { LD_PRELOAD = "/x.so" } }), false, "with LD_PRELOAD")
  t.eq(proc.read_only { "az", "group", "delete" }, false, "a write")
end)

t.test("spawn: an interactive tool driven expect-style", function()
  local p <close> = proc.spawn { argv = { "sh", "-c",
    'printf "name? "; read n; printf "hello %s\\nbye> " "$n"; read x; echo "got $x"' } }
  t.eq(p:read_until("name%? ", 5), "name? ")
  p:write("dhsm\n")
  t.eq(p:read_until("bye> ", 5), "hello dhsm\nbye> ")
  p:write(dhsm.secret.value("quiet\n"))
  t.eq(p:read_until("\n", 5), "got quiet\n")
  t.eq(p:read(1), nil)
  t.eq(p:wait(5).status, 0)
  local q <close> = proc.spawn { argv = { "sleep", "10" } }
  t.raises(function() q:read_until("never", 0.2) end, "ProcessTimeout")
  q:kill()
  t.eq(q:wait(5).signal, 15)
end)

t.test("writing to a tool that stopped reading is an error, not a hang", function()
  local p <close> = proc.spawn { argv = { "sh", "-c", "exec 0<&-; sleep 5" } }
  dhsm.sleep(0.1)
  t.raises(function() p:write(("x"):rep(1 << 20)) end, "BrokenPipe")
  p:kill()
  t.raises(function() p:close_stdin() p:write("more") end, "its input is closed")
end)

t.test("every run is audited with its argv", function()
  local dir = t.tmpdir()
  dhsm.audit.set_path(dir .. "/a.jsonl")
  t.cleanup(function() dhsm.audit.set_path(nil) end)
  proc.run { argv = { "true", "x" } }
  local line = util.read_file(dir .. "/a.jsonl")
  t.ok(line:find('"action":"proc.run"', 1, true) and line:find('"command":"true x"', 1, true), line)
end)

t.test("a lunacm that has acted is read and audited whatever else it printed (a 5000-byte line)", function()
  local dir = t.tmpdir()
  local fake = t.write(dir .. "/lunacm", "#!/bin/sh\nprintf '%05000d\\n' 0\necho 'Command Result : No Error'\n",
    tonumber("755", 8))
  local audit = t.audit_log()
  local r = proc.run { argv = { fake, "-c", "hagroup", "recover", "-group", "g" } }
  t.eq({ r.ok, r.code }, { true, nil })
  local runs = {}
  for _, rec in ipairs(t.audit_records(audit)) do
    if rec.action == "proc.run" then runs[#runs + 1] = rec.outcome end
  end
  t.eq(runs, { "sending", "No Error" }, "a change: its intent (dhsm.act), then lunacm's word")
end)
