-- The kill matrix of ntls-reexchange: `dhsm run ntls-reexchange --yes`
-- SIGKILLed in each step that changes something (the NTLS restart, the
-- server certificate's re-exchange, the replaced registration), then
-- resumed (--resume) until it finishes.  What reached the estate is counted
-- from its own log (DIR/estate.log: LunaSH commands, and the client tools'
-- commands): each change exactly once; the end state is read from the
-- estate: the registration holds the client's own certificate with its
-- partition, and vtl verify lists it.
local t = require "dhsm.test"
local luna = require "dhsm.luna"
local net = require "dhsm.net"
local proc = require "dhsm.proc"
local Estate = require "support.estate"
local killrun = require "support.killrun"

local ARGS = { "-e", "hsm=hsm1", "--yes" }

-- hsm1 regenerated its certificate (NTLS not restarted) and holds a stale
-- registration: another certificate under the client's name.
local function broken_exchange()
  local e = Estate.start { args = "--appliances 1 --client-ready" }
  local dir = t.tmpdir()
  local r = proc.run { argv = { "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj",
    "/CN=dhsm-client", "-keyout", dir .. "/other.key", "-out", dir .. "/other.pem" } }
  t.eq(r.status, 0, r.stderr)
  local s <close> = luna.open(e.inventory:hsm("hsm1"))
  s:login_so(e:secret("hsm1_so_password"))
  s:must("client delete -client dhsm-client -force")
  s:put(dir .. "/other.pem", "127.0.0.1.pem")
  s:must("client register -client dhsm-client -ip 127.0.0.1")
  s:must("client assignPartition -client dhsm-client -partition par1")
  s:must("sysconf regenCert -force")
  return e
end

-- how often each change reached the estate, from the log lines after `from`
local CHANGES = {
  restart = "^hsm1 lunash: service restart ntls %-> 0$",
  delete_server = "^vtl: deleteServer .* %-> 0$",
  add_server = "^vtl: addServer .* %-> 0$",
  delete_client = "^hsm1 lunash: client delete %-client dhsm%-client %-force %-> 0$",
  register = "^hsm1 lunash: client register %-client dhsm%-client %-ip 127%.0%.0%.1 %-> 0$",
  assign = "^hsm1 lunash: client assignPartition %-client dhsm%-client %-partition par1 %-> 0$",
}
local function sent(e, from) return e:count_since(from, CHANGES) end

local function vtl_verify(e)
  local client = e.inventory.client
  local r = proc.run { argv = { client.vtl, "verify" }, env = { ChrystokiConfigurationPath = client.chrystoki_conf:match("^(.*)/[^/]*$") } }
  return r.stdout:find("hsm1-par1", 1, true) ~= nil
end

-- Each point where a resume could send a change twice or skip one.
local MATRIX = {
  killrun.after_command("service restart ntls"),
  killrun.after_command("deleteServer"),                     -- the new certificate not yet added
  killrun.after_command("client delete", true),              -- the stale registration going
  killrun.after_command("client register"),                  -- registered, its partition not yet assigned
}

for _, point in ipairs(MATRIX) do
  t.test("killed " .. point.where .. ": resumed, each change sent once, the exchange repaired", function()
    local e = broken_exchange()
    t.ok(not vtl_verify(e), "broken before the run")
    local from = #e:log()
    local p <close> = killrun.spawn(e, "ntls-reexchange", ARGS)
    killrun.kill_at(e, p, point)
    local statuses = killrun.resume(e, "ntls-reexchange", ARGS)
    t.eq(statuses[#statuses], 0, "the last resume finished: " .. table.concat(statuses, ","))
    t.eq(sent(e, from), { restart = 1, delete_server = 1, add_server = 1, delete_client = 1, register = 1, assign = 1 })
    local registered = e:state().appliances.hsm1.clients["dhsm-client"]
    local mine = net.cert(e.dir .. "/client/cert/client/dhsm-client.pem")
    t.eq({ registered.fingerprint == (mine.sha256:gsub(":", ""):lower()), registered.partitions },
      { true, { "par1" } }, "the client's own certificate, with its partition")
    t.ok(vtl_verify(e), "vtl verify lists hsm1-par1")
    t.eq(killrun.run_state(e), "ok")
  end, { timeout = 240 })
end
