-- known_hosts markers, against the estate's appliances over real SSH:
-- a key marked @revoked is refused as OpenSSH refuses it ("REVOKED HOST
-- KEY DETECTED", naming host, file and line), whatever else the file
-- says, plain, wildcard or hashed host names alike; @cert-authority lines
-- are not taken for plain keys; accept-new keeps the markers it does not
-- understand.  (No OpenSSH sshd is installed here: the appliances are
-- paramiko servers speaking real SSH.)
local t = require "dhsm.test"
local util = require "dhsm.util"

local estate = require("support.estate").start { args = "--appliances 1" }
local entry = estate.inventory:hsm("hsm1")
local name = ("[%s]:%d"):format(entry.host, entry.ssh_port)

local function open(known_hosts, opts)
  opts = opts or {}
  opts.known_hosts = known_hosts
  return estate:luna_session("hsm1", opts)
end

-- The appliance's host key, as known_hosts writes it: "TYPE BASE64".
local function host_key()
  local s = open(entry.known_hosts)
  local hk = s.hostkey
  s:close()
  return hk.type .. " " .. hk.key, hk
end

local function file_with(lines)
  local path = t.tmpdir() .. "/known_hosts"
  t.write(path, table.concat(lines, "\n") .. "\n")
  return path
end

-- |1|salt|HMAC-SHA1(salt, name), as ssh-keygen -H writes it
local function hashed(host)
  local r = t.sh(("/usr/bin/python3 -c %s %s"):format(util.shell_quote([[
import base64, hashlib, hmac, os, sys
salt = os.urandom(20)
mac = hmac.new(salt, sys.argv[1].encode(), hashlib.sha1).digest()
print("|1|" + base64.b64encode(salt).decode() + "|" + base64.b64encode(mac).decode())
]]), util.shell_quote(host)))
  return (r.stdout:gsub("%s+$", ""))
end

t.test("a @revoked host key is refused even when a plain line lists it", function()
  local key, hk = host_key()
  for _, revoked_name in ipairs { name, "[127.0.0.*]:*", hashed(name) } do
    local kh = file_with { "# appliances", name .. " " .. key, "@revoked " .. revoked_name .. " " .. key }
    local err = t.raises(function() open(kh) end, "HostKeyRevoked")
    t.eq(err.kind, "safety")
    t.ok(err.message:find("REVOKED HOST KEY DETECTED: the host key of hsm1 (" .. entry.host .. ":" .. entry.ssh_port
      .. ") (" .. hk.type .. " " .. hk.sha256 .. ") is marked @revoked in " .. kh .. " line 3", 1, true), err.message)
  end
end, { timeout = 60 })

t.test("@revoked for another host or another key changes nothing", function()
  local key = host_key()
  local other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBrJz5j6Tk8xq4mA1k4zS0Cqj0YbD8h4bJm2t1FZ0Vn9"
  local kh = file_with { name .. " " .. key, "@revoked " .. name .. " " .. other,
    "@revoked otherhost,[10.0.0.1]:22 " .. key, "@revoked !" .. name .. ",* " .. key }
  open(kh):close()
end, { timeout = 60 })

t.test("a @cert-authority line is not a plain key: unknown, with a note", function()
  local key = host_key()
  local kh = file_with { "@cert-authority " .. name .. " " .. key }
  local err = t.raises(function() open(kh) end, "HostKeyUnknown")
  t.ok(err.message:find("has @cert-authority lines for it: dhsm does not check host certificates", 1, true),
    err.message)
end, { timeout = 60 })

t.test("accept-new appends the key and keeps markers and comments", function()
  local key = host_key()
  local lines = { "# keep me", "@cert-authority *.example.com " .. key, "@revoked oldhost " .. key }
  local kh = file_with(lines)
  open(kh, { host_key = "accept-new" }):close()
  local text = util.read_file(kh)
  for _, l in ipairs(lines) do t.ok(text:find(l, 1, true), ("%q kept in:\n%s"):format(l, text)) end
  t.ok(text:find("\n" .. name:gsub("%p", "%%%0") .. " ssh%-[%w%-]+ [%w+/=]+ added by dhsm\n$"), text)
  open(kh):close()                                          -- now known
end, { timeout = 60 })

t.test("a known key too long to decode (12 KiB of base64) is a plain mismatch, never a buffer overrun", function()
  local _, hk = host_key()
  local huge = ("QUFB"):rep(3072)                      -- 12 KiB of base64: 9 KiB once decoded
  local kh = file_with { name .. " " .. hk.type .. " " .. huge }
  local err = t.raises(function() open(kh) end, "HostKeyMismatch")
  t.eq(err.kind, "safety")
end, { timeout = 60 })

t.test("a hashed line makes dhsm ask for its key type first, as a plain line does", function()
  local key, hk = host_key()                 -- the RSA key; the appliance offers ed25519 too, which libssh2 prefers
  t.eq(hk.type, "ssh-rsa")
  local s = open(file_with { hashed(name) .. " " .. key })
  t.eq(s.hostkey.sha256, hk.sha256)
  s:close()
end, { timeout = 60 })

-- The key the appliance shows when nothing in known_hosts steers the
-- choice of type (libssh2's default order), as "TYPE BASE64".
local function default_key()
  local kh = t.tmpdir() .. "/known_hosts"
  open(kh, { host_key = "accept-new" }):close()
  return util.read_file(kh):match("^%S+ (%S+ %S+)")
end

t.test("off port 22 only [host]:port lines count, as in OpenSSH: a bare host line neither vouches nor hides", function()
  t.ok(entry.ssh_port ~= 22, "the estate's appliance listens on another port")
  -- the very key offered, listed for the bare host only: libssh2's own
  -- lookup falls back to the bare name and would take it
  local key = default_key()
  local err = t.raises(function() open(file_with { entry.host .. " " .. key }) end, "HostKeyUnknown")
  t.eq(err.kind, "safety")
  -- ... and the [host]:port line still vouches for it
  open(file_with { entry.host .. " ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBrJz5j6Tk8xq4mA1k4zS0Cqj0YbD8h4bJm2t1FZ0Vn9",
    name .. " " .. host_key() }):close()
end, { timeout = 60 })

t.test("a NUL byte in a line cuts that line short and hides nothing after it", function()
  local key = host_key()
  local kh = file_with { "# a note\0 with a NUL", "@revoked " .. name .. " " .. key, name .. " " .. key }
  t.raises(function() open(kh) end, "HostKeyRevoked")
end, { timeout = 60 })
