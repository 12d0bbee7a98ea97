-- The ha-recover playbook against the simulated estate: an HA group of three
-- members whose appliance drops and comes back, a retry count of 0, objects
-- on one member only, a dead appliance, members in different cloning
-- domains (which only lunacm's synchronize warning tells).  What happened is
-- read from the estate: the client daemon's member state (/_sim/client),
-- Chrystoki.conf, the tokens over PKCS#11, the client tools' lines in the
-- estate's log, the partitions' cloning domains in its state.
local t = require "dhsm.test"
local cjson = require "cjson"
local chrystoki = require "dhsm.chrystoki"
local pkcs11 = require "dhsm.pkcs11"
local proc = require "dhsm.proc"
local util = require "dhsm.util"
local support = require "support.estate"

local q = util.shell_quote
local e = support.start { args = "--appliances 3 --client-ready" }
local client = e.inventory.client
local co_file = e.dir .. "/secrets/hsm1_par1_co_pin"
local co = e:secret("hsm1_par1_co_pin")

local function lunacm(args)
  local argv = { client.lunacm }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return { argv = argv, env = { ChrystokiConfigurationPath = client.chrystoki_conf:match("^(.*)/[^/]*$") }, timeout = 60 }
end

local serials = {}
for _, s in ipairs(proc.lunacm_slots(lunacm {})) do serials[s.label:match("^(hsm%d)%-par1$") or s.label] = s.serial end

local function login(args)
  local o = lunacm(args)
  o.password = co
  local r = proc.lunacm_login(o)
  t.ok(r.ok, r.stdout)
end
login { "-c", "hagroup", "createGroup", "-label", "myHA", "-serialNumber", serials.hsm1 }
login { "-c", "hagroup", "addMember", "-group", "myHA", "-serialNumber", serials.hsm2 }
login { "-c", "hagroup", "addMember", "-group", "myHA", "-serialNumber", serials.hsm3 }

local function run(args)
  return e:run(("run ha-recover -e co_password=file:%s %s"):format(q(co_file), args))
end

-- the client daemon's view: {serial = "alive" | "down"}
local function members()
  local out = {}
  for _, g in ipairs(e:control("GET", "/client").groups) do
    for _, m in ipairs(g.members) do out[m.serial] = m.status end
  end
  return out
end

-- every member token's objects, as "class:label", read over PKCS#11
local function objects()
  local lib <close> = pkcs11.load(client.pkcs11_lib, { env = { SOFTHSM2_CONF = client.softhsm_conf,
    ChrystokiConfigurationPath = client.chrystoki_conf:match("^(.*)/") } })
  local out = {}
  for _, name in ipairs { "hsm1", "hsm2", "hsm3" } do
    local s <close> = lib:open { label = name .. "-par1" }
    s:login("user", e:secret(name .. "_par1_co_pin"))
    local keys = {}
    for i, h in ipairs(s:find {}) do
      local a = s:attributes(h, { "class", "label" })
      keys[i] = a.class .. ":" .. a.label
    end
    table.sort(keys)
    out[name] = table.concat(keys, " ")
    s:logout()
  end
  return out
end

local function put_key(name, label)
  local lib <close> = pkcs11.load(client.pkcs11_lib, { env = { SOFTHSM2_CONF = client.softhsm_conf,
    ChrystokiConfigurationPath = client.chrystoki_conf:match("^(.*)/") } })
  local s <close> = lib:open { label = name .. "-par1", rw = true }
  s:login("user", e:secret(name .. "_par1_co_pin"))
  s:generate_aes { label = label, sensitive = false, extractable = true }
  s:logout()
end

local function drop(name)
  e:appliance(name, "down")
  t.eventually(function() return members()[serials[name]] == "down" end, name .. "'s member down")
end

local function conf_text()
  return util.read_file(client.chrystoki_conf)
end

-- the synchronize runs lunacm logged since line `from` of the estate's log, with their Command Result
local function syncs(from)
  local out, log = {}, e:log()
  for i = from + 1, #log do out[#out + 1] = log[i]:match("^lunacm: hagroup synchronize %-group myHA %-> (.*)$") end
  return out
end

local function pin(name) return (util.read_file(e.dir .. "/secrets/" .. name):gsub("%s+$", "")) end

-- partition par1 of appliance `name` initialised again in cloning domain `domain` (its PINs kept, its objects gone)
local function set_domain(name, domain)
  e:control("POST", ("/appliances/%s/partitions/par1/init"):format(name), { domain = domain,
    so_pin = pin(name .. "_par1_so_pin"), co_pin = pin(name .. "_par1_co_pin") })
end

-- what the plan and the run say of the cloning domains
local UNKNOWN = "the members' cloning domains are not shown by any appliance output, so they are unknown until "
  .. "hagroup synchronize tells"
local SYNC_UNKNOWN = "the members' cloning domains are unknown: should they differ, synchronize reports a conflict"
-- the plan's line for the synchronize, word for word: conditional on the comparison, and on the domains
local PLANNED_SYNC = "would synchronize group myHA as it is, only if the members' objects differ (a plan does not read "
  .. "them: that is a Crypto Officer login); " .. SYNC_UNKNOWN .. ", and the run stops there with the guide's remedy\n"

t.test("--check: plans the recovery, the retry count and the synchronize; changes nothing", function()
  drop("hsm2")
  e:appliance("hsm2", "up")
  put_key("hsm1", "k1")
  local before = { members(), conf_text(), objects() }
  local r = run("--check")
  t.eq(r.status, 0, r.stdout .. r.stderr)
  t.ok(r.stderr:find("would run %S+/lunacm %-c hagroup recover %-group myHA"), r.stderr)
  t.ok(r.stderr:find("would run %S+/lunacm %-c hagroup retry %-count %-1"), r.stderr)
  t.ok(r.stderr:find("would log in as Crypto Officer on partitions", 1, true), r.stderr)
  t.ok(r.stderr:find(UNKNOWN, 1, true), r.stderr)
  t.ok(not r.stderr:find("would if", 1, true) and not r.stderr:find("will report", 1, true), r.stderr)
  t.ok(r.stderr:find(PLANNED_SYNC, 1, true),
    "the synchronize's plan line says so, and that it depends on the comparison the plan cannot make\n" .. r.stderr)
  t.eq({ members(), conf_text(), objects() }, before, "nothing changed")
end, { timeout = 180 })

t.test("happy path: the member rejoins, auto-recovery is set, the objects are cloned; a second run does nothing", function()
  t.eq(members()[serials.hsm2], "down", "left down by the --check test")
  local from = #e:log()
  local r = run("--json")
  t.eq(r.status, 0, r.stdout .. r.stderr)
  local doc = cjson.decode(r.stdout)
  t.eq(doc.outcome, "ok")
  t.eq(members(), { [serials.hsm1] = "alive", [serials.hsm2] = "alive", [serials.hsm3] = "alive" })
  local cfg = chrystoki.load(client.chrystoki_conf):ha_config()
  t.eq({ cfg.reconnAtt, cfg.AutoReconnectInterval }, { -1, 60 })
  local o = objects()
  t.eq({ o.hsm1, o.hsm2, o.hsm3 }, { "secret_key:k1", "secret_key:k1", "secret_key:k1" }, "cloned to every member")
  t.eq(syncs(from), { "No Error" }, "one synchronize: members in one cloning domain, no conflict")
  t.ok(r.stderr:find("synchronizing group myHA: " .. SYNC_UNKNOWN .. ", and the run stops there with the guide's remedy",
    1, true), "the run says it synchronizes members of unknown domains\n" .. r.stderr)
  t.ok(not r.stderr:find("will report", 1, true) and not r.stderr:find("would if", 1, true), r.stderr)
  t.ok(not r.stderr:find("CloningConflict", 1, true), r.stderr)
  local conf_before = conf_text()
  from = #e:log()
  r = run("")
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("every member holds the same objects", 1, true), r.stderr)
  t.ok(not r.stderr:find("recover ", 1, true), "nothing to recover\n" .. r.stderr)
  t.ok(r.stderr:find("already done", 1, true), r.stderr)
  t.eq(conf_text(), conf_before)
  t.eq(objects().hsm2, "secret_key:k1")
  t.eq(syncs(from), {}, "the members hold the same objects: not synchronized")
  t.ok(r.stderr:find("group myHA is not synchronized (its members hold the same objects): its members' cloning "
    .. "domains stay unknown", 1, true), r.stderr)
end, { timeout = 180 })

t.test("a member whose appliance does not answer is left, with the probe's reason; the rest goes on; goal not reached, exit 1", function()
  drop("hsm3")
  put_key("hsm2", "k2")
  local r = run("")
  t.eq(r.status, 1, "a member still out: the goal is not reached\n" .. r.stderr)
  t.ok(r.stderr:find((": goal not reached: group myHA: member %s (hsm3) still out, its appliance does not answer ("):format(
    serials.hsm3), 1, true), "the outcome line names the member\n" .. r.stderr)
  t.ok(not r.stderr:find("--resume", 1, true), "it ran to its end: no resume hint\n" .. r.stderr)
  t.ok(r.stderr:find(serials.hsm3 .. " on hsm3 is down and its appliance does not answer %(TCP %d+ timeout"), r.stderr)
  t.eq(members()[serials.hsm3], "down", "left as it is")
  e:appliance("hsm3", "up")
  local got = objects()
  t.eq({ got.hsm1, got.hsm2 }, { "secret_key:k1 secret_key:k2", "secret_key:k1 secret_key:k2" }, "the answering members synchronized")
  t.eq(got.hsm3, "secret_key:k1", "the dead one untouched")
  r = run("")                                  -- back: recovered and synchronized
  t.eq(r.status, 0, r.stderr)
  t.eq(members()[serials.hsm3], "alive")
  t.eq(objects().hsm3, "secret_key:k1 secret_key:k2")
end, { timeout = 180 })

t.test("members in different cloning domains: the plan says they are unknown; the run synchronizes, lunacm warns, "
  .. "and it stops there with the members named and the guide's remedy", function()
  set_domain("hsm3", "another-domain")
  put_key("hsm1", "k3")
  local before, conf_before, from = objects(), conf_text(), #e:log()
  local r = run("--check")
  t.eq(r.status, 0, "a plan cannot know: synchronize is not run\n" .. r.stderr)
  t.ok(r.stderr:find(UNKNOWN, 1, true), r.stderr)
  t.ok(r.stderr:find(PLANNED_SYNC, 1, true), r.stderr)
  t.eq(syncs(from), {}, "--check sent no synchronize")
  r = run("")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find(SYNC_UNKNOWN, 1, true), r.stderr)
  t.ok(r.stderr:find("CloningConflict", 1, true), r.stderr)
  t.ok(r.stderr:find(("conflicting settings for private key cloning between %s (hsm1) and %s (hsm3): member %s "
    .. "(hsm3) is in another cloning domain than %s (hsm1)"):format(serials.hsm1, serials.hsm3, serials.hsm3,
    serials.hsm1), 1, true), r.stderr)
  t.ok(r.stderr:find("1. on hsm3, create a partition and initialize it in the group's cloning domain", 1, true), r.stderr)
  t.ok(r.stderr:find("hagroup removeMember -group myHA -serialNumber " .. serials.hsm3, 1, true), r.stderr)
  t.eq(syncs(from), { "0x00000030 (CKR_DEVICE_ERROR)" }, "one synchronize, which lunacm failed")
  t.eq(objects(), before, "nothing synchronized")
  t.eq(conf_text(), conf_before, "the group as it was")
end, { timeout = 180 })

t.test("fix_cloning=true: --check plans the remedy and changes nothing; unconfirmed it is refused; with --yes a new "
  .. "partition in the group's domain joins, the bad member leaves, the objects are cloned to it", function()
  local dir = t.tmpdir()
  t.write(dir .. "/domain", "defaultdomain", tonumber("600", 8))  -- the group's: --client-ready partitions are in Luna's default
  t.write(dir .. "/pso", "Pso-Pass-2026", tonumber("600", 8))
  local fix = ("-e fix_cloning=true -e cloning_domain=file:%s/domain -e pso_password=file:%s/pso -e so_password=file:%s")
    :format(dir, dir, e.dir .. "/secrets/hsm3_so_password")
  local function changes(from)
    local out, log = {}, e:log()
    for i = from + 1, #log do
      local what = log[i]:match("^hsm3 lunash: (partition create.-) %->") or log[i]:match("^hsm3 lunash: (client assign.-) %->")
        or log[i]:match("^lunacm: (partition init.-) %-> No Error$") or log[i]:match("^lunacm: (hagroup %a+Member.-) %-> No Error$")
        or log[i]:match("^lunacm: (hagroup synchronize.-) %-> No Error$")
      if what then out[#out + 1] = what end
    end
    return out
  end
  local before, from = { members(), conf_text(), objects() }, #e:log()
  local r = run("--check " .. fix)
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find(PLANNED_SYNC, 1, true), r.stderr)
  t.ok(r.stderr:find("would on a conflict, carry out the guide's remedy for the members lunacm names", 1, true), r.stderr)
  t.eq({ members(), conf_text(), objects(), changes(from), syncs(from) }, { before[1], before[2], before[3], {}, {} },
    "--check changed nothing")
  r = run(fix)
  t.eq(r.status, 3, "the remedy's steps are confirmed\n" .. r.stderr)
  t.ok(r.stderr:find("create partition par2 on hsm3 for group myHA", 1, true), "refused at the remedy's first step\n"
    .. r.stderr)
  t.eq(changes(from), {}, "refused: nothing sent")
  t.eq(syncs(from), { "0x00000030 (CKR_DEVICE_ERROR)" }, "the synchronize that reported the conflict, nothing more")
  -- without the HSM SO password the partition is created with: refused before any step is confirmed
  r = run("--yes " .. fix:gsub(" %-e so_password=%S+", ""))
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("creating a partition on hsm3 needs its HSM SO password: -e so_password=...", 1, true), r.stderr)
  t.ok(not r.stderr:find("create partition", 1, true), "no step of the remedy began\n" .. r.stderr)
  t.eq(changes(from), {}, "nothing sent")
  -- as a run killed between partition create and client assignPartition
  -- leaves it: par2 exists, unassigned, so lunacm shows no slot for it
  local so = e:luna_session("hsm3")
  so:login_so(e:secret("hsm3_so_password"))
  so:must("partition create -partition par2 -force")
  so:close()
  from = #e:log()
  r = run("--yes -e new_partition=par2 " .. fix)
  t.eq(r.status, 0, r.stdout .. r.stderr)
  t.ok(r.stderr:find("synchronizing group myHA: " .. SYNC_UNKNOWN .. ", if -e cloning_domain was not the group's",
    1, true), "the synchronize after the remedy, its condition said as one\n" .. r.stderr)
  local part = e:state().appliances.hsm3.partitions.par2
  t.eq(part.domain, e:state().appliances.hsm1.partitions.par1.domain, "par2 is in the group's cloning domain")
  t.eq(changes(from), { "client assignPartition -client dhsm-client -partition par2",
    "partition init -label hsm3-par2 -slot 3", "hagroup addMember -group myHA -serialNumber " .. part.serial,
    "hagroup removeMember -group myHA -serialNumber " .. serials.hsm3, "hagroup synchronize -group myHA" })
  -- with objects to clone, the simulated lunacm fails on members it warns of: No Error is no warning
  t.eq(syncs(from), { "0x00000030 (CKR_DEVICE_ERROR)", "No Error" }, "the conflict reported, then a synchronize "
    .. "after the remedy without it")
  t.ok(not r.stderr:find("WrongCloningDomain", 1, true), r.stderr)
  t.eq(chrystoki.load(client.chrystoki_conf):ha_groups()[1].members, { serials.hsm1, serials.hsm2, part.serial })
  local lib <close> = pkcs11.load(client.pkcs11_lib, { env = { SOFTHSM2_CONF = client.softhsm_conf,
    ChrystokiConfigurationPath = client.chrystoki_conf:match("^(.*)/") } })
  local s <close> = lib:open { label = "hsm3-par2" }
  s:login("user", e:secret("hsm1_par1_co_pin"))             -- the group's Crypto Officer password
  local keys = {}
  for i, h in ipairs(s:find {}) do keys[i] = s:attributes(h, { "label" }).label end
  table.sort(keys)
  s:logout()
  t.eq(table.concat(keys, " "), "k1 k2 k3", "the group's objects cloned to the new member")
  from = #e:log()
  r = run("--yes -e new_partition=par2 " .. fix)
  t.eq(r.status, 0, r.stderr)
  t.eq(changes(from), {}, "a second run finds it done")
end, { timeout = 240 })

t.test("fix_cloning with a cloning_domain that is not the group's: the synchronize after the remedy still warns, "
  .. "and the run stops (WrongCloningDomain)", function()
  set_domain("hsm2", "another-domain")
  put_key("hsm1", "k4")
  local dir = t.tmpdir()
  t.write(dir .. "/domain", "not-the-groups-domain", tonumber("600", 8))
  t.write(dir .. "/pso", "Pso-Pass-2026", tonumber("600", 8))
  local from = #e:log()
  local r = run(("--yes -e new_partition=par3 -e fix_cloning=true -e cloning_domain=file:%s/domain "
    .. "-e pso_password=file:%s/pso -e so_password=file:%s"):format(dir, dir, e.dir .. "/secrets/hsm2_so_password"))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("WrongCloningDomain", 1, true), r.stderr)
  t.ok(r.stderr:find("after the remedy, hagroup synchronize still reports conflicting settings for private key "
    .. "cloning", 1, true), r.stderr)
  local state = e:state().appliances
  t.ok(state.hsm2.partitions.par3.domain ~= state.hsm1.partitions.par1.domain, "par3 is in another domain")
  t.eq(syncs(from), { "0x00000030 (CKR_DEVICE_ERROR)", "0x00000030 (CKR_DEVICE_ERROR)" },
    "the conflict reported before the remedy and after it")
end, { timeout = 240 })
