-- The kill matrix of ha-recover: `dhsm run ha-recover` SIGKILLed in each
-- step that changes the client's HA state (recover, auto-recovery, which is
-- two lunacm commands, synchronize), then resumed (--resume) until it
-- finishes.  What reached the estate is counted from its own log
-- (DIR/estate.log: the client tools write a line per command): each lunacm
-- change exactly once; and the end state is read from the estate: every
-- member alive (the client daemon), Chrystoki.conf's settings, the objects
-- on every member token.
local t = require "dhsm.test"
local chrystoki = require "dhsm.chrystoki"
local pkcs11 = require "dhsm.pkcs11"
local proc = require "dhsm.proc"
local Estate = require "support.estate"
local killrun = require "support.killrun"

-- An estate with HA group myHA over hsm1 and hsm2, hsm2's member down
-- while its appliance answers again, key k1 on hsm1 only, retry count 0.
local function broken_group()
  local e = Estate.start { args = "--appliances 2 --client-ready" }
  local client = e.inventory.client
  local env = { ChrystokiConfigurationPath = client.chrystoki_conf:match("^(.*)/[^/]*$") }
  local serials = {}
  for _, s in ipairs(proc.lunacm_slots { argv = { client.lunacm }, env = env }) do
    serials[s.label:match("^(hsm%d)%-par1$")] = s.serial
  end
  for i, words in ipairs { { "createGroup", "-label", "myHA", "-serialNumber", serials.hsm1 },
    { "addMember", "-group", "myHA", "-serialNumber", serials.hsm2 } } do
    local r = proc.lunacm_login { argv = { client.lunacm, "-c", "hagroup", table.unpack(words) }, env = env,
      password = e:secret("hsm1_par1_co_pin"), timeout = 60 }
    t.ok(r.ok, "group step " .. i .. ": " .. r.stdout)
  end
  e:appliance("hsm2", "down")
  t.eventually(function() return e:control("GET", "/client").groups[1].members[2].status == "down" end, "hsm2 down")
  e:appliance("hsm2", "up")
  local lib <close> = pkcs11.load(client.pkcs11_lib, { env = { SOFTHSM2_CONF = client.softhsm_conf,
    ChrystokiConfigurationPath = client.chrystoki_conf:match("^(.*)/") } })
  local s <close> = lib:open { label = "hsm1-par1", rw = true }
  s:login("user", e:secret("hsm1_par1_co_pin"))
  s:generate_aes { label = "k1", sensitive = false, extractable = true }
  s:logout()
  return e
end

local function args(e)
  return { "-e", "co_password=file:" .. e.dir .. "/secrets/hsm1_par1_co_pin", "-e", "retry_interval=120" }
end

-- {"class:label ...", ...} per member token, over PKCS#11
local function objects(e)
  local client = e.inventory.client
  local lib <close> = pkcs11.load(client.pkcs11_lib, { env = { SOFTHSM2_CONF = client.softhsm_conf,
    ChrystokiConfigurationPath = client.chrystoki_conf:match("^(.*)/") } })
  local out = {}
  for _, name in ipairs { "hsm1", "hsm2" } do
    local s <close> = lib:open { label = name .. "-par1" }
    s:login("user", e:secret(name .. "_par1_co_pin"))
    local keys = {}
    for i, h in ipairs(s:find {}) do keys[i] = s:attributes(h, { "label" }).label end
    s:logout()
    out[name] = table.concat(keys, " ")
  end
  return out
end

-- how often each change reached the estate, from the log lines after `from`
local function sent(e, from)
  local patterns = {}
  for _, what in ipairs { "recover", "retry", "interval", "synchronize" } do
    patterns[what] = "^lunacm: hagroup " .. what .. " .*%-> No Error$"
  end
  return e:count_since(from, patterns)
end

-- Each point where a resume could send a change twice or skip one: a
-- command answered but its step not recorded as done, a step half done
-- (retry sent, interval not), a step begun (its done= check decides).
local MATRIX = {
  killrun.after_command("hagroup recover"),
  killrun.after_command("hagroup retry"),
  killrun.at_step("synchronize group myHA"),
  killrun.after_command("hagroup synchronize"),
}

for _, point in ipairs(MATRIX) do
  t.test("killed " .. point.where .. ": resumed, each change sent once, the group healthy", function()
    local e = broken_group()
    local from = #e:log()
    local p <close> = killrun.spawn(e, "ha-recover", args(e))
    killrun.kill_at(e, p, point)
    local statuses = killrun.resume(e, "ha-recover", args(e))
    t.eq(statuses[#statuses], 0, "the last resume finished: " .. table.concat(statuses, ","))
    t.eq(sent(e, from), { recover = 1, retry = 1, interval = 1, synchronize = 1 })
    local members = {}
    for _, m in ipairs(e:control("GET", "/client").groups[1].members) do members[#members + 1] = m.status end
    t.eq(members, { "alive", "alive" })
    local cfg = chrystoki.load(e.inventory.client.chrystoki_conf):ha_config()
    t.eq({ cfg.reconnAtt, cfg.AutoReconnectInterval }, { -1, 120 })
    t.eq(objects(e), { hsm1 = "k1", hsm2 = "k1" })
    t.eq(killrun.run_state(e), "ok")
  end, { timeout = 240 })
end

t.test("interrupted after hagroup recover: the printed hint, typed as it reads (no co_password, no inventory), finishes",
  function()
  local e = broken_group()
  local from = #e:log()
  local p <close> = killrun.spawn(e, "ha-recover", args(e))
  killrun.kill_at(e, p, killrun.after_command("hagroup recover"), 2)
  local r = killrun.typed(e, p:stderr())
  t.eq(r.status, 0, r.stderr)
  t.eq(sent(e, from), { recover = 1, retry = 1, interval = 1, synchronize = 1 })
  t.eq(objects(e), { hsm1 = "k1", hsm2 = "k1" })
  t.eq(killrun.run_state(e), "ok")
end, { timeout = 240 })
