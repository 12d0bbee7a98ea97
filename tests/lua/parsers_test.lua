-- The text parsers on hostile input: a line longer than util.MAX_LINE is a
-- structured error naming the line; below the cap every parser is linear
-- (lines of blanks, hex digits or colons used to take seconds each).
local t = require "dhsm.test"
local util = require "dhsm.util"
local parse = require "dhsm.luna.parse"
local chrystoki = require "dhsm.chrystoki"

local LUNA = { "fields", "result", "hsm_show", "partition_list", "partition_show", "client_list",
  "client_show", "ntls_show", "package_list", "network_show", "lunacm_slots", "lunacm_groups",
  "lunacm_role_show", "audit_show", "lunacm_sync_conflicts", "vtl_verify", "status_date", "table" }

-- name -> {kind, fn(text)}
local PARSERS = {}
for _, name in ipairs(LUNA) do PARSERS["luna.parse." .. name] = { "luna", parse[name] } end
PARSERS["luna.parse.ntls_log"] = { "luna", function(s) return parse.ntls_log("Nov 28 10:00:01 hsm1 NTLS[1]: " .. s) end }
PARSERS["luna.parse.ntls_log (lines)"] = { "luna", function(s) return parse.ntls_log { "NTLS[1]: " .. s } end }
PARSERS["chrystoki.parse (key)"] = { "usage", function(s) return chrystoki.parse("S = {\n" .. s .. "\n}") end }
PARSERS["chrystoki.parse (value)"] = { "usage", function(s) return chrystoki.parse("S = { K = " .. s .. ";\n}") end }

-- Lines that made a backtracking pattern rescan a run from every position.
local function hostile(n)
  local blanks = (" "):rep(n)
  return {
    blanks, "k" .. blanks .. "k:", "x:" .. blanks .. "y", ("a"):rep(n), (":"):rep(n), ("1 "):rep(n // 2),
    ("a:"):rep(n // 2) .. " x", "alert " .. blanks .. "x", ("1."):rep(n // 2), "IP Address (eth0):" .. blanks .. "x",
    ("Command Result : 1 ("):rep(n // 20),
  }
end

t.test("a 32 KB line is refused by every parser with a structured error naming the line", function()
  local line = ("x: "):rep(11000)
  for name, p in pairs(PARSERS) do
    local ok, err = pcall(p[2], "first line\n" .. line .. "\n")
    t.eq(ok, false, name .. " accepted a 32 KB line")
    t.ok(dhsm.error.is(err, p[1]), name .. ": " .. tostring(err))
    t.eq(err.code, "InputTooLong", name)
    t.ok(tostring(err.message):find("line %d+ is") or name:find("lines"), name .. ": " .. tostring(err.message))
  end
end)

t.test("below the cap, every parser is linear: 256 KB hostile lines in well under a second each", function()
  local cap = util.MAX_LINE
  util.MAX_LINE = 1 << 20
  t.cleanup(function() util.MAX_LINE = cap end)
  local worst, worst_name = 0, nil
  for name, p in pairs(PARSERS) do
    for i, line in ipairs(hostile(256 * 1024)) do
      local c0 = os.clock()
      local ok, err = pcall(p[2], line)
      t.ok(ok or dhsm.error.is(err), name .. ": a plain Lua error: " .. tostring(err))
      local spent = os.clock() - c0
      if spent > worst then worst, worst_name = spent, ("%s, input %d"):format(name, i) end
    end
  end
  -- quadratic code takes hours here; linear code milliseconds (even under ASan)
  t.ok(worst < 5, ("%s took %.1f s"):format(worst_name, worst))
end)

t.test("util.trim and util.lines on edge cases", function()
  t.eq({ util.trim(""), util.trim("   "), util.trim(" a b "), util.trim("\t\na\r\n") }, { "", "", "a b", "a" })
  t.eq(util.lines("a\r\nb\n\nc"), { "a", "b", "", "c" })
  t.eq(util.lines(""), {})
  t.eq(util.suffix("abc  12", "%d"), "12")
  t.eq(util.closest(("x"):rep(100000), { "xx" }), nil)
end)

t.test("lunacm's verdict is read however long a line before it: the command has run already", function()
  local long = ("x"):rep(util.MAX_LINE * 2)
  t.eq(parse.lunacm_result(long .. "\nCommand Result : No Error\n"), { ok = true })
  t.eq(parse.lunacm_result(long .. "\nCommand Result : 0x000000a0 (CKR_PIN_INCORRECT)\n"),
    { ok = false, code = "CKR_PIN_INCORRECT" })
end)

t.test("lunacm's verdict is its last one: an earlier No Error does not make a failed login a success", function()
  t.eq(parse.lunacm_result("Command Result : No Error\nrole login\nCommand Result : 0x000000a0 (CKR_PIN_INCORRECT)\n"),
    { ok = false, code = "CKR_PIN_INCORRECT" })
  t.eq(parse.lunacm_result("Command Result : 0x000000a0 (CKR_PIN_INCORRECT)\nCommand Result : No Error\n"), { ok = true })
  t.eq(parse.lunacm_result("Command Result : something new\n"), { ok = false })
  t.eq(parse.lunacm_result("no verdict at all\n"), { ok = false })
end)

t.test("status date: the appliance's UTC clock, or NoDate naming what came - never a guess", function()
  t.eq(os.date("!%Y-%m-%d %H:%M:%S", parse.status_date("Mon Nov 30 22:23:24 UTC 2026\n")), "2026-11-30 22:23:24")
  local err = t.raises(function() parse.status_date("Error: 'status date' failed. (10A0B : LUNA_RET_ERROR)\n") end,
    "NoDate")
  t.eq(err.kind, "luna")
  t.raises(function() parse.status_date("Mon Foo 30 22:23:24 UTC 2026") end, "NoDate")
  t.eq(os.date("!%d %H", parse.status_date("[hsm1] lunash:>status date\r\n\r\nTue Nov  3 09:05:00 UTC 2026\r\n\r\n"
    .. "Command Result : 0 (Success)\r\n")), "03 09", "a day padded as date(1) pads it, among the shell's lines")
  for _, wrong in ipairs { "Mon Nov 99 22:23:24 UTC 2026", "Mon Nov 30 24:00:00 UTC 2026", "Mon Nov 30 22:61:00 UTC 2026",
      "Mon Nov 0 22:23:24 UTC 2026", "the date is Mon Nov 30 22:23:24 UTC 2026 or so" } do
    t.raises(function() parse.status_date(wrong) end, "NoDate")
  end
end)

-- hsm show, fail-closed (issue 21's first parser): the serial, the attempts
-- left and the zeroized state from their own fields in a published form, or
-- luna/ParseError naming the line - never a default, never a word found
-- elsewhere in the text.
t.test("hsm show reads the attempts and the zeroized state from their field only, or refuses", function()
  local published = util.read_file(t.here() .. "/../fixtures/luna/2.2-hsm-show-6.2.2-a.txt")
  local h = parse.hsm_show(published)
  t.eq({ h.serial, h.attempts_left, h.zeroized }, { "534071", 3, false })
  local function with(old, new) return (published:gsub(old:gsub("%p", "%%%0"), (new:gsub("%%", "%%%%")))) end
  -- a label that says HSM IS ZEROIZED is a label
  local labelled = with("HSM Label:                          ", "HSM Label:                          HSM IS ZEROIZED ")
  t.eq({ parse.hsm_show(labelled).zeroized, parse.hsm_show(labelled).attempts_left }, { false, 3 })
  for _, bad in ipairs {
    with("HSM Admin login attempts left:      3 before HSM zeroization!", "HSM SO login attempts left : 1"),
    with("3 before HSM zeroization!", "three before HSM zeroization!"),
    with("3 before HSM zeroization!", ""),
    with("Serial #:                           534071", "Serial #:                           unknown"),
    "Unable to communicate with HSM\n\nCommand Result : 65535 (Unknown)\n",
    "",
  } do
    local ok, err = pcall(parse.hsm_show, bad)
    t.eq(ok, false, "read: " .. bad:sub(1, 60))
    t.eq({ err.kind, err.code }, { "luna", "ParseError" }, tostring(err))
    t.ok(err.message:find("^hsm show: cannot read"), err.message)
  end
end)

t.test("the guard makes no login when the device's count cannot be read", function()
  local guard = require "dhsm.guard"
  local tried = false
  local unreadable = util.read_file(t.here() .. "/../fixtures/luna/2.2-hsm-show-6.2.2-a.txt")
    :gsub("HSM Admin login attempts left:%s+3 before HSM zeroization!", "HSM SO login attempts left : 1")
  local err = t.raises(function()
    guard.attempt(guard.device("hsm", "534071"), "so", {}, {
      device_left = function() return parse.hsm_show(unreadable).attempts_left end,
      try = function() tried = true; return false end,
    })
  end, "AttemptsUnreadable")
  t.ok(err.message:find("HSM SO login attempts left : 1", 1, true), err.message)
  t.eq(tried, false, "no attempt was made")
  t.eq(guard.failures(guard.device("hsm", "534071"), "so"), 0, "nothing counted")
end)

t.test("package list: the reboot fix is a whole token of a package entry, never a sentence's word", function()
  local function listing(system, software)
    return table.concat({ "RPM LIST (SYSTEM)", "-------------------", system, "", "", "RPM LIST (SOFTWARE)",
      "-------------------", software, "" }, "\n")
  end
  local set = parse.package_list(listing("glibc-2.5-42", "lunasa-reboot-fix-KB0019789-7.2.0-1"))
  t.eq(set, { ["glibc-2.5-42"] = true, ["lunasa-reboot-fix-KB0019789-7.2.0-1"] = true }, "entries only: no title")
  t.eq(parse.has_package(set, "KB0019789"), "lunasa-reboot-fix-KB0019789-7.2.0-1")
  t.eq(parse.has_package(set, "kb0019789"), "lunasa-reboot-fix-KB0019789-7.2.0-1", "any case")
  t.raises(function() parse.package_list(listing("glibc-2.5-42", "Note: KB0019789 is required but is NOT installed")) end,
    'cannot read the line "Note: KB0019789 is required')
  t.raises(function() parse.package_list("KB0019789 is required ... NOT installed\nglibc-2.5-42\n") end,
    'cannot read the line "KB0019789 is required')
  for _, entry in ipairs { "KB00197890", "fix-KB00197890-1", "xKB0019789", "KB0019789a" } do
    t.eq(parse.has_package({ [entry] = true }, "KB0019789"), nil, entry)
  end
  t.eq(parse.has_package({ ["KB0019789"] = true }, "KB0019789"), "KB0019789")
end)

t.test("a command's result: an Error: line fails it whatever the code; a TAB in the trailer reads the same", function()
  local r = parse.result("Error:    The HSM is in the factory reset (zeroized) state.\n\nCommand Result : 0 (Success)\n")
  t.eq({ r.ok, r.code }, { false, 0 }, "7.x prints code 0 after some failures")
  t.eq(r.error.lines, { "The HSM is in the factory reset (zeroized) state." })
  r = parse.result("'hsm show' successful.\n\nCommand Result :\t0 (Success)\n")
  t.eq({ r.ok, r.code }, { true, 0 })
  r = parse.result("Command Result\t:\t65535\t(Unknown)\n")
  t.eq({ r.ok, r.code }, { false, 65535 })
end)

t.test("partition list: every row read or a ParseError naming it; empty only when the appliance says so", function()
  local published = util.read_file(t.here() .. "/../fixtures/luna/3.1-partition-list-5.txt")
  t.eq(#parse.partition_list(published), 2)
  t.eq(parse.partition_list(util.read_file(t.here() .. "/../fixtures/luna/3.1-partition-list-5-empty.txt")), {})
  local function with(old, new) return (published:gsub(old:gsub("%p", "%%%0"), (new:gsub("%%", "%%%%")))) end
  for what, bad in pairs {
    ["a 13-digit serial run into the name"] = with(" 157826004    testPar1", " 1578260040001testPar1"),
    ["a 25-character name run into its count"] = with("testPar1                       0", "testPar1-with-a-long-name0"),
    ["an unknown header"] = with("Objects", "Things"),
    ["no header"] = with(" Partition    Name                     Objects     Total      Used      Free\n", ""),
    ["a rule above the table only"] = "=====\n 157826004 testPar1 0 102701 0 102701\n",
    ["truncated output"] = published:sub(1, 120),
    ["an error"] = "Error:  'partition list' failed. (300000 : RC_X)\n\nCommand Result : 65535 (Unknown)\n",
    ["nothing"] = "",
  } do
    local ok, err = pcall(parse.partition_list, bad)
    t.eq(ok, false, what .. " read as " .. (ok and require("cjson").encode(err) or ""))
    t.eq({ err.kind, err.code }, { "luna", "ParseError" }, what .. ": " .. tostring(err))
  end
end)

t.test("package list outside the published form: a ParseError naming the line, never a set", function()
  for what, bad in pairs {
    ["a NOT-installed sentence with the fix under it"] = { "The following packages are NOT installed:\nKB0019789\n\n"
      .. "Command Result : 0 (Success)\n", 'the line "The following packages are NOT installed:"' },
    ["no answer from the HSM"] = { "Unable to communicate with HSM\n\nCommand Result : 0 (Success)\n",
      'the line "Unable to communicate with HSM"' },
    ["a word that is no package"] = { "RPM LIST (SYSTEM)\n---\nProceeding...\n\nRPM LIST (SOFTWARE)\n---\n",
      'the line "Proceeding..."' },
    ["the SOFTWARE section missing"] = { "RPM LIST (SYSTEM)\n---\nglibc-2.5-42\n", "RPM LIST %(SOFTWARE%)" },
    ["a title without its rule"] = { "RPM LIST (SYSTEM)\nglibc-2.5-42\n\nRPM LIST (SOFTWARE)\n---\n",
      "a rule of '%-' under 'RPM LIST %(SYSTEM%)'" },
  } do
    local ok, err = pcall(parse.package_list, bad[1])
    t.eq(ok, false, what)
    t.eq({ err.kind, err.code }, { "luna", "ParseError" }, what)
    t.ok(err.message:find(bad[2]), what .. ": " .. err.message)
  end
end)

t.test("a published 'x' failed. line fails the command whatever the code, with or without its Error:", function()
  local r = parse.result("'hsm login' failed.\nCommand Result : 0 (Success)\n")
  t.eq({ r.ok, r.code, r.command }, { false, 0, "hsm login" })
  r = parse.result("   'hsm login' failed. (A00000 : LUNA_RET_UM_PIN_INCORRECT)\n\nCommand Result : 0 (Success)\n")
  t.eq({ r.ok, r.error.hex, r.error.code }, { false, "A00000", "LUNA_RET_UM_PIN_INCORRECT" })
  t.eq(parse.result("'hsm show' successful.\n\nCommand Result : 0 (Success)\n").ok, true, "a success still reads")
end)

t.test("audit show: only its own four lines; text of another form, or the form without its count, is refused", function()
  local shown = util.read_file(t.here() .. "/../fixtures/sim/audit-show.txt")
  t.eq(parse.audit_show(shown).attempts_left, 10)
  for what, bad in pairs {
    ["no answer from the HSM"] = "Unable to communicate with HSM\n\nCommand Result : 0 (Success)\n",
    ["the count field dropped"] = (shown:gsub("Audit Role Login Attempts Left:[^\n]*\n", "")),
    ["the count under a name dhsm does not know"] = (shown:gsub("Audit Role Login Attempts Left:", "Audit Role:")),
    ["a line of another output"] = shown .. "Proceeding...\n",
    ["nothing"] = "",
  } do
    local ok, err = pcall(parse.audit_show, bad)
    t.eq(ok, false, what)
    t.eq({ err.kind, err.code }, { "luna", "ParseError" }, what .. ": " .. tostring(err))
  end
end)

t.test("network show: no interface block is a ParseError, never 'no interface'", function()
  for _, bad in ipairs { "garbage\n", "Unable to communicate with HSM\n", "Free Space Left (Bytes): 5\n", "" } do
    t.raises(function() parse.network_show(bad) end, "ParseError")
  end
  local n = parse.network_show("IP Address (eth0):           10.0.0.5\nMask (eth0):                 255.255.255.0\n")
  t.eq(n.interfaces.eth0, { ip = "10.0.0.5", mask = "255.255.255.0" })
end)

t.test("a count, lock or erase field worded otherwise is refused; no published field is", function()
  local pshow = util.read_file(t.here() .. "/../fixtures/sim/partition-show.txt")
  local function with(old, new) return (pshow:gsub(old, new)) end
  for what, bad in pairs {
    tries = with("Partition SO Login Attempts Left", "Partition SO Login Tries Left"),
    wiped = with("Partition SO Zeroized", "Partition SO Wiped"),
    erased = with("Legacy Domain Has Been Set", "Partition Erased"),
    failed = with("Legacy Domain Has Been Set", "Failed Login Count"),
    reset = with("Legacy Domain Has Been Set", "Partition SO Reset"),
  } do
    t.raises(function() parse.partition_show(bad) end, "a field whose name dhsm knows")
  end
  -- a Partition SO shown but one of its readings missing: never "a layout without a Partition SO" (6.x)
  t.raises(function() parse.partition_show(with("Partition SO Zeroized:[^\n]*\n", "")) end,
    "the Partition SO's 'Zeroized' and 'Login Attempts Left'")
  local hshow = util.read_file(t.here() .. "/../fixtures/luna/2.2-hsm-show-6.2.2-a.txt")
  t.raises(function() parse.hsm_show((hshow:gsub("RPV Initialized", "HSM Admin Lockout"))) end,
    'cannot read the line "HSM Admin Lockout:')
  -- every published hsm show and partition show still reads (Free Space Left, Manually Zeroized, Tamper State)
  for _, name in ipairs { "2.1-hsm-show-7.2", "2.2-hsm-show-6.2.2-a", "2.3-hsm-show-5.1", "2.4-hsm-show-5.3" } do
    t.ok(parse.hsm_show(util.read_file(t.here() .. "/../fixtures/luna/" .. name .. ".txt")).serial, name)
  end
  t.eq(parse.partition_show(util.read_file(t.here() .. "/../fixtures/luna/3.5-partition-show-6.2.2.txt"))
    .co_attempts_left, 10)
end)

t.test("a table cut after its header is no empty list; a name filling 7.8.5's column still reads", function()
  local list = util.read_file(t.here() .. "/../fixtures/luna/3.3-partition-list-7.8.5-a.txt")
  local head = list:gsub("\n1582775433934[^\n]*", "")
  t.raises(function() parse.partition_list(head) end, "rows under the header")
  t.eq(parse.partition_list(head .. "\nCommand Result : 0 (Success)\n"), {}, "a header with no rows, closed by its trailer")
  local vtl = util.read_file(t.here() .. "/../fixtures/luna/8.3-vtl-verify-6-tabs.txt")
  t.raises(function() parse.vtl_verify(vtl:match("^(.-=====\n)")) end, "a row under the header")
  t.raises(function() parse.vtl_verify(vtl:match("^(.-partition1\n)")) end, "the blank line that ends the rows")
  -- 7.8.5: a 32-character name fills its column, one blank before the version
  local full = list:gsub("sp_sehsm3                         0", "a_name_of_exactly_32_characters_ 0")
  t.eq(parse.partition_list(full)[1].name, "a_name_of_exactly_32_characters_")
  t.eq(parse.partition_list(full)[1].version, "0")
  -- a name run into the version: refused, naming the row
  t.raises(function() parse.partition_list((list:gsub("sp_sehsm3                         0",
    "a_name_of_exactly_33_characters__0"))) end, 'cannot read the line "1582775433934  a_name_of_exactly_33')
  -- the header with TABs for its runs of blanks: the columns by name, not "Partition Partition"
  t.eq(parse.partition_list((list:gsub("  +", "\t")))[1].total, 648381)
  -- two faults that cancel: a name with two blanks inside (a cell too many) that is one too long for its
  -- column, one blank before the version (a cell too few) - the right count of wrong cells, refused
  t.raises(function() parse.partition_list((list:gsub("sp_sehsm3                         0",
    "ab  cdefghijklmnopqrstuvwxyz01234 0"))) end, 'column 2 reads "ab  cdefghijklmnopqrstuvwxyz01234" by its position')
end)

t.test("ntls.vtl_verify: a vtl killed or failing after its header is refused, never 'no partitions'", function()
  local ntls = require "dhsm.client.ntls"
  local dir = t.tmpdir()
  local published = util.read_file(t.here() .. "/../fixtures/luna/8.3-vtl-verify-6.2.2.txt")
  local head = published:match("^[^\n]*\n(.-=====\n)")         -- the title, header and rule, as vtl prints them
  t.write(dir .. "/listing", head)
  -- a process that prints what vtl printed and then ends as a vtl cut off would: killed, or an exit status
  local function vtl(ending)
    local path = dir .. "/vtl-" .. ending:gsub("%W", "")
    t.write(path, "#!/bin/sh\ncat " .. util.shell_quote(dir .. "/listing") .. "\n" .. ending .. "\n")
    os.execute("chmod +x " .. util.shell_quote(path))
    return { conf_path = dir .. "/Chrystoki.conf", vtl = path }
  end
  local ok, err = pcall(ntls.vtl_verify, vtl("kill -KILL $$"))
  t.eq(ok, false, "a killed vtl read as a listing")
  t.eq({ err.kind, err.code, err.details.signal }, { "luna", "VtlFailed", 9 })
  t.ok(err.message:find("by signal 9", 1, true), err.message)
  ok, err = pcall(ntls.vtl_verify, vtl("exit 3"))
  t.eq({ ok, err.code, err.details.status }, { false, "VtlFailed", 3 })
  t.ok(err.message:find("exit status 3", 1, true), err.message)
  -- exiting 0 after the header alone: the listing is cut, and the parser says so
  ok, err = pcall(ntls.vtl_verify, vtl("exit 0"))
  t.eq({ ok, err.code }, { false, "ParseError" })
  -- vtl's failure is an Error: line of its own: a label holding those words is a label
  t.write(dir .. "/listing", head .. "0           534071053        Error: not one\n\n")
  local r = ntls.vtl_verify(vtl("exit 0"))
  t.eq({ r.ok, r.partitions and r.partitions[1].label }, { true, "Error: not one" })
end)
