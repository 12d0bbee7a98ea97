-- A real OpenSSH sshd on loopback, one connection, for dhsm.luna against a
-- peer nobody on the project wrote.  A tiny acceptor listens on a free
-- port and execs `sshd -i` (inetd mode) on the connection it accepts, so
-- the process handed back IS the server of that session: killing it
-- kills the peer under an open session.  The login runs a stand-in for
-- LunaSH (a prompt, then whatever is typed goes nowhere).
--
--   local sshd = require "support.sshd"
--   if not sshd.available() then ... end
--   local server = sshd.start()        -- {port=, user=, dir=, proc=, key(type) -> path}
--   server.key("rsa"), server.key("ed25519")   -- client keys, both authorised
local t = require "dhsm.test"
local proc = require "dhsm.proc"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

M.SSHD = "/usr/sbin/sshd"

local ACCEPT = [==[
import os, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
print("PORT", s.getsockname()[1], flush=True)
c, _ = s.accept()
s.close()
os.dup2(c.fileno(), 0)
os.dup2(c.fileno(), 1)
os.execv(sys.argv[1], [sys.argv[1], "-i", "-e", "-f", sys.argv[2]])
]==]

-- sshd refuses to start as root without its privilege separation folder
-- (the package's tmpfiles.d makes it at boot; a container has none).
function M.available()
  if sys.stat(M.SSHD) == nil then return false, M.SSHD .. " is not installed (openssh-server)" end
  if sys.stat("/run/sshd") == nil and t.sh("id -u").stdout == "0\n" then
    sys.mkdir("/run/sshd", tonumber("755", 8))
  end
  return true
end

local function keygen(path, type)
  local r = t.sh(("ssh-keygen -q -t %s -N '' -f %s"):format(type, util.shell_quote(path)))
  if r.status ~= 0 then error("ssh-keygen: " .. r.stderr, 3) end
end

function M.start()
  local dir = t.tmpdir()
  keygen(dir .. "/host_ed25519", "ed25519")
  local authorized = {}
  for _, type in ipairs { "rsa", "ed25519" } do
    keygen(dir .. "/id_" .. type, type)
    authorized[#authorized + 1] = util.read_file(dir .. "/id_" .. type .. ".pub")
  end
  t.write(dir .. "/authorized_keys", table.concat(authorized))
  t.write(dir .. "/sshd_config", table.concat({
    "HostKey " .. dir .. "/host_ed25519",
    "AuthorizedKeysFile " .. dir .. "/authorized_keys",
    "PidFile none", "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
    "PasswordAuthentication no", "KbdInteractiveAuthentication no",
    "ForceCommand printf '[sshd] lunash:>'; exec cat >/dev/null", "" }, "\n"))
  t.write(dir .. "/accept.py", ACCEPT)
  local p = proc.spawn { argv = { "/usr/bin/python3", dir .. "/accept.py", M.SSHD, dir .. "/sshd_config" } }
  t.cleanup(function() p:kill() p:wait(5) p:close() end)
  local line = p:read_until("PORT %d+\n", 10)
  local server = { port = tonumber(line:match("PORT (%d+)")), user = util.trim(t.sh("id -un").stdout),
    dir = dir, proc = p }
  function server.key(type) return dir .. "/id_" .. type end
  return server
end

return M
