-- The gate holding a run to its approved plan, change by change: a
-- playbook whose changes (files written through dhsm.act) depend on what
-- it reads in the same step - so no read before its first change can
-- tell - meets the gate's comparison itself.  What was written is counted
-- on disk, not from dhsm's output.
local t = require "dhsm.test"
local operators = require("support.operators").new
local util = require "dhsm.util"

local q = util.shell_quote

-- A playbook writing `first`, then for each "name=value" of the marker
-- file a file out-NAME holding value.
local PLAYBOOK = [[
return {
  description = "writes the files its marker names",
  params = { dir = { type = "string", required = true } },
  run = function(ctx, p)
    local act = require "dhsm.act"
    ctx:step("write the files the marker names", function()
      act.write_file(p.dir .. "/first", "one\n")
      local f = assert(io.open(p.dir .. "/marker"))
      local marker = f:read("a")
      f:close()
      for name, value in marker:gmatch("(%w+)=(%w+)") do act.write_file(p.dir .. "/out-" .. name, value .. "\n") end
    end)
  end,
}
]]

-- A folder with the playbook and its marker, the operators and their policy.
local function setup(marker)
  local k = operators { playbooks = { "filed" } }
  local books = t.tmpdir()
  t.write(books .. "/filed.lua", PLAYBOOK)
  local dir = t.tmpdir()
  t.write(dir .. "/marker", marker)
  return { k = k, books = books, dir = dir, state = t.tmpdir() }
end

local function dhsm(s, args)
  return t.run(("-I %s %s"):format(q(s.books), args), { state = s.state, env = s.k.env })
end

-- A plan of the run, made by alice and approved by bob -> its path
local function approved(s)
  local plan = t.tmpdir() .. "/plan.json"
  local r = dhsm(s, ("run filed -e dir=%s --check --out %s --key %s"):format(q(s.dir), q(plan), q(s.k.alice)))
  t.eq(r.status, 0, r.stderr)
  r = dhsm(s, ("plan approve %s --key %s"):format(q(plan), q(s.k.bob)))
  t.eq(r.status, 0, r.stderr)
  return plan
end

local function written(s)
  local out = {}
  for _, name in ipairs(require("dhsm.sys").readdir(s.dir) or {}) do
    if name ~= "marker" then out[name] = util.read_file(s.dir .. "/" .. name) end
  end
  return out
end

t.test("applied as approved, every planned change is made once", function()
  local s = setup("a=1 b=2")
  local plan = approved(s)
  t.eq(written(s), {}, "planning writes nothing")
  local r = dhsm(s, "run --plan " .. q(plan) .. " --yes")
  t.eq(r.status, 0, r.stderr)
  t.eq(written(s), { first = "one\n", ["out-a"] = "1\n", ["out-b"] = "2\n" })
end)

-- The plan made on marker "a=1 b=2", applied once the marker reads `now`
-- -> the folder, the run's {status, stderr}
local function applied_after(now)
  local s = setup("a=1 b=2")
  local plan = approved(s)
  t.write(s.dir .. "/marker", now)
  local r = dhsm(s, "run --plan " .. q(plan) .. " --yes")
  t.eq(r.status, 3, r.stderr)
  return s, r
end

t.test("a change the plan does not hold is stopped before it is sent; those before it were the plan's", function()
  local s, r = applied_after("a=1 c=3")
  t.ok(r.stderr:find("NotInPlan", 1, true) or r.stderr:find("is not in the plan", 1, true), r.stderr)
  t.eq(written(s), { first = "one\n", ["out-a"] = "1\n" })
end)

t.test("the same target with another body is stopped before it is sent: the plan's and the run's shown", function()
  local s, r = applied_after("a=1 b=22")
  t.ok(r.stderr:find("the estate changed since the plan was approved: the plan's next change to " .. s.dir
    .. "/out-b is 'write " .. s.dir .. "/out-b (2 bytes)', the run now sends 'write " .. s.dir .. "/out-b (3 bytes)'",
    1, true), r.stderr)
  t.eq(written(s), { first = "one\n", ["out-a"] = "1\n" })
end)

t.test("a playbook the policy lists runs only from its plan; its code changed since is refused", function()
  local s = setup("a=1")
  local r = dhsm(s, ("run filed -e dir=%s --yes"):format(q(s.dir)))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("runs playbook filed only from an approved plan", 1, true), r.stderr)
  local plan = approved(s)
  t.write(s.books .. "/filed.lua", PLAYBOOK .. "-- edited after the approval\n")
  r = dhsm(s, "run --plan " .. q(plan) .. " --yes")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("PlaybookChanged", 1, true) or r.stderr:find("not the code the plan was made with", 1, true),
    r.stderr)
  t.eq(written(s), {})
end)

t.test("the plan's parameters are its own: -e and --check are refused with --plan", function()
  local s = setup("a=1")
  local plan = approved(s)
  local r = dhsm(s, "run --plan " .. q(plan) .. " -e dir=/tmp --yes")
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("--plan takes the plan's own parameters: leave out -e", 1, true), r.stderr)
  r = dhsm(s, "run filed --plan " .. q(plan))
  t.eq(r.status, 2, r.stderr)
  t.eq(written(s), {})
end)

t.test("on a host with no plan policy a plan is not applied: there is no list of who may approve it", function()
  local s = setup("a=1")
  local plan = approved(s)
  local r = t.run(("-I %s run --plan %s --yes"):format(q(s.books), q(plan)), { state = s.state })
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("no plan policy is in force on this host", 1, true), r.stderr)
  t.eq(written(s), {})
end)

t.test("saving a plan takes --check, --out (a new file), --key (a file) and hours 0-168: each bad one named", function()
  local s = setup("a=1")
  local out = t.tmpdir() .. "/plan.json"
  local base = ("run filed -e dir=%s"):format(q(s.dir))
  local cases = {
    { ("%s --out %s --key %s"):format(base, q(out), q(s.k.alice)), "go together with --check" },
    { ("%s --check --out %s --key %s"):format(base, q(s.dir .. "/marker"), q(s.k.alice)), "the file exists" },
    { ("%s --check --out %s --key %s"):format(base, q(out), q(s.dir .. "/no-key")), "no such file" },
    { ("%s --check --out %s --key %s --valid-for 0"):format(base, q(out), q(s.k.alice)), "--valid-for: expected hours" },
    { ("%s --check --out %s --key %s --valid-for 169"):format(base, q(out), q(s.k.alice)), "at most 168, got 169" },
  }
  for _, c in ipairs(cases) do
    local r = dhsm(s, c[1])
    t.eq(r.status, 2, c[1] .. ": " .. r.stderr)
    t.ok(r.stderr:find(c[2], 1, true), r.stderr)
  end
  t.eq(require("dhsm.sys").stat(out), nil, "no plan written")
  t.eq(written(s), {})
end)
