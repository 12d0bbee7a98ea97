-- The REPL with piped input (no terminal): evaluation, multi-line input,
-- errors, tasks, and the exit status of the last error.
local t = require "dhsm.test"

local function repl(input)
  return t.sh(t.cmd("repl"), { stdin = input })
end

t.test("expressions print their value, statements print nothing", function()
  local r = repl("1 + 1\nx = 5\n=x * 2\n'text'\n{ b = 2, a = { 1, 2 } }\nnil\n")
  t.eq(r.stdout, '2\n10\n"text"\n{ a = { 1, 2 }, b = 2 }\nnil\n')
  t.eq(r.stderr, "")
  t.eq(r.status, 0)
end)

t.test("incomplete statements continue on the next line", function()
  local r = repl("for i = 1, 3 do\n  io.write(i, ' ')\nend\nlocal function f(a)\nreturn a * 3\nend\n")
  t.eq(r.stdout, "1 2 3 ")
  t.eq(r.status, 0)
end)

t.test("each entry is a task: waits and parallel work", function()
  local r = repl("dhsm.sleep(0.01)\ndhsm.parallel({1, 2, 3}, function(x) dhsm.sleep(0.01) return x * x end)\n")
  t.eq(r.stdout, "{ 1, 4, 9, n = 3 }\n", r.stderr)
end)

t.test("errors are printed as their message and the status is the last error's", function()
  local r = repl("error('plain')\n1\n")
  t.eq(r.stderr, "dhsm: stdin:1: plain\n")
  t.eq(r.stdout, "1\n")
  t.eq(r.status, 1)
  r = repl("dhsm.error{kind='safety', message='refused'}\n")
  t.eq(r.stderr, "dhsm: safety: refused\n")
  t.eq(r.status, 3)
  r = repl("x = = 2\n")
  t.ok(r.stderr:find("^dhsm: stdin:1: unexpected symbol"), r.stderr)
  t.eq(r.status, 2)
end)

t.test("long output is capped with a note", function()
  local r = repl("local t = {} for i = 1, 500 do t[i] = { i = i, s = ('x'):rep(60) } end return t\n")
  local lines = select(2, r.stdout:gsub("\n", ""))
  t.ok(lines <= 205, lines .. " lines")
  t.ok(r.stdout:find("output capped at 200 lines", 1, true))
end)
