-- The ntls-reexchange playbook against the simulated estate: a regenerated
-- appliance certificate (with and without an NTLS restart), an unregistered
-- client, a blocked port.  What happened is read from the estate: the
-- client's trusted certificates (CAFile.pem), the appliance's registered
-- clients and NTLS pid (/_sim state), vtl verify.
local t = require "dhsm.test"
local cjson = require "cjson"
local luna = require "dhsm.luna"
local net = require "dhsm.net"
local proc = require "dhsm.proc"
local util = require "dhsm.util"
local support = require "support.estate"

local q = util.shell_quote
local e = support.start { args = "--appliances 1 --client-ready" }
local client = e.inventory.client
local ca = client.chrystoki_conf:match("^(.*)/[^/]*$") .. "/cert/server/CAFile.pem"

local function run(args, extra)
  return e:run("run ntls-reexchange -e hsm=hsm1 " .. args, extra)
end

local function shell(line)
  local s <close> = luna.open(e.inventory:hsm("hsm1"))
  if line:find("^client delete") or line:find("^sysconf") then s:login_so(e:secret("hsm1_so_password")) end
  return s:must(line)
end

local function vtl_verify()
  local r = proc.run { argv = { client.vtl, "verify" }, env = { ChrystokiConfigurationPath = client.chrystoki_conf:match("^(.*)/[^/]*$") } }
  return r.stdout:find("The following Luna SA Slots/Partitions were found:", 1, true) ~= nil and r.stdout:find("hsm1-par1", 1, true) ~= nil
end

local function appliance() return e:state().appliances.hsm1 end

-- the appliance's server.pem is among the certificates the client trusts
local function trusts_server()
  local dir = t.tmpdir()
  local s <close> = luna.open(e.inventory:hsm("hsm1"))
  s:get("server.pem", dir .. "/now.pem")
  for _, c in ipairs(net.certs(ca)) do
    if net.same_cert(c, dir .. "/now.pem") then return true end
  end
  return false
end

t.test("healthy: diagnosed, nothing to fix, verified", function()
  local before = util.read_file(ca)
  local r = run("--json")
  t.eq(r.status, 0, r.stderr)
  local doc = cjson.decode(r.stdout)
  t.eq(#doc.steps, 2, "diagnose and verify only")
  t.eq(doc.steps[1].result.findings, {})
  t.ok(r.stderr:find('syslog after: .*NTLS Client "dhsm%-client" Connection instance added'), r.stderr)
  t.eq(util.read_file(ca), before)
end, { timeout = 120 })

t.test("regenerated certificate, NTLS restarted: --check plans the re-exchange and changes nothing; the run fixes it", function()
  shell("sysconf regenCert -force")
  shell("service restart ntls")
  t.ok(not vtl_verify(), "the stale certificate fails")
  local before = util.read_file(ca)
  local r = run("--check")
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("server_changed", 1, true), r.stderr)
  t.ok(r.stderr:find("would run %S+/vtl deleteServer %-n"), r.stderr)
  t.ok(r.stderr:find("tlsv1 alert unknown ca", 1, true), "the guide's syslog line is shown\n" .. r.stderr)
  t.eq(util.read_file(ca), before, "--check changed nothing")
  local pid = appliance().ntls.pid
  r = run("")
  t.eq(r.status, 0, r.stderr)
  t.ok(not r.stderr:find("restart NTLS", 1, true), "no restart was needed\n" .. r.stderr)
  t.ok(trusts_server() and vtl_verify(), "re-exchanged")
  t.eq(appliance().ntls.pid, pid, "NTLS not restarted")
end, { timeout = 120 })

t.test("regenerated, NTLS not restarted: the restart is a confirmed step; refused without a terminal, done with --yes", function()
  shell("sysconf regenCert -force")
  local r = run("")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("NotConfirmed", 1, true) or r.stderr:find("no terminal", 1, true), r.stderr)
  local pid = appliance().ntls.pid
  r = run("--yes")
  t.eq(r.status, 0, r.stderr)
  t.ok(appliance().ntls.pid ~= pid, "NTLS restarted")
  t.ok(trusts_server() and vtl_verify(), "re-exchanged")
end, { timeout = 120 })

t.test("client unknown to the appliance: uploaded, registered, its partition assigned", function()
  shell("client delete -client dhsm-client -force")
  t.eq(appliance().clients["dhsm-client"], nil)
  local r = run("")
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("client_unknown", 1, true), r.stderr)
  t.eq(appliance().clients["dhsm-client"].partitions, { "par1" })
  t.ok(vtl_verify())
  -- the partitions named with -e partitions= (a list, each name checked before the run)
  shell("client delete -client dhsm-client -force")
  t.eq(run("-e partitions=par1,par1").status, 2, "a partition named twice is refused before anything")
  r = run("-e partitions=par1")
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("register client dhsm-client on hsm1 with partition(s) par1", 1, true), r.stderr)
  t.eq(appliance().clients["dhsm-client"].partitions, { "par1" })
end, { timeout = 120 })

t.test("a stale registration (another certificate under the client's name): replaced as a confirmed step", function()
  local dir = t.tmpdir()
  local r = proc.run { argv = { "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj",
    "/CN=dhsm-client", "-keyout", dir .. "/other.key", "-out", dir .. "/other.pem" } }
  t.eq(r.status, 0, r.stderr)
  shell("client delete -client dhsm-client -force")
  do
    local s <close> = luna.open(e.inventory:hsm("hsm1"))
    s:put(dir .. "/other.pem", "127.0.0.1.pem")
    s:must("client register -client dhsm-client -ip 127.0.0.1")
    s:must("client assignPartition -client dhsm-client -partition par1")
  end
  local stale = appliance().clients["dhsm-client"].fingerprint
  t.ok(not vtl_verify(), "the appliance rejects the client's real certificate")
  r = run("")
  t.eq(r.status, 3, "replacing a registration is confirmed\n" .. r.stderr)
  t.ok(r.stderr:find("client_stale", 1, true), r.stderr)
  t.ok(r.stderr:find("certificate verify failed", 1, true), "the guide's syslog line\n" .. r.stderr)
  t.eq(appliance().clients["dhsm-client"].fingerprint, stale, "refused: nothing changed")
  r = run("--yes")
  t.eq(r.status, 0, r.stderr)
  t.ok(appliance().clients["dhsm-client"].fingerprint ~= stale, "the client's own certificate registered")
  t.eq(appliance().clients["dhsm-client"].partitions, { "par1" }, "its partition assigned again")
  t.ok(vtl_verify())
end, { timeout = 120 })

t.test("NTLS port blocked: said, and nothing changed", function()
  e:appliance("hsm1", { ntls = "drop" })
  t.cleanup(function() e:appliance("hsm1", { ntls = "open" }) end)
  local before = { util.read_file(ca), cjson.encode(appliance().clients) }
  local r = run("")
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find("net/NtlsPortClosed: TCP %d+ on hsm1: timeout"), r.stderr)
  t.eq({ util.read_file(ca), cjson.encode(appliance().clients) }, before)
end, { timeout = 120 })

-- The client certificate aged by the estate (same key, re-issued to end
-- days_left days from now; the appliance's registration follows).
local function age_client_cert(days_left)
  return e:control("POST", "/client/cert/age", { days_left = days_left })
end

local function client_changes(from)
  return e:count_since(from, { create = "^vtl: createCert %-name dhsm%-client %-> 0$",
    delete = "^hsm1 lunash: client delete %-client dhsm%-client %-force %-> 0$",
    register = "^hsm1 lunash: client register %-client dhsm%-client ", assign = "^hsm1 lunash: client assignPartition " })
end

local function client_cert() return net.cert(e.dir .. "/client/cert/client/dhsm-client.pem") end

t.test("expired client certificate: --check plans the renewal; refused unconfirmed; renewed, re-registered with --yes", function()
  age_client_cert(-3)
  t.ok(client_cert().days_left < 0 and not vtl_verify(), "expired: NTLS refuses it")
  local before = { util.read_file(ca), cjson.encode(appliance().clients), client_cert().sha256 }
  local from = #e:log()
  local r = run("--check")
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("client_expired", 1, true) and r.stderr:find("would run %S+/vtl createCert %-n dhsm%-client"), r.stderr)
  -- the renewal only described, the appliance still holds the old certificate: the plan replaces the registration
  for _, change in ipairs { "would run 'client delete -client dhsm-client -force' on hsm1", "would copy ",
      "would run 'client register -client dhsm-client", "would run 'client assignPartition -client dhsm-client" } do
    t.ok(r.stderr:find(change, 1, true), change .. " planned: " .. r.stderr)
  end
  r = run("")
  t.eq(r.status, 3, "renewing replaces the client's key: confirmed\n" .. r.stderr)
  t.eq({ util.read_file(ca), cjson.encode(appliance().clients), client_cert().sha256 }, before, "nothing changed")
  r = run("--yes")
  t.eq(r.status, 0, r.stderr)
  t.eq(client_changes(from), { create = 1, delete = 1, register = 1, assign = 1 })
  local now = client_cert()
  t.ok(now.days_left > 365, "a new certificate: " .. now.not_after)
  t.ok(util.read_file(e.dir .. "/client/cert/client/dhsm-clientKey.pem"):find("BEGIN ENCRYPTED PRIVATE KEY", 1, true),
    "its key written encrypted")
  t.eq({ appliance().clients["dhsm-client"].fingerprint, appliance().clients["dhsm-client"].partitions },
    { (now.sha256:gsub(":", ""):lower()), { "par1" } }, "the new certificate registered, its partition assigned")
  t.ok(vtl_verify())
end, { timeout = 120 })

t.test("a client certificate about to expire: a warning, kept; renewed with renew_expiring=true", function()
  age_client_cert(10)
  local sha = client_cert().sha256
  local r = run("")
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("client_expiring: the client certificate .* expires in %d+ days"), r.stderr)
  t.eq(client_cert().sha256, sha, "kept without renew_expiring")
  local from = #e:log()
  r = run("-e renew_expiring=true --yes")
  t.eq(r.status, 0, r.stderr)
  t.ok(client_cert().sha256 ~= sha and client_cert().days_left > 365, "renewed")
  t.eq(client_changes(from), { create = 1, delete = 1, register = 1, assign = 1 })
  t.ok(vtl_verify())
end, { timeout = 120 })
