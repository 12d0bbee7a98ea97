-- dhsm.findings: the rows of a diagnosis as a table, counts and the
-- Prometheus text format (written whole, in the target's folder).
local t = require "dhsm.test"
local findings = require "dhsm.findings"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local function sample()
  local f = findings.new { order = { "tcp 22", "tcp 1792" } }
  f:add("tcp 1792", "hsm2", "FAIL", "port 1792: refused", "open TCP 1792", "Failed TCP Communication")
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
  t.eq(findings.counts(rows), { OK = 2, WARN = 1, FAIL = 1, SKIP = 0 })
  local lines = findings.lines(rows)
  t.eq(lines[#lines], "2 OK, 1 WARN, 1 FAIL")
  t.ok(lines[1]:find("^CHECK%s+TARGET%s+STATUS%s+FINDING$"), lines[1])
  local text = table.concat(lines, "\n")
  t.ok(text:find("tcp 1792%s+hsm2%s+FAIL%s+port 1792: refused\n%s+%-> open TCP 1792 %(guide: Failed TCP "
    .. "Communication%)\n"), text)
  t.eq({ rows[3].remedy, rows[3].guide }, { "open TCP 1792", "Failed TCP Communication" }, "apart in the row (--json)")
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
  t.raises(function() f:add("c", "t", "BAD", "x") end, "status must be OK, WARN, FAIL or SKIP, got BAD")
  t.raises(function() f:add("c", "", "OK", "x") end, "target must be a non%-empty string")
  t.raises(function() f:extend { { check = "c", target = "t", status = "OK", finding = "x", guide = 3 } } end,
    "findings: guide must be a non%-empty string, got 3")
  t.raises(function() findings.row { check = "c", target = "t", status = "SKIP", finding = "x", fix = "" } end,
    "findings: fix must be a non%-empty string")
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

-- A run's rows with a check another one kept from running.
local function with_skips()
  local f = findings.new { order = { "tcp 22", "hsm state", "gateway" } }
  f:add("tcp 22", "hsm2", "FAIL", "port 22: timeout", "check the path", "HSM Networking Configuration")
  f:add("hsm state", "hsm2", "SKIP", "not checked: SSH (TCP 22) does not answer")
  f:add("hsm state", "hsm1", "OK", "label hsm1")
  f:extend { { check = "gateway", target = "v", status = "SKIP", finding = "no gateway in v yet",
    fix = "created by this run" } }
  return f
end

t.test("SKIP: counted apart, never as FAIL; in the summary only when there is one; the fix shown under its row", function()
  local f = with_skips()
  t.eq(f:counts(), { OK = 1, WARN = 0, FAIL = 1, SKIP = 2 })
  local lines = f:lines()
  t.eq(lines[#lines], "1 OK, 0 WARN, 1 FAIL, 2 SKIP")
  t.eq(findings.summary { OK = 3, WARN = 0, FAIL = 0, SKIP = 0 }, "3 OK, 0 WARN, 0 FAIL")
  local text = table.concat(lines, "\n")
  t.ok(text:find("gateway%s+v%s+SKIP%s+no gateway in v yet\n%s+%-> created by this run\n"), text)
  t.ok(text:find("hsm state%s+hsm2%s+SKIP%s+not checked: SSH %(TCP 22%) does not answer\n"), text)
  t.ok(text:find("-> check the path (guide: HSM Networking Configuration)", 1, true), text)
  t.eq(findings.advice { remedy = "r" }, "r")
  t.eq(findings.advice { status = "OK" }, nil)
end)

t.test("SKIP in Prometheus is -1: an alert on > 0 does not fire on it; a series keeps FAIL, WARN, SKIP, OK in that order", function()
  local rows = with_skips():rows()
  rows[#rows + 1] = { check = "hsm state", target = "hsm1", status = "SKIP", finding = "again" }
  rows[#rows + 1] = { check = "tcp 22", target = "hsm2", status = "SKIP", finding = "again" }
  local text = findings.prometheus(rows, { time = 1 })
  local firing = {}
  for labels, value in text:gmatch('dhsm_check_status(%b{}) (%-?%d+)\n') do
    if tonumber(value) > 0 then firing[#firing + 1] = labels end
  end
  t.eq(firing, { '{check="tcp 22",target="hsm2"}' }, "only the FAIL fires")
  t.ok(text:find('dhsm_check_status{check="hsm state",target="hsm2"} -1\n', 1, true), text)
  t.ok(text:find('dhsm_check_status{check="hsm state",target="hsm1"} -1\n', 1, true), "SKIP is worse than OK: " .. text)
  t.ok(text:find('dhsm_check_status{check="gateway",target="v"} -1\n', 1, true), text)
  t.ok(text:find("0 OK, 1 WARN, 2 FAIL, -1 SKIP", 1, true), "the HELP line says so")
  t.ok(text:find('dhsm_diagnose_checks{status="SKIP"} 4\n', 1, true), text)
  local got = {}
  for i, r in ipairs(with_skips():rows()) do got[i] = r.check .. "/" .. r.target .. "/" .. r.status end
  t.eq(got, { "tcp 22/hsm2/FAIL", "hsm state/hsm1/OK", "hsm state/hsm2/SKIP", "gateway/v/SKIP" })
end)

t.test("error_text: one line, the code first, at most 240 characters", function()
  local e = dhsm.error.new { kind = "azure", code = "AuthorizationFailed", message = "no\naccess " .. ("x"):rep(300) }
  local text = findings.error_text(e)
  t.eq(#text, 240 + #"AuthorizationFailed: ")
  t.ok(text:find("^AuthorizationFailed: no access x+%.%.%.$"), text)
end)

t.test("by_guide: remedies written under their section, each key once", function()
  local advice = findings.by_guide { ["Failed Logins"] = { so = "log in once", co = "reset it" }, [""] = { ssh = "fix it" } }
  t.eq(advice, { so = { remedy = "log in once", guide = "Failed Logins" },
    co = { remedy = "reset it", guide = "Failed Logins" }, ssh = { remedy = "fix it" } })
  t.raises(function() findings.by_guide { A = { x = "1" }, B = { x = "2" } } end, "findings.by_guide: x is under two sections")
end)

t.test("every guide section a remedy names is a section of the troubleshooting guide, spelt as it is", function()
  local root = t.here() .. "/../.."
  local sections = {}
  for line in util.read_file(root .. "/tests/fixtures/guide_sections.txt"):gmatch("[^\n]+") do
    if not line:match("^#") then sections[line] = true end
  end
  local wrong, named = {}, 0
  for _, file in ipairs { "modules/azure/checks.lua", "modules/azure/classify.lua", "playbooks/diagnose.lua" } do
    local text = util.read_file(root .. "/" .. file)
    for block in text:gmatch("findings%.by_guide (%b{})") do
      for guide in block:gmatch('\n  %["([^"]*)"%] = {') do
        for section in (guide .. ", "):gmatch("(.-), ") do
          named = named + 1
          if section ~= "" and not sections[section] then wrong[#wrong + 1] = file .. ": " .. section end
        end
      end
    end
  end
  t.ok(named >= 20, ("read %d section names"):format(named))
  t.eq(wrong, {})
end)
