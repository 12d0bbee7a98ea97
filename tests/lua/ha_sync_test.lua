-- The one real signal of HA members in different cloning domains: the
-- troubleshooting guide's warning from lunacm `hagroup synchronize` (HA
-- Group Doesn't Sync; luna-field.md section 9).  No appliance output shows
-- a partition's cloning domain, so this warning is all dhsm can go by.
-- The parser on the published line and its variants.
local t = require "dhsm.test"
local parse = require "dhsm.luna.parse"
local util = require "dhsm.util"

-- word for word as published (two blanks after "fail.")
local WARNING = "Warning: Synchronize may fail.  The members in slot 0 and slot 1 have conflicting settings for "
  .. "private key cloning."

t.test("the published warning line -> its slot pair; none -> {}", function()
  t.eq(parse.lunacm_sync_conflicts(WARNING), { { a = 0, b = 1 } })
  t.eq(parse.lunacm_sync_conflicts(""), {})
  t.eq(parse.lunacm_sync_conflicts(nil), {})
  t.eq(parse.lunacm_sync_conflicts("\t3 object(s) cloned to the members missing them.\n\nCommand Result : No Error\n"), {})
end)

t.test("CRLF, a TAB indent, runs of blanks and TABs, trailing blanks: the same warning", function()
  local variants = {
    WARNING .. "\r\n",
    "\t" .. WARNING .. "\n",
    "  " .. WARNING .. " \t \r\n",
    (WARNING:gsub("  ", " ")),                      -- one blank after "fail."
    (WARNING:gsub(" ", " \t  ")),
  }
  for i, text in ipairs(variants) do
    t.eq(parse.lunacm_sync_conflicts("banner\n" .. text .. "\nCommand Result : No Error\n"), { { a = 0, b = 1 } },
      "variant " .. i)
  end
end)

t.test("every warning line counts, with its own slots", function()
  local text = table.concat({ "lunacm (64-bit) v7.2.0-220.", "\t" .. WARNING,
    "\t" .. (WARNING:gsub("slot 1", "slot 12")), "", "Command Result : 0x00000030 (CKR_DEVICE_ERROR)" }, "\n")
  t.eq(parse.lunacm_sync_conflicts(text), { { a = 0, b = 1 }, { a = 0, b = 12 } })
end)

t.test("a line that speaks like the warning but does not read as published is a ParseError naming it", function()
  local variants = {
    "Warning: Synchronize may fail.",                                              -- truncated
    WARNING:sub(1, -2),                                                            -- no final full stop
    (WARNING:gsub("slot 1", "slot one")),
    (WARNING:gsub("slot 1", "slot -1")),
    (WARNING:gsub("slot 1", "slot " .. ("9"):rep(30))),                            -- no slot number
    (WARNING:gsub("^Warning", "WARNING")),
    (WARNING:gsub("private key cloning", "private  key  cloning, object cloning")),
    "Note: the members have conflicting settings for private key cloning.",        -- worded otherwise
    WARNING .. " " .. WARNING,                                                     -- two on one line
  }
  for i, line in ipairs(variants) do
    local err = t.raises(function() parse.lunacm_sync_conflicts("banner\n\t" .. line .. "\n") end, "ParseError")
    t.eq(err.kind, "luna", "variant " .. i)
    t.eq(err.details.command, "hagroup synchronize", "variant " .. i)
    t.eq(err.details.line, line, "variant " .. i)
    t.ok(err.details.expected:find("Warning: Synchronize may fail.  The members in slot N and slot M", 1, true),
      err.details.expected)
  end
end)

t.test("a line over util.MAX_LINE is refused (InputTooLong); below it, blanks and digits cost linear time", function()
  t.raises(function() parse.lunacm_sync_conflicts(WARNING .. "\n" .. ("x "):rep(util.MAX_LINE)) end, "InputTooLong")
  local cap = util.MAX_LINE
  util.MAX_LINE = 1 << 20
  t.cleanup(function() util.MAX_LINE = cap end)
  local blanks = (" "):rep(256 * 1024)
  for i, line in ipairs { "Warning: Synchronize may fail." .. blanks .. "x", "private key cloning" .. blanks,
    "Warning: Synchronize may fail. The members in slot " .. ("1"):rep(256 * 1024) .. " and",
    ("synchronize may fail "):rep(10000) } do
    local c0 = os.clock()
    t.raises(function() parse.lunacm_sync_conflicts(line) end, "ParseError")
    t.ok(os.clock() - c0 < 2, ("hostile line %d took %.1f s"):format(i, os.clock() - c0))
  end
end)
