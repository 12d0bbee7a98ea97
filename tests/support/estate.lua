-- A simulated estate (tests/sim) for a test file: started when the file
-- loads, stopped after its last test.
--
--   local estate = require("support.estate").start{ set = { hsm_step_seconds = 0.05 } }
--   estate.inventory        -- dhsm.inventory, as an operator's would be
--   estate:fault{ throttle = "2:dedicatedHSMs" }; estate:clear()
--   estate:control("POST", "/advance", { idle = true })
local t = require "dhsm.test"
local cjson = require "cjson"
local http = require "dhsm.azure.http"
local inventory = require "dhsm.inventory"
local util = require "dhsm.util"

local M = {}
M.__index = M

local here = debug.getinfo(1, "S").source:match("^@(.*)/support/[^/]*$")
M.launcher = here .. "/sim/estate"

-- start{set = {knob = value}, args = "extra launcher arguments"}
function M.start(opts)
  opts = opts or {}
  local dir = t.tmpdir()
  local args = { "start", "--dir", util.shell_quote(dir) }
  for k, v in pairs(opts.set or {}) do args[#args + 1] = ("--set %s=%s"):format(k, util.shell_quote(tostring(v))) end
  if opts.args then args[#args + 1] = opts.args end
  local r = t.sh(util.shell_quote(M.launcher) .. " " .. table.concat(args, " "))
  if r.status ~= 0 then error("the simulated estate did not start:\n" .. r.stdout .. r.stderr, 2) end
  local self = setmetatable({ dir = dir }, M)
  t.cleanup(function() self:stop() end)
  self.json = cjson.decode(util.read_file(dir .. "/estate.json"))
  self.inventory = inventory.load(dir .. "/inventory.json")
  self.session = http.session { ca_file = self.json.ca_file }
  return self
end

-- run(args [, opts]) -> dhsm ARGS against this estate's inventory, in a
-- state folder of its own (dhsm.test.run: opts.state, opts.env, opts.stdin)
function M:run(args, opts)
  return t.run("-i " .. util.shell_quote(self.dir .. "/inventory.json") .. " " .. args, opts)
end

function M:stop()
  t.sh(util.shell_quote(M.launcher) .. " stop --dir " .. util.shell_quote(self.dir))
end

-- control(method, path, body) -> decoded reply
function M:control(method, path, body)
  local c = self.json.control
  local r = self.session:request { method = method, url = c.url .. path,
    headers = { [c.header] = c.token, ["Content-Type"] = "application/json" },
    body = body and cjson.encode(body) or nil }
  if r.status >= 300 then error(("control %s %s: %d %s"):format(method, path, r.status, r.body), 2) end
  return r.body ~= "" and cjson.decode(r.body) or nil
end

function M:fault(faults) return self:control("POST", "/faults", faults) end
function M:clear() return self:control("POST", "/faults/clear", {}) end
function M:stats() return self:control("GET", "/stats") end
function M:state() return self:control("GET", "/state") end

-- child(code, state [, guard]) -> proc.run/spawn options of a child `dhsm
-- exec` running code (a Lua string) against this estate's inventory, with
-- its own state folder and the guard folder `guard` (by default one of its
-- own: another jump host, as far as the guard can tell)
function M:child(code, state, guard)
  local env = { XDG_STATE_HOME = state, DHSM_AUDIT = state .. "/audit.jsonl", DHSM_GUARD_DIR = guard or state .. "/guard",
    DHSM_INVENTORY = self.dir .. "/inventory.json" }
  -- --yes: automation, so destructive calls (hsm zeroize) are confirmed in advance
  return { argv = { t.dhsm, "exec", "--yes", "-e", code }, env = env, timeout = 120 }
end

-- appliance(name, action) / appliance(name, {fault = value}): control an appliance
function M:appliance(name, what)
  if type(what) == "string" then
    return self:control("POST", "/appliances/" .. name .. "/action", { action = what })
  end
  return self:control("POST", "/appliances/" .. name .. "/faults", what)
end

-- What reached the estate and may change it, from its own request log
-- (DIR/estate.log): {"PUT /subscriptions/...", "hsm1 lunash: hsm zeroize -force", ...};
-- ARM requests other than GET/HEAD and LunaSH commands other than reads.
-- filter: a plain substring the entry must contain.
function M:mutations(filter)
  local classify = require("dhsm.luna").classify
  local out = {}
  for line in (util.read_file(self.dir .. "/estate.log") or ""):gmatch("[^\n]+") do
    local m, path = line:match(" arm (%u+) (%S+) %-> ")
    local entry = m and m ~= "GET" and m ~= "HEAD" and (m .. " " .. path)
    local name, command = line:match(" (%S+) lunash: (.-) %-> ")
    if command and classify(command) ~= "read" then entry = name .. " lunash: " .. command end
    if entry and (not filter or entry:find(filter, 1, true)) then out[#out + 1] = entry end
  end
  return out
end

-- DIR/estate.log as a list of its messages, without time, logger and level:
-- "arm DELETE /subscriptions/... -> 202 (3 ms)", "hsm1 lunash: service restart ntls -> 0",
-- "vtl: addServer -cert ... -> 0", "lunacm: hagroup recover -group myHA -> No Error", "stopped"
function M.log_of(dir)
  local out = {}
  for line in (util.read_file(dir .. "/estate.log") or ""):gmatch("[^\n]+") do
    out[#out + 1] = line:match("^%S+ %S+ %S+ %u+ (.*)$") or line
  end
  return out
end

function M:log() return M.log_of(self.dir) end

-- count_since(from, {name = Lua pattern}) -> {name = how many log messages
-- after the first `from` match it}: what reached the estate since then
function M:count_since(from, patterns)
  local n, log = {}, self:log()
  for name, pattern in pairs(patterns) do
    n[name] = 0
    for i = from + 1, #log do
      if log[i]:find(pattern) then n[name] = n[name] + 1 end
    end
  end
  return n
end

-- {name = provisioningState}: the dedicated HSM resources the estate holds
function M:hsms()
  local out = {}
  for _, r in pairs(self:state().resources) do
    if r.type == "Microsoft.HardwareSecurityModules/dedicatedHSMs" then out[r.name] = r.state end
  end
  return out
end

-- count(list, pattern) -> how many entries match (a Lua pattern)
function M.count(list, pattern)
  local n = 0
  for _, x in ipairs(list) do if x:find(pattern) then n = n + 1 end end
  return n
end

-- The estate's world without what moves by itself (clock, counters, tokens,
-- the appliances' last SSH login).
function M:world()
  local s = self:state()
  for _, a in pairs(s.appliances or {}) do
    if type(a) == "table" then a.last_login = nil end     -- the SSH session's, not a change of state
  end
  return { resources = s.resources, groups = s.groups, deployments = s.deployments or {}, knobs = s.knobs,
    appliances = s.appliances }
end

-- A secret from the estate's secrets folder: secret("hsm1_so_password")
function M:secret(name)
  return require("dhsm.secret").file(self.dir .. "/secrets/" .. name)
end

-- A LunaSH session to appliance name, closed when the test ends.
function M:luna_session(name, opts)
  local t = require "dhsm.test"
  local s = require("dhsm.luna").open(self.inventory:hsm(name), opts)
  t.cleanup(function() s:close() end)
  return s
end

function M:device(name)
  return self.json.appliances.devices[name]
end

-- PUT the seeded gateway hsm-ergw again as it is (a network change an
-- operator makes): it goes Updating for gateway_seconds; waited for when
-- wait (a failure, the network_fail fault's, is left for the test to read).
function M:reput_gateway(c, wait)
  local network = require "dhsm.azure.network"
  local gw = network.gateway(c, "hsm-ergw")
  local ip = gw.properties.ipConfigurations[1].properties
  local r = c:put(network.gateway_path(c, "hsm-ergw"), { body = network.gateway_body { location = gw.location,
    subnet_id = ip.subnet.id, pip_id = ip.publicIPAddress.id, sku = gw.properties.sku.name } })
  if wait then pcall(c.wait, c, r, { timeout = 30 }) end
end

-- put_hsm(c, name, spec [, group]) -> whether it ended Succeeded, its
-- state: a dedicated HSM PUT straight on ARM past dhsm's checks (what an
-- earlier run or another tool left), waited for.
function M:put_hsm(c, name, spec, group)
  local hsm = require "dhsm.azure.hsm"
  local ok = pcall(function()
    c:wait(hsm.start(c, name, spec, { skip_preflight = true, group = group }), { timeout = 30 })
  end)
  local h = hsm.get(c, name, group)
  return ok, h and h.properties.provisioningState
end

-- remove_hsm(c, name [, group]): the HSM gone, however it was left - a
-- Failed one deleted as a leftover, any other once the estate's flag says
-- its (device-less) appliance is zeroized - and waited for.
function M:remove_hsm(c, name, group)
  local hsm = require "dhsm.azure.hsm"
  local h = hsm.get(c, name, group)
  if not h then return end
  if h.properties.provisioningState == "Failed" then
    hsm.delete_failed(c, name, { group = group })
  else
    self:control("POST", "/hsms/" .. name .. "/zeroized", { zeroized = true, resource_group = group or c.resource_group })
    -- a device-less appliance has no `hsm show` to read: the rule is lifted, audited
    local r = c:delete(hsm.path(c, name, group), { allow_unzeroized = true })
    if r.status == 202 then c:wait(r, { timeout = 30 }) end
  end
  t.eventually(function() return hsm.get(c, name, group) == nil end, name .. " deleted")
end

-- delete_group_around_dhsm(c, group): the group deleted as the portal or
-- `az group delete` would, around dhsm's rules (ARM's own API through the
-- raw transport), and waited for: how an HSM gets orphaned.
function M:delete_group_around_dhsm(c, group)
  local r = self.session:request { method = "DELETE", url = c:url(c:group_path(group), {}),
    headers = { Authorization = { "Bearer ", c:token() } } }
  if r.status ~= 202 and r.status ~= 200 then error(("DELETE of group %s: HTTP %d"):format(group, r.status), 2) end
  c:wait(c:group_path(group), { deleting = true })
end

-- An azure client on this estate, polling fast.
function M:azure(extra)
  local cfg = {}
  for k, v in pairs(self.inventory.azure) do cfg[k] = v end
  cfg.poll_interval = 0.05
  cfg.retry_deadline = 20
  cfg.imds_endpoint = self.json.services.imds.url
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return require("dhsm.azure").client(cfg)
end

return M
