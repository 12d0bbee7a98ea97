-- dhsm.pretty: what the REPL and the test library print.
local t = require "dhsm.test"
local pretty = require "dhsm.pretty"

t.test("scalars", function()
  t.eq(pretty.format("a\nb"), '"a\\nb"')
  t.eq(pretty.format(3), "3")
  t.eq(pretty.format(2.0), "2.0")
  t.eq(pretty.format(0.25), "0.25")
  t.eq(pretty.format(nil), "nil")
  t.eq(pretty.format(dhsm.secret.value("x")), "<secret>")
  t.eq(pretty.format(dhsm.error.new { kind = "net", message = "closed" }), "net: closed")
end)

t.test("tables are sorted, indented when long, and cycles are marked", function()
  t.eq(pretty.format({ z = 1, a = 2, [1] = "x" }), '{ "x", a = 2, z = 1 }')
  t.eq(pretty.format({ "a", "b" }), '{ "a", "b" }')
  t.eq(pretty.format({ ["key with space"] = true }), '{ ["key with space"] = true }')
  local long = { name = ("n"):rep(50), list = { 1, 2, 3 }, nested = { deep = ("d"):rep(40) } }
  t.eq(pretty.format(long), table.concat({
    "{",
    "  list = { 1, 2, 3 },",
    '  name = "' .. ("n"):rep(50) .. '",',
    '  nested = { deep = "' .. ("d"):rep(40) .. '" },',
    "}",
  }, "\n"))
  local c = { name = "self" }
  c.me = c
  t.eq(pretty.format(c), '{\n  me = <cycle>,\n  name = "self",\n}')
end)

t.test("command text prints as lines; a record summarises its raw fields unless asked", function()
  t.eq(pretty.text("Appliance Details:\r\n   Serial #:  1\r\n\r\n"), "Appliance Details:\n   Serial #:  1")
  t.eq(pretty.text("one line"), nil)
  local rec = { serial = "572413", model = "Luna K7", label = ("l"):rep(50),
    fields = { ["Serial #"] = "572413", Firmware = "7.0.3" }, sections = { ["HSM Details"] = {} },
    text = "a\nb" }
  t.eq(pretty.record(rec), table.concat({
    "fields    <2 raw fields>",
    'label     "' .. ("l"):rep(50) .. '"',
    'model     "Luna K7"',
    "sections  <1 sections>",
    'serial    "572413"',
    "text      a",
    "          b",
  }, "\n"))
  t.ok(pretty.record(rec, { raw = true }):find('Firmware = "7.0.3"', 1, true))
end)
