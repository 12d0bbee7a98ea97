-- Fuzz the NTLS syslog classifier (dhsm.luna.parse.ntls_log), as text and as a
-- list of lines: the guide's lines, the simulator's, interleaved.
local fuzz = dofile(arg[0]:match("^(.-)[^/]*$") .. "harness.lua")
local parse = require "dhsm.luna.parse"

local seeds = fuzz.corpus("ntls")
seeds[#seeds + 1] = table.concat({
  "Nov 28 10:00:01 hsm1 NTLS[8508]: info : 0 : Incoming connection request... : 192.168.50.2/59415",
  "Nov 28 10:00:01 hsm1 NTLS[8508]: Error message from SSLAccept is : error:14094418:SSL routines:ssl3_read_bytes:tlsv1 alert unknown ca",
  "Nov 28 10:00:01 hsm1 NTLS[8508]: Error during SSL accept ( RC_SSL_ERROR )",
  "Nov 28 10:00:01 hsm1 NTLS[8508]: info : 0xc0000711 : Fail to establish a secure channel with client : 192.168.50.2/59415 : RC_SSL_FAILED_HANDSHAKE",
  'Nov 28 10:00:02 hsm1 NTLS[8508]: info : 0 : NTLS Client "app1" Connection instance added : 10.0.0.9/40000',
  "Nov 28 10:00:03 hsm1 NTLS[7]: Error message from SSLAccept is : error:14089086:SSL routines:ssl3_get_client_certificate:certificate verify failed",
  "Nov 28 10:00:03 hsm1 NTLS[7]: info : 0xc0000711 : Fail to establish a secure channel with client : fe80::1/2000 : RC_SSL_FAILED_HANDSHAKE",
  "Nov 28 10:00:04 hsm1 sshd[1]: not NTLS",
}, "\n")

local function as_lines(input)
  local lines = {}
  for l in input:gmatch("[^\n]+") do lines[#lines + 1] = l end
  return lines
end

local OUTCOMES = { ok = true, server_cert_rejected = true, client_cert_unknown = true, handshake_failed = true,
  removed = true, pending = true }

fuzz.main {
  name = "ntls_log",
  seeds = seeds,
  dictionary = { "NTLS[1]: ", "info : 0 : ", "Incoming connection request... : ", "Error message from SSLAccept is : ",
    "alert unknown ca", ":certificate verify failed", "RC_SSL_FAILED_HANDSHAKE", "Connection instance added",
    "Connection instance removed", 'NTLS Client "', "10.0.0.1/1000", "fe80::1/1", "Nov 28 10:00:01 hsm1 " },
  target = function(input)
    local log = parse.ntls_log(input)
    for _, a in ipairs(log.attempts) do fuzz.property(OUTCOMES[a.outcome], "unknown outcome %s", tostring(a.outcome)) end
    parse.ntls_log(as_lines(input))
  end,
}
