-- Every fail-closed parser of dhsm.luna.parse on small, realistic
-- variations of what it reads (published blocks from tests/fixtures/luna,
-- and for the outputs never published, the simulator's layout in
-- tests/fixtures/sim): CRLF line ends, trailing blanks, TABs for runs of
-- blanks, blank lines doubled or dropped, the prompt line gone, a banner
-- above, and the output cut after each line.  Each variation either reads
-- to the same values or raises luna/ParseError - never a default, never
-- an empty list that the full output does not give (a cut LunaSH or lunacm
-- list may only lose rows from its end: the session's trailer check
-- catches that; a cut vtl listing, which has no trailer, the parser
-- refuses itself).
local t = require "dhsm.test"
local dhsm = require "dhsm"
local parse = require "dhsm.luna.parse"
local util = require "dhsm.util"

local HERE = t.here() .. "/../fixtures/"

local function read(name) return assert(util.read_file(HERE .. name)) end

-- parser, sample, cut (what the output may lose when cut, see check), the
-- values the sample shows (so the base is checked too, not only its
-- variations), and how the sample is made whole (a published copy masked
-- its serials, or lost the closing blank line vtl prints).
--   cut "trailer": a LunaSH or lunacm list, whose cut output the session
--     refuses by its missing `Command Result` line (dhsm.luna's result,
--     dhsm.proc's lunacm_result): the parser may read the rows before the cut;
--   cut "closed": vtl prints no trailer, so the parser itself must tell a
--     cut listing (by its closing blank line): it reads whole or refuses;
--   cut "record": a record, whose fields after the cut are nil, none other.
local function unmask(s) return (s:gsub("XXXXXXXXXXXXX", "1582775433934")) end
local function closed(s) return s .. "\n" end

local CASES = {
  { "hsm_show", "luna/2.4-hsm-show-5.3.txt", "record", { serial = "157541", attempts_left = 3, zeroized = false } },
  { "hsm_show", "luna/2.1-hsm-show-7.2.txt", "record", { attempts_left = 0, zeroized = true } },
  { "partition_list", "luna/3.1-partition-list-5.txt", "trailer", { [2] = { serial = "157826011", objects = 2 } } },
  { "partition_list", "luna/3.3-partition-list-7.8.5-a.txt", "trailer", { [1] = { serial = "1582775433934", total = 648381 } } },
  { "partition_show", "luna/3.5-partition-show-6.2.2.txt", "record", { serial = "534071053", co_attempts_left = 10 } },
  { "partition_show", "sim/partition-show.txt", "record", { so_attempts_left = 10, co_attempts_left = 9, objects = 2 } },
  { "client_list", "luna/5.1-client-list-5.txt", "trailer", { [2] = "client name with spaces" } },
  { "client_show", "luna/5.2-client-show-5.1.txt", "record", { id = "client1", partitions = { "clientPar1", "clientPar2",
    "clientPar3" } } },
  { "ntls_show", "sim/ntls-show.txt", "record", { device = "eth0", port = 1792, running = true, ipcheck = false } },
  { "audit_show", "sim/audit-show.txt", "record", { attempts_left = 10, locked = false } },
  { "lunacm_role_show", "sim/lunacm-role-show.txt", "record", { pso = 10, co = 8 } },
  { "lunacm_groups", "sim/lunacm-groups.txt", "record", { retry = 3, interval = 60 } },
  { "vtl_verify", "luna/8.3-vtl-verify-6-tabs.txt", "closed", { [1] = { serial = "500752010", label = "partition1" } } },
  { "vtl_verify", "luna/8.3-vtl-verify-10.7.2.txt", "closed", { [1] = { serial = "1682975235230" } }, closed },
  { "lunacm_slots", "luna/7.1-lunacm-slots-7.2.txt", "trailer", { [1] = { slot = 0, serial = "1582775433934",
    model = "LunaSA 7.2.0" }, current = 0 }, unmask },
  { "lunacm_slots", "luna/7.1-lunacm-slots-7.1.txt", "trailer", { [1] = { slot = 0, label = "",
    firmware = "7.0.1" } }, unmask },
  { "package_list", "luna/6.5-package-list-5.1.txt", "record", { ["sa_cmd_processor-5.1.3-1"] = true,
    ["glibc-2.5-42"] = true } },
  { "network_show", "sim/network-show.txt", "record", { hostname = "hsm1", default_device = "eth0",
    interfaces = { eth0 = { ip = "10.0.2.4", mask = "255.255.255.0", gateway = "10.0.2.1", mac = "00:15:B2:AA:01:02" },
      eth1 = { mac = "00:15:B2:AA:01:03" } } } },
  { "lunacm_sync_conflicts", "sim/lunacm-synchronize.txt", "trailer", { [1] = { a = 0, b = 1 } } },
  { "result", "luna/4.2-hsm-login-last-7.txt", "record", { ok = false, code = 0, command = "hsm login" } },
  { "result", "luna/5.3-client-assign-7.2.txt", "record", { ok = true, code = 0 } },
}

-- What a parser said, without the raw text it keeps (fields, sections, columns).
local RAW = { fields = true, sections = true, columns = true, text = true }
local function essence(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do
    if not RAW[k] then out[k] = essence(x) end
  end
  return out
end

local function lines_of(text)
  local out = {}
  for l in (text:gsub("\n$", "") .. "\n"):gmatch("([^\n]*)\n") do out[#out + 1] = l end
  return out
end

local function rejoin(ls) return table.concat(ls, "\n") .. "\n" end

local function each_line(text, fn)
  local out = {}
  for _, l in ipairs(lines_of(text)) do
    local r = fn(l)
    if r then out[#out + 1] = r end
  end
  return rejoin(out)
end

local VARIATIONS = {
  crlf = function(s) return (s:gsub("\n", "\r\n")) end,
  trailing_blanks = function(s) return each_line(s, function(l) return l .. "   " end) end,
  tabs = function(s) return (s:gsub("  +", "\t")) end,
  blank_lines_doubled = function(s) return (s:gsub("\n\n", "\n\n\n")) end,
  blank_lines_dropped = function(s) return each_line(s, function(l) return l:find("%S") and l or nil end) end,
  no_prompt = function(s) return each_line(s, function(l) return not l:find("lunash:>", 1, true) and l or nil end) end,
  banner = function(s) return "Luna Network HSM Command Line Shell v7.8.5-20. Copyright (c) 2024 Thales Group.\n\n" .. s end,
}

-- What a cut record still says is what the whole one says (fields and list
-- entries after the cut are gone), except that a verdict may turn to failure:
-- a command's result cut before its success line is not ok, never the reverse.
local function within(got, base, label)
  if type(got) ~= "table" or type(base) ~= "table" then
    if label:find("%.ok$") and got == false then return end
    return t.eq(got, base, label)
  end
  for k, v in pairs(got) do within(v, base[k], label .. "." .. tostring(k)) end
end

-- A variation read right, or refused: never another value.  Cut output
-- (cut = the case's kind, see CASES) may lose only what it no longer shows:
-- a "trailer" list its last rows, a "record" the fields after the cut; a
-- "closed" list reads whole or is refused.
local function check(name, label, text, base, kind, cut)
  local ok, got = pcall(parse[name], text)
  if not ok then
    local e = dhsm.error.normalize(got)
    t.eq({ e.kind, e.code }, { "luna", "ParseError" }, label .. ": " .. tostring(got))
    return "refused"
  end
  got = essence(got)
  if cut and kind == "trailer" then
    for i, row in ipairs(got) do t.eq(row, base[i], label .. ": row " .. i) end
    t.ok(#got <= #base, label .. ": the rows of the full output")
  elseif cut and kind == "record" then
    within(got, base, label)
  else
    t.eq(got, base, label)
  end
  return "read"
end

for _, c in ipairs(CASES) do
  local name, file, kind, shows, whole = c[1], c[2], c[3], c[4], c[5]
  t.test(("%s on %s and its variations: the same values, or ParseError"):format(name, file), function()
    local text = read(file)
    if whole then text = whole(text) end
    local base = essence(parse[name](text))
    for k, v in pairs(shows) do
      if type(v) == "table" and #v == 0 then
        for kk, vv in pairs(v) do t.eq((base[k] or {})[kk], vv, ("%s: [%s].%s"):format(file, k, kk)) end
      else
        t.eq(base[k], v, file .. ": " .. k)
      end
    end
    local tally = { read = 0, refused = 0 }
    for vname, vary in pairs(VARIATIONS) do
      local r = check(name, file .. " " .. vname, vary(text), base, kind)
      tally[r] = tally[r] + 1
    end
    local ls = lines_of(text)
    for n = 0, #ls - 1 do              -- cut after every line (the last one: the whole output)
      local r = check(name, ("%s cut after line %d"):format(file, n), rejoin(table.move(ls, 1, n, 1, {})), base, kind,
        true)
      tally[r] = tally[r] + 1
    end
    t.ok(tally.read >= 3, ("%s: most variations read (%d read, %d refused)"):format(file, tally.read, tally.refused))
  end)
end

t.test("an unknown header, a wider serial, a label with spaces: read right or refused, never dropped", function()
  local vtl = read("luna/8.3-vtl-verify-6-tabs.txt")
  t.raises(function() parse.vtl_verify((vtl:gsub("Serial #", "Serial No"))) end, "ParseError")
  t.eq(parse.vtl_verify((vtl:gsub("partition1", "my partition")))[1].label, "my partition")
  t.eq(parse.vtl_verify((vtl:gsub("\tpartition1", "")))[1].label, "", "a partition not initialised yet: no label")
  t.raises(function() parse.vtl_verify((vtl:gsub("500752010", "500752010x"))) end, "ParseError")
  t.eq(parse.vtl_verify((vtl:gsub("500752010", "1582775433934")))[1].serial, "1582775433934")
  local list = read("luna/3.1-partition-list-5.txt")
  t.raises(function() parse.partition_list((list:gsub("Objects", "Things"))) end, "ParseError")
  -- a 13-digit serial in 5.x's widths leaves one blank before the name: the row does not split, and is refused
  t.raises(function() parse.partition_list((list:gsub("157826004   ", "1582775433934"))) end,
    'cannot read the line "1582775433934 testPar1')
  t.eq(parse.partition_list((list:gsub("testPar1                ", "a_name_of_25_characters__")))[1].name,
    "a_name_of_25_characters__")
  t.raises(function() parse.client_list("registered client 1: a\nregistered client 3: c\n") end, "ParseError")
  t.raises(function() parse.client_list("\n\n") end, "ParseError")
  t.raises(function() parse.client_show('ClientID: c\nPartitions:   "a", b\n') end, "ParseError")
  t.raises(function() parse.lunacm_groups(read("sim/lunacm-groups.txt"):gsub("     %-    1582775433941[^\n]*\n", "")) end,
    "a member table row for 1582775433941")
  t.raises(function() parse.lunacm_role_show(read("sim/lunacm-role-show.txt"):gsub("Crypto Officer[^\n]*\n", "")) end,
    "ParseError")
  t.raises(function() parse.partition_show(read("sim/partition-show.txt"):gsub("Crypto Officer Login", "CO Login")) end,
    "ParseError")
  t.raises(function() parse.audit_show(read("sim/audit-show.txt"):gsub("Attempts Left", "attempts remaining")) end,
    "ParseError")
  t.raises(function() parse.ntls_show(read("sim/ntls-show.txt"):gsub("running", "up")) end, "ParseError")
  t.raises(function() parse.vtl_verify("Searching for slots...\n") end, "ParseError")
end)

-- wider serials, names with spaces, the single-command form, a cut or an unknown header
t.test("lunacm slots, package list, network show, synchronize, result: read right or refused", function()
  local slots = read("luna/7.1-lunacm-slots-7.2.txt")
  local s = parse.lunacm_slots((slots:gsub("XXXXXXXXXXXXX", "15827754339341234")):gsub("Label %->", "Label ->  my partition"))
  t.eq({ s[1].serial, s[1].label }, { "15827754339341234", "my partition" }, "a wider serial, a label with spaces")
  t.raises(function() parse.lunacm_slots((slots:gsub("XXXXXXXXXXXXX", "1582775433934"):gsub("Serial Number", "Serial No"))) end,
    "ParseError")
  t.raises(function() parse.lunacm_slots(slots:match("^(.-Slot Description[^\n]*\n)")) end, "Current Slot Id")
  -- package list: the single-command SSH form (no echo, no trailer) and a banner read the same
  local pkgs = read("luna/6.5-package-list-5.1.txt")
  local body = pkgs:gsub("^[^\n]*\n", ""):gsub("\nCommand Result[^\n]*\n[^\n]*$", "\n")
  t.eq(parse.package_list(body), parse.package_list(pkgs))
  t.raises(function() parse.package_list((pkgs:gsub("RPM LIST %(SOFTWARE%)", "SOFTWARE PACKAGES"))) end,
    "ParseError")
  t.raises(function() parse.package_list((pkgs:gsub("glibc%-2%.5%-42", "glibc 2.5 42"))) end,
    'cannot read the line "glibc 2.5 42"')
  -- network show: an interface worded otherwise is not read as another interface, nor as none
  local net = read("sim/network-show.txt")
  t.raises(function() parse.network_show((net:gsub("%((eth%d)%)", "[%1]"))) end, "an interface block")
  t.eq(parse.network_show((net:gsub("10%.0%.2%.4", "10.100.200.250"))).interfaces.eth0.ip, "10.100.200.250")
  -- synchronize: slot numbers wider, TABs; the warning worded otherwise is refused, never skipped
  local sync = read("sim/lunacm-synchronize.txt")
  t.eq(parse.lunacm_sync_conflicts((sync:gsub("slot 0", "slot 10"):gsub("  ", "\t"))), { { a = 10, b = 1 } })
  t.raises(function() parse.lunacm_sync_conflicts((sync:gsub("slot 1 have", "slots 1 have"))) end, "ParseError")
  -- result: the single-command form (a success line, no trailer); a failure line with CRLF and TABs
  t.eq(parse.result("'client assignPartition' successful.\n").ok, true)
  local r = parse.result("Error:\t'hsm login' failed. (A00000 : LUNA_RET_UM_PIN_INCORRECT)\r\n\r\nCommand Result : 0 (Success)\r\n")
  t.eq({ r.ok, r.code, r.error.hex }, { false, 0, "A00000" })
  r = parse.result("   'hsm login' failed.\r\nCommand Result : 0 (Success)\r\n")
  t.eq({ r.ok, r.command }, { false, "hsm login" })
end)
