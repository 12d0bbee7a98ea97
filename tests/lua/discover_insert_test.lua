-- discover --merge's text splice (dhsm.cli.discover.insert) on the
-- inventory shapes an operator's file may have: no "hsms" yet, an empty
-- list, a list on one line or on many, strings holding brackets and
-- quotes before it; and what it refuses.  Every byte outside the new
-- entries is kept, and the result decodes to the old content plus them.
local t = require "dhsm.test"
local cjson = require "cjson"
local discover = require "dhsm.cli.discover"

local NEW = { { name = "hsm3", host = "10.2.1.6", resource = "hsm3", password = "prompt" } }

-- insert NEW into text; the result must decode to want (a Lua table) and
-- keep text's bytes before the splice point `kept` (a prefix).
local function spliced(text, want, kept)
  local out = discover.insert(text, "inv.json", NEW)
  t.eq(cjson.decode(out), want, out)
  if kept then t.eq(out:sub(1, #kept), kept, "the bytes before the new entry are kept") end
  return out
end

local ENTRY = { name = "hsm3", host = "10.2.1.6", resource = "hsm3", password = "prompt" }

t.test("no hsms list yet: one is made after the last member; an empty object gets one too", function()
  spliced('{\n  "azure": {"x": 1}\n}\n', { azure = { x = 1 }, hsms = { ENTRY } }, '{\n  "azure": {"x": 1}')
  spliced("{}", { hsms = { ENTRY } })
end)

t.test("an empty list, a list on one line, a list of one entry per line: each keeps its own layout", function()
  spliced('{"hsms": []}', { hsms = { ENTRY } }, '{"hsms": [')
  local one_line = spliced('{"hsms": [{"name": "a", "host": "h"}], "client": {}}',
    { hsms = { { name = "a", host = "h" }, ENTRY }, client = {} }, '{"hsms": [{"name": "a", "host": "h"}')
  t.ok(one_line:find('"h"}, { "name": "hsm3"', 1, true), "one line stays one line: " .. one_line)
  local lines = spliced('{\n  "hsms": [\n    {"name": "a", "host": "h"}\n  ]\n}\n',
    { hsms = { { name = "a", host = "h" }, ENTRY } }, '{\n  "hsms": [\n    {"name": "a", "host": "h"}')
  t.ok(lines:find('"h"},\n    { "name": "hsm3"', 1, true), "the new entry on a line of its own, indented alike: " .. lines)
end)

t.test("strings holding brackets, braces and escaped quotes before the list are skipped whole", function()
  local text = '{"note": "a ] } [ { \\" text", "hsms": [{"name": "a", "host": "h"}]}'
  spliced(text, { note = 'a ] } [ { " text', hsms = { { name = "a", host = "h" }, ENTRY } },
    '{"note": "a ] } [ { \\" text", "hsms": [{"name": "a", "host": "h"}')
end)

t.test("an hsms that is no list, given twice, or a text that is no object is refused, nothing made", function()
  for text, said in pairs { ['{"hsms": {}}'] = '"hsms" is not a list', ['{"hsms": [], "hsms": []}'] = "given twice",
    ["[]"] = "expected a JSON object at the top", ['{"hsms": [1'] = "does not end" } do
    t.raises(function() discover.insert(text, "inv.json", NEW) end, said)
  end
end)
