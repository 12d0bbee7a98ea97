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

t.test("a command holding a question's words is one whose echo would be taken for it", function()
  for _, line in ipairs { "client register -client x -label \"Type  'proceed' now\"", "syslog tail -search otherwise type 'quit'",
      "hsm show password:", "x (Y/N)", "partition create -label \"a or 'quit'\"" } do
    t.eq(prompts.looks_like_question(line), true, line)
  end
  t.eq(prompts.looks_like_question("partition create -partition p1 -label p1"), false)
end)

-- Through a session: the estate's appliances ask in the published words
-- (tests/sim/layouts_selftest.py compares them with the fixtures).
local estate = require("support.estate").start {}

t.test("through a session: each published question declined unless the call allows proceed, then answered", function()
  local luna = require "dhsm.luna"
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
