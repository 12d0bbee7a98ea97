-- What the schema reader says is expected is words, never a raw Lua
-- pattern: every spec of the inventory and of every shipped playbook's
-- parameters (and the modules' named specs) is walked; a pattern without
-- expect= is a mistake in the spec (spec_problems), and a table given on
-- the command line is a JSON object, not a list.
local t = require "dhsm.test"
local schema = require "dhsm.schema"
local inventory = require "dhsm.inventory"
local util = require "dhsm.util"

-- visit(spec, path) for spec and every spec inside it (items, fields).
local function each_spec(spec, path, visit)
  if type(spec) ~= "table" then return end
  visit(spec, path)
  if type(spec.items) == "table" then each_spec(spec.items, path .. "[]", visit) end
  if type(spec.fields) == "table" then
    for k, f in pairs(spec.fields) do
      if spec.type == "record" then each_spec(f[2], path .. "." .. tostring(f[1]), visit)
      else each_spec(f, path .. "." .. tostring(k), visit) end
    end
  end
end

-- Every spec shipped: the inventory's, each shipped playbook's parameters, the modules' named ones.
local function shipped_specs()
  local out = { { "inventory", inventory.schema }, { "dhsm.azure.hsm.NAME", require("dhsm.azure.hsm").NAME } }
  local play, paths = require "dhsm.play", require "dhsm.paths"
  for _, found in ipairs(paths.list_playbooks()) do
    if found.embedded then
      local pb = play.load(paths.find_playbook(found.name))
      for _, k in ipairs(util.sorted_keys(pb.params)) do out[#out + 1] = { found.name .. "." .. k, pb.params[k] } end
    end
  end
  return out
end

t.test("every shipped spec with a pattern says in words what it expects, and no expectation shows a pattern", function()
  local walked, bare, raw = 0, {}, {}
  for _, top in ipairs(shipped_specs()) do
    each_spec(top[2], top[1], function(spec, path)
      walked = walked + 1
      if spec.pattern and not spec.expect then bare[#bare + 1] = path end
      local words = schema.expected(spec)
      if words:find("%", 1, true) or words:find("^", 1, true) then raw[#raw + 1] = path .. ": " .. words end
    end)
  end
  t.ok(walked > 60, "walked " .. walked)
  t.eq(bare, {}, "patterns without expect=")
  t.eq(raw, {}, "expectations showing a pattern")
end)

t.test("a spec with a pattern and no expect= is a mistake in the spec; the reader never prints the pattern", function()
  local problems = schema.spec_problems({ type = "string", pattern = "^[%w%-]+:?[%w]*$" }, "params.hsm")
  t.eq(#problems, 1, table.concat(problems, "; "))
  t.ok(problems[1]:find("params.hsm: a pattern needs expect=", 1, true), problems[1])
  local got = {}
  schema.check("a b", { type = "string", pattern = "^[%w%-]+:?[%w]*$", max_length = 9 }, "hsm", got)
  t.eq(got, { 'hsm: expected string in the form the spec requires, at most 9 characters, got "a b"' })
end)

t.test("a table parameter given as text is a JSON object: a list is refused, naming the field", function()
  for _, text in ipairs { "[1]", " []", '[{"k": 1}]' } do
    local problems = {}
    t.eq(schema.check(text, { type = "table" }, "extra", problems, true), nil)
    t.eq(problems, { 'extra: expected a JSON object ({"key": value, ...}), got a list' }, text)
  end
  local problems = {}
  t.eq(schema.check('{"k": 1}', { type = "table" }, "extra", problems, true), { k = 1 })
  t.eq(problems, {})
end)

t.test("dhsm run refuses -e extra=[1] for a table parameter (exit 2, naming it), before anything runs", function()
  local dir = t.tmpdir()
  local fixtures = t.here() .. "/../fixtures"
  local r = t.sh(("XDG_STATE_HOME=%s DHSM_AUDIT=%s/audit.jsonl DHSM_PATH=%s %s"):format(util.shell_quote(dir),
    util.shell_quote(dir), util.shell_quote(fixtures .. "/playbooks"),
    t.cmd("run typed -e name=x -e group=g -e 'extra=[1]'")))
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find('extra: expected a JSON object ({"key": value, ...}), got a list', 1, true), r.stderr)
  t.eq(util.read_file(dir .. "/audit.jsonl"), nil, "nothing ran")
end)
