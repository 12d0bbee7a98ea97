-- LunaSH's questions as published appliances ask them (dhsm.luna.prompts):
-- every form in shared/reference/luna-field.md is recognised, wrapped and
-- indented as it was printed, with its kind, which decides who may answer
-- it `proceed`.  Through a session against the estate: luna_test.lua,
-- guard_test.lua and the decommission tests.
local t = require "dhsm.test"
local prompts = require "dhsm.luna.prompts"
local util = require "dhsm.util"

local FIXTURES = t.here() .. "/../fixtures/luna/"

-- A published transcript up to the input mark its `proceed` answers: what
-- the appliance had printed when dhsm must answer.
local function asked(file)
  local text = assert(util.read_file(FIXTURES .. file))
  local upto = text:find("\n[ \t]*> proceed")
  return text:sub(1, upto) .. text:sub(upto + 1):match("^([ \t]*> )")
end

t.test("every published proceed question is recognised, as printed", function()
  local cases = {
    { "3.4-partition-create-6.2.2.txt", "proceed", "Type 'proceed' to create the initialized partition, or 'quit' to quit now." },
    { "3.4-partition-create-7.0.txt", "proceed", "Type 'proceed' to create the partition, or 'quit' to quit now." },
    { "3.4-partition-create-7.2.txt", "proceed", "Type 'proceed' to create the partition, or 'quit' to quit now." },
    { "4.3-hsm-init-6.2.2.txt", "proceed", "Type 'proceed' to initialize the HSM, or 'quit' to quit now." },
    { "4.5-hsm-changepolicy-6.2.2.txt", "proceed",
      "Type 'proceed' to zeroize your HSM and change the policy, or 'quit' to quit now." },
    { "4.2-hsm-login-last-7.txt", "last_attempt", "Type 'proceed' if you are certain you have the right HSM Admin "
      .. "login credentials or 'quit' to quit now." },
  }
  for _, c in ipairs(cases) do
    local form, question = prompts.match(asked(c[1]))
    t.eq({ form and form.kind, question }, { c[2], c[3] }, c[1])
  end
end)

-- The forms the reference has only as regular expressions or test
-- strings (no fixture of a whole transcript): luna-field.md 1089, 1122, 1348.
t.test("the proceed questions published as fragments: client delete (5.x), regenCert, hsm restart", function()
  local cases = {
    { "CAUTION:  Are you sure you wish to delete client named:\n            web1\n          Type 'proceed' to "
      .. "delete the client, or 'quit'\n          to quit now.\n", "Type 'proceed' to delete the client, or 'quit' to quit now." },
    { "        WARNING !!  This command will overwrite the current server certificate and private key.\n        All "
      .. "clients will have to add this server again with this new certificate.\n        If you are sure that you "
      .. "wish to proceed, then type 'proceed', otherwise type 'quit'\n        ",
      "If you are sure that you wish to proceed, then type 'proceed', otherwise type 'quit'" },
    { "WARNING !!  This command will restart the HSM card.\nIf you are sure that you wish to proceed, then type "
      .. "'proceed', otherwise type 'quit'\n> ", "If you are sure that you wish to proceed, then type 'proceed', otherwise type 'quit'" },
  }
  for _, c in ipairs(cases) do
    local form, question = prompts.match(c[1])
    t.eq({ form and form.kind, question }, { "proceed", c[2] })
  end
  -- CRLF line ends, as a PTY sends them
  local form = prompts.match(("          Type 'proceed' to create the partition, or\n          'quit' to quit now.\n"
    .. "          > "):gsub("\n", "\r\n"))
  t.eq(form and form.kind, "proceed")
end)

t.test("lunacm's proceed question (7.1), as printed by the 7.1 and 7.2 clients, is a proceed question", function()
  for _, file in ipairs { "7.1-lunacm-slots-7.2.txt", "7.1-lunacm-slots-7.1.txt" } do
    local text = assert(util.read_file(FIXTURES .. file))
    local upto = select(2, text:find("quit now ->", 1, true))
    t.ok(upto, file)
    local form, question = prompts.match(text:sub(1, upto))
    t.eq({ form and form.kind, question }, { "proceed", "Type 'proceed' to continue, or 'quit' to quit now" }, file)
  end
end)

t.test("the questions of a whole transcript, answers written ahead: lunacm's (7.1) and LunaSH's", function()
  for _, file in ipairs { "7.1-lunacm-slots-7.2.txt", "7.1-lunacm-slots-7.1.txt" } do
    local asked = prompts.asked(assert(util.read_file(FIXTURES .. file)))    -- "Slot Id ->" lines are no question
    t.eq(#asked, 1, file)
    t.eq({ asked[1].form.kind, asked[1].question }, { "proceed", "Type 'proceed' to continue, or 'quit' to quit now" })
  end
  -- over a pipe nothing is echoed: each question's line ends where its answer was read
  local asked = prompts.asked("  Enter the password: \n\n  Are you sure?\n  Type 'proceed' to continue, or 'quit' "
    .. "to quit now ->\nCommand Result : No Error\n")
  t.eq({ #asked, asked[1].form.kind, asked[2].question }, { 2, "password", "Type 'proceed' to continue, or 'quit' to quit now" })
  local kinds = {}
  for i, q in ipairs(prompts.asked(assert(util.read_file(FIXTURES .. "3.4-partition-create-6.2.2.txt")))) do
    kinds[i] = q.form.kind
  end
  t.eq(kinds, { "password", "domain", "proceed" }, "the re-entries (the first prompts are no form's), then proceed")
  t.eq(prompts.asked("Command Result : No Error\n"), {})
end)

t.test("passwords, and a question no form knows, are told apart; the shell prompt is no question", function()
  local form, question = prompts.match("\n  Please enter the HSM Administrators' password:\n  > ")
  t.eq({ form.kind, question }, { "password", "Please enter the HSM Administrators' password:" })
  form, question = prompts.match("Enter the new label for this HSM:\n    > ")
  t.eq({ form.kind, question }, { "unknown", "Enter the new label for this HSM:" },
    "an input mark alone is a question, reported at once rather than waited on")
  t.eq(prompts.match("Command Result : 0 (Success)\n[hsm1] lunash:>"), nil)
  t.eq(prompts.match("Number of partitions:  2\nTotal storage > used\n"), nil, "a '>' inside a line is no input mark")
end)

-- make fuzz hung on such an input: one pattern for "the last line with a
-- word" backtracked in cubic time over a long line, and a C pattern match
-- cannot be interrupted.  With that pattern back, this test never ends.
t.test("an unknown question after a line of 200000 characters is read (the last line with words, line by line)", function()
  local long = ("A%"):rep(100000)
  local form, question = prompts.match(long .. "\nName the new partition:\n> ")
  t.eq({ form.kind, question }, { "unknown", "Name the new partition:" })
  form, question = prompts.match("Name it:\n" .. long .. "\n> ")
  t.eq({ form.kind, #question }, { "unknown", #long }, "the long line is the question's own line")
end)

t.test("a last line left open that ends like a question is one only once the appliance stops writing", function()
  for _, c in ipairs { { "\nProceed? [y/N] ", "Proceed? [y/N]" }, { "Enter value ->", "Enter value ->" },
      { "  Continue (yes/no): ", "Continue (yes/no):" }, { "\r\nReally?", "Really?" } } do
    t.eq(prompts.match(c[1]), nil, "not at once: " .. c[1])
    local form, question = prompts.match_quiet(c[1])
    t.eq({ form and form.kind, question }, { "unknown", c[2] })
  end
  t.eq(prompts.match_quiet("Are you sure?\n"), nil, "a line that ended is output, not a question")
  t.eq(prompts.match_quiet("Serial # : 123\n  -> "), nil, "an ending without words")
  t.eq(prompts.match_quiet("Command Result : 0 (Success)\n[hsm1] lunash:>"), nil)
  local form = prompts.match_quiet("Type 'proceed' to create the partition, or 'quit' to quit now.\n> ")
  t.eq(form.kind, "proceed", "a known form first")
end)

t.test("a command holding a question's words is one whose echo would be taken for it", function()
  for _, line in ipairs { "client register -client x -label \"Type  'proceed' now\"", "syslog tail -search otherwise type 'quit'",
      "hsm show password:", "x (Y/N)", "partition create -label \"a or 'quit'\"" } do
    t.eq(prompts.looks_like_question(line), true, line)
  end
  t.eq(prompts.looks_like_question("partition create -partition p1 -label p1"), false)
end)

-- Through a session: the estate's appliances ask in the published words
-- (tests/sim/layouts_selftest.py compares them with the fixtures).
local estate = require("support.estate").start { set = { reboot_seconds = 0.3 } }
local luna = require "dhsm.luna"
local proc = require "dhsm.proc"

-- How many of the estate's own log messages match a Lua pattern.
local function logged(pattern)
  return estate.count(estate:log(), pattern)
end

t.test("through a session: each published question declined unless the call allows proceed, then answered", function()
  local entry = estate.inventory:hsm("hsm1")
  local so = estate:secret("hsm1_so_password")
  for _, layout in ipairs { "7", "6" } do
    estate:appliance("hsm1", { lunash_layout = layout })
    local s <close> = luna.open(entry)
    s:login_so(so)
    local name = "pq" .. layout
    local r = s:run("partition create -partition " .. name)
    t.eq(r.ok, false, "layout " .. layout)
    t.eq(r.declined, layout == "7" and "Type 'proceed' to create the partition, or 'quit' to quit now."
      or "Type 'proceed' to create the initialized partition, or 'quit' to quit now.")
    t.ok(r.error.lines[1]:find("answered quit", 1, true), r.error.lines[1])
    t.eq(#estate:mutations("partition create -partition " .. name), 1, "sent once, declined at the question")
    t.eq(estate:state().appliances.hsm1.partitions[name], nil, "nothing was created")
    t.eq(s:run("partition create -partition " .. name, { proceed = true }).ok, true)
    t.ok(estate:state().appliances.hsm1.partitions[name], "created once proceed was allowed")
    s:must("partition delete -partition " .. name, { proceed = true })
  end
  estate:appliance("hsm1", { lunash_layout = "7" })
  local s <close> = luna.open(entry)
  local before = util.read_file(estate.dir .. "/appliances/hsm1/home/server.pem")
  local r = s:run("sysconf regenCert")
  t.eq({ r.ok, r.declined }, { false, "If you are sure that you wish to proceed, then type 'proceed', otherwise type 'quit'" })
  t.eq(util.read_file(estate.dir .. "/appliances/hsm1/home/server.pem"), before, "the certificate is the same")
  -- what a caller must not do: answer the question by a command of its own words
  t.raises(function() s:run("client register -client x -label \"Type 'proceed' to\"") end, "LooksLikeQuestion")
end, { timeout = 120 })

t.test("through a session: hsm changePolicy's question (4.5) declined unless allowed, then answered proceed", function()
  estate:appliance("hsm1", { lunash_layout = "6" })
  t.cleanup(function() estate:appliance("hsm1", { lunash_layout = "7" }) end)
  local s <close> = luna.open(estate.inventory:hsm("hsm1"))
  s:login_so(estate:secret("hsm1_so_password"))
  s:must("partition create -partition keep1 -force")
  local policy = function() return estate:state().appliances.hsm1.hsm.policies["22"] end
  t.eq(policy(), 1)
  local change = "hsm changePolicy -policy 22 -value 0"
  local r = s:run(change)
  t.eq({ r.ok, r.declined }, { false, "Type 'proceed' to zeroize your HSM and change the policy, or 'quit' to quit now." })
  t.eq(logged("hsm1 lunash: hsm changePolicy %-policy 22 %-value 0 %-> 65535"), 1, "asked once, answered quit")
  t.eq({ policy(), estate:state().appliances.hsm1.partitions.keep1 ~= nil }, { 1, true }, "nothing changed")
  t.eq(s:run(change, { proceed = true }).ok, true)
  t.eq(logged("hsm1 lunash: hsm changePolicy %-policy 22 %-value 0 %-> 0"), 1)
  t.eq({ policy(), estate:state().appliances.hsm1.partitions.keep1 }, { 0, nil }, "the policy, and the erasure it warned of")
  s:must("hsm changePolicy -policy 22 -value 1", { proceed = true })
end, { timeout = 60 })

t.test("through a session: hsm restart (6.7) is a reboot: the fix first, declined unless allowed, then restarted",
  function()
  local syslog = estate:device("hsm1").syslog
  local reboots = function() return select(2, (util.read_file(syslog) or ""):gsub("reboot: Restarting system", "")) end
  local before = reboots()
  local s <close> = luna.open(estate.inventory:hsm("hsm1"))
  t.raises(function() s:run("hsm restart", { proceed = true }) end, "RebootFixMissing")
  t.eq(logged("lunash: hsm restart"), 0, "refused before it was sent")
  estate:appliance("hsm1", "install-fix")
  t.cleanup(function() estate:appliance("hsm1", "uninstall-fix") end)
  local r = s:run("hsm restart")
  t.eq({ r.ok, r.declined }, { false, "If you are sure that you wish to proceed, then type 'proceed', otherwise type 'quit'" })
  t.eq({ logged("hsm1 lunash: hsm restart %-> 65535"), reboots() }, { 1, before }, "answered quit: no restart")
  t.eq(s:hsm_show().serial, estate.inventory:hsm("hsm1").serial, "the session is still there")
  local err = t.raises(function() s:run("hsm restart", { proceed = true }) end, "ConnectionLost")
  t.eq(err.kind, "net")
  t.eq({ logged("hsm1 lunash: hsm restart %-> 0"), reboots() }, { 1, before + 1 }, "answered proceed: restarted")
  local deadline = dhsm.now() + 30
  local back
  repeat
    dhsm.sleep(0.2)
    back = pcall(function() luna.open(estate.inventory:hsm("hsm1")):close() end)
  until back or dhsm.now() > deadline
  t.ok(back, "the appliance came back")
end, { timeout = 90 })

-- The last-attempt caution reaches an ordinary login when another client's
-- failure lands between the guard's reading and the login (here a child
-- process with a guard of its own, its login held 3 s by the appliance).
t.test("through a session: an ordinary login meeting the last-attempt caution answers quit; an allowed one proceed",
  function()
  local entry, so = estate.inventory:hsm("hsm2"), estate:secret("hsm2_so_password")
  local failures = function() return estate:state().appliances.hsm2.hsm.so_failures end
  local s <close> = luna.open(entry)
  t.eq(s:run("hsm login", { password = dhsm.secret.value("not-it") }).ok, false)
  t.eq(failures(), 1)
  estate:appliance("hsm2", { slow_command = "3000:hsm login" })
  t.cleanup(function() estate:appliance("hsm2", { slow_command = "" }) end)
  local other <close> = proc.spawn(estate:child([[
    local s = require("dhsm.luna").open(require("dhsm.inventory").load(os.getenv("DHSM_INVENTORY")):hsm("hsm2"))
    print(s:run("hsm login", { password = dhsm.secret.value("also-not-it") }).ok)]], t.tmpdir()))
  local deadline = dhsm.now() + 30
  while logged("hsm2 lunash received: hsm login") < 1 and dhsm.now() < deadline do dhsm.sleep(0.02) end
  local r = s:run("hsm login", { password = so })        -- the guard read 2 left; the appliance asks at 1
  t.eq({ r.ok, r.declined }, { false, "Type 'proceed' if you are certain you have the right HSM Admin login "
    .. "credentials or 'quit' to quit now." })
  t.eq(other:wait(30).status, 0)
  estate:appliance("hsm2", { slow_command = "" })
  t.eq(failures(), 2, "the other client's failure counted; the quit login tried nothing")
  t.eq({ logged("hsm2 lunash: hsm login %-> 65535 %(cancelled"), logged("hsm2 lunash: hsm login %-> 0") }, { 1, 0 })
  t.raises(function() s:login_so(so) end, "LastLoginAttempt")
  t.eq(logged("hsm2 lunash: hsm login"), 3, "the refused login was not sent")
  s:login_so(so, { allow_destructive_login = true })     -- the caution answered proceed, then the password
  t.eq({ logged("hsm2 lunash: hsm login %-> 0"), failures() }, { 1, 0 })
end, { timeout = 90 })

-- Questions no published appliance asks (the estate's ask_next fault: no
-- input mark after them).  The read timeout is far beyond the test's own
-- limit: a question waited on would fail the test, not pass it slowly.
t.test("through a session: a question no form knows is reported at once with its text, or answered by the caller",
  function()
  local entry = estate.inventory:hsm("hsm1")
  for _, asked in ipairs { "Proceed? [y/N] ", "Enter value ->" } do
    estate:appliance("hsm1", { ask_next = asked })
    local s <close> = luna.open(entry, { timeout = 3600 })
    local err = t.raises(function() s:run("hsm show") end, "UnansweredPrompt")
    t.ok(err.message:find(("asked %q"):format(util.trim(asked)), 1, true), err.message)
    t.eq(s.closed, true, "closed: nothing was answered")
  end
  local deadline = dhsm.now() + 30                     -- the appliance notices a closed session in its own time
  while logged("hsm1 lunash: hsm show %-> 65535 %(cancelled") < 2 and dhsm.now() < deadline do dhsm.sleep(0.05) end
  t.eq(logged("hsm1 lunash: hsm show %-> 65535 %(cancelled"), 2, "the appliance saw no answer")
  estate:appliance("hsm1", { ask_next = "Proceed? [y/N] " })
  local s <close> = luna.open(entry, { timeout = 3600 })
  local r = s:run("hsm show", { answers = { { match = "^Proceed%? %[y/N%]$", answer = "y" } } })
  t.eq({ r.ok, r.text:find("Proceed? [y/N]", 1, true) ~= nil }, { true, true }, "the caller's answer for it")
end, { timeout = 60 })

t.test("through a session: a line left open for less than the quiet interval is output, not a question", function()
  estate:appliance("hsm1", { stall_next = ("%d:Checking? "):format(luna.QUIET_SECONDS * 400) })
  local s <close> = luna.open(estate.inventory:hsm("hsm1"), { timeout = 3600 })
  local r = s:run("hsm show")
  t.eq({ r.ok, r.text:find("Checking? done\n", 1, true) ~= nil }, { true, true }, r.text)
end, { timeout = 60 })
