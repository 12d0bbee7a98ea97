-- The client side through dhsm: vtl and lunacm (the estate's stand-ins) run
-- by dhsm.proc, Chrystoki.conf read by dhsm.chrystoki, certificates moved
-- by dhsm.luna — the operator's certificate exchange and HA groups.
local t = require "dhsm.test"
local chrystoki = require "dhsm.chrystoki"
local luna = require "dhsm.luna"
local proc = require "dhsm.proc"
local net = require "dhsm.net"

-- run a client tool with the client install's configuration (questions:
-- the confirmations its stdin answers, dhsm.proc)
local function tool(estate, name, args, stdin, questions)
  local argv = { estate.inventory.client[name] }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local conf_dir = estate.inventory.client.chrystoki_conf:match("^(.*)/[^/]*$")
  return proc.run { argv = argv, env = { ChrystokiConfigurationPath = conf_dir }, stdin = stdin, timeout = 30,
    questions = questions }
end

-- lunacm's confirmation of partition init, as luna-field.md 7.1 prints it
local INIT_CONFIRMATION = "Type 'proceed' to continue, or 'quit' to quit now"

-- a lunacm command that logs in, through the failed-login guard
local function lunacm_login(estate, args, password)
  local argv = { estate.inventory.client.lunacm }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local conf_dir = estate.inventory.client.chrystoki_conf:match("^(.*)/[^/]*$")
  return proc.lunacm_login { argv = argv, env = { ChrystokiConfigurationPath = conf_dir }, password = password,
    timeout = 30 }
end

t.test("the certificate exchange from an empty client, through dhsm", function()
  local estate = require("support.estate").start { args = "--appliances 1" }
  local client = estate.inventory.client
  local entry = estate.inventory:hsm("hsm1")
  local r = tool(estate, "vtl", { "verify" })
  t.ok(r.stdout:find("Error: There are no registered servers", 1, true), r.stdout)
  r = tool(estate, "vtl", { "createCert", "-n", "web1" })
  t.eq(r.status, 0, r.stdout .. r.stderr)
  local conf = chrystoki.load(client.chrystoki_conf)
  local cert = conf:client_cert()
  t.ok(cert.cert:find("web1%.pem$"), cert.cert)
  local dir = t.tmpdir()
  local s <close> = luna.open(entry)
  s:get("server.pem", dir .. "/hsm1.pem")
  r = tool(estate, "vtl", { "addServer", "-n", "127.0.0.1", "-c", dir .. "/hsm1.pem" })
  t.ok(r.stdout:find("New server 127.0.0.1 successfully added to server list.", 1, true), r.stdout)
  t.eq(chrystoki.load(client.chrystoki_conf):servers()[1].port, entry.ntls_port)
  s:put(cert.cert, "127.0.0.1.pem")
  s:must("client register -client web1 -ip 127.0.0.1")
  s:login_so(estate:secret("hsm1_so_password"))
  s:must("partition create -partition par1 -force")
  s:must("client assignPartition -client web1 -partition par1")
  r = tool(estate, "vtl", { "verify" })
  t.ok(r.stdout:find("The following Luna SA Slots/Partitions were found:", 1, true), r.stdout)
  t.ok(not r.stdout:find("par1", 1, true), "7.2: no label before lunacm's partition init\n" .. r.stdout)
  -- the Partition SO initialises it from the client (luna-field.md 7.1): password and domain on stdin,
  -- and the proceed of the one confirmation the call names
  local init = { "-c", "partition", "init", "-label", "par1", "-slot", "0" }
  local answers = { "Pso-Pass-1\n", "Pso-Pass-1\n", "dom-1\n", "dom-1\n", "proceed\n" }
  t.raises(function() tool(estate, "lunacm", init, answers) end, "does not name")
  t.raises(function() tool(estate, "lunacm", init, answers, { 5 }) end, "questions%[1%]: expected a confirmation as lunacm prints it")
  t.raises(function() tool(estate, "vtl", { "verify" }, nil, { INIT_CONFIRMATION }) end,
    "'questions' is for lunacm runs only")
  local err = t.raises(function()
    tool(estate, "lunacm", init, { "Pso-Pass-1\n", "Pso-Pass-1\n", "dom-1\n", "dom-1\n", "quit\n" })
  end, "UnexpectedQuestion")
  t.ok(err.message:find(('asked "%s", where the call answers nothing'):format(INIT_CONFIRMATION), 1, true), err.message)
  err = t.raises(function() tool(estate, "lunacm", init, answers, { "Type 'proceed' to erase it, or 'quit' to quit now" }) end,
    "UnexpectedQuestion")
  t.ok(err.message:find(('asked "%s", where the call answers "Type \'proceed\' to erase it'):format(INIT_CONFIRMATION),
    1, true), err.message)
  r = tool(estate, "lunacm", init, answers, { INIT_CONFIRMATION })
  t.ok(r.stdout:find("Command Result : No Error", 1, true), r.stdout)
  r = tool(estate, "vtl", { "verify" })
  t.ok(r.stdout:find("par1", 1, true), r.stdout)
  -- the same path, probed by dhsm.net with the client's own files
  local probe = net.tls { host = "127.0.0.1", port = entry.ntls_port, ca_file = cert.ca,
    client_cert = cert.cert, client_key = cert.key, client_key_passphrase = client.key_passphrase, server_name = "hsm1" }
  t.ok(require("dhsm.util").read_file(cert.key):find("BEGIN ENCRYPTED PRIVATE KEY", 1, true), "vtl wrote an encrypted key")
  t.eq({ probe.ok, probe.verify.ok }, { true, true })
  -- the appliance certificate is regenerated: verify fails until re-exchanged
  s:must("sysconf regenCert -force")
  s:must("service restart ntls")
  r = tool(estate, "vtl", { "verify" })
  t.ok(r.stdout:find("Error: Unable to find any Luna SA slots/partitions", 1, true), r.stdout)
  s:get("server.pem", dir .. "/hsm1-new.pem")
  t.ok(not net.same_cert(dir .. "/hsm1.pem", dir .. "/hsm1-new.pem"))
  tool(estate, "vtl", { "deleteServer", "-n", "127.0.0.1" })
  tool(estate, "vtl", { "addServer", "-n", "127.0.0.1", "-c", dir .. "/hsm1-new.pem" })
  r = tool(estate, "vtl", { "verify" })
  t.ok(r.stdout:find("par1", 1, true), r.stdout)
end, { timeout = 90 })

t.test("an HA group made with lunacm, read through dhsm.chrystoki; a member drops and is recovered", function()
  local estate = require("support.estate").start { args = "--appliances 2 --client-ready" }
  local client = estate.inventory.client
  local co = estate:secret("hsm1_par1_co_pin")
  local serial = function(name)
    local r = tool(estate, "lunacm", { "-c", "slot", "list" })
    return r.stdout:match("Label %->%s+" .. name .. "%-par1%s+Serial Number %->%s+(%d+)")
  end
  local s1, s2 = serial("hsm1"), serial("hsm2")
  t.ok(s1 and s2, "both partitions are slots")
  local r = lunacm_login(estate, { "-c", "hagroup", "createGroup", "-label", "myHA", "-serialNumber", s1 }, co)
  t.eq({ r.status, r.ok }, { 0, true }, r.stdout)
  r = lunacm_login(estate, { "-c", "hagroup", "addMember", "-group", "myHA", "-serialNumber", s2 }, co)
  t.eq({ r.status, r.ok }, { 0, true }, r.stdout)
  tool(estate, "lunacm", { "-c", "hagroup", "retry", "-count", "0" })
  local groups = chrystoki.load(client.chrystoki_conf):ha_groups()
  t.eq({ #groups, groups[1].label, #groups[1].members }, { 1, "myHA", 2 })
  t.eq(chrystoki.load(client.chrystoki_conf):ha_config().reconnAtt, 0)
  estate:appliance("hsm2", "down")
  t.eventually(function()                 -- the client's view follows the appliance
    r = tool(estate, "lunacm", { "-c", "hagroup", "listGroups" }, "\n")
    return r.stdout:find("down", 1, true)
  end, "hsm2's member down")
  estate:appliance("hsm2", "up")
  dhsm.sleep(0.3)
  r = tool(estate, "lunacm", { "-c", "hagroup", "listGroups" }, "\n")
  t.ok(r.stdout:find("down", 1, true), "no retry count: it stays out until recovered\n" .. r.stdout)
  r = tool(estate, "lunacm", { "-c", "hagroup", "recover", "-group", "myHA" })
  t.eq({ r.ok, r.status }, { true, 0 }, r.stdout)
  r = tool(estate, "lunacm", { "-c", "hagroup", "listGroups" }, "\n")
  t.ok(not r.stdout:find("down", 1, true), r.stdout)
end, { timeout = 90 })

t.test("the HA probe refuses a client install whose trusted certificates cannot be read; ntls.diagnose's handshake "
  .. "says so", function()
  local estate = require("support.estate").start { args = "--appliances 1 --client-ready" }
  local client = estate.inventory.client
  local conf = chrystoki.load(client.chrystoki_conf)
  local dir = t.tmpdir()
  local corrupt = dir .. "/corrupt-CAFile.pem"       -- a certificate's armour around what is none
  t.write(corrupt, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
  for _, path in ipairs { dir .. "/missing-CAFile.pem", corrupt } do
    conf:set("LunaSA Client", "ServerCAFile", path)
    conf:save()
    local entry = estate.inventory:hsm("hsm1")
    local c = require("dhsm.client.ha").client(estate.inventory)
    local err = t.raises(function() c:probe(entry) end, "usage")
    t.ok(err.message:find("cannot be read (ServerCAFile " .. path, 1, true), err.message)
    local ntls = require "dhsm.client.ntls"
    local tls = ntls.handshake(ntls.client(estate.inventory), entry, { strict = true })
    t.eq({ tls.ok, tls.reason }, { false, "the client trusts no server certificate (" .. path .. " cannot be read)" })
  end
end, { timeout = 90 })
