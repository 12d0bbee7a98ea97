-- bench/luna_bench.lua: LunaSH commands through dhsm.luna (one SSH session,
-- one shell) against the same commands run by OpenSSH's client, one `ssh`
-- process each (key authentication, the estate's known_hosts).  Not a test.
--   ./dhsm -I tests exec bench/luna_bench.lua [N]
local t = require "dhsm.test"
local luna = require "dhsm.luna"
local util = require "dhsm.util"
local N = tonumber((...)) or 50

local estate = require("support.estate").start()
local entry = estate.inventory:hsm("hsm1")

local function report(label, seconds)
  print(("%-44s %7.3f s  %6.1f ms/command"):format(label, seconds, seconds / N * 1000))
end

local t0 = dhsm.now()
local s = luna.open(entry)
local connected = dhsm.now() - t0
for _ = 1, N do s:must("hsm show") end
local total = dhsm.now() - t0
s:close()
report(("dhsm.luna: %d x 'hsm show', one session"):format(N), total)
print(("  (of which connect + host key + login + shell: %.3f s)"):format(connected))

local q = util.shell_quote
local cmd = ("ssh -q -o BatchMode=yes -o UserKnownHostsFile=%s -i %s -p %d tenantadmin@%s 'hsm show' >/dev/null")
  :format(q(entry.known_hosts), q(estate.json.appliances.client_key), entry.ssh_port, entry.host)
t0 = dhsm.now()
local failures = 0
for _ = 1, N do
  if not os.execute(cmd) then failures = failures + 1 end
end
report(("OpenSSH: %d x ssh ... 'hsm show'"):format(N), dhsm.now() - t0)
if failures > 0 then print(("  (%d ssh runs failed)"):format(failures)) end
t.run_file_cleanups()
