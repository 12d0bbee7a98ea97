-- dhsm.findings: the rows of a diagnosis as a table, counts and the
-- Prometheus text format (written whole, in the target's folder).
local t = require "dhsm.test"
local findings = require "dhsm.findings"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local function sample()
  local f = findings.new { order = { "tcp 22", "tcp 1792" } }
  f:add("tcp 1792", "hsm2", "FAIL", "port 1792: refused", "open TCP 1792 (guide: Failed TCP Communication)")
  f:add("extra", "x", "WARN", "a check not in the order\nover two lines")
  f:add("tcp 22", "hsm2", "OK", "open")
  f:add("tcp 22", "hsm1", "OK", "open")
  return f
end

t.test("rows: by the given order of checks (others after), then target; counts and the summary line", function()
  local rows = sample():rows()
  local got = {}
  for i, r in ipairs(rows) do got[i] = r.check .. "/" .. r.target end
  t.eq(got, { "tcp 22/hsm1", "tcp 22/hsm2", "tcp 1792/hsm2", "extra/x" })
  t.eq(rows[4].finding, "a check not in the order over two lines", "one line")
  t.eq(findings.counts(rows), { OK = 2, WARN = 1, FAIL = 1 })
  local lines = findings.lines(rows)
  t.eq(lines[#lines], "2 OK, 1 WARN, 1 FAIL")
  t.ok(lines[1]:find("^CHECK%s+TARGET%s+STATUS%s+FINDING$"), lines[1])
  local text = table.concat(lines, "\n")
  t.ok(text:find("tcp 1792%s+hsm2%s+FAIL%s+port 1792: refused\n%s+%-> open TCP 1792"), text)
end)

t.test("rows of one check and target: the worst first, then by finding, whatever order they were added in", function()
  local rows = { { "FAIL", "b" }, { "OK", "a" }, { "FAIL", "a" }, { "WARN", "c" }, { "OK", "b" } }
  for round = 1, 20 do
    local f = findings.new { order = { "gateway" } }
    for i = 1, #rows do                          -- a different order each round
      local r = rows[(i + round) % #rows + 1]
      f:add("gateway", "vnet", r[1], r[2])
    end
    local got = {}
    for i, r in ipairs(f:rows()) do got[i] = r.status .. " " .. r.finding end
    t.eq(got, { "FAIL a", "FAIL b", "WARN c", "OK a", "OK b" }, "round " .. round)
  end
end)

t.test("a bad row is refused naming the field", function()
  local f = findings.new()
  t.raises(function() f:add("c", "t", "BAD", "x") end, "status must be OK, WARN or FAIL, got BAD")
  t.raises(function() f:add("c", "", "OK", "x") end, "target must be a non%-empty string")
end)

t.test("Prometheus: HELP and TYPE, one series per check and target (the worst), values 0/1/2, labels escaped", function()
  local rows = sample():rows()
  rows[#rows + 1] = { check = "tcp 1792", target = "hsm2", status = "OK", finding = "again" }
  rows[#rows + 1] = { check = 'q"uo\\te', target = "new\nline", status = "WARN", finding = "f" }
  local text = findings.prometheus(rows, { time = 1700000000, duration_s = 1.5 })
  t.ok(text:find('# HELP dhsm_check_status [^\n]+\n# TYPE dhsm_check_status gauge\n'), text)
  local _, n = text:gsub('dhsm_check_status{check="tcp 1792",target="hsm2"}', "")
  t.eq(n, 1, "one series")
  t.ok(text:find('dhsm_check_status{check="tcp 1792",target="hsm2"} 2\n', 1, true), "the worst of the two rows")
  t.ok(text:find('dhsm_check_status{check="tcp 22",target="hsm1"} 0\n', 1, true), text)
  t.ok(text:find('dhsm_check_status{check="q\\"uo\\\\te",target="new\\nline"} 1\n', 1, true), text)
  t.ok(text:find('dhsm_diagnose_checks{status="FAIL"} 1\n', 1, true), text)
  t.ok(text:find("dhsm_diagnose_last_run_timestamp_seconds 1700000000\n", 1, true), text)
  t.ok(text:find("dhsm_diagnose_duration_seconds 1.500\n", 1, true), text)
end)

t.test("write_prometheus replaces the file whole and leaves nothing beside it; a bad path is a usage error", function()
  local dir = t.tmpdir()
  local path = dir .. "/dhsm.prom"
  t.write(path, "old\n")
  findings.write_prometheus(path, sample():rows(), { time = 1 })
  t.ok(util.read_file(path):find("^# HELP dhsm_check_status"), "replaced")
  t.eq(sys.readdir(dir), { "dhsm.prom" })
  t.raises(function() findings.write_prometheus(dir .. "/no/such/dir/x.prom", {}) end,
    "prometheus: cannot write .*/no/such/dir/x.prom")
  t.raises(function() findings.check_output_dir(dir) end, "is a directory, expected a file path")
  t.raises(function() findings.check_output_dir(path .. "/x") end, "not a directory")
end)
