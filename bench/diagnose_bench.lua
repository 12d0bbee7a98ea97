-- bench/diagnose_bench.lua: the diagnose playbook on an estate of 8
-- appliances, as an operator (or cron) runs it (`dhsm run diagnose`, a
-- child process).  Not a test: it prints figures.
--   ./dhsm -I tests exec bench/diagnose_bench.lua [TIMEOUT_SECONDS]     (default 5)
-- 1. all 8 alive: wall time, CPU time (user + sys) and peak RSS of the dhsm
--    process (GNU time: the kernel's rusage), and the run's step time.
-- 2. the same estate with 2 appliances powered off (their ports drop SYNs,
--    so every probe to them waits the whole timeout): the goal is a wall
--    time of about one probe timeout plus the slowest Azure read, however
--    many HSMs, and a line saying what the run waits on.
local t = require "dhsm.test"
local cjson = require "cjson"
local util = require "dhsm.util"
local TIMEOUT = tonumber((...)) or 5
local q = util.shell_quote

-- run diagnose under GNU time; -> the --json document, {wall=, user=, sys=, rss_kb=}, stderr
local function timed(e)
  local dir = t.tmpdir()
  local r = t.sh(("XDG_STATE_HOME=%s DHSM_AUDIT=%s/audit.jsonl /usr/bin/time -f 'TIME %%e %%U %%S %%M' -o %s/time %s")
    :format(q(dir), q(dir), q(dir), t.cmd(("-i %s run diagnose --json -e timeout=%g"):format(q(e.dir .. "/inventory.json"),
      TIMEOUT))))
  local wall, user, sys, rss = util.read_file(dir .. "/time"):match("TIME (%S+) (%S+) (%S+) (%S+)")
  local ok, doc = pcall(cjson.decode, r.stdout)
  if not ok then error("diagnose printed no JSON document:\n" .. r.stderr, 0) end
  return doc, { wall = tonumber(wall), user = tonumber(user), sys = tonumber(sys), rss_kb = tonumber(rss), status = r.status },
    r.stderr
end

local function report(label, doc, m)
  local c = doc.result.counts
  print(("%s: exit %d, %d rows (%d OK, %d WARN, %d FAIL)"):format(label, m.status, #doc.result.findings, c.OK, c.WARN, c.FAIL))
  print(("  wall %.2f s (probe timeout %g s: %.2f x), CPU %.2f s (user %.2f + sys %.2f), peak RSS %.1f MB"):format(
    m.wall, TIMEOUT, m.wall / TIMEOUT, m.user + m.sys, m.user, m.sys, m.rss_kb / 1024))
  print(("  step '%s': wall %.3f s, dhsm CPU %.3f s"):format(doc.steps[1].title, doc.steps[1].duration_s, doc.steps[1].cpu_s))
end

local e = require("support.estate").start { args = "--appliances 8 --client-ready" }
local doc, m = timed(e)
report("8 appliances, all alive", doc, m)
for _, name in ipairs { "hsm7", "hsm8" } do e:appliance(name, "down") end
local stderr
doc, m, stderr = timed(e)
report("8 appliances, hsm7 and hsm8 powered off", doc, m)
for line in stderr:gmatch("[^\n]+") do
  if line:find("waiting on", 1, true) then print("  shown while waiting: " .. util.trim(line)) end
end
t.run_file_cleanups()
