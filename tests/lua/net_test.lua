-- dhsm.net: TCP and TLS probes, certificates and NTLS logs, against
-- `openssl s_server` with certificates made here, and against the
-- simulated appliances' NTLS listeners.
local t = require "dhsm.test"
local net = require "dhsm.net"
local parse = require "dhsm.luna.parse"
local proc = require "dhsm.proc"
local util = require "dhsm.util"

local here = t.here()
local certs = t.tmpdir()
proc.run { argv = { "/usr/bin/python3", here .. "/../support/mkcerts.py", certs } }
local function pem(name) return certs .. "/" .. name end

-- An `openssl s_server` on a free loopback port; returns the port.
local function s_server(args)
  local argv = { "openssl", "s_server", "-accept", "127.0.0.1:0" }     -- (-quiet hides ACCEPT)
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local p = proc.spawn { argv = argv }
  t.cleanup(function() p:kill() p:wait(5) p:close() end)
  local line = p:read_until("ACCEPT [^\n]*\n", 10)
  return tonumber(line:match(":(%d+)%s*$"))
end

-- A port whose SYNs are dropped (a full backlog): connects time out.
local blackhole = require "support.blackhole"

---------------------------------------------------------------------------
-- TCP

t.test("tcp: open, refused, timeout, dns are answers, not errors", function()
  local port = s_server { "-cert", pem("server.pem"), "-key", pem("server.key") }
  local open = net.tcp { host = "127.0.0.1", port = port, timeout = 2 }
  t.eq(open.open, true)
  t.ok(open.ms >= 0 and open.ms < 2000)
  t.eq(net.tcp { host = "127.0.0.1", port = 1 }.reason, "refused")
  local hole = blackhole()
  local r = net.tcp { host = "127.0.0.1", port = hole, timeout = 0.3 }
  t.eq({ r.open, r.reason }, { false, "timeout" })
  t.ok(r.ms >= 290, r.ms)
  t.eq(net.tcp { host = "no-such-host.invalid", port = 1792 }.reason, "dns")
  t.eq(net.tcp { host = "::1", port = 1 }.open, false)            -- IPv6 is understood
end)

t.test("100 endpoints probed in parallel finish in about one timeout", function()
  local hole = blackhole()
  local list = {}
  for i = 1, 100 do list[i] = { host = "127.0.0.1", port = hole } end
  local t0 = dhsm.now()
  local r = net.tcp_many(list, { timeout = 0.5 })
  local took = dhsm.now() - t0
  t.eq(#r, 100)
  for i = 1, 100 do t.eq(r[i].reason, "timeout") end
  t.ok(took < 1.2, ("100 probes of 0.5 s took %.2f s"):format(took))
end)

t.test("bad input is refused", function()
  t.raises(function() net.tcp { port = 1 } end, "net.tcp: host: missing, expected a host name or address")
  t.raises(function() net.tcp { host = "x", port = 70000 } end, "net.tcp: port: expected integer 1%-65535, got 70000")
  t.raises(function() net.tcp { host = "x", port = "1792" } end, "port: expected integer 1%-65535")
  t.raises(function() net.tls { host = "x", port = 1, ca_file = "/no/ca.pem" } end, "cannot read ca_file /no/ca.pem")
  t.raises(function() net.tcp_many("x") end, "expected a list")
  t.raises(function() net.cert("/no/such.pem") end, "cannot read certificate file")
  local dir = t.tmpdir()
  t.raises(function() net.cert(t.write(dir .. "/junk.pem", "not a certificate")) end, "no PEM certificate in")
end)

---------------------------------------------------------------------------
-- TLS

t.test("tls: a good handshake, with protocol, cipher, verified chain", function()
  local port = s_server { "-cert", pem("server.pem"), "-key", pem("server.key") }
  local r = net.tls { host = "127.0.0.1", port = port, ca_file = pem("ca.pem") }
  t.eq(r.ok, true, r.error)
  t.eq(r.verify, { ok = true })
  t.ok(r.protocol:match("^TLSv1%.[23]$"), r.protocol)
  t.ok(r.cipher ~= "")
  t.eq(r.chain[1].subject, "CN=localhost")
  t.ok(net.same_cert(r.chain[1].pem, pem("server.pem")))
end)

t.test("tls: what is wrong locally is told apart from what the peer said", function()
  local expired = s_server { "-cert", pem("expired.pem"), "-key", pem("expired.key") }
  local r = net.tls { host = "127.0.0.1", port = expired, ca_file = pem("ca.pem") }
  t.eq({ r.ok, r.verify.ok, r.verify.error, r.alert }, { true, false, "certificate has expired", nil })
  t.ok(r.chain[1].days_left < 0)
  local self = s_server { "-cert", pem("self.pem"), "-key", pem("self.key") }
  r = net.tls { host = "127.0.0.1", port = self, ca_file = pem("ca.pem") }
  t.eq(r.verify.error, "self-signed certificate")
  local good = s_server { "-cert", pem("server.pem"), "-key", pem("server.key") }
  r = net.tls { host = "127.0.0.1", port = good, ca_file = pem("ca.pem"), server_name = "hsm.example" }
  t.eq(r.verify.error, "hostname mismatch")
  r = net.tls { host = "127.0.0.1", port = self, ca_file = pem("ca.pem"), strict = true }
  t.eq({ r.ok, r.reason }, { false, "handshake" })
end)

t.test("tls: a client certificate the server does not know brings its alert", function()
  local port = s_server { "-cert", pem("server.pem"), "-key", pem("server.key"), "-Verify", "1",
    "-CAfile", pem("ca.pem"), "-verify_return_error" }
  local known = net.tls { host = "127.0.0.1", port = port, ca_file = pem("ca.pem"),
    client_cert = pem("client.pem"), client_key = pem("client.key") }
  t.eq(known.ok, true, known.error)
  local stranger = net.tls { host = "127.0.0.1", port = port, ca_file = pem("ca.pem"),
    client_cert = pem("stranger.pem"), client_key = pem("stranger.key") }
  t.eq({ stranger.ok, stranger.alert, stranger.alert_code }, { false, "unknown ca", 48 })
  local none = net.tls { host = "127.0.0.1", port = port, ca_file = pem("ca.pem") }
  t.eq(none.ok, false)
  t.ok(none.alert, "a missing client certificate is refused by an alert too")
end)

t.test("tls 1.3: no client certificate brings alert 116 by its name, not 'unknown'", function()
  local port = s_server { "-cert", pem("server.pem"), "-key", pem("server.key"), "-Verify", "1",
    "-CAfile", pem("ca.pem"), "-tls1_3" }
  local r = net.tls { host = "127.0.0.1", port = port, ca_file = pem("ca.pem") }
  t.eq({ r.ok, r.protocol, r.alert, r.alert_code }, { false, "TLSv1.3", "certificate required", 116 })
end)

t.test("tls: an encrypted client key (PKCS#8, AES-256) is read with its passphrase, given as a secret", function()
  local port = s_server { "-cert", pem("server.pem"), "-key", pem("server.key"), "-Verify", "1",
    "-CAfile", pem("ca.pem"), "-verify_return_error" }
  local pass = t.write(t.tmpdir() .. "/pass", "correct horse battery staple", tonumber("600", 8))
  local key = certs .. "/client-enc.key"
  local r = proc.run { argv = { "openssl", "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", pem("client.key"),
    "-out", key, "-passout", "file:" .. pass } }
  t.eq(r.status, 0, r.stderr)
  t.ok(util.read_file(key):find("BEGIN ENCRYPTED PRIVATE KEY", 1, true), "the key is encrypted")
  local function probe(passphrase)
    return net.tls { host = "127.0.0.1", port = port, ca_file = pem("ca.pem"), client_cert = pem("client.pem"),
      client_key = key, client_key_passphrase = passphrase }
  end
  local ok = probe(dhsm.secret.file(pass))
  t.eq({ ok.ok, ok.verify.ok }, { true, true }, ok.reason)
  local err = t.raises(function() probe(nil) end, "usage")
  t.ok(tostring(err):find("give client_key_passphrase", 1, true), tostring(err))
  err = t.raises(function() probe(dhsm.secret.value("not it")) end, "usage")
  t.ok(tostring(err):find("wrong passphrase", 1, true), tostring(err))
  err = t.raises(function() probe("correct horse battery staple") end, "client_key_passphrase: expected a secret %(dhsm.secret%), got a string %(not shown%)")
  t.ok(not tostring(err):find("correct horse", 1, true), "the passphrase is not in the message")
end)

t.test("tls: closed and silent ports", function()
  t.eq(net.tls { host = "127.0.0.1", port = 1 }.reason, "refused")
  local hole = blackhole()
  t.eq(net.tls { host = "127.0.0.1", port = hole, timeout = 0.3 }.reason, "timeout")
end)

t.test("probes are audited only when verbose", function()
  local path = t.audit_log()
  net.tcp { host = "127.0.0.1", port = 1 }
  t.eq(#t.audit_records(path), 0)
  dhsm.verbose = true
  t.cleanup(function() dhsm.verbose = false end)
  net.tcp { host = "127.0.0.1", port = 1 }
  local recs = t.audit_records(path)
  t.eq({ #recs, recs[1].action, recs[1].target, recs[1].outcome }, { 1, "net.tcp", "127.0.0.1:1", "refused" })
end)

---------------------------------------------------------------------------
-- certificates

t.test("certificates: fields, bundles, comparison", function()
  local c = net.cert(pem("server.pem"))
  t.eq({ c.subject, c.issuer, c.self_signed }, { "CN=localhost", "CN=dhsm test CA", false })
  t.ok(c.not_before:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$"))
  t.ok(c.days_left >= 28 and c.days_left <= 30, c.days_left)
  t.ok(c.sha256:match("^%x%x:") and #c.sha256 == 95, c.sha256)
  t.eq(#c.sha1, 59)
  t.ok(c.serial:match("^%x+$"))
  local bundle = net.certs(pem("bundle.pem"))
  t.eq({ #bundle, bundle[2].subject, bundle[2].self_signed }, { 2, "CN=dhsm test CA", true })
  t.eq(net.cert(util.read_file(pem("ca.pem"))).sha256, bundle[2].sha256)
  t.ok(not net.same_cert(pem("server.pem"), pem("self.pem")))
end)

---------------------------------------------------------------------------
-- against an appliance's NTLS

t.test("NTLS on a simulated appliance: unregistered, registered, regenerated", function()
  local estate = require("support.estate").start { args = "--appliances 1" }
  local luna = require "dhsm.luna"
  local entry = estate.inventory:hsm("hsm1")
  local dev = estate:device("hsm1")
  local s <close> = luna.open(entry)
  local server_pem = t.tmpdir() .. "/hsm1.pem"
  s:get("server.pem", server_pem)
  local probe = { host = "127.0.0.1", port = entry.ntls_port, ca_file = server_pem,
    client_cert = pem("app1.pem"), client_key = pem("app1.key"), server_name = "hsm1" }
  t.eq(net.tcp { host = "127.0.0.1", port = entry.ntls_port }.open, true)
  local r = net.tls(probe)
  t.eq(r.ok, false, "not registered yet")
  s:put(pem("app1.pem"), "127.0.0.1.pem")
  s:must("client register -client app1 -ip 127.0.0.1")
  r = net.tls(probe)
  t.eq({ r.ok, r.verify.ok }, { true, true })
  t.ok(r.banner and r.banner:find('"client"', 1, true), r.banner)
  -- the appliance's certificate is regenerated: our copy is stale
  s:must("sysconf regenCert -force")
  s:must("service restart ntls")
  r = net.tls(setmetatable({ strict = true }, { __index = probe }))
  t.eq(r.ok, false)
  -- the appliance logs an attempt's end when its side is done, which may be
  -- after our probe returned: wait until the three attempts have settled
  local log, outcomes
  t.eventually(function()
    log = parse.ntls_log(s:must("syslog tail -logname messages -entries 200").text)
    outcomes = {}
    for _, a in ipairs(log.attempts) do outcomes[#outcomes + 1] = a.outcome end
    -- the bare TCP probe may show up first (to NTLS a handshake that never
    -- came), or not, when the listener saw the connection already closed
    if outcomes[1] == "probe" then table.remove(outcomes, 1) table.remove(log.attempts, 1) end
    return #outcomes >= 3 and outcomes[#outcomes] ~= "pending"
  end, "three settled NTLS attempts in the log")
  t.eq(outcomes, { "client_cert_unknown", "ok", "server_cert_rejected" })
  t.eq(log.attempts[2].client, "app1")
end, { timeout = 60 })

t.test("interleaved connections: the SSLAccept lines go with the next line naming a peer; a hello never sent is a probe", function()
  local log = parse.ntls_log(table.concat({
    "NTLS[7]: info : 0 : Incoming connection request... : 10.0.0.1/1000",
    "NTLS[7]: info : 0 : Incoming connection request... : 10.0.0.2/2000",
    "NTLS[7]: Error message from SSLAccept is : error:140940E5:SSL routines:ssl3_read_bytes:ssl handshake failure",
    "NTLS[7]: Error during SSL accept ( RC_SSL_ERROR )",
    "NTLS[7]: info : 0xc0000711 : Fail to establish a secure channel with client : 10.0.0.1/1000 : RC_SSL_FAILED_HANDSHAKE",
    "NTLS[7]: Error message from SSLAccept is : error:14089086:SSL routines:ssl3_get_client_certificate:certificate verify failed",
    "NTLS[7]: info : 0xc0000711 : Fail to establish a secure channel with client : 10.0.0.2/2000 : RC_SSL_FAILED_HANDSHAKE",
  }, "\n"))
  t.eq({ log.attempts[1].outcome, log.attempts[2].outcome }, { "probe", "client_cert_unknown" })
end)

t.test("NTLS log lines in the guide's format are classified", function()
  local text = table.concat({
    "Nov 28 10:00:01 hsm1 NTLS[8508]: info : 0 : Incoming connection request... : 192.168.50.2/59415",
    "Nov 28 10:00:01 hsm1 NTLS[8508]: Error message from SSLAccept is : error:14094418:SSL routines:ssl3_read_bytes:tlsv1 alert unknown ca",
    "Nov 28 10:00:01 hsm1 NTLS[8508]: Error during SSL accept ( RC_SSL_ERROR )",
    "Nov 28 10:00:01 hsm1 NTLS[8508]: info : 0xc0000711 : Fail to establish a secure channel with client : 192.168.50.2/59415 : RC_SSL_FAILED_HANDSHAKE",
    'Nov 28 10:00:01 hsm1 NTLS[8508]: info : 0 : NTLS Client "Unknown host name" Connection instance removed : 192.168.50.2/59415',
    "Nov 28 10:00:02 hsm1 sshd[1]: not NTLS",
  }, "\n")
  local log = parse.ntls_log(text)
  t.eq(#log.events, 5)
  t.eq({ #log.attempts, log.attempts[1].peer, log.attempts[1].outcome, log.attempts[1].alert },
       { 1, "192.168.50.2/59415", "server_cert_rejected", "unknown ca" })
  t.eq({ log.events[4].code, log.events[1].pid, log.events[1].host }, { "0xc0000711", 8508, "hsm1" })
  t.raises(function() parse.ntls_log(42) end, "expected syslog text")
end)
