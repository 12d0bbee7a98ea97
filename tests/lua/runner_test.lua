-- `dhsm test` itself, on fixtures with one test of each outcome.
local t = require "dhsm.test"

local here = t.here()
local fixtures = here .. "/../fixtures/runner"

t.test("each failure is one line with file:line and the reason, then the summary", function()
  local r = t.sh(t.cmd("test " .. fixtures .. "/sample_test.lua"))
  t.eq(r.status, 1)
  local lines = {}
  for l in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = l end
  t.eq(lines, {
    "FAIL " .. fixtures .. "/sample_test.lua:4: fails an assertion: .a[2]: expected 3, got 2",
    "FAIL " .. fixtures .. "/sample_test.lua:5: raises an error: " .. fixtures .. "/sample_test.lua:5: unexpected boom",
    "SKIP " .. fixtures .. "/sample_test.lua: is skipped: no appliance here",
    "FAIL " .. fixtures .. "/sample_test.lua:7: times out: did not finish within 0.1 s",
    "2 passed, 3 failed, 1 skipped",
  })
end)

t.test("a file that does not load counts as a failure", function()
  local r = t.sh(t.cmd("test " .. fixtures))
  t.eq(r.status, 1)
  t.ok(r.stdout:find("FAIL " .. fixtures .. "/broken_test.lua: cannot load:", 1, true), r.stdout)
  t.ok(r.stdout:find("\n2 passed, 4 failed, 1 skipped\n$"), r.stdout)
end)

t.test("--filter picks tests by name and -v lists the passes", function()
  local r = t.sh(t.cmd("test -v --filter '^passes$' " .. fixtures .. "/sample_test.lua"))
  t.eq(r.status, 0)
  t.ok(r.stdout:find("^ok   " .. fixtures:gsub("%p", "%%%0") .. "/sample_test.lua: passes %(%d.%d%d s%)\n1 passed, 0 failed\n$"), r.stdout)
end)

t.test("a test file finds the helpers of the nearest support/ folder above it, and its own folder's", function()
  local root = t.tmpdir()
  os.execute(("mkdir -p %s/support %s/suite/deep"):format(root, root))
  t.write(root .. "/support/helper.lua", 'return { name = "shared helper" }\n')
  t.write(root .. "/suite/deep/local_mod.lua", 'return { name = "beside the test" }\n')
  t.write(root .. "/suite/deep/x_test.lua", table.concat({
    'local t = require "dhsm.test"',
    't.test("finds both", function()',
    '  t.eq(require("support.helper").name, "shared helper")',
    '  t.eq(require("local_mod").name, "beside the test")',
    'end)', "" }, "\n"))
  local r = t.sh(t.cmd("test " .. root .. "/suite/deep/x_test.lua"))
  t.eq({ r.status, r.stdout }, { 0, "1 passed, 0 failed\n" }, r.stderr)
end)

t.test("the support/ folder is found from the real path, whatever folder the runner was started in", function()
  local root = t.tmpdir()
  os.execute(("mkdir -p %s/support %s/suite"):format(root, root))
  t.write(root .. "/support/helper.lua", 'return { name = "shared helper" }\n')
  t.write(root .. "/suite/y_test.lua", 'local t = require "dhsm.test"\n'
    .. 't.test("finds it", function() t.eq(require("support.helper").name, "shared helper") end)\n')
  for _, at in ipairs { { root, "suite/y_test.lua" }, { root .. "/suite", "y_test.lua" } } do
    local r = t.sh(("cd %s && %s"):format(at[1], t.cmd("test " .. at[2])))
    t.eq({ r.status, r.stdout }, { 0, "1 passed, 0 failed\n" }, at[2] .. " from " .. at[1] .. ": " .. r.stderr)
  end
end)

-- t.cmd and t.sh take a shell command (a string) or an argv (a list of
-- strings, each one argument as it stands: nothing read by the shell).
t.test("t.cmd and t.sh take an argv list, and refuse anything else naming what was expected", function()
  local r = t.sh(t.cmd { "exec", "-e", [[print(#arg, "$HOME; `x` 'q'")]] })
  t.eq(r.stdout, "0\t$HOME; `x` 'q'\n", r.stderr)
  r = t.sh { "printf", "%s|", "a b", "$HOME" }
  t.eq(r.stdout, "a b|$HOME|")
  for _, bad in ipairs { { {}, "an empty list" }, { { "exec", x = 1 }, "a table with the field x" },
    { { "exec", 5 }, "a number as word 2" }, { 42, "number" } } do
    local ok, e = pcall(t.cmd, bad[1])
    t.eq(ok, false)
    t.eq(e.kind, "usage")
    t.eq(e.message, "t.cmd: expected a string (a shell command) or a list of strings (an argv, no shell), got " .. bad[2])
  end
end)
