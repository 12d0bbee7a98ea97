-- dhsm.luna against a real OpenSSH sshd (support/sshd.lua): what libssh2
-- 1.10 cannot do with OpenSSH >= 8.8 is said plainly, and a peer killed
-- under an open session is "connection lost" with its address.
local t = require "dhsm.test"
local luna = require "dhsm.luna"
local sshd = require "support.sshd"

local ok, why = sshd.available()
if not ok then
  t.test("dhsm.luna against OpenSSH's sshd", function() t.skip(why) end)
  return
end

local function connect(server, key)
  return luna.connect { host = "127.0.0.1", port = server.port, user = server.user, key = server.key(key),
    known_hosts = server.dir .. "/known_hosts", host_key = "accept-new", name = "sshd", timeout = 10 }
end

t.test("an RSA client key refused by OpenSSH: the error says why (SHA-1 ssh-rsa) and what to use", function()
  local server = sshd.start()
  local err = t.raises(function() connect(server, "rsa") end, "AuthenticationFailed")
  t.ok(err.message:find("sshd (127.0.0.1:" .. server.port .. ") refused the RSA key", 1, true), err.message)
  t.ok(err.message:find("ssh-rsa (SHA-1)", 1, true) and err.message:find("OpenSSH 8.8", 1, true), err.message)
  t.ok(err.message:find("Use an Ed25519 or ECDSA key, or the password", 1, true), err.message)
  t.ok(err.details.libssh2:find("Username/PublicKey combination invalid", 1, true), err.details.libssh2)
end, { timeout = 60 })

t.test("an Ed25519 key works; the peer killed under the open session is 'connection lost' with host:port", function()
  local server = sshd.start()
  local s <close> = connect(server, "ed25519")
  t.eq(s.hostname, "sshd")
  server.proc:kill(9)                                  -- the sshd serving this very session, at once
  server.proc:wait(5)
  local err = t.raises(function() s:run("hsm show") end, "ConnectionLost")
  t.ok(err.message:find("sshd (127.0.0.1:" .. server.port .. "): connection lost", 1, true), err.message)
  t.ok(not err.message:find("draining", 1, true), err.message)
end, { timeout = 60 })
