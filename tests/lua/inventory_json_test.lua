-- An inventory file that is not a JSON object: invalid JSON is reported
-- by line and column with the expected token in words (not cjson's
-- character offset and token names), and a list at the top ([]) is
-- refused, not read as an empty inventory.  Through `dhsm exec -i`, as an
-- operator meets it (exit 2).
local t = require "dhsm.test"
local util = require "dhsm.util"

local function exec_with(text)
  local dir = t.tmpdir()
  t.write(dir .. "/inv.json", text)
  return t.run("-i " .. util.shell_quote(dir .. "/inv.json") .. " exec -e 'return 1'")
end

local CASES = {
  { '{\n  "hsms": [1,\n  ]\n}', "line 3, column 3: expected a value, found ']'" },
  { '{"azure" 1}', "line 1, column 10: expected ':', found a number" },
  { '{\n"a": 1,\n}', "line 3, column 1: expected a key (a string in double quotes), found '}'" },
  { '{"a": 1', "line 1, column 8: expected ',' or '}', found the end of the text" },
  { '{"a": [1 2]}', "line 1, column 10: expected ',' or ']', found a number" },
  { '{"a": tru}', "line 1, column 7: expected a value, found invalid token" },
  { "", "line 1, column 1: expected a value, found the end of the text" },
}

for _, case in ipairs(CASES) do
  t.test(("invalid JSON %q is reported as %s"):format(case[1], case[2]), function()
    local r = exec_with(case[1])
    t.eq(r.status, 2, r.stderr)
    t.ok(r.stderr:find("invalid JSON at " .. case[2], 1, true), r.stderr)
    t.ok(not r.stderr:find("T_", 1, true) and not r.stderr:find("at character", 1, true), r.stderr)
  end)
end

t.test("an inventory that is a list ([] or [{...}]) is a usage error, not an empty inventory", function()
  for _, text in ipairs { "[]", "  [ ]\n", '[{"hsms": []}]' } do
    local r = exec_with(text)
    t.eq(r.status, 2, text .. ": " .. r.stderr)
    t.ok(r.stderr:find("expected a JSON object at the top ({...}), got a list", 1, true), r.stderr)
  end
end)

t.test("an inventory starting with a UTF-8 byte order mark is read (Windows editors write one)", function()
  local dir = t.tmpdir()
  t.write(dir .. "/inv.json", '\239\187\191{"hsms": [{"name": "hsm1", "host": "10.2.1.4"}]}')
  local r = t.run("-i " .. util.shell_quote(dir .. "/inv.json") .. " exec -e 'print(inv:hsm(\"hsm1\").host)'")
  t.eq({ r.status, r.stdout }, { 0, "10.2.1.4\n" }, r.stderr)
end)

t.test("json_error turns cjson's offset into line and column, counting from 1", function()
  t.eq(util.json_error("a\nbc", "Expected value but found T_END at character 5"),
    "line 2, column 3: expected a value, found the end of the text")
  t.eq(util.json_error("[[[", "Found too many nested data structures (1001) at character 3"),
    "line 1, column 3: Found too many nested data structures (1001)")
end)

t.test("-e @FILE.json is read the same way: line and column, and a list is not parameters", function()
  local dir = t.tmpdir()
  t.write(dir .. "/p.json", '{\n  "hsm": "hsm1",,\n}')
  local r = t.run("run decommission -e @" .. util.shell_quote(dir .. "/p.json"))
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("invalid JSON at line 2, column 17: expected a key (a string in double quotes), found ','", 1, true),
    r.stderr)
  t.write(dir .. "/l.json", "[]")
  r = t.run("run decommission -e @" .. util.shell_quote(dir .. "/l.json"))
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("expected a JSON object of parameters", 1, true), r.stderr)
end)

-- A UTF-8 byte order mark before the JSON of every file dhsm reads as JSON:
-- -e @FILE.json and an ARM template with its parameters (discover --merge:
-- tests/e2e/discover_test.lua).
local BOM = "\239\187\191"

t.test("-e @FILE.json starting with a byte order mark is read as the parameters it holds", function()
  local dir = t.tmpdir()
  t.write(dir .. "/p.json", BOM .. '{"hsm": "hsm1", "no_such_parameter": 1}')
  t.write(dir .. "/inv.json", '{"hsms": [{"name": "hsm1", "host": "10.2.1.4"}]}')
  local r = t.run(("-i %s run decommission -e @%s"):format(util.shell_quote(dir .. "/inv.json"),
    util.shell_quote(dir .. "/p.json")))
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("no_such_parameter", 1, true), "the file's parameters were read\n" .. r.stderr)
  t.ok(not r.stderr:find("invalid JSON", 1, true) and not r.stderr:find("expected a JSON object", 1, true), r.stderr)
end)

t.test("an ARM template and its parameters file starting with a byte order mark are read", function()
  local dir = t.tmpdir()
  t.write(dir .. "/t.json", BOM .. '{"resources": [], "parameters": {"hsmName": {"type": "string"}}}')
  t.write(dir .. "/p.json", BOM .. '{"parameters": {"hsmName": {"value": "hsm-t"}}}')
  local tmpl, values = require("dhsm.azure.deploy").read_files(dir .. "/t.json", dir .. "/p.json")
  t.eq({ tmpl.parameters.hsmName.type, values.hsmName }, { "string", "hsm-t" })
  -- a syntax error is told by line and column, as an inventory's
  t.write(dir .. "/bad.json", BOM .. '{\n  "resources": [,]\n}')
  local ok, err = pcall(require("dhsm.azure.deploy").read_files, dir .. "/bad.json")
  t.ok(not ok and tostring(err.message):find("invalid JSON at line 2, column 17", 1, true), tostring(err.message or err))
end)
