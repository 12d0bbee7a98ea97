-- make demo, part 1: look at every layer of the simulated estate as the
-- troubleshooting guide asks, in parallel where it can; nothing is changed.
--   dhsm -i DIR/inventory.json exec tools/demo.lua
local inventory = require("dhsm.inventory").load(os.getenv("DHSM_INVENTORY"))
local azure = require "dhsm.azure"
local hsm = require "dhsm.azure.hsm"
local network = require "dhsm.azure.network"
local luna = require "dhsm.luna"
local net = require "dhsm.net"
local sys = require "dhsm.sys"

local function say(fmt, ...) print(fmt:format(...)) end

local c <close> = azure.client(inventory.azure)
say("== Azure: resource group %s in %s", inventory.azure.resource_group, inventory.azure.location)
local gw = network.vnet_gateway(c, "hsm-vnet")
say("ExpressRoute gateway %-10s %s", gw.name, gw.state)
say("subnet hsm            %s", network.check_delegation(c, "hsm-vnet", "hsm").message)
say("subnet compute        %s", network.check_delegation(c, "hsm-vnet", "compute").message)
for _, check in ipairs(hsm.preflight(c, { vnet = "hsm-vnet", subnet = "hsm", stamp = "stamp1" })) do
  say("preflight %-20s %s  %s", check.rule, check.ok and "ok  " or "FAIL", check.message)
end
for _, h in ipairs(hsm.list(c)) do
  say("dedicated HSM %-8s %s (%s, %s)", h.name, h.properties.provisioningState,
    h.properties.stampId or "?", h.properties.networkProfile.networkInterfaces[1].privateIpAddress)
end
say("orphaned HSMs (group gone, still billed): %d", #hsm.orphans(c))

say("== appliances, all at once")
local tmp = sys.mkdtemp("dhsm-demo-")
local rows = dhsm.parallel(inventory.hsms, function(e)
  local tcp = net.tcp { host = e.host, port = e.ntls_port, timeout = 2 }
  local s <close> = luna.open(e)
  local show = s:hsm_show()
  local pem = tmp .. "/" .. e.name .. ".pem"
  s:get("server.pem", pem)
  local cert = net.cert(pem)
  return ("%-6s serial %s  firmware %s  SO attempts left %s  KB0019789 %s  NTLS %s (%s ms)  server cert %d days left")
    :format(e.name, show.serial, show.firmware, tostring(show.attempts_left),
      s:packages()[luna.REBOOT_FIX] and "installed" or "MISSING (no reboots)",
      tcp.open and "open" or tcp.reason, math.floor(tcp.ms + 0.5), cert.days_left)
end)
for _, row in ipairs(rows) do print(row) end
os.execute("rm -rf " .. tmp)
