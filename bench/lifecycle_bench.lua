-- bench/lifecycle_bench.lua: the shipped lifecycle playbooks against the
-- simulated estate, as an operator runs them (`dhsm run ...`, a child
-- process).  Not a test: it prints figures.
--   ./dhsm -I tests exec bench/lifecycle_bench.lua [WAIT_SECONDS]     (default 60)
-- 1. provision of 2 HSMs, then decommission of the 2 (method=failed-logins,
--    group kept), the estate's own delays at zero: per step, dhsm's wall
--    and CPU time (the --json document's duration_s and cpu_s, os.clock in
--    the child); per run, total CPU and peak RSS of the dhsm process
--    (GNU time: the kernel's rusage, ru_maxrss).  Goal: peak RSS < 20 MB.
-- 2. CPU dhsm spends while a long-running operation takes WAIT_SECONDS:
--    a provision whose new ExpressRoute gateway stays Updating that long
--    (estate knob gateway_seconds), polled at the playbook's default
--    interval.  Goal: near zero (no busy polling).
local t = require "dhsm.test"
local cjson = require "cjson"
local util = require "dhsm.util"
local WAIT = tonumber((...)) or 60
local q = util.shell_quote

local ZERO = { hsm_step_seconds = 0, gateway_seconds = 0, network_seconds = 0, delete_seconds = 0, retry_after = 0 }

-- run dhsm under GNU time; -> the --json document, {wall=, user=, sys=, rss_kb=}
local function timed(e, args)
  local dir = t.tmpdir()
  local r = t.sh(("XDG_STATE_HOME=%s DHSM_AUDIT=%s/audit.jsonl /usr/bin/time -f 'TIME %%e %%U %%S %%M' -o %s/time %s")
    :format(q(dir), q(dir), q(dir), t.cmd(("-i %s run %s --yes --json"):format(q(e.dir .. "/inventory.json"), args))))
  if r.status ~= 0 then error("dhsm run " .. args .. " failed:\n" .. r.stderr, 0) end
  local wall, user, sys, rss = util.read_file(dir .. "/time"):match("TIME (%S+) (%S+) (%S+) (%S+)")
  return cjson.decode(r.stdout), { wall = tonumber(wall), user = tonumber(user), sys = tonumber(sys), rss_kb = tonumber(rss) }
end

local function report(label, doc, m)
  print(("%s: wall %.2f s, CPU %.2f s (user %.2f + sys %.2f), peak RSS %.1f MB"):format(label, m.wall,
    m.user + m.sys, m.user, m.sys, m.rss_kb / 1024))
  for _, s in ipairs(doc.steps) do
    print(("  %-70s wall %7.3f s  cpu %6.3f s"):format(s.title:sub(1, 70), s.duration_s or 0, s.cpu_s or 0))
  end
end

local e = require("support.estate").start { set = ZERO, args = "--appliances 2" }
local doc, m = timed(e, "provision -e hsms=hsm-a:stamp1,hsm-b:stamp2 -e poll_interval=0.02")
report("provision of 2 HSMs (estate delays 0)", doc, m)
doc, m = timed(e, "decommission -e hsm=hsm1,hsm2 -e method=failed-logins -e backups_confirmed=true -e poll_interval=0.02")
report("decommission of 2 HSMs (estate delays 0, failed-logins)", doc, m)

local slow = {}
for k, v in pairs(ZERO) do slow[k] = v end
slow.gateway_seconds = WAIT
local e2 = require("support.estate").start { set = slow, args = "--appliances 0" }
doc, m = timed(e2, "provision -e hsms=hsm-w:stamp1 -e vnet=w-vnet -e address_space=10.6.0.0/16 "
  .. "-e hsm_subnet_prefix=10.6.1.0/24 -e gateway_subnet_prefix=10.6.255.0/26 -e gateway=w-gw -e gateway_pip=w-pip")
local waited = doc.steps[1]                -- the step that waited for the gateway (it creates, then waits)
for _, s in ipairs(doc.steps) do
  if s.duration_s > waited.duration_s then waited = s end
end
print(("step '%s' waited %.1f s on a long-running operation (default poll interval): dhsm CPU %.3f s "
  .. "(%.2f ms of CPU per s of waiting)"):format(waited.title, waited.duration_s, waited.cpu_s,
  1000 * waited.cpu_s / waited.duration_s))
report("provision with a " .. WAIT .. " s gateway", doc, m)
t.run_file_cleanups()
