-- Check mode cannot lie (dhsm.act): under --check a step body's plain
-- effects are refused, naming the call, and its changes through dhsm are
-- described; the closing line says "nothing was changed" only when nothing
-- was refused.  Each effect is made for real without --check (the fixture
-- is not vacuous), and never with it.
local t = require "dhsm.test"
local util = require "dhsm.util"
local sys = require "dhsm.sys"

local fixtures = t.here() .. "/../fixtures"
local q = util.shell_quote

local function run(dir, args)
  return t.sh(("XDG_STATE_HOME=%s DHSM_AUDIT=%s/audit.jsonl DHSM_PATH=%s %s"):format(q(dir), q(dir),
    q(fixtures .. "/playbooks"), t.cmd(args)))
end

-- A folder holding `keep` (what os.remove and os.rename would take away).
local function folder()
  local dir = t.tmpdir()
  t.write(dir .. "/keep", "kept")
  return dir
end

local function effects(dir, call, flags)
  return run(dir, ("run effects %s -e dir=%s -e call=%s"):format(flags, q(dir), q(call)))
end

-- Whether the folder holds something the fixture made (dir/made, dir/made-XXXXXX).
local function made(dir)
  for _, name in ipairs(sys.readdir(dir) or {}) do
    if name:match("^made") then return name end
  end
end

local function untouched(dir, call)
  t.eq(made(dir), nil, call .. " made nothing")
  t.eq(util.read_file(dir .. "/keep"), "kept", call .. " took nothing away")
end

-- Effects a real run makes and a check-mode run refuses.
local REFUSED = { "os.execute", "io.popen", "io.open", "io.output", "os.remove", "os.rename", "os.tmpname",
  "os.exit", "dhsm.sys.write_file", "dhsm.sys.mkdir", "dhsm.sys.mkdtemp", "dhsm.sys.lock", "dhsm.sys.history_save",
  "dhsm.audit.set_path", "proc.spawn", "pcall(os.execute)", "child task", "reset the tally", "reload the gate",
  "reload the audit log" }
-- Refused in check mode, with no real-run counterpart to show (a write to
-- nowhere, a scope that itself turns check mode on).
local REFUSED_ONLY = { "raw http", "nested scope", "package.loadlib", "binary chunk", "binary loadfile" }
local NAMED = { ["pcall(os.execute)"] = "os.execute", ["child task"] = "os.execute", ["io.open"] = "io.open for writing",
  ["io.output"] = "io.output to a file", ["reset the tally"] = "os.execute", ["nested scope"] = "os.execute",
  ["raw http"] = "dhsm.azure.http PUT", ["binary chunk"] = "load of a binary chunk",
  ["binary loadfile"] = "loadfile of a binary chunk", ["reload the gate"] = "os.execute",
  ["reload the audit log"] = "dhsm.audit.set_path" }

t.test("each plain effect acts in a real run (the fixture is not vacuous)", function()
  for _, call in ipairs(REFUSED) do
    local dir = folder()
    local r = effects(dir, call, "--yes")
    local acted = made(dir) ~= nil or util.read_file(dir .. "/keep") ~= "kept"
      or (call == "os.exit" and r.status == 7)
    t.ok(acted, ("%s acted for real (exit %d): %s"):format(call, r.status, r.stderr))
  end
end, { timeout = 120 })

t.test("under --check each plain effect is refused naming the call, and the closing line says so", function()
  local calls = table.move(REFUSED_ONLY, 1, #REFUSED_ONLY, #REFUSED + 1, table.move(REFUSED, 1, #REFUSED, 1, {}))
  for _, call in ipairs(calls) do
    local dir = folder()
    local r = effects(dir, call, "--check")
    t.eq(r.status, 3, call .. ": " .. r.stderr)
    local named = NAMED[call] or call
    t.ok(r.stderr:find("  refused " .. named, 1, true), call .. ": the step shows the refusal: " .. r.stderr)
    t.ok(r.stderr:find("check mode: 0 changes described, 1 refused", 1, true), call .. ": " .. r.stderr)
    t.ok(not r.stderr:find("nothing was changed", 1, true), call .. " must not claim nothing was changed: " .. r.stderr)
    untouched(dir, call)
  end
end, { timeout = 120 })

t.test("under --check a dhsm.proc command is described, not run; the closing line counts it", function()
  local dir = folder()
  local r = effects(dir, "proc.run", "--check")
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("would run touch " .. dir .. "/made", 1, true), r.stderr)
  t.ok(r.stderr:find("check mode: nothing was changed; 1 change described", 1, true), r.stderr)
  untouched(dir, "proc.run")
  local audit = t.audit_records(dir .. "/audit.jsonl")
  local described
  for _, rec in ipairs(audit) do
    if rec.action == "check.would" then described = rec end
  end
  t.eq({ described.kind, described.change, described.target }, { "proc", "proc.run", "touch" })
end)

t.test("check mode cannot be switched off from inside a check-mode run", function()
  for _, call in ipairs { "dhsm.check_mode = false", "check_scope(false)" } do
    local dir = folder()
    local r = effects(dir, call, "--check")
    t.eq(r.status, 3, call .. ": " .. r.stderr)
    t.ok(r.stderr:find("CheckModeLocked", 1, true), call .. ": " .. r.stderr)
    t.ok(not r.stderr:find("nothing was changed", 1, true), r.stderr)
    untouched(dir, call)
  end
end)

t.test("the run's own scratch folder is dhsm's: written and cleared in check mode, nothing refused", function()
  local dir = folder()
  local r = effects(dir, "scratch", "--check")
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("check mode: nothing was changed; 0 changes described", 1, true), r.stderr)
  untouched(dir, "scratch")
end)

t.test("check mode is a task's: its children are in it, a task beside it is not, and it ends with its scope", function()
  local act = require "dhsm.act"
  local dir = t.tmpdir()
  local inside_child, beside
  local planning = dhsm.spawn(function()
    local scope <close> = act.check_scope(true)
    inside_child = dhsm.spawn(function() return act.checking(), pcall(io.open, dir .. "/child", "w") end)
    dhsm.sleep(0.2)                                  -- the task beside runs meanwhile
    return act.checking()
  end)
  beside = dhsm.spawn(function()
    dhsm.sleep(0.05)
    local f = assert(io.open(dir .. "/beside", "w"))
    f:close()
    return act.checking()
  end)
  t.eq(planning:join(), true)
  t.eq(beside:join(), false, "a task beside the check-mode one is not in check mode")
  local checking, opened = inside_child:join()
  t.eq({ checking, opened }, { true, false }, "the child is in check mode: its write was refused")
  t.ok(sys.stat(dir .. "/beside"), "the task beside wrote")
  t.eq(sys.stat(dir .. "/child"), nil)
  t.eq(act.checking(), false, "closed with its scope")
end)

-- The confirmation of a destructive step covers its own target's changes only.
t.test("a confirmed step covers the gate's question for its own target, not another's", function()
  local function on_terminal(dir, call, answers)
    local cmd = ("XDG_STATE_HOME=%s DHSM_AUDIT=%s/audit.jsonl DHSM_PATH=%s %s"):format(q(dir), q(dir),
      q(fixtures .. "/playbooks"), t.cmd(("run effects -e dir=%s -e call=%s"):format(q(dir), q(call))))
    local feed = {}
    for i, a in ipairs(answers) do feed[i] = ("sleep 0.7; printf '%s\\n'"):format(a) end
    return t.sh(("(%s) | script -qec %s /dev/null"):format(table.concat(feed, "; "), q(cmd)))
  end
  local dir = folder()
  local r = on_terminal(dir, "destroy own", { "fixture" })
  t.eq(util.read_file(dir .. "/keep"), nil, "one answer, for the step: the change to its own target went ahead\n" .. r.stdout)
  local covered
  for _, rec in ipairs(t.audit_records(dir .. "/audit.jsonl")) do
    if rec.action == "confirm" and rec.outcome == "covered by the confirmed step" then covered = rec end
  end
  t.ok(covered and covered.target, "the audit log says the step's confirmation covered it")
  dir = folder()
  r = on_terminal(dir, "destroy other", { "fixture", "nope" })
  t.ok(r.stdout:find("remove " .. dir .. "/keep is destructive. Type other to go on:", 1, true), r.stdout)
  t.ok(r.stdout:find("not confirmed: remove " .. dir .. "/keep was not done", 1, true), r.stdout)
  t.eq(util.read_file(dir .. "/keep"), "kept", "another target's change is asked for: a wrong answer stops it")
  dir = folder()
  r = on_terminal(dir, "destroy other", { "fixture", "other" })
  t.eq(util.read_file(dir .. "/keep"), nil, "confirmed in its turn, it went ahead\n" .. r.stdout)
end, { timeout = 60 })

t.test("nor can a run escape it: a task cut from its parent's context, ctx.check set to false", function()
  for call, expect in pairs { ["cut the context"] = "protected metatable", ["ctx.check = false"] = "ctx.check is read-only" } do
    local dir = folder()
    local r = effects(dir, call, "--check")
    t.ok(r.status ~= 0, call .. ": " .. r.stderr)
    t.ok(r.stderr:find(expect, 1, true), call .. ": " .. r.stderr)
    t.ok(not r.stderr:find("nothing was changed", 1, true), r.stderr)
    untouched(dir, call)
    t.eq(sys.stat(dir .. "/dhsm/runs"), nil, call .. ": a plan is not journaled")
  end
end)

-- dir/bin/vtl: a program named like the client's tool that makes dir/made.
local function fake_vtl(dir)
  sys.mkdir(dir .. "/bin")
  t.write(dir .. "/bin/vtl", ("#!/bin/sh\ntouch %s/made\n"):format(q(dir)), tonumber("755", 8))
end

-- A fake vtl that the playbook case runs as `vtl WORD` in check mode: described, not run.
local function fake_vtl_described(case, word)
  local dir = folder()
  fake_vtl(dir)
  local r = effects(dir, case, "--check")
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("would run " .. dir .. "/bin/vtl " .. word, 1, true), r.stderr)
  untouched(dir, case)
  return dir
end

t.test("a program only named like a read-only tool is described in check mode, not run", function()
  local dir = fake_vtl_described("fake vtl", "show")
  local r = effects(dir, "fake vtl", "--yes")
  t.eq({ r.status, made(dir) }, { 0, "made" }, "run for real, it acts (and passed the gate): " .. r.stderr)
end)

t.test("a finaliser at the exit of a check-mode process is in check mode too", function()
  local dir = folder()
  local r = effects(dir, "finaliser", "--check")
  t.eq(r.status, 0, r.stderr)
  untouched(dir, "a finaliser")
  r = effects(dir, "finaliser", "--yes")
  t.eq(made(dir), "made", "the same finaliser acts in a real run: " .. r.stderr)
end)

t.test("a refusal caught and then a failure: the run still exits 3 and says refused", function()
  local dir = folder()
  local r = effects(dir, "refused then failed", "--check")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("check mode: 0 changes described, 1 refused, 1 step failed", 1, true), r.stderr)
  t.ok(r.stderr:find("and then: lua", 1, true), "the failure is named too: " .. r.stderr)
  untouched(dir, "refused then failed")
end)

t.test("an inventory a run builds does not make a program the real client tool", function()
  fake_vtl_described("tool of a made inventory", "verify")
end)

t.test("a handle opened before check mode, or the default output set then, writes nothing in it", function()
  local act = require "dhsm.act"
  local dir = t.tmpdir()
  local f = assert(io.open(dir .. "/handle", "w"))
  local before_output = io.output()
  io.output(dir .. "/default")
  local checking = act.check_scope(true)
  local wrote = pcall(f.write, f, "x")
  local wrote_default = pcall(io.write, "x")
  checking:close()
  io.output(before_output)
  f:close()
  t.eq({ wrote, wrote_default }, { false, false })
  t.eq({ util.read_file(dir .. "/handle"), util.read_file(dir .. "/default") }, { "", "" })
end)

t.test("a playbook cannot say --yes for itself", function()
  local dir = folder()
  local r = run(dir, ("run effects -e dir=%s -e call=%s -e yes_hack=true"):format(q(dir), q("destroy own")))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("no terminal to confirm it on", 1, true), r.stderr)
  t.eq(util.read_file(dir .. "/keep"), "kept")
end)

t.test("a scratch folder is made where dhsm makes them: its prefix is a name, not a path", function()
  for _, prefix in ipairs { "../x-", "a/b-", "/tmp/x-", "..", "" } do
    t.raises(function() require("dhsm.act").scratch_dir(prefix) end, "the prefix is a name")
  end
  do
    local dir, gone <close> = require("dhsm.act").scratch_dir("dhsm-ok-")
    t.ok(require("dhsm.act").is_private(dir .. "/f"), dir)
  end
end)

t.test("a dangling link in dhsm's own folder does not make a write through it dhsm's own", function()
  local act = require "dhsm.act"
  local outside = t.tmpdir() .. "/escaped"
  local dir, gone <close> = act.scratch_dir("dhsm-link-")
  t.sh(("ln -s %s %s/planted"):format(q(outside), q(dir)))
  local checking = act.check_scope(true)
  local ok = pcall(io.open, dir .. "/planted", "w")
  checking:close()
  t.eq(ok, false)
  t.eq(sys.stat(outside), nil, "nothing was created through the link")
end)
