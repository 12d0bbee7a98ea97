-- dhsm.cli.globals: what a runbook (`dhsm exec`) and the REPL find ready, one
-- code path for both:
--   secret              dhsm.secret
--   inv                 the inventory (-i FILE or $DHSM_INVENTORY), validated
--   az                  an azure client for inv.azure
--   hsm "name"          a LunaSH session to that appliance, opened once, reused
--   p11                 the client's PKCS#11 library, loaded on first use
-- dhsm.inventory() gives the inventory too (nil without one).
local dhsm = require "dhsm"

local M = {}

-- hsm "name": the inventory's sessions, opened once and reused
-- (dhsm.luna.sessions); on a terminal it says where it connects first: an
-- appliance that is off would look like a hung console.
local function hsm_opener(inv)
  local pool = require("dhsm.luna").sessions(inv, { connecting = function(entry)
    if require("dhsm.sys").isatty(2) then
      io.stderr:write(("connecting to %s (%s:%d)…\n"):format(entry.name, entry.host, entry.ssh_port or 22))
      io.stderr:flush()
    end
  end })
  return function(name) return pool:get(name) end
end

-- A proxy, so the library is loaded on first use; it completes as one
-- (__public: the REPL's completer reads it without loading anything).
local function lazy_pkcs11(inv)
  return setmetatable({}, { __public = require("dhsm.pkcs11").METHODS.library, __index = function(proxy, k)
    local lib = rawget(proxy, "_lib")
    if not lib then
      local p11 = require "dhsm.pkcs11"
      lib = p11.load(inv.client.pkcs11_lib, { env = require("dhsm.chrystoki").install(inv).library_env })
      rawset(proxy, "_lib", lib)
    end
    local v = lib[k]
    if type(v) == "function" then return function(_, ...) return v(lib, ...) end end
    return v
  end })
end

-- install(inventory_path) -> the inventory or nil.  A bad inventory raises
-- the loader's usage error (BadInventory, naming the file and the field)
-- before any global is set.
function M.install(inventory_path)
  _G.secret = require "dhsm.secret"
  local inv = inventory_path and require("dhsm.inventory").load(inventory_path) or nil
  require("dhsm.inventory").trust_tools(inv)       -- its client tools are the real ones (dhsm.proc)
  dhsm.inventory = function() return inv end
  if not inv then return nil end
  _G.inv = inv
  if inv.azure then _G.az = require("dhsm.azure").client(inv.azure) end
  _G.hsm = hsm_opener(inv)
  _G.p11 = lazy_pkcs11(inv)
  return inv
end

return M
