-- A short, deterministic pass of every fuzz driver (tests/fuzz): a fixed
-- seed and a fixed number of runs, so the same inputs every time.  `make
-- fuzz` runs them for real (FUZZ_SECONDS per driver).
local t = require "dhsm.test"
local util = require "dhsm.util"

local dir = t.here() .. "/../fuzz"
local q = util.shell_quote

local p = io.popen("ls " .. q(dir))
local drivers = {}
for name in p:lines() do
  if name:match("_fuzz%.lua$") then drivers[#drivers + 1] = name end
end
p:close()

t.test("there is a fuzz driver for every parser", function()
  t.eq(drivers, { "arm_reply_fuzz.lua", "chrystoki_fuzz.lua", "inventory_fuzz.lua", "luna_parse_fuzz.lua",
    "ntls_log_fuzz.lua", "util_fuzz.lua" })
end)

for _, name in ipairs(drivers) do
  t.test("fuzz " .. name .. ": 1500 runs, seed 1, no failure", function()
    local findings = t.tmpdir()
    local r = t.sh(("FUZZ_RUNS=1500 FUZZ_SEED=1 FUZZ_SECONDS=600 FUZZ_MAX_MS=10000 FUZZ_FINDINGS=%s %s")
      :format(q(findings), t.cmd("exec " .. q(dir .. "/" .. name))))
    t.eq(r.status, 0, r.stdout .. r.stderr)
    t.ok(r.stdout:find(" 1500 runs in .* 0 failures"), r.stdout)
  end, { timeout = 300 })
end

t.test("a failing input is reported, counted and saved", function()
  local findings = t.tmpdir()
  local driver = t.write(findings .. "/broken_fuzz.lua", ([[
    local fuzz = dofile(%q)
    fuzz.main { name = "broken", seeds = { "abc" }, target = function(input)
      if input:find("b", 1, true) then return input.no_such_method() end
    end }
  ]]):format(dir .. "/harness.lua"))
  local r = t.sh(("FUZZ_RUNS=200 FUZZ_SEED=7 FUZZ_FINDINGS=%s %s"):format(q(findings), t.cmd("exec " .. q(driver))))
  t.eq(r.status, 1, r.stdout .. r.stderr)
  t.ok(r.stdout:find("200 runs in .* [1-9]%d* failures"), r.stdout)
  t.ok(r.stderr:find("broken: FAIL plain Lua error", 1, true), r.stderr)
  local saved = r.stderr:match("%(input: ([^)]+)%)")
  t.ok(saved and util.read_file(saved):find("b", 1, true), r.stderr)
end)
