-- `dhsm exec`: the inventory (-i), --json, and the confirmation of
-- destructive module calls (the REPL's, with --yes for automation).
-- What reached the appliance is read from the estate's own log.
local t = require "dhsm.test"
local cjson = require "cjson"
local util = require "dhsm.util"

local q = util.shell_quote
local estate = require("support.estate").start { args = "--appliances 1" }
local inventory = estate.dir .. "/inventory.json"

local function exec(args, opts)
  return t.sh(t.cmd(args), opts)
end

t.test("exec -i loads the inventory and gives the runbook what the REPL has", function()
  local code = [[return { hsm = inv.hsms[1].name, same = dhsm.inventory() == inv, az = az ~= nil,
    zeroized = hsm("hsm1"):hsm_show().zeroized, secret = secret ~= nil }]]
  local r = exec("-i " .. q(inventory) .. " exec --json -e " .. q(code))
  t.eq(r.status, 0, r.stderr)
  t.eq(cjson.decode(r.stdout), { hsm = "hsm1", same = true, az = true, zeroized = false, secret = true })
  r = t.sh("DHSM_INVENTORY=" .. q(inventory) .. " " .. t.cmd("exec -e 'print(inv.hsms[1].name)'"))
  t.eq(r.stdout, "hsm1\n", r.stderr)
end, { timeout = 60 })

t.test("exec refuses a missing or bad inventory with status 2, naming the problem", function()
  local r = exec("-i /no/such/inventory.json exec -e 'print(1)'")
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("cannot read inventory /no/such/inventory.json", 1, true), r.stderr)
  t.eq(r.stdout, "", "the runbook did not run")
  local dir = t.tmpdir()
  t.write(dir .. "/bad.json", '{"hsms": [{"name": "a", "ssh_port": "22x"}]}')
  r = exec("-i " .. q(dir .. "/bad.json") .. " exec -e 'print(1)'")
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("hsms[1].ssh_port", 1, true), r.stderr)
  t.ok(r.stderr:find("hsms[1].host: missing", 1, true), r.stderr)
  t.eq(r.stdout, "")
end)

t.test("exec --json prints what the runbook returns, and only that, on stdout", function()
  local dir = t.tmpdir()
  t.write(dir .. "/book.lua", [[
print("chatter goes to stderr")
local squares = dhsm.parallel({ 1, 2, 3 }, function(x) return x * x end)
return { squares = squares, name = ..., nested = { ok = true } }
]])
  local r = exec("exec --json " .. q(dir .. "/book.lua") .. " hsm7")
  t.eq(r.status, 0, r.stderr)
  t.eq(cjson.decode(r.stdout), { squares = { 1, 4, 9 }, name = "hsm7", nested = { ok = true } })
  t.ok(r.stderr:find("chatter goes to stderr", 1, true), r.stderr)
  t.ok(r.stdout:find('"squares":[1,4,9]', 1, true), "parallel's results are a JSON array: " .. r.stdout)
end)

local REGEN = [[hsm("hsm1"):run("sysconf regenCert -force")]]

t.test("a destructive call from exec without a terminal and without --yes is refused and audited", function()
  local audit = t.tmpdir() .. "/audit.jsonl"
  local before = #estate:mutations("regenCert")
  local r = exec(("--audit %s -i %s exec -e %s"):format(q(audit), q(inventory), q(REGEN)), { stdin = "hsm1\n" })
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("run 'sysconf regenCert -force' on hsm1 is destructive (hsm1) and there is no terminal to confirm it on; "
    .. "nothing was done (pass --yes to confirm in advance)", 1, true), r.stderr)
  t.eq(#estate:mutations("regenCert"), before, "nothing reached the appliance")
  local confirms = {}
  for _, rec in ipairs(t.audit_records(audit)) do
    if rec.action == "confirm" then confirms[#confirms + 1] = { rec.target, rec.outcome } end
  end
  t.eq(confirms, { { "hsm1", "refused (no terminal)" } })
end, { timeout = 60 })

t.test("exec --yes confirms in advance: the call is made and the audit log says so", function()
  local audit = t.tmpdir() .. "/audit.jsonl"
  local before = #estate:mutations("regenCert")
  local r = exec(("--audit %s -i %s exec --yes -e %s"):format(q(audit), q(inventory), q(REGEN)))
  t.eq(r.status, 0, r.stderr)
  t.eq(#estate:mutations("regenCert"), before + 1, "the appliance got the command once")
  local confirm
  for _, rec in ipairs(t.audit_records(audit)) do
    if rec.action == "confirm" then confirm = rec end
  end
  t.eq({ confirm.target, confirm.outcome }, { "hsm1", "skipped (--yes)" })
end, { timeout = 60 })

if os.execute("command -v tmux >/dev/null 2>&1") ~= true then
  t.test("tmux is needed for the terminal test", function() t.skip("tmux is not installed") end)
  return
end

-- cmd on a terminal of its own: a tmux server on a socket of its own, so
-- no session meets a server another one is still shutting down (killing a
-- server and starting the next on the same socket raced under load).
local function terminal(cmd)
  local tm = "tmux -L dhsm-exec-" .. require("dhsm.sys").random_hex(6)
  t.cleanup(function() t.sh(tm .. " kill-server") end)
  t.sh(("%s new-session -d -s r -x 200 -y 40 %s"):format(tm, q(cmd)))
  local term = {}
  function term.screen() return t.sh(tm .. " capture-pane -p -t r").stdout end
  function term.keys(...) t.sh(tm .. " send-keys -t r " .. table.concat({ ... }, " ")) end
  function term.wait_for(text)
    local ok = pcall(t.eventually, function() return term.screen():find(text, 1, true) end, text, 30)
    t.ok(ok, ("after 30 s the screen does not show %q; it shows:\n%s"):format(text, term.screen()))
  end
  return term
end

t.test("on a terminal, exec asks for the target's name: a wrong answer stops, the right one acts", function()
  local dir = t.tmpdir()
  local before = #estate:mutations("regenCert")
  local cmd = ("env XDG_STATE_HOME=%s TERM=xterm sh -c %s"):format(q(dir), q(t.cmd(("-i %s exec -e %s"):format(
    q(inventory), q(REGEN .. " print('regen done')"))) .. "; echo exit=$?; sleep 600"))
  local wrong = terminal(cmd)
  wrong.wait_for("is destructive. Type hsm1 to go on:")
  wrong.keys("hsm2", "Enter")
  wrong.wait_for("exit=3")
  t.ok(wrong.screen():find("not confirmed: run 'sysconf regenCert -force' on hsm1 was not done", 1, true), wrong.screen())
  t.eq(#estate:mutations("regenCert"), before, "a wrong name sends nothing")
  local right = terminal(cmd)
  right.wait_for("is destructive. Type hsm1 to go on:")
  right.keys("hsm1", "Enter")
  right.wait_for("exit=0")
  t.ok(right.screen():find("regen done", 1, true), right.screen())
  t.eq(#estate:mutations("regenCert"), before + 1)
end, { timeout = 120 })

-- The routes that used to act unconfirmed from exec: each is refused without
-- a terminal and without --yes, and nothing reaches the estate (its own log).
t.test("exec asks before zeroize by failed logins and lunacm's deleteGroup, as before hsm zeroize", function()
  local function count(pattern)
    local n = 0
    for _, m in ipairs(estate:log()) do if m:find(pattern) then n = n + 1 end end
    return n
  end
  local logins, deletes = count("lunash: hsm login"), count("deleteGroup")
  local zeroize = "return hsm('hsm1'):zeroize_by_failed_logins(inv:hsm('hsm1').serial, { zeroize = true })"
  local r = exec(("-i %s exec -e %s"):format(q(inventory), q(zeroize)))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("send 3 wrong HSM SO login(s) to hsm1 (serial ", 1, true) and r.stderr:find("is destructive (hsm1) and "
    .. "there is no terminal to confirm it on", 1, true), r.stderr)
  local group = "require('dhsm.client.ha').client(inv):must('hagroup', 'deleteGroup', '-label', 'myHA')"
  r = exec(("-i %s exec -e %s"):format(q(inventory), q(group)))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("deleteGroup -label myHA is destructive (myHA) and there is no terminal", 1, true), r.stderr)
  t.eq({ count("lunash: hsm login"), count("deleteGroup") }, { logins, deletes }, "nothing reached the estate")
  local s = estate:luna_session("hsm1")
  t.eq(s:hsm_show().attempts_left, 3, "hsm1's HSM SO still has every attempt")
end, { timeout = 60 })

-- The question cannot be skipped from the runbook's side: the policy and
-- the step's cover are dhsm.act's own, not fields of the context.
t.test("a runbook cannot answer the question for itself: context fields, the policy, the runner's cover", function()
  local before = #estate:mutations("regenCert")
  for _, code in ipairs {
    [[dhsm.context().confirmed_target = "hsm1"; dhsm.context().confirm = function() end; ]] .. REGEN,
    [[require("dhsm.act").confirm_policy(true); ]] .. REGEN,
    [[local c <close> = require("dhsm.act").cover(nil, "hsm1"); ]] .. REGEN,
    [[local c <close> = require("dhsm.act").cover(require("dhsm.act").runner_key(), "hsm1"); ]] .. REGEN,
  } do
    local r = exec(("-i %s exec -e %s"):format(q(inventory), q(code)))
    t.eq(r.status, 3, code .. "\n" .. r.stderr)
    t.ok(r.stderr:find("NotConfirmed", 1, true) or r.stderr:find("PolicySet", 1, true)
      or r.stderr:find("NotTheRunner", 1, true) or r.stderr:find("RunnerKeyTaken", 1, true), r.stderr)
  end
  -- nor through the REPL without a terminal, nor by running a playbook with yes=true itself
  local r = estate:run("repl", { stdin = [[require("dhsm.act").confirm_policy(true)]] .. "\n" .. REGEN .. "\n" })
  t.ok(r.stderr:find("PolicySet", 1, true) and r.stderr:find("NotConfirmed", 1, true), r.stderr)
  local fixture = t.here() .. "/../fixtures/playbooks/destroy.lua"
  local dir = t.tmpdir()
  r = exec(("-i %s exec -e %s"):format(q(inventory), q(([[local play = require("dhsm.play")
local pb = play.load(require("dhsm.paths").find_playbook(%q))
return play.run(pb, { dir = %q, hsm = "hsm1" }, { yes = true })]]):format(fixture, dir))))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("no terminal to confirm it on", 1, true), r.stderr)
  t.eq(require("dhsm.sys").stat(dir .. "/zeroized-hsm1"), nil, "the destructive step did not run")
  t.eq(#estate:mutations("regenCert"), before, "nothing reached the appliance")
end, { timeout = 60 })

t.test("the question names the command as LunaSH reads it, a password masked and nothing else", function()
  local r = exec(("-i %s exec -e %s"):format(q(inventory), q([[hsm("hsm1"):run("par del -par keepme -f")]])))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("run 'partition delete -par keepme -f' on hsm1 is destructive (hsm1)", 1, true), r.stderr)
  r = exec(("-i %s exec -e %s"):format(q(inventory), q([[hsm("hsm1"):run("hsm init -label x -pass Sup3rSecret -f")]])))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("run 'hsm init -label x -pass **** -f' on hsm1 is destructive", 1, true), r.stderr)
  t.ok(not r.stderr:find("Sup3rSecret", 1, true), "the password is never shown")
  -- -p abbreviates -partition as often as -password: outside a login the partition is shown
  r = exec(("-i %s exec -e %s"):format(q(inventory), q([[hsm("hsm1"):run("partition delete -p prodkeys -f")]])))
  t.ok(r.stderr:find("run 'partition delete -p prodkeys -f' on hsm1 is destructive", 1, true), r.stderr)
end, { timeout = 60 })

-- Masked by position: the value of every option the command reads as a
-- secret, however short (hsm init's -p is -password, -d -domain; regenCert's -d is -days).
t.test("the secrets of an abbreviated command are masked by what LunaSH reads, and the command shown by its name", function()
  local cases = {
    { [[hsm init -l x -p Sup3rSecret -d dom1 -f]], "run 'hsm init -l x -p **** -d **** -f' on hsm1" },
    { [[hsm ini -l x -passw "Sup3r Secret" -f]], "run 'hsm init -l x -passw **** -f' on hsm1" },
    { [[sysconf regen -d 365 -f]], "run 'sysconf regenCert -d 365 -f' on hsm1" },
    { [[par del -par keepme -f]], "run 'partition delete -par keepme -f' on hsm1" },
  }
  local before = #estate:mutations()
  for _, c in ipairs(cases) do
    local r = exec(("-i %s exec -e %s"):format(q(inventory), q(([[hsm("hsm1"):run(%q)]]):format(c[1]))))
    t.eq(r.status, 3, r.stderr)
    t.ok(r.stderr:find(c[2] .. " is destructive (hsm1)", 1, true), r.stderr)
    t.ok(not r.stderr:find("Sup3r", 1, true) and not r.stderr:find("dom1", 1, true), r.stderr)
  end
  -- the REPL asks the same way
  local r = exec(("-i %s repl"):format(q(inventory)), { stdin = [[hsm("hsm1"):run("hsm init -l x -p Sup3rSecret -d dom1 -f")]] .. "\n" })
  t.ok(r.stderr:find("run 'hsm init -l x -p **** -d **** -f' on hsm1 is destructive (hsm1)", 1, true), r.stderr)
  t.ok(not r.stderr:find("Sup3r", 1, true) and not r.stderr:find("dom1", 1, true), r.stderr)
  t.eq(#estate:mutations(), before, "nothing reached the appliance")
end, { timeout = 60 })

t.test("a power-off is asked for: only Microsoft powers the appliance on again", function()
  local r = exec(("-i %s exec -e %s"):format(q(inventory),
    q([[hsm("hsm1"):run("sysconf appliance poweroff", { allow_without_reboot_fix = true })]])))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("is destructive (hsm1) and there is no terminal", 1, true), r.stderr)
  t.eq(#estate:mutations("poweroff"), 0)
end, { timeout = 60 })

t.test("audit init is asked for, and its cloning domain is never shown", function()
  local before = #estate:mutations("audit init")
  local r = exec(("-i %s exec -e %s"):format(q(inventory),
    q([[hsm("hsm1"):run("audit init -password Audit#Pass123 -domain dom1 -force")]])))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("run 'audit init -password **** -domain **** -force' on hsm1 is destructive", 1, true), r.stderr)
  t.ok(not r.stderr:find("dom1", 1, true) and not r.stderr:find("Audit#Pass123", 1, true), r.stderr)
  t.eq(#estate:mutations("audit init"), before)
end, { timeout = 60 })

-- The refusal's advice is the front end's: `--yes` where the command takes
-- it, and from the REPL (which has none) the commands that do; typed, the
-- advice works.
t.test("a destructive call without a terminal: the advice fits the front end, and typed it works", function()
  local before = #estate:mutations("regenCert")
  local r = estate:run("repl", { stdin = REGEN .. "\n" })
  t.ok(r.stderr:find("the REPL confirms on a terminal: start dhsm repl on one, or run the same with `dhsm run "
    .. "PLAYBOOK ... --yes` or `dhsm exec --yes FILE`", 1, true), r.stderr)
  t.ok(not r.stderr:find("pass --yes", 1, true), r.stderr)
  r = exec(("-i %s exec -e %s"):format(q(inventory), q(REGEN)))
  t.ok(r.stderr:find("(pass --yes to confirm in advance)", 1, true), r.stderr)
  t.eq(#estate:mutations("regenCert"), before, "nothing reached the appliance")
  local file = t.tmpdir() .. "/regen.lua"
  t.write(file, REGEN .. "\n")
  r = exec(("-i %s exec --yes %s"):format(q(inventory), q(file)))
  t.eq(r.status, 0, r.stderr)
  t.eq(#estate:mutations("regenCert"), before + 1, "the advice, typed, reached the appliance once")
end, { timeout = 60 })

