-- dhsm.luna.parse: LunaSH, lunacm and vtl output as tables.
--
-- Written to the layout rules of shared/reference/luna-field.md section 11,
-- which real appliances of Luna 5, 6 and 7 printed (tests/fixtures/luna
-- holds those blocks, one file per section):
--   * a "Key: value" line is split on its first ':' (lunacm: '->') and
--     stripped - never cut at a column: 5.x, 6.x and 7.x align values at
--     different columns, 7.8.5 right-aligns some, lunacm indents 2 to 8;
--   * blank lines after the echo and before the trailer vary (0-3);
--   * the trailer is `Command Result : N (text)` (lunacm: `No Error`);
--   * `'<canonical command>' successful.` names the command as LunaSH
--     knows it, whatever abbreviation was typed;
--   * errors are `Error:  '<cmd>' failed. (<HEX> : <NAME>)` with free-text
--     `Error:` lines before or after and 8-space continuation lines;
--   * empty results are sentences (`There are no partitions.`);
--   * tables are columns separated by 2+ spaces or TABs, headers may span
--     two lines, rows may be separated from the rule by blank lines; 7.8.5
--     writes its rule one '=' segment a column, which places a value that
--     fills its column (one blank after it).
-- Every parser keeps what it does not know (fields = every key/value).  A
-- value a safety rule decides on is read from its own field, in a form the
-- reference shows, or the parser raises luna/ParseError naming the command,
-- the line and what was expected - never a default, never a word found
-- anywhere in the text.  An empty list comes only from the output's own
-- sentence ("There are no partitions.") or a header with no rows that its
-- trailer closes (vtl, which prints no trailer, has no such form).  Where
-- no real output was published (luna-field.md 16: `ntls show`, `audit
-- show`, lunacm `role show` and `hagroup listGroups`), the simulator's
-- layout is read, and read strictly.  A field naming attempts, tries, a
-- lock-out, a wipe, an erase, a reset, a failure or a zeroization that a
-- parser does not know is an error, not skipped.
--
-- Every parser is linear in its input (no pattern that backtracks over a
-- run of blanks) and refuses a line longer than util.MAX_LINE with a luna
-- error InputTooLong: LunaSH never prints one, and a runaway device must
-- not stall the scheduler.
local dhsm = require "dhsm"
local rc = require "dhsm.luna.rc"
local schema = require "dhsm.schema"
local util = require "dhsm.util"

local M = {}

-- The public functions check their arguments first (dhsm.schema.argument):
-- a usage error naming the function, not a Lua error from inside.
local function text_arg(fn, name, value)
  return schema.argument("luna.parse." .. fn, name, value, "string")
end

local trim = util.trim
local usage = dhsm.usage

local function text_of(text)
  if text == nil then return "" end
  if type(text) ~= "string" then
    usage("luna.parse: expected the text of a command, got %s", type(text))
  end
  return text
end

local function lines(text)
  return util.lines(text_of(text), "LunaSH output", "luna")
end

-- "Key:   value" or "Key ->   value" -> key, value (both stripped); nil for
-- a line without either, or whose key looks like a table row (a run of two
-- blanks inside it) or a rule.
local function key_value(l)
  local colon = l:find(":", 1, true)
  local arrow = l:find("->", 1, true)
  local at, width = colon, 1
  if arrow and (not colon or arrow < colon) then at, width = arrow, 2 end
  if not at then return nil end
  local k = trim(l:sub(1, at - 1))
  if k == "" or k:find("^[=%-]") or k:find("  %S") or k:find("\t", 1, true) then return nil end
  return k, trim(l:sub(at + width))
end
M.key_value = function(l) return key_value(text_arg("key_value", "line", l)) end

-- Every key/value line (first occurrence of a key wins).
function M.fields(text)
  local out = {}
  for _, l in ipairs(lines(text)) do
    local k, v = key_value(l)
    if k and out[k] == nil then out[k] = v end
  end
  return out
end

-- The columns of a table row: runs separated by 2+ blanks or a TAB ->
-- { {text=, first=, last=}, ... }.  Linear: one pass over the words.
local function columns(l)
  local cols, prev_last = {}, nil
  for first, after in l:gmatch("()[^ \t]+()") do
    local c = cols[#cols]
    if c and first == prev_last + 2 and l:byte(prev_last + 1) == 32 then
      c.last = after - 1                            -- one blank: the same column ("Serial #")
    else
      cols[#cols + 1] = { first = first, last = after - 1 }
    end
    prev_last = after - 1
  end
  for _, c in ipairs(cols) do c.text = l:sub(c.first, c.last) end
  return cols
end

local function texts(cols)
  local out = {}
  for i, c in ipairs(cols) do out[i] = c.text end
  return out
end
M.columns = function(l) return texts(columns(text_arg("columns", "line", l))) end

-- A rule line: only '=' (or '-') and blanks, at least three of them.
local function is_rule(l, ch)
  ch = ch or "="
  local t = trim(l)
  return #t >= 3 and t:find("^[" .. ch .. " \t]+$") ~= nil and t:sub(1, 1) == ch
end

local function yes(v)
  if v == nil then return nil end
  v = v:lower()
  return v == "yes" or v == "logged in" or v == "true" or v == "on" or v == "1" or v == "enabled"
end

local function int(v)
  return v and tonumber(v:match("%-?%d+"))
end

-- digits -> an integer; nil for anything else, or a number too large to be one
local function num(v)
  return v and v:find("^%d+$") and math.tointeger(tonumber(v)) or nil
end

-- The "Command Result : N (what)" / "Command Result : No Error" lines: the
-- last one's code and text, and where it starts.  Scanned with plain finds
-- and one cached ')' position: a gmatch with "%(([^)]*)%)" rescans to the
-- end from every occurrence.
local function last_result(text)
  local code, what, last, close
  local pos = 1
  while true do
    local s, e = text:find("Command Result[ \t]*:[ \t]*", pos)     -- a TAB where the copy has a blank reads the same
    if not s then break end
    local c, open = text:match("^(%d+)[ \t]*%(()", e + 1)
    if c then
      if close ~= false and (close == nil or close < open) then close = text:find(")", open, true) or false end
      if close then code, what, last = tonumber(c), text:sub(open, close - 1), s end
    elseif text:find("^No Error", e + 1) then
      code, what, last = 0, "No Error", s            -- lunacm's trailer
    end
    pos = e + 1
  end
  return code, what, last
end

-- `Error:  '<cmd>' failed. (<HEX> : <NAME>)` -> cmd, hex, name (name may be
-- missing: "(<HEX>)").  Plain finds: linear on any line.
local function failed_line(msg)
  local q1 = msg:find("'", 1, true)
  local f = msg:find("' failed.", (q1 or 0) + 1, true)
  if not q1 or not f then return nil end
  local inside = msg:match("^%s*%(([^)]*)%)", f + 9)
  if not inside then return msg:sub(q1 + 1, f - 1) end
  local hex, name = inside:match("^%s*(%x+)%s*:?%s*([%w_]*)%s*$")
  return msg:sub(q1 + 1, f - 1), hex, name ~= "" and name or nil
end

-- result(text) -> {ok=, code=, result=, command= (canonical, from the
-- "'x' successful." or "'x' failed." line), successful={...}, text=, error=
-- {hex=, name=, code=, known=, lines={...}, command=}}.
-- ok: the trailer says 0 (or there is none, as in single-command SSH, and a
-- success line), no `Error:` line and no `'<cmd>' failed.` line (with or
-- without its "Error:"): a 7.x failed `hsm login` has been published
-- ending "Command Result : 0 (Success)".
-- error.code is the name LunaSH printed, else the table's name for the hex
-- (dhsm.luna.rc), else "LUNA_RC_<HEX>": the hex is always carried.
-- error.known: the pairing is one a real appliance or Thales documents (a
-- row the simulator chose, tag K, is unverified: false).
function M.result(text)
  local code, what, last = last_result(text)
  local r = { code = code, result = what, successful = {} }
  local errs, failed = {}, nil
  for _, l in ipairs(lines(text)) do
    -- an Error: line, or the published failure line without its "Error:" (a copy, or a layout not
    -- seen): either fails the command whatever the trailer's code says
    local msg = l:match("^%s*Error:(.*)$") or (l:find("^%s*'[^']+' failed%.") and l)
    if msg then
      msg = trim(msg)
      errs[#errs + 1] = msg
      local cmd, hex, name = failed_line(msg)
      if cmd and not failed then failed = { command = cmd, hex = hex and rc.normalize(hex), name = name } end
    elseif #errs > 0 and l:find("^        %S") then
      errs[#errs] = errs[#errs] .. " " .. trim(l)    -- an 8-space continuation of the Error: line above
    else
      local q, rest = l:match("^%s*'([^']+)' successful%.(.*)$")
      if q then r.successful[#r.successful + 1] = q; r.command = q; r.note = trim(rest) ~= "" and trim(rest) or r.note end
    end
  end
  -- any Error: line fails the command: 7.x prints Command Result : 0 after some failures (4.2)
  r.ok = not failed and #errs == 0 and (code == 0 or (code == nil and #r.successful > 0))
  if failed or #errs > 0 or (code and code ~= 0) then
    local e = failed or {}
    e.lines = errs
    -- known: a pairing seen or documented; the simulator's own choices (tag K, unverified) are not
    e.known = e.hex ~= nil and rc.name(e.hex) ~= nil and rc.tag(e.hex) ~= "K"
    e.code = e.name or (e.hex and (rc.name(e.hex) or ("LUNA_RC_" .. e.hex))) or nil
    r.error = e
    if failed then r.command = failed.command end
  end
  r.text = text
  local nl = last and (text:find("\n", last, true) or #text + 1)
  if last and not text:find("%S", nl) then            -- nothing but blanks after the trailer
    r.text = text:sub(1, last - (text:sub(last - 1, last - 1) == "\n" and 2 or 1))
  end
  return r
end

-- Key/value lines grouped by the section they are under (a title line
-- ending in ':' followed by a rule of '='): {["HSM Details"] = {fields}}.
local function sections(ls)
  local out, current = {}, nil
  for i, l in ipairs(ls) do
    local nxt = ls[i + 1]
    local title = trim(l):match("^(.-):$")
    if title and nxt and is_rule(nxt) then
      current = {}
      out[title] = current
    elseif current then
      local k, v = key_value(l)
      if k and current[k] == nil then current[k] = v end
    end
  end
  return out
end

-- The FIPS sentence: "The HSM is in FIPS 140-2 approved operation mode." or
-- "... is NOT in ...".  An output without it (cut off, or a layout that
-- omits it) says nothing about FIPS: nil, never a guess.
local function fips_mode(text)
  if text:find("is NOT in FIPS", 1, true) then return false end
  if text:find("is in FIPS", 1, true) then return true end
  return nil
end

-- hsm show -> {serial=, label=, firmware=, software_version=, model=, part_number=,
--   admin_logged_in=, attempts_left=, zeroized=, manually_zeroized=, partitions={{serial=, name=}} (nil: not shown),
--   partitions_allowed=, partitions_created=, fips=, fields=, sections=}
-- 5.x says "Hardware Model:", 6.x/7.x "HSM Model:"; an unlabelled HSM shows
-- "no label" (5.x) or nothing (7.2): label "" for both.
-- unreadable(command, line, expected): output a safety value cannot be read from.
local function unreadable(command, line, expected)
  dhsm.error { kind = "luna", code = "ParseError", details = { command = command, line = line, expected = expected },
    message = ("%s: cannot read %s: expected %s"):format(command, line and ("the line %q"):format(line)
      or "its output", expected) }
end

-- A yes/no field a rule reads: true/false, or ParseError naming the line.
local function yes_no(command, key, value)
  local v = value and value:lower()
  if v == "yes" then return true end
  if v == "no" then return false end
  unreadable(command, value and (key .. ": " .. value), ("'%s: yes' or 'no'"):format(key))
end

-- A count of attempts left: "N" or "N before <role> is Locked Out|Zeroized"
-- (luna-field.md 3.5), or ParseError naming the line.
local function count_left(command, key, value)
  local n = value and (value:match("^(%d+)$") or value:match("^(%d+) before %a[%a ]* is Locked Out$")
    or value:match("^(%d+) before %a[%a ]* is Zeroized$"))
  if n then return tonumber(n) end
  unreadable(command, value and (key .. ": " .. value),
    ("'%s: N' or 'N before <role> is Locked Out'"):format(key))
end

-- The words of a field that counts failed logins or says a role is gone
-- (word stems, any case: "Tries Left", "Lockout", "Wiped", "Failed Login
-- Count", "Erased", "Reset").  A key holding one that the parser does not
-- know is a layout it has not seen: ParseError naming the line, never a
-- field skipped (an attempts line worded otherwise must not leave the guard
-- assuming a full count).  Matched by whole words, and every published field
-- holding such a word is known (luna-field.md 2.1-2.4, 3.5, and the
-- simulator's layouts): NOT_SAFETY lists the ones that are no count.
local SAFETY_STEMS = { "attempt", "tries", "try", "retr", "left", "remain", "lock", "zeroi", "wipe",
  "erase", "reset", "fail" }
local NOT_SAFETY = { ["Free Space Left (Bytes)"] = true }     -- hsm show's storage section (2.1-2.4)

local function safety_looking(key)
  for word in key:lower():gmatch("%a+") do
    for _, stem in ipairs(SAFETY_STEMS) do
      if word:sub(1, #stem) == stem then return true end
    end
  end
  return false
end

local function refuse_unknown_safety_keys(command, ls, known)
  for _, l in ipairs(ls) do
    local k = key_value(l)
    if k and not known[k] and not NOT_SAFETY[k] and safety_looking(k) then
      unreadable(command, trim(l), "a field whose name dhsm knows (a count or lock state worded otherwise "
        .. "cannot be read safely)")
    end
  end
end

-- The key/value lines of a one-record output -> fields (the first of a
-- key wins), refusing a watched key - one a rule reads - given twice with
-- different values: two records, or a layout not seen.
local function one_record(command, ls, watched)
  local out = {}
  for _, l in ipairs(ls) do
    local k, v = key_value(l)
    if k then
      if out[k] ~= nil and out[k] ~= v and watched[k] then
        unreadable(command, trim(l), ("one '%s' field (it was also %q)"):format(k, out[k]))
      end
      if out[k] == nil then out[k] = v end
    end
  end
  return out
end

-- The attempts-left field as published (luna-field.md 2.1-2.4): "N before
-- HSM zeroization!", or "HSM IS ZEROIZED !!!!" -> attempts, zeroized
local function admin_attempts(value, ls)
  if value == nil then
    local near                                   -- a line that may be the count, worded otherwise: named
    for _, l in ipairs(ls) do
      if l:lower():find("attempts") then near = trim(l) end
    end
    unreadable("hsm show", near, "an 'HSM Admin login attempts left' field (the count the failed-login guard reads)")
  end
  local n = value:match("^(%d+) before HSM zeroization!$")
  if n then return tonumber(n), false end
  if value:match("^HSM IS ZEROIZED !+$") then return 0, true end
  unreadable("hsm show", "HSM Admin login attempts left: " .. value,
    "'N before HSM zeroization!' or 'HSM IS ZEROIZED !!!!'")
end

-- The "Partitions created on HSM:" section of `hsm show`: every
-- `Partition: <sn>, Name: <name>` line, or {} from "There are no
-- partitions."; nil - not shown, never "none" - when the section is not
-- there at all (published 6.2.2 copies omit it: "[OUTPUT OMITTED]").  A
-- section without either, a line in another form, or a count that
-- disagrees with "Number of partitions created" is a ParseError.
local function hsm_partitions(ls, f)
  local parts, titled, none = {}, false, false
  for _, l in ipairs(ls) do
    local k, v = key_value(l)
    if trim(l) == "Partitions created on HSM:" then
      titled = true
    elseif trim(l) == "There are no partitions." then
      none = true
    elseif k == "Partition" then
      local sn, name = v:match("^(%d+),%s*Name:(.*)$")
      if not sn then unreadable("hsm show", trim(l), "'Partition: <serial>, Name: <name>'") end
      parts[#parts + 1] = { serial = sn, name = trim(name) }
    end
  end
  if not titled and not none and #parts == 0 then return nil end
  if not titled or none == (#parts > 0) then
    unreadable("hsm show", nil, "a 'Partitions created on HSM:' section listing each partition or 'There are no "
      .. "partitions.'")
  end
  local created = f["Number of partitions created"]
  if created and num(created) ~= #parts then
    unreadable("hsm show", "Number of partitions created: " .. created, ("%d, the partitions listed"):format(#parts))
  end
  return parts
end

local HSHOW = { ["HSM Admin login attempts left"] = true, ["Manually Zeroized"] = true }
local HSHOW_READ = { ["HSM Admin login attempts left"] = true, ["Manually Zeroized"] = true, ["Serial #"] = true,
  ["HSM Label"] = true }

function M.hsm_show(text)
  local ls = lines(text)
  refuse_unknown_safety_keys("hsm show", ls, HSHOW)
  local f = one_record("hsm show", ls, HSHOW_READ)
  local attempts, zeroized = admin_attempts(f["HSM Admin login attempts left"], ls)
  if not (f["Serial #"] or ""):match("^%d+$") then
    unreadable("hsm show", f["Serial #"] and ("Serial #: " .. f["Serial #"]), "a 'Serial #' field of digits")
  end
  local parts = hsm_partitions(ls, f)
  local label = f["HSM Label"]
  if label == "no label" then label = "" end
  return {
    serial = f["Serial #"], label = label, firmware = f["Firmware"],
    software_version = f["Software Version"], model = f["HSM Model"] or f["Hardware Model"],
    part_number = f["HSM Part Number"],
    admin_logged_in = yes(f["HSM Admin login status"]),
    attempts_left = attempts,
    zeroized = zeroized,
    manually_zeroized = f["Manually Zeroized"] and yes_no("hsm show", "Manually Zeroized", f["Manually Zeroized"]),
    partitions = parts,
    partitions_allowed = int(f["Number of partitions allowed"]),
    partitions_created = int(f["Number of partitions created"]),
    fips = fips_mode(text),
    fields = f,
    sections = sections(ls),
  }
end

-- The segments of a rule of '=' -> {{first=, last=}, ...}: where the
-- columns are (7.8.5 writes one segment a column, two blanks between).
-- nil for a rule holding a TAB: its positions say nothing about another
-- line's (the published TAB copies were re-spaced by their publishers).
local function rule_segments(l)
  if l:find("\t", 1, true) then return nil end
  local out = {}
  for first, after in l:gmatch("()=+()") do out[#out + 1] = { first = first, last = after - 1 } end
  return out
end

-- A table of rows under a rule of '=' (or '-'): {header={names}, rows={{cells}}, lines={raw rows},
-- segments={{first=, last=}} (the rule's, nil when it holds a TAB)}.
-- The header is the last non-blank line above the rule (a line above it
-- that sits over a column joins that column's name: 7.8.5 "Partition" over
-- "Version" - read by position, so not when either line holds a TAB);
-- rows are the non-blank lines after the rule, split on 2+ blanks or TABs,
-- until a sentence or the trailer.
function M.table(text)
  local ls = lines(text)
  local rule, dashes
  for i, l in ipairs(ls) do                  -- a rule of '=' (5.x 'user list': of '-')
    local first = l:match("^[ \t]*([=-])")
    if first == "=" and is_rule(l) then rule = i; break end
    if first == "-" and not dashes and is_rule(l, "-") then dashes = i end
  end
  rule = rule or dashes
  local out = { header = {}, rows = {}, lines = {} }
  if not rule then return out end
  out.segments = rule_segments(ls[rule])
  local h = rule - 1
  while h > 0 and trim(ls[h]) == "" do h = h - 1 end
  local head = h > 0 and columns(ls[h]) or {}
  local positioned = h > 1 and not ls[h]:find("\t", 1, true) and not ls[h - 1]:find("\t", 1, true)
  local above = positioned and columns(ls[h - 1]) or {}
  for _, c in ipairs(head) do
    for _, a in ipairs(above) do       -- a word standing over this column, not over a run of columns
      if a.first >= c.first - 2 and a.last <= c.last + 2 and not a.text:find("^[-=]+$") then
        c.text = a.text .. " " .. c.text
      end
    end
  end
  out.header = texts(head)
  for i = rule + 1, #ls do
    local l = ls[i]
    if l:find("^Command Result") then break end
    if trim(l) ~= "" and not is_rule(l) then
      out.rows[#out.rows + 1] = texts(columns(l))
      out.lines[#out.rows] = l
    end
  end
  return out
end

-- A row read by the rule's segments (7.8.5: one '=' run a column): each
-- word (a run of non-blanks) goes to the segment it lies over; one in the
-- two blanks between segments goes to the segment after it (a value
-- pushed right by a full column before it, one blank between).  A word
-- over two segments - a value run into its neighbour - or past the last,
-- or a segment left without a word, cannot be read: nil.
local function by_segments(l, segments)
  local cells = {}
  for first, after in l:gmatch("()[^ ]+()") do
    local last, at = after - 1, nil
    for i, seg in ipairs(segments) do
      if first <= seg.last and last >= seg.first then          -- over this segment
        if at then return nil end                              -- and over another: run together
        at = i
      elseif not at and last < seg.first and (i == 1 or first > segments[i - 1].last) then
        at = i                                                 -- in the gap before it
      end
    end
    if not at then return nil end
    local c = cells[at]
    if c then c.last = last else cells[at] = { first = first, last = last } end
  end
  local out = {}
  for i = 1, #segments do
    if not cells[i] then return nil end
    out[i] = l:sub(cells[i].first, cells[i].last)
  end
  return out
end

-- partition list -> {{serial=, name=, version=, objects=, total=, used=, free=, columns={...}}}
-- 5.x/6.x: Partition Name Objects Total Used Free; 7.8.5 adds "Partition
-- Version" after Name.  A row copied with the next one appended (seen in a
-- published 6.2.2 copy) gives both rows.
local PART_COLS = { partition = "serial", name = "name", ["partition version"] = "version", version = "version",
  objects = "objects", total = "total", used = "used", free = "free" }
local PART_NUMERIC = { objects = true, total = true, used = true, free = true }

local PART_NEEDED = { "serial", "name", "objects", "total", "used", "free" }

-- A partition list row under a rule of one '=' segment a column (7.8.5),
-- without a TAB, read both ways: split on 2+ blanks and by the segments'
-- positions.  A row that does not split into its columns takes the
-- positions (a name filling its column, one blank after it); one that
-- splits both ways must split the same - two faults in one row (a name with
-- two blanks inside, a full name one blank from its version) can cancel
-- into the right count of wrong cells, and that is refused, not read.
local function by_rule(t, r, row, width)
  if not (t.segments and #t.segments == width) or t.lines[r]:find("\t", 1, true) then return row end
  local placed = by_segments(t.lines[r], t.segments)
  if #row % width ~= 0 then return placed or row end
  if placed and #row == width then
    for i = 1, width do
      if placed[i] ~= row[i] then
        unreadable("partition list", t.lines[r], ("the cells under the rule's columns (column %d reads %q by its "
          .. "position, %q by its blanks)"):format(i, placed[i], row[i]))
      end
    end
  end
  return row
end

-- Fail-closed: an empty list only from "There are no partitions." or a
-- header with no rows closed by its trailer (without one: cut short); a
-- header whose names are not the published ones, or a row that does not
-- split into its columns, is a ParseError naming the line - a partition is
-- never dropped, a column never guessed.  Columns split on 2+ blanks or a
-- TAB; a row that does not split so under a rule of one '=' segment a
-- column (7.8.5) is read by those segments' positions (a name filling its
-- 32 columns, one blank after it), or refused.
function M.partition_list(text)
  text = text_of(text)
  if text:find("There are no partitions%.") then return {} end
  local t = M.table(text)
  local names, seen = {}, {}
  for i, h in ipairs(t.header) do
    names[i] = PART_COLS[h:lower()]
    if not names[i] then
      unreadable("partition list", table.concat(t.header, "  "), ("the published column names (Partition, Name, "
        .. "[Partition Version,] Objects, Total, Used, Free), not %q"):format(h))
    end
    seen[names[i]] = true
  end
  for _, need in ipairs(PART_NEEDED) do
    if not seen[need] then
      unreadable("partition list", #t.header > 0 and table.concat(t.header, "  ") or nil,
        "a table under a header naming " .. table.concat(PART_NEEDED, ", ") .. " (or 'There are no partitions.')")
    end
  end
  local width = #names
  -- a header and rule with no row: the empty table only when the trailer closes it; without it
  -- the output was cut (the appliance says "There are no partitions." when there are none)
  if #t.rows == 0 and not text:find("\nCommand Result") then
    unreadable("partition list", nil, "rows under the header (or 'There are no partitions.'), or its trailer")
  end
  local out = {}
  for r, row in ipairs(t.rows) do
    row = by_rule(t, r, row, width)
    if #row == 0 or #row % width ~= 0 or not row[1]:find("^%d+$") then
      unreadable("partition list", table.concat(row, "  "), ("a row of %d columns, the serial first"):format(width))
    end
    for first = 1, #row, width do         -- a copy with the next row appended gives both (6.2.2)
      local p = { columns = {} }
      for i = 1, width do
        local v = row[first + i - 1]
        p.columns[names[i]] = v
        if PART_NUMERIC[names[i]] then
          p[names[i]] = num(v)
          if p[names[i]] == nil then
            unreadable("partition list", table.concat(row, "  "), ("a number of bytes or objects under %s, not %q")
              :format(names[i], v))
          end
        else
          p[names[i]] = v
        end
      end
      if not p.serial:find("^%d+$") then
        unreadable("partition list", table.concat(row, "  "), "a partition serial of digits first")
      end
      out[#out + 1] = p
    end
  end
  return out
end

-- partition show -> {name=, serial=, label=, so_zeroized=, so_attempts_left=, co_locked=,
--   co_attempts_left=, objects=, version=, fields=}
-- Published for 6.2.2 only (luna-field.md 3.5: the CO is "Partition
-- Owner", no Partition SO); the 7.x fields are the simulator's choice
-- (section 16), so read strictly.  Required: the name, the serial and the
-- Crypto Officer's lock state and attempts; the Partition SO's fields
-- when shown (nil: this layout has no Partition SO).  objects: nil when
-- not shown.
local PSHOW = {
  ["Partition SO Zeroized"] = { "so_zeroized", yes_no },
  ["Partition SO Login Attempts Left"] = { "so_attempts_left", count_left },
  ["Crypto Officer Locked Out"] = { "co_locked", yes_no },
  ["Partition Owner Locked Out"] = { "co_locked", yes_no },
  ["Crypto Officer Login Attempts Left"] = { "co_attempts_left", count_left },
  ["Partition Owner Login Attempts Left"] = { "co_attempts_left", count_left },
}

local PSHOW_READ = { ["Partition Name"] = true, ["Partition SN"] = true, ["Object Count"] = true,
  ["Partition Object Count"] = true, ["Number objects"] = true }
for key in pairs(PSHOW) do PSHOW_READ[key] = true end

function M.partition_show(text)
  local command = "partition show"
  local ls = lines(text)
  refuse_unknown_safety_keys(command, ls, PSHOW)
  local f = one_record(command, ls, PSHOW_READ)
  local out = { name = f["Partition Name"], serial = f["Partition SN"], label = f["Partition Label"],
    version = f["Partition Version"], fields = f }
  if not out.name or out.name == "" then unreadable(command, nil, "a 'Partition Name' field") end
  if not (out.serial or ""):find("^%d+$") then
    unreadable(command, out.serial and ("Partition SN: " .. out.serial), "a 'Partition SN' field of digits")
  end
  for key, read in pairs(PSHOW) do
    if f[key] ~= nil then out[read[1]] = read[2](command, key, f[key]) end
  end
  -- a layout with a Partition SO (any of its fields shown) must give both of its readings: a PSO
  -- field dhsm could not read is never "this layout has no Partition SO" (diagnose's 6.x reading)
  local pso = false
  for key in pairs(f) do pso = pso or key:find("^Partition SO ") ~= nil end
  if pso and (out.so_zeroized == nil or out.so_attempts_left == nil) then
    unreadable(command, nil, "the Partition SO's 'Zeroized' and 'Login Attempts Left' fields (it shows other "
      .. "Partition SO fields)")
  end
  if out.co_locked == nil or out.co_attempts_left == nil then
    unreadable(command, nil, "the Crypto Officer's 'Locked Out' and 'Login Attempts Left' fields (or the Partition "
      .. "Owner's)")
  end
  local objects = f["Object Count"] or f["Partition Object Count"] or f["Number objects"]
  if objects then
    out.objects = num(objects) or unreadable(command, "Object Count: " .. objects, "a number of objects")
  end
  return out
end

-- client list -> {"name", ...}: `registered client N: <name>` rows numbered
-- from 1, or {} from "No clients are registered." - anything else (no
-- row and no sentence, a row out of sequence, a row not in that form) is
-- a ParseError: a client missing from the list is never "not registered".
function M.client_list(text)
  local out, empty = {}, false
  for _, l in ipairs(lines(text)) do
    local t = trim(l)
    if t == "No clients are registered." then
      empty = true
    elseif t:lower():find("^registered client") then
      local n, name = t:match("^registered client (%d+):%s*(.-)$")
      if not n or name == "" or tonumber(n) ~= #out + 1 then
        unreadable("client list", t, ("'registered client %d: <name>'"):format(#out + 1))
      end
      out[#out + 1] = name
    end
  end
  if empty == (#out > 0) then
    unreadable("client list", nil, "'registered client N: <name>' rows or 'No clients are registered.'")
  end
  return out
end

-- client show -> {id=, ip=, hostname=, partitions={...}, htl_required=, ott_expiry=, fields=}
-- Partitions: "a", "b" or <none> (luna-field.md 5.2), read whole: a
-- value in another form is a ParseError, never "no partition".
function M.client_show(text)
  local command = "client show"
  local f = one_record(command, lines(text), { ClientID = true, Partitions = true, ["HTL Required"] = true })
  if not f["ClientID"] or f["ClientID"] == "" then unreadable(command, nil, "a 'ClientID' field") end
  local listed = f["Partitions"]
  local parts = {}
  if listed == nil then unreadable(command, nil, "a 'Partitions:' field") end
  if listed ~= "<none>" then
    local rest = listed
    while rest ~= "" do
      local p, after = rest:match('^"([^"]+)"(.*)$')
      if not p or not (after == "" or after:find("^,%s*%S")) then
        unreadable(command, listed and ("Partitions: " .. listed), '\'Partitions: "a", "b"\' or \'Partitions: <none>\'')
      end
      parts[#parts + 1] = p
      rest = after:gsub("^,%s*", "")
    end
  end
  local function given(v) return v ~= nil and v ~= "<none>" and v ~= "" and v or nil end
  return { id = f["ClientID"], ip = given(f["IPAddress"]), hostname = given(f["Hostname"]), partitions = parts,
    htl_required = f["HTL Required"] and yes_no(command, "HTL Required", f["HTL Required"]),
    ott_expiry = f["OTT Expiry"], fields = f }
end

-- ntls show -> {device=, ip=, port=, running=, ipcheck=, fields=}
-- No real `ntls show` was published (luna-field.md 16): this reads the
-- simulator's layout and nothing else - the binding line, `NTLS TCP port:
-- N`, `NTLS status: running|stopped`, `NTLS IP check: enabled|disabled` -
-- and raises on any other, never a default.
local NTLS_WORDS = { running = true, stopped = false, enabled = true, disabled = false }

function M.ntls_show(text)
  local command = "ntls show"
  local ls = lines(text)
  local f = one_record(command, ls, { ["NTLS TCP port"] = true, ["NTLS status"] = true, ["NTLS IP check"] = true })
  local device, ip
  for _, l in ipairs(ls) do
    local d, rest = l:match("^%s*NTLS bound to network device:%s*(%S+)(.*)$")
    if d then
      device, ip = d, rest:match('^%s*IP Address:%s*"([^"]*)"')
      if not ip then unreadable(command, trim(l), 'NTLS bound to network device: <dev> IP Address: "<ip>"') end
    end
  end
  if not device then unreadable(command, nil, "an 'NTLS bound to network device:' line") end
  local function word(key, allowed)
    local v = (f[key] or ""):lower()
    if NTLS_WORDS[v] == nil or not allowed[v] then
      unreadable(command, f[key] and (key .. ": " .. f[key]), ("'%s:' followed by one of the words dhsm knows"):format(key))
    end
    return NTLS_WORDS[v]
  end
  local port = num(f["NTLS TCP port"]) or unreadable(command, f["NTLS TCP port"] and ("NTLS TCP port: "
    .. f["NTLS TCP port"]), "'NTLS TCP port: N'")
  return { device = device, ip = ip, port = port, running = word("NTLS status", { running = true, stopped = true }),
    ipcheck = word("NTLS IP check", { enabled = true, disabled = true }), fields = f }
end

-- A line around a command's output rather than of it: the prompt and
-- echo (`[host] lunash:>cmd`), a LunaSH banner (luna-field.md 1.2), SSH's
-- own lines of a non-interactive session (1.3).  Parsers that require a
-- strict form skip these and refuse any other line they do not know.
local function around_output(t)
  return t:find("lunash:>", 1, true) ~= nil
    or (t:find("Command Line Shell", 1, true) ~= nil and t:find("Copyright", 1, true) ~= nil)
    or t:find("^Pseudo%-terminal will not be allocated") ~= nil
    or t:find("^%S+@%S+'s password:$") ~= nil or t:find("^%(%S+@%S+%) Password:$") ~= nil
end

-- package list -> {[entry] = true}, read as published (luna-field.md 6.5):
-- the titles `RPM LIST (SYSTEM)` and `RPM LIST (SOFTWARE)`, each over a
-- rule of '-', and under each the package entries, one RPM
-- name-version-release a line (letters, digits, . + _ -, a '-' before a
-- digit), blank lines between.  Installed packages are a safety value (the
-- reboot-fix check), so the form is required whole: both titles, in that
-- order, each with its rule; an entry only inside a section.  What comes
-- before the first title (the echo, a banner) is not read; after it, a line
-- that is none of these - a sentence, an error, "Proceeding..." - is a
-- ParseError naming it, and so is an output without the titles ("Unable to
-- communicate with HSM" is not "nothing installed").
local RPM_TITLES = { "RPM LIST (SYSTEM)", "RPM LIST (SOFTWARE)" }

function M.package_list(text)
  local command = "package list"
  local ls = lines(text)
  local out, titles, ruled, before = {}, 0, true, nil
  for _, l in ipairs(ls) do
    local t = trim(l)
    if t:find("^Command Result") then break end
    if titles == 0 and not before and t ~= "" and not around_output(t) then
      before = t                         -- named if no title follows: what the appliance said instead
    end
    if t == RPM_TITLES[titles + 1] and ruled then
      titles, ruled = titles + 1, false
    elseif titles > 0 and not ruled then
      if not is_rule(t, "-") then unreadable(command, t, ("a rule of '-' under '%s'"):format(RPM_TITLES[titles])) end
      ruled = true
    elseif titles > 0 and t ~= "" then
      if not (t:find("^%w[%w%.+_%-]*$") and t:find("%-%d")) then
        unreadable(command, t, "a package entry (name-version-release, one a line) under the RPM LIST titles")
      end
      out[t] = true
    end
  end
  if titles < #RPM_TITLES or not ruled then
    unreadable(command, titles == 0 and before or nil,
      ("the sections '%s' and '%s', each over a rule of '-'"):format(RPM_TITLES[1], RPM_TITLES[2]))
  end
  return out
end

-- has_package(set, name) -> the first entry holding name as a whole token
-- (any case; between the entry's start or end and anything but a letter or
-- a digit: KB0019789 is in lunasa-reboot-fix-KB0019789-7.2.0-1, not in
-- KB00197890), or nil
function M.has_package(set, name)
  schema.argument("luna.parse.has_package", "set", set, "table")
  text_arg("has_package", "name", name)
  local want = name:lower():gsub("%p", "%%%0")
  local found
  for entry in pairs(set) do
    if (" " .. entry:lower() .. " "):find("[^%w]" .. want .. "[^%w]") and (found == nil or entry < found) then
      found = entry
    end
  end
  return found
end

-- network show -> {hostname=, interfaces={eth0={ip=, mask=, gateway=, mac=}}, default_device=}
-- Unpublished (luna-field.md 16): the simulator's layout, "Key (dev): value"
-- lines per interface and a routing table.  An output with no interface
-- block is a ParseError: the path checks read the interfaces.
local NET_KEYS = { ["IP Address"] = "ip", ["HW Address"] = "mac", ["Mask"] = "mask", ["Gateway"] = "gateway" }
function M.network_show(text)
  local f = M.fields(text)
  local ifaces, default = {}, nil
  for _, l in ipairs(lines(text)) do
    local k, value = key_value(l)
    local key, dev = (k or ""):match("^(%a[%a ]*) %((%w+)%)$")
    if NET_KEYS[key] then                    -- an interface's line; "Space (Bytes)" is none
      local i = ifaces[dev] or {}
      ifaces[dev] = i
      if value ~= "" and not value:find("^<") then i[NET_KEYS[key]] = value end
    end
    local c = l:find("^%s*0%.0%.0%.0") and columns(l) or {}     -- the default route's row only
    if #c >= 5 and c[1].text == "0.0.0.0" and c[3].text == "0.0.0.0" then
      for word in c[#c].text:gmatch("[^ ]+") do default = word end    -- the Iface, last word of the row
    end
  end
  if next(ifaces) == nil then        -- garbage, an error, a cut output: never "no interface"
    unreadable("network show", nil, "an interface block ('IP Address (eth0): ...', 'HW Address (eth0): ...')")
  end
  return { hostname = f["Hostname"], interfaces = ifaces, default_device = default }
end

-- lunacm's slot listing (start-up, `slot list`) -> {{slot=, label=, serial=, model=, firmware=,
--   configuration=, description=, virtual=, fields={...}}, current=}
-- "Field -> value" at any indent; a "Slot Id ->" line starts a slot.  The
-- output of `lunacm -c slot list` holds the start-up banner's listing,
-- "Current Slot Id:", then the command's own listing of the same slots:
-- slots after that line start the list again.  An HA group's virtual slot
-- names its fields "HSM Label ->", "HSM Serial Number ->".
-- Fail-closed (the guard keys a partition by the serial read here): every
-- slot has a number and a serial of digits, the listing ends with its
-- "Current Slot Id:" line (a cut listing raises), and an empty list comes
-- only from "Current Slot Id: None" with no slot (luna-field.md 7.2).
function M.lunacm_slots(text)
  local command = "lunacm slot list"
  local out, slot, again, current = {}, nil, false, nil
  for _, l in ipairs(lines(text)) do
    local k, v = key_value(l)
    if k == "Slot Id" then
      if again then out, again = {}, false end
      slot = { slot = num(v), fields = {} }
      if not slot.slot then unreadable(command, trim(l), "'Slot Id -> N'") end
      out[#out + 1] = slot
    elseif k == "Current Slot Id" then
      current = v
      slot, again = nil, true
    end
    if slot and k then
      slot.fields[k] = v
    end
  end
  if current == nil then unreadable(command, nil, "a slot listing ending with 'Current Slot Id:'") end
  if current == "None" then
    if #out > 0 then unreadable(command, "Current Slot Id: None", "no slot listed when none is current") end
    return out
  end
  out.current = num(current) or unreadable(command, "Current Slot Id: " .. current, "'Current Slot Id: N' or 'None'")
  if #out == 0 then unreadable(command, "Current Slot Id: " .. current, "the slots listed above it") end
  for _, s in ipairs(out) do
    local f = s.fields
    s.virtual = f["HSM Label"] ~= nil and f["Label"] == nil
    s.label, s.serial = f["Label"] or f["HSM Label"], f["Serial Number"] or f["HSM Serial Number"]
    if not (s.serial or ""):find("^%d+$") then
      unreadable(command, s.serial and ("Serial Number -> " .. s.serial), ("a serial number of digits for slot %d")
        :format(s.slot))
    end
    s.model, s.firmware = f["Model"] or f["HSM Model"], f["Firmware Version"] or f["HSM Firmware Version"]
    s.configuration, s.description = f["Configuration"] or f["HSM Configuration"], f["Slot Description"]
  end
  return out
end

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9, Oct = 10, Nov = 11,
  Dec = 12 }

-- status date -> the appliance's clock as Unix time, from date(1)'s
-- default layout "Mon Nov 30 22:23:24 UTC 2026" on a line of its own (the
-- appliance speaks UTC).  The layout was never published (luna-field.md
-- section 16): output without such a line, or with a field out of range
-- (day 1-31, 23:59:60 at most), is a luna error (NoDate) naming what
-- came, never a time guessed from it.
local function date_line(l)
  local mon, day, h, m, sec, year = trim(l):match("^%a%a%a%s+(%a%a%a)%s+(%d%d?)%s+(%d%d):(%d%d):(%d%d)%s+%a*%s*(%d%d%d%d)$")
  local t = mon and { year = tonumber(year), month = MONTHS[mon], day = tonumber(day), hour = tonumber(h),
    min = tonumber(m), sec = tonumber(sec), isdst = false }
  if t and t.month and t.day >= 1 and t.day <= 31 and t.hour <= 23 and t.min <= 59 and t.sec <= 60 then return t end
end

function M.status_date(text)
  local t
  for _, l in ipairs(lines(text)) do t = t or date_line(l) end
  if not t then
    dhsm.error { kind = "luna", code = "NoDate", message = ("status date: no date in its output %q"):format(
      util.trim(text):sub(1, 80)), details = { text = text } }
  end
  local now = os.time()
  local utc_offset = os.time(os.date("*t", now)) - os.time(os.date("!*t", now))
  return os.time(t) + utc_offset
end

-- lunacm's verdict on its command -> {ok=, code=}, from its last "Command
-- Result :" line alone (an earlier "No Error" says nothing of the command
-- that came after it): ok for "No Error", code the CKR name of a failure;
-- no verdict at all is not ok.  Never its exit status: Thales documents
-- lunacm's return codes as unsupported.  Plain finds: linear however long.
function M.lunacm_result(text)
  text_arg("lunacm_result", "text", text)
  local last, pos = nil, 1
  while true do
    local _, e = text:find("Command Result : ", pos, true)
    if not e then break end
    last, pos = e + 1, e + 1
  end
  if last and text:find("^No Error", last) then return { ok = true } end
  return { ok = false, code = last and text:match("^0x%x+ %((CKR_[%w_]+)%)", last) }
end

-- lunacm `hagroup listGroups` -> {groups = {{label=, serial=, slot=, members =
--   {{serial=, status=, slot=, label=}}}}, retry=, interval=, auto_recovery=}
-- No real listing was published (luna-field.md 9, 16): this reads the
-- simulator's layout, strictly.  Each group: `HA Group Label:`, `HA Group
-- Number:` and `HA Group Slot ID:` (the slot is that line's last word, as
-- the OpenStack role reads it), `Group Members: s1, s2`, then a member
-- table of four columns (Slot #, Member S/N, Member Label, Status) with a
-- row for every serial `Group Members` names.  {} only from "There are no
-- HA groups configured."; a group cut short, a member missing from the
-- table or a row that does not read is a ParseError.
local function member_row(command, l)
  local c = texts(columns(l))
  local slot, serial, label, status = c[1], c[2], c[3], c[4]
  if #c ~= 4 or not (slot == "-" or slot:find("^%d+$")) or not serial:find("^%d+$") or not status:find("^%a+$") then
    unreadable(command, trim(l), "a member row: slot (or -), serial, label (or -), status")
  end
  return { slot = num(slot), serial = serial, label = label ~= "-" and label or nil, status = status }
end

local function check_group(command, g)
  if not (g.serial and g.slot and g.listed) then
    unreadable(command, "HA Group Label: " .. g.label, "its 'HA Group Number:', 'HA Group Slot ID:' and 'Group Members:' "
      .. "lines")
  end
  local rows = {}
  for _, m in ipairs(g.members) do rows[m.serial] = true end
  for serial in g.listed:gmatch("[^,%s]+") do
    if not rows[serial] then
      unreadable(command, "Group Members: " .. g.listed, ("a member table row for %s"):format(serial))
    end
  end
  g.listed = nil
end

function M.lunacm_groups(text)
  local command = "lunacm hagroup listGroups"
  local out, group, empty, in_table = { groups = {} }, nil, false, false
  for _, l in ipairs(lines(text)) do
    local k, v = key_value(l)
    local t = trim(l)
    if t == "There are no HA groups configured." then
      empty = true
    elseif k == "HA Group Label" then
      if group then check_group(command, group) end
      group, in_table = { label = v, members = {} }, false
      if v == "" then unreadable(command, t, "a group label") end
      out.groups[#out.groups + 1] = group
    elseif group and k == "HA Group Number" then
      group.serial = v:match("^%d+$") or unreadable(command, t, "'HA Group Number: <digits>'")
    elseif group and k == "HA Group Slot ID" then
      group.slot = tonumber(v:match("(%d+)$")) or unreadable(command, t, "'HA Group Slot ID: N'")
    elseif group and k == "Group Members" then
      group.listed = v
    elseif group and is_rule(l) then
      in_table = true
    elseif group and in_table and t ~= "" then
      group.members[#group.members + 1] = member_row(command, l)
    elseif t == "" then
      in_table = false
    elseif k == "Maximum auto recovery retry" then
      out.retry = tonumber(v:match("^%-?%d+$")) or unreadable(command, t, "'Maximum auto recovery retry: N'")
    elseif k == "Auto recovery poll interval" then
      out.interval = tonumber(v:match("^(%d+) seconds$") or v:match("^%d+$"))
        or unreadable(command, t, "'Auto recovery poll interval: N seconds'")
    elseif k == "HA auto recovery" then
      out.auto_recovery = ({ enabled = true, disabled = false })[v]
      if out.auto_recovery == nil then unreadable(command, t, "'HA auto recovery: enabled|disabled'") end
    end
  end
  if group then check_group(command, group) end
  if empty == (#out.groups > 0) then
    unreadable(command, nil, "'HA Group Label:' groups or 'There are no HA groups configured.'")
  end
  return out
end

-- lunacm `hagroup synchronize` -> {{a=, b=}, ...}: the slot pairs of every
-- warning line the troubleshooting guide published (HA Group Doesn't Sync;
-- luna-field.md section 9), {} when there is none:
--   Warning: Synchronize may fail.  The members in slot 0 and slot 1 have conflicting settings for private key cloning.
-- It is the only output that tells members are in different cloning
-- domains, so a line that speaks like it (of a synchronize that may fail,
-- or of private key cloning) and does not read as published is a
-- ParseError, never skipped.
-- Blanks are compared as words: any run of spaces and TABs stands for one,
-- indent and trailing blanks go; no pattern scans a run of blanks.
local SYNC_WARNING = "^Warning: Synchronize may fail%. The members in slot (%d+) and slot (%d+) have conflicting "
  .. "settings for private key cloning%.$"

function M.lunacm_sync_conflicts(text)
  local out = {}
  for _, l in ipairs(lines(text)) do
    local words = {}
    for w in l:gmatch("[^ \t]+") do words[#words + 1] = w end
    local said = table.concat(words, " ")
    local low = said:lower()
    if low:find("synchronize may fail", 1, true) or low:find("private key cloning", 1, true) then
      local a, b = said:match(SYNC_WARNING)
      a, b = a and math.tointeger(tonumber(a)), b and math.tointeger(tonumber(b))   -- 30 digits: a float, refused
      if not (a and b) then
        unreadable("hagroup synchronize", trim(l), "the guide's 'Warning: Synchronize may fail.  The members in slot N "
          .. "and slot M have conflicting settings for private key cloning.'")
      end
      out[#out + 1] = { a = a, b = b }
    end
  end
  return out
end

-- lunacm `role show` -> {pso = n, co = n}: the login attempts left of the
-- Partition SO and the Crypto Officer (0 when the status says Zeroized or
-- Locked out).  Unpublished (luna-field.md 16): the simulator's table of
-- Role, Status, Login attempts left, read strictly - both rows, each
-- with a count (or a gone status), or a ParseError: the guard refuses a
-- login whose attempts it cannot read.
local ROLE_ROWS = { ["Partition SO"] = "pso", ["Crypto Officer"] = "co" }
local GONE = { ["Zeroized"] = true, ["Locked out"] = true }

function M.lunacm_role_show(text)
  local command = "lunacm role show"
  local out = {}
  for _, l in ipairs(lines(text)) do
    local c = texts(columns(l))
    local role = ROLE_ROWS[c[1]]
    if role then
      if #c ~= 3 or not (c[3]:find("^%d+$")) then
        unreadable(command, trim(l), "a row of role, status and attempts left")
      end
      out[role] = GONE[c[2]] and 0 or tonumber(c[3])
    end
  end
  for row, role in pairs(ROLE_ROWS) do
    if out[role] == nil then unreadable(command, nil, ("a '%s' row with its attempts left"):format(row)) end
  end
  return out
end

-- audit show -> {attempts_left=, locked=, fields=}: the Auditor's attempts
-- left from its own field.  Unpublished (luna-field.md 16): the
-- simulator's layout, read strictly - its four lines `Audit Role
-- Initialized:`, `Audit Role Login Status:`, `Audit Role Login Attempts
-- Left: N`, `Audit Role Locked Out: Yes|No` and nothing else but what
-- surrounds any output (the echo, a banner, the trailer).  Another line
-- ("Unable to communicate with HSM"), a count or lock field worded
-- otherwise, or the form without its count is a ParseError: this layout
-- shows a count, so one it does not show where expected is one dhsm cannot
-- read, and the guard refuses the login.
local ASHOW_LINES = { ["Audit Role Initialized"] = true, ["Audit Role Login Status"] = true,
  ["Audit Role Login Attempts Left"] = true, ["Audit Role Locked Out"] = true }

function M.audit_show(text)
  local command = "audit show"
  local ls = lines(text)
  for _, l in ipairs(ls) do
    local t = trim(l)
    if t:find("^Command Result") then break end
    if t ~= "" and not around_output(t) and not ASHOW_LINES[key_value(l)] then
      unreadable(command, t, "the lines of `audit show`: Audit Role Initialized, Login Status, Login Attempts Left, "
        .. "Locked Out")
    end
  end
  local f = one_record(command, ls, ASHOW_LINES)
  local key = "Audit Role Login Attempts Left"
  return { attempts_left = count_left(command, key, f[key]),
    locked = yes_no(command, "Audit Role Locked Out", f["Audit Role Locked Out"]), fields = f }
end

-- vtl verify -> {{slot=, serial=, label=}}, as published (luna-field.md
-- 8.3): the title `The following Luna SA Slots/Partitions were found:`,
-- a header Slot / Serial # / Label over a rule of '=', one row per slot
-- (TABs or spaces between the columns, numbers right-aligned, the label
-- the rest of the line, spaces and all; none for a partition `partition
-- create` made and `partition init` has not labelled yet, as lunacm's
-- `Label ->` of 7.1 is empty), ended by a blank line - vtl prints no
-- trailer, so rows without it were cut and are a ParseError (the published
-- copies whose code block ends at the row lost that line).  {} only from
-- `Error: Unable to find any Luna SA slots/partitions`: a header with no
-- row was never published (sim README, assumptions), so it is a cut
-- output too.  Anything else is a ParseError.
local VTL_TITLE = "The following Luna SA Slots/Partitions were found:"
local VTL_NONE = "Error: Unable to find any Luna SA slots/partitions"

function M.vtl_verify(text)
  local command = "vtl verify"
  local ls = lines(text)
  local at
  for i, l in ipairs(ls) do
    local t = trim(l)
    if t:sub(1, #VTL_NONE) == VTL_NONE then return {} end
    if t == VTL_TITLE then at = i; break end
  end
  if not at then unreadable(command, nil, ("'%s' or '%s'"):format(VTL_TITLE, VTL_NONE)) end
  local i = at + 1
  while ls[i] and trim(ls[i]) == "" do i = i + 1 end
  local head = texts(columns(ls[i] or ""))
  if #head ~= 3 or head[1] ~= "Slot" or head[2] ~= "Serial #" or head[3] ~= "Label" or not is_rule(ls[i + 1] or "") then
    unreadable(command, ls[i] and trim(ls[i]), "a header 'Slot  Serial #  Label' over a rule of '='")
  end
  local out, closed = {}, false
  for j = i + 2, #ls do
    local l = ls[j]
    if trim(l) == "" then closed = true; break end
    local slot, serial, rest = l:match("^[ \t]*(%d+)[ \t]+(%d+)(.*)$")
    if not slot or not rest:match("^[ \t]") and rest ~= "" then
      unreadable(command, trim(l), "a row: slot, serial, label")
    end
    local label = trim(rest)                  -- "": a partition not initialised yet has no label
    out[#out + 1] = { slot = tonumber(slot), serial = serial, label = label }
  end
  -- vtl has no trailer: the blank line after the rows is all that tells the list is whole
  if #out == 0 or not closed then
    unreadable(command, nil, #out == 0 and "a row under the header (no slots: '" .. VTL_NONE .. "')"
      or "the blank line that ends the rows (the listing was cut)")
  end
  return out
end

-- Every parser takes a string (nil reads as ""), checked for length once.
-- Not lunacm_result: it reads lunacm's verdict on a command that has run
-- already, and a long line elsewhere in the output must not turn that
-- into an error (dhsm.proc audits the run with it); it looks for a fixed
-- string and a code after it, linear however long the text.
local UNWRAPPED = { key_value = true, columns = true, has_package = true, lunacm_result = true }
for name, parser in pairs(M) do
  if not UNWRAPPED[name] then
    M[name] = function(text)
      return parser(util.check_lines(text_of(text), "LunaSH output", "luna"))
    end
  end
end

---------------------------------------------------------------------------
-- NTLS syslog lines (the troubleshooting guide's format)

local function event_of(rest)
  if rest:find("Incoming connection request", 1, true) then return "incoming" end
  if rest:find("Error message from SSLAccept", 1, true) then return "accept_error" end
  if rest:find("Error during SSL accept", 1, true) then return "ssl_error" end
  if rest:find("RC_SSL_FAILED_HANDSHAKE", 1, true) then return "handshake_failed" end
  if rest:find("Connection instance added", 1, true) then return "added" end
  if rest:find("Connection instance removed", 1, true) then return "removed" end
  return "other"
end

-- The peer ("10.0.0.1/1000", "fe80::1/1000") a line ends with, if any.
-- Found from the end: an unanchored "([%x:]+/%d+)%s*$" rescans the whole
-- hex run from every start and took seconds on a 32 KB line.
local function trailing_peer(text)
  local last = util.suffix(util.trim(text), "%S")
  return last:match("^[%x:]+/%d+$") and last or nil
end

-- "... tlsv1 alert unknown ca" -> "unknown ca"; "...:certificate verify
-- failed" -> "certificate verify failed": the words ending the line.
local function trailing_words(text)
  local words = util.suffix(text, "[%w%s]")
  local alert = words:match("alert (.*)$")
  local reason = text:sub(-#words - 1, -#words - 1) == ":" and words:find("%w") and util.trim(words) or nil
  return alert and util.trim(alert), reason
end

local function parse_line(l)
  local stamp, host, pid, rest = l:match("^(%a%a%a%s+%d+ %d%d:%d%d:%d%d) (%S+) NTLS%[(%d+)%]: (.*)$")
  if not stamp then pid, rest = l:match("NTLS%[(%d+)%]: (.*)$") end
  if not rest then return nil end
  local code, msg = rest:match("^info : (%S+) : (.*)$")
  local e = { time = stamp, host = host, pid = tonumber(pid), code = code, message = msg or rest, line = l,
    event = event_of(rest) }
  e.peer = (msg or rest):match("%f[%d](%d+%.%d+%.%d+%.%d+/%d+)") or trailing_peer(msg or rest)
  e.client = rest:match('NTLS Client "([^"]*)"')
  if e.event == "accept_error" then e.alert, e.reason = trailing_words(rest) end
  return e
end

-- What an attempt's SSLAccept error means.  "tlsv1 alert unknown ca" is the
-- CLIENT's alert: it did not trust the appliance's certificate (stale
-- server.pem after sysconf regenCert: re-exchange).  "certificate verify
-- failed" is the appliance rejecting the client's certificate (not
-- registered: client register).  "probe": the connection closed before a
-- TLS hello (a TCP port check), which is no client's failure.
local function outcome_of(attempt)
  if attempt.added then return "ok" end
  -- closed before any TLS hello: a port probe (ours, a load balancer's), not a client
  local said = attempt.reason or attempt.alert or ""
  if attempt.failed and (said == "ssl handshake failure" or said:find("unexpected eof", 1, true)) then return "probe" end
  if attempt.alert == "unknown ca" or attempt.alert == "bad certificate" or attempt.alert == "certificate expired" then
    return "server_cert_rejected"
  end
  if attempt.reason and attempt.reason:find("certificate verify failed", 1, true) then return "client_cert_unknown" end
  if attempt.failed then return "handshake_failed" end
  if attempt.removed then return "removed" end
  return "pending"
end

-- ntls_log(text | lines) -> {events = {...}, attempts = {{peer=, outcome=, client=, alert=, lines=}}}
-- (text or lines: diagnose passes the lines `syslog tail` gave; it is not
-- wrapped with the parsers above, which take text only)
function M.ntls_log(input)
  local lines = input
  if type(input) == "string" then
    lines = util.lines(input, "NTLS log", "luna")
  elseif type(input) == "table" then
    for i, l in ipairs(input) do
      if type(l) ~= "string" then usage("luna.parse.ntls_log: line %d is a %s, expected a string", i, type(l)) end
      util.check_lines(l, "NTLS log line " .. i, "luna")
    end
  else
    usage("luna.parse.ntls_log: expected syslog text or a list of lines, got %s", type(input))
  end
  local events, attempts, open, pending = {}, {}, {}, {}
  local function note(a, e)
    a.lines[#a.lines + 1] = e.line
    if e.event == "accept_error" then a.alert, a.reason = e.alert, e.reason end
    if e.event == "handshake_failed" or e.event == "ssl_error" then a.failed = true end
    if e.event == "added" then a.added, a.client = true, e.client end
    if e.event == "removed" then a.removed = true end
  end
  for _, l in ipairs(lines) do
    local e = parse_line(l)
    if e then
      events[#events + 1] = e
      local pid = e.pid or 0
      if not e.peer then
        -- the SSLAccept errors name no peer: they belong to the next line of
        -- the same NTLS process that does (connections interleave)
        pending[pid] = pending[pid] or {}
        table.insert(pending[pid], e)
      else
        local a = open[e.peer]
        if e.event == "incoming" or a == nil then
          a = { peer = e.peer, time = e.time, lines = {} }
          attempts[#attempts + 1] = a
          open[e.peer] = a
        end
        for _, p in ipairs(e.event ~= "incoming" and pending[pid] or {}) do note(a, p) end
        if e.event ~= "incoming" then pending[pid] = nil end
        note(a, e)
      end
    end
  end
  for _, a in ipairs(attempts) do a.outcome = outcome_of(a) end
  return { events = events, attempts = attempts }
end

return M
