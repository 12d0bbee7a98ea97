-- Rehearsing against the simulated estate as the READMEs say: `estate
-- start` says where the estate is in one line, and the README's provision
-- line (rehearsal timings passed with -e; the real defaults are ARM's:
-- 10 s polls, 30 s back-off) rides out a gateway race in seconds.
local t = require "dhsm.test"
local util = require "dhsm.util"
local support = require "support.estate"

local q = util.shell_quote
local ROOT = t.here() .. "/../.."

t.test("estate start prints one line: where the estate is and its inventory", function()
  local dir = t.tmpdir() .. "/estate"
  t.cleanup(function() t.sh({ support.launcher, "stop", "--dir", dir }) end)
  local r = t.sh { support.launcher, "start", "--dir", dir, "--appliances", "0" }
  t.eq(r.status, 0, r.stderr)
  t.eq(r.stderr, "")
  local pid = r.stdout:match("^estate running in " .. dir:gsub("%p", "%%%0") .. " %(pid (%d+)%); inventory "
    .. (dir .. "/inventory.json"):gsub("%p", "%%%0") .. "\n$")
  t.ok(pid, r.stdout)
  t.eq(util.read_file(dir .. "/estate.pid"), pid .. "\n")
  -- the inventory it names is the one dhsm takes
  t.eq(t.run("-i " .. q(dir .. "/inventory.json") .. " exec -e 'print(inv.azure.resource_group)'").stdout, "hsm-rg\n")
end, { timeout = 60 })

-- The README's provision line, from its "Rehearsing" block.
local function readme_provision()
  local block = util.read_file(ROOT .. "/README.md"):match("\n## Rehearsing against the simulated estate\n.-```sh\n(.-)```")
  return assert(block and block:match("\n%./dhsm (%-i /tmp/estate/inventory%.json run provision [^\n]*)"),
    "README's Rehearsing block has no provision line")
end

t.test("the README's rehearsal timings: provision through two gateway races takes seconds", function()
  local args = readme_provision()
  t.ok(args:find("-e poll_interval=", 1, true) and args:find("-e backoff=", 1, true), args)
  local estate = support.start { args = "--appliances 2" }
  estate:fault { gateway_race_next = 2 }
  local t0 = dhsm.now()
  local r = estate:run((args:gsub("^%-i /tmp/estate/inventory%.json ", "")))
  local took = dhsm.now() - t0
  t.eq(r.status, 0, r.stderr)
  t.ok(took < 20, ("took %.1f s: the first back-off alone is 30 s by default"):format(took))
  t.ok(r.stderr:find("redeploying in", 1, true), "the race was met and ridden out:\n" .. r.stderr)
  t.eq(support.count(estate:mutations(), "^PUT .*/dedicatedHSMs/hsm%-[ab]$") >= 4, true, "reruns reached the estate")
end, { timeout = 120 })
