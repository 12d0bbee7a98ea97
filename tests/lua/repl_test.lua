-- The REPL with piped input (no terminal): evaluation, multi-line input,
-- errors, tasks, and the exit status of the last error.
local t = require "dhsm.test"
local q = require("dhsm.util").shell_quote

local function repl(input)
  return t.sh(t.cmd("repl"), { stdin = input })
end

t.test("Tab after :doc or :run completes a playbook's name; no other command is taken for them", function()
  local repl = require "dhsm.cli.repl"
  t.eq(repl.complete(":run dec", "dec", {}), { "decommission" })
  t.eq(repl.complete(":doc ini", "ini", {}), { "initialize" })
  for _, c in ipairs(repl.complete(":ron dec", "dec", {}) or {}) do t.ok(c ~= "decommission", ":ron is no :run") end
end)

t.test("expressions print their value, statements print nothing", function()
  local r = repl("1 + 1\nx = 5\n=x * 2\n'text'\n{ b = 2, a = { 1, 2 } }\nnil\n")
  t.eq(r.stdout, '2\n10\n"text"\n{ a = { 1, 2 }, b = 2 }\nnil\n')
  t.eq(r.stderr, "")
  t.eq(r.status, 0)
end)

t.test("incomplete statements continue on the next line", function()
  local r = repl("for i = 1, 3 do\n  io.write(i, ' ')\nend\nlocal function f(a)\nreturn a * 3\nend\n")
  t.eq(r.stdout, "1 2 3 ")
  t.eq(r.status, 0)
end)

t.test("each entry is a task: waits and parallel work", function()
  local r = repl("dhsm.sleep(0.01)\ndhsm.parallel({1, 2, 3}, function(x) dhsm.sleep(0.01) return x * x end)\n")
  t.eq(r.stdout, "{ 1, 4, 9 }\n", r.stderr)
end)

t.test("errors are printed as their message and the status is the last error's", function()
  local r = repl("error('plain')\n1\n")
  t.eq(r.stderr, "dhsm: stdin:1: plain\n")
  t.eq(r.stdout, "1\n")
  t.eq(r.status, 1)
  r = repl("dhsm.error{kind='safety', message='refused'}\n")
  t.eq(r.stderr, "dhsm: safety: refused\n")
  t.eq(r.status, 3)
  r = repl("x = = 2\n")
  t.ok(r.stderr:find("^dhsm: stdin:1: unexpected symbol"), r.stderr)
  t.eq(r.status, 2)
end)

t.test("long output is capped with a note", function()
  local r = repl("local t = {} for i = 1, 500 do t[i] = { i = i, s = ('x'):rep(60) } end return t\n")
  local lines = select(2, r.stdout:gsub("\n", ""))
  t.ok(lines <= 205, lines .. " lines")
  t.ok(r.stdout:find("output capped at 200 lines", 1, true))
end)

-- The REPL on the estate's inventory, fed these lines.
local function repl_with(estate, lines)
  return estate:run("repl", { stdin = table.concat(lines, "\n") .. "\n" })
end

t.test("with an inventory: inv, az, a reused hsm session, check mode and the audit", function()
  local estate = require("support.estate").start { args = "--appliances 1" }
  local r = estate:run("repl", { stdin = table.concat({
    "inv.hsms[1].name",
    "az:get(az:group_path()).status",
    "s = hsm'hsm1'",
    "s == hsm'hsm1'",
    "hsm'hsm1':hsm_show().serial == inv:hsm('hsm1').serial",
    ":check on",
    "hsm'hsm1':run('partition create -partition zz -force').check",
    ":check off",
    ":audit 2",
    ":doc nosuch",
    ":bogus",
  }, "\n") })
  t.eq(r.stderr, "would run 'partition create -partition zz -force' on hsm1\n")
  local lines = {}
  for l in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = l end
  t.eq({ lines[1], lines[2], lines[3], lines[4] }, { '"hsm1"', "200", "true", "true" })
  t.eq(lines[5], "check mode is on: changes are described, not made")
  -- check mode, once on, stays on for the session (what its lines started is in it too)
  t.eq({ lines[6], lines[7], lines[8] }, { "true",
    "check mode stays on until this REPL ends: leave it (Ctrl-D) and start a new one to make changes",
    "check mode is on: changes are described, not made" })
  t.ok(lines[10]:find("check.would", 1, true), r.stdout)
  t.eq({ lines[#lines - 1], lines[#lines] }, { "no playbook 'nosuch'", "unknown meta-command :bogus (:help lists them)" })
end, { timeout = 60 })

t.test("records print as aligned key and value lines", function()
  local r = repl("{ serial = '1880771', firmware = '7.0.3', attempts_left = 3, label = 'a rather long label for one line' }\n")
  t.eq(r.stdout, table.concat({
    'attempts_left  3',
    'firmware       "7.0.3"',
    'label          "a rather long label for one line"',
    'serial         "1880771"',
  }, "\n") .. "\n")
end)

t.test("LunaSH output prints as lines; hsm_show prints the parsed record, raw fields summarised", function()
  local estate = require("support.estate").start { args = "--appliances 1" }
  local r = repl_with(estate, { "hsm'hsm1':run('hsm show').text", "hsm'hsm1':hsm_show()", "hsm'hsm1':hsm_show().fields['Battery Voltage']" })
  t.ok(r.stdout:find("\n   Appliance Details:\n   ==================\n", 1, true), r.stdout)
  t.ok(not r.stdout:find("\\n", 1, true), "no escaped newlines: " .. r.stdout)
  t.ok(r.stdout:find("\nfields%s+<%d+ raw fields>\n"), r.stdout)
  t.ok(r.stdout:find('\nserial%s+"%d+"\n'), r.stdout)
  local record = r.stdout:match("\nattempts_left.*$")
  t.ok(record and not record:find("Battery Voltage", 1, true), "the raw fields are not printed: " .. r.stdout)
  t.ok(r.stdout:find('\n"%d%.%d+ V"\n$'), "asked for, a raw field prints: " .. r.stdout)
end, { timeout = 60 })

t.test("completion offers public methods only, on every object type", function()
  local repl = require "dhsm.cli.repl"
  local estate = require("support.estate").start { args = "--appliances 1" }
  local p11 = require "support.p11"
  local objects = { s = estate:luna_session("hsm1"), c = estate:azure(), n = require("dhsm.net") }
  if p11.available() then
    local hsm = p11.softhsm { "main" }
    objects.lib = hsm:load()
    objects.ps = objects.lib:open { label = "main" }
    t.cleanup(function() objects.ps:close() end)
  end
  for name, v in pairs(objects) do _G[name] = v end
  t.cleanup(function() for name in pairs(objects) do _G[name] = nil end end)
  local function names(word)
    local out = {}
    for _, c in ipairs(repl.complete(word, word, {})) do out[c:match("[%.:]([%w_]*)$")] = true end
    return out
  end
  local expect = {
    ["s:"] = { has = { "run", "must", "hsm_show", "login_so", "get", "put", "close" },
               hidden = { "exchange", "read_until", "send_line", "guard_device", "__close", "__tostring" } },
    ["c:"] = { has = { "get", "put", "delete", "wait", "list", "group_path" },
               hidden = { "fetch_token", "exchange", "retrying", "own_url", "poll", "forget_token", "url" } },
    ["n."] = { has = { "tcp", "tls", "certs", "same_cert" }, hidden = {} },
    ["lib:"] = { has = { "find_token", "tokens", "slots", "open", "info" }, hidden = { "open_slot" } },
    ["ps:"] = { has = { "login", "sign", "generate_ec", "find" }, hidden = { "generate_key", "generate_key_pair", "guard_devices" } },
  }
  for word, e in pairs(expect) do
    if objects[word:match("^(%w+)")] then
      local got = names(word)
      for _, m in ipairs(e.has) do t.ok(got[m], word .. m .. " is completed") end
      for _, m in ipairs(e.hidden) do t.ok(not got[m], word .. m .. " is internal, not completed") end
    end
  end
  -- every name a class declares public is a method it has
  for _, v in pairs(objects) do
    local idx = getmetatable(v) and getmetatable(v).__index
    for _, m in ipairs(type(idx) == "table" and idx.__public or {}) do
      t.eq(type(v[m]), "function", tostring(v) .. ":" .. m)
    end
  end
end, { timeout = 60 })

t.test(":check on holds for what was set up before it: a task that opened its own scope, a pipe, a :doc", function()
  local dir = t.tmpdir()
  local books = dir .. "/books"
  require("dhsm.sys").mkdir(books)
  -- a playbook whose description reaches for dhsm's string library (the strings' metatable)
  t.write(books .. "/evil.lua", [[local mt = getmetatable("")
if mt then mt.__index.lower = function() return "read" end end
return { description = "evil", params = {}, run = function() end }]])
  local r = t.sh(("DHSM_PATH=%s %s"):format(q(books), t.cmd("repl")), { stdin = table.concat({
    ("w = dhsm.spawn(function() local s <close> = require('dhsm.act').check_scope(false) dhsm.sleep(0.5) "
      .. "os.execute('touch %s/task') end)"):format(dir),
    ("p = io.popen('cat > %s/pipe', 'w')"):format(dir),
    ":check on",
    "dhsm.sleep(1)",
    "p:write('written')",
    ":doc evil",
    "('ABC'):lower()",
  }, "\n") .. "\n" })
  t.eq(require("dhsm.sys").stat(dir .. "/task"), nil, "the task started before :check on is in it now: " .. r.stderr)
  t.ok(r.stderr:find("refused writing to the input of 'cat > ", 1, true), r.stderr)
  t.ok(r.stdout:find('\n"abc"\n', 1, true), "dhsm's string library is its own: " .. r.stdout)
end)

-- :run is `dhsm run`'s runner (dhsm.cli.run_playbook): journaled, resumable
-- by the hint it prints, check mode, and the confirmation (no terminal here:
-- refused).  The test playbooks of tests/fixtures/playbooks log what ran.
local playbooks = t.here() .. "/../fixtures/playbooks"

local function repl_in(dir, input)
  return t.sh(("XDG_STATE_HOME=%s DHSM_AUDIT=%s/audit.jsonl %s"):format(q(dir), q(dir),
    t.cmd("-I " .. q(playbooks) .. " repl")), { stdin = input })
end

local function executed(dir)
  local out = {}
  for l in (require("dhsm.util").read_file(dir .. "/executed.log") or ""):gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

t.test("advice inside the REPL names the REPL's form of a parameter (:run ... NAME=...), the CLI's outside", function()
  local dir = t.tmpdir()
  local r = repl_in(dir, ":run typed name=x\n")
  t.ok(r.stderr:find("group: missing, expected string (give :run ... group=... or set azure.resource_group in the "
    .. "inventory)", 1, true), r.stderr)
  t.ok(not r.stderr:find("-e group", 1, true), r.stderr)
  r = t.sh(("XDG_STATE_HOME=%s DHSM_AUDIT=%s/audit.jsonl %s"):format(q(dir), q(dir),
    t.cmd("-I " .. q(playbooks) .. " run typed -e name=x")))
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("(give -e group=... or set azure.resource_group in the inventory)", 1, true), r.stderr)
end)

t.test(":run runs a playbook as dhsm run does: journaled, and its resume hint works as printed", function()
  local dir = t.tmpdir()
  local r = repl_in(dir, (":run steps dir=%s fail_at=2\n"):format(q(dir)))
  t.eq(r.status, 1, r.stderr)
  local id = r.stderr:match("run (%d+T%d+%-%x+) failed")
  t.ok(id, r.stderr)
  t.eq(executed(dir), { "first", "second" })
  t.eq(select(2, r.stderr:gsub("azure/Conflict: busy", "")), 1, "the step's failure, once:\n" .. r.stderr)
  t.ok(r.stderr:find("\ndhsm: azure/Conflict: as the failed step says above\n", 1, true), r.stderr)
  local j = require("cjson").decode(require("dhsm.util").read_file(dir .. "/dhsm/runs/" .. id .. ".json"))
  t.eq({ j.state, j.playbook }, { "failed", "steps" })
  -- the hint, typed in a shell as printed, resumes the REPL's run with its own parameters
  local hint = r.stderr:match("'dhsm (run %S+ %-%-resume %S+)' continues it, with its own parameters")
  t.ok(hint, r.stderr)
  local again = t.sh(("XDG_STATE_HOME=%s DHSM_AUDIT=%s/audit.jsonl %s"):format(q(dir), q(dir), t.cmd(hint)))
  t.ok(again.stderr:find("↷ first (done in an earlier attempt of this run)", 1, true), again.stderr)
  -- and :run --resume in the REPL does the same
  r = repl_in(dir, (":run steps dir=%s fail_at=2 --resume %s\n"):format(q(dir), id))
  t.ok(r.stderr:find("↷ first", 1, true), r.stderr)
  t.eq(executed(dir), { "first", "second", "second", "second" })
  -- two runs in one REPL are two journals
  r = repl_in(dir, (":run steps dir=%s\n:run steps dir=%s\n"):format(q(dir), q(dir)))
  t.eq(r.status, 0, r.stderr)
  local ids = {}
  for run in r.stderr:gmatch("run (%d+T%d+%-%x+): ok") do ids[#ids + 1] = run end
  t.eq(#ids, 2, r.stderr)
  t.ok(ids[1] ~= ids[2], r.stderr)
end, { timeout = 60 })

t.test(":run asks before a destructive step (refused without a terminal), and plans in check mode", function()
  local dir = t.tmpdir()
  local r = repl_in(dir, (":run destroy dir=%s hsm=h1\n"):format(q(dir)))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("step 'zeroize h1' is destructive (target h1) and there is no terminal to confirm it on", 1, true), r.stderr)
  t.eq(require("dhsm.sys").stat(dir .. "/zeroized-h1"), nil)
  r = repl_in(dir, (":run destroy dir=%s hsm=h1 --check\n:check on\n:run destroy dir=%s hsm=h1\n"):format(q(dir), q(dir)))
  t.eq(r.status, 0, r.stderr)
  t.eq(select(2, r.stderr:gsub("would tag h1 as decommissioning", "")), 2, r.stderr)
  t.eq(require("dhsm.sys").stat(dir .. "/zeroized-h1"), nil, "a plan changes nothing")
  r = repl_in(dir, ":run\n:run destroy --yes\n:run nosuch\n")
  t.eq(r.status, 2)
  t.eq(r.stderr, "dhsm: :run needs a PLAYBOOK (:run NAME KEY=VALUE ...); 'dhsm list' shows them\n"
    .. "dhsm: :run: --yes is for `dhsm run`; the REPL asks for each destructive step on its terminal\n"
    .. "dhsm: no playbook 'nosuch'; 'dhsm list' shows the ones on the search path\n")
end, { timeout = 60 })
