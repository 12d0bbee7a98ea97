-- SoftHSM2 tokens for the pkcs11 tests and benchmark: a private
-- configuration (SOFTHSM2_CONF) in a temporary folder, tokens made there
-- with softhsm2-util, PINs random and kept in 0600 files, handed out as
-- secrets.
--
--   local p11 = require "support.p11"
--   if not p11.available() then ... end
--   local hsm = p11.softhsm { "main", "guard" }
--   local lib = hsm:load()             -- closed when the test (or the file) ends
--   hsm:pin("main"), hsm:so_pin("main") -- dhsm.secret values
--   hsm:add_token("late")              -- seen by libraries loaded afterwards
--
-- SoftHSM2 reads SOFTHSM2_CONF when initialised and sees only the tokens
-- present then; every library of the process shares that one
-- initialisation, so a new token shows once all were closed.
local t = require "dhsm.test"
local dhsm = require "dhsm"
local pkcs11 = require "dhsm.pkcs11"
local guard = require "dhsm.guard"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

M.LIB = "/usr/lib/softhsm/libsofthsm2.so"

function M.available()
  return sys.stat(M.LIB) ~= nil and t.sh("command -v softhsm2-util").status == 0
end

local SoftHSM = {}
SoftHSM.__index = SoftHSM

-- softhsm {labels...} -> a SoftHSM2 set-up with those tokens
function M.softhsm(labels)
  local dir = t.tmpdir()
  local self = setmetatable({ dir = dir, conf = dir .. "/softhsm2.conf", pins = {} }, SoftHSM)
  sys.mkdir(dir .. "/tokens", tonumber("700", 8))
  t.write(self.conf, ("directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n"
    .. "slots.removable = false\n"):format(dir))
  for _, label in ipairs(labels or {}) do self:add_token(label) end
  t.cleanup(function() self:forget_logins() end)
  return self
end

-- The token's PINs go to softhsm2-util on its command line (it takes them
-- no other way): throwaway PINs of a throwaway token.  Not echoed.
function SoftHSM:add_token(label)
  local pins = { user = sys.random_hex(8), so = sys.random_hex(8) }
  for who, pin in pairs(pins) do t.write(("%s/%s.%s.pin"):format(self.dir, label, who), pin, tonumber("600", 8)) end
  local q = util.shell_quote
  local r = t.sh(("SOFTHSM2_CONF=%s softhsm2-util --init-token --free --label %s --so-pin %s --pin %s")
    :format(q(self.conf), q(label), pins.so, pins.user))
  if r.status ~= 0 then error("softhsm2-util could not make token " .. label .. ": " .. r.stderr, 2) end
  self.pins[label] = pins
end

function SoftHSM:env()
  return { SOFTHSM2_CONF = self.conf }
end

-- load() -> a library on this configuration, closed at cleanup
function SoftHSM:load()
  local lib = pkcs11.load(M.LIB, { env = self:env() })
  t.cleanup(function() lib:close() end)
  return lib
end

function SoftHSM:pin(label)
  return dhsm.secret.file(("%s/%s.user.pin"):format(self.dir, label))
end

function SoftHSM:so_pin(label)
  return dhsm.secret.file(("%s/%s.so.pin"):format(self.dir, label))
end

-- The guard's counts for these tokens are kept in the guard's folder
-- (a test's own, $DHSM_GUARD_DIR): drop them when done.
function SoftHSM:forget_logins()
  local lib = pkcs11.load(M.LIB, { env = self:env() })
  for _, tok in ipairs(lib:tokens()) do
    guard.forget(guard.device("partition", tok.serial), "co")
    guard.forget(guard.device("partition", tok.serial), "pso")
  end
  lib:close()
end

return M
