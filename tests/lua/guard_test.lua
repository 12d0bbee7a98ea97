-- The failed-login guard under concurrency, misuse and crashes: parallel
-- wrong logins - LunaSH, PKCS#11 and lunacm, from tasks and from processes -
-- never take a role below one attempt left; no spelling, option, raw
-- object or patched table gets a login past the guard; a command that
-- changes something leaves its intent in the audit log before it is sent.
-- What reached the appliance is read from the estate's own state.
local t = require "dhsm.test"
local cjson = require "cjson"
local luna = require "dhsm.luna"
local guard = require "dhsm.guard"
local proc = require "dhsm.proc"
local util = require "dhsm.util"

local estate = require("support.estate").start { args = "--appliances 4 --client-ready" }

local function entry(name)
  return estate.inventory:hsm(name)
end

local function open(name)
  local s = luna.open(entry(name))
  t.cleanup(function() s:close() end)
  return s
end

-- The appliance's own view of its HSM SO: failures so far, zeroized or not.
local function so_state(name)
  local hsm = estate:state().appliances[name].hsm
  return { failures = hsm.so_failures, zeroized = not hsm.initialized }
end

local function wrong()
  return dhsm.secret.value("not-the-password")
end

-- Every error of a list of pcall results, by code.
local function codes(results)
  local out = {}
  for _, r in ipairs(results) do
    if not r.ok then out[r.code] = (out[r.code] or 0) + 1 end
  end
  return out
end

local function child(code, state, guard)
  return estate:child(code, state, guard)
end

-- n child processes, each with a state folder of its own (XDG_STATE_HOME:
-- two operators on one jump host) and the one guard folder `guard`: each
-- runs `setup`, waits until all have, then runs `go` (Lua that prints
-- words).  -> how often each word was printed
local function at_once(n, setup, go, guard)
  local dir = t.tmpdir()
  local code = ([[%s
    io.open(%q .. "/ready." .. require("dhsm.sys").getpid(), "w"):close()
    while not io.open(%q .. "/go") do dhsm.sleep(0.01) end
    %s]]):format(setup, dir, dir, go)
  local jobs = { "go" }
  for i = 1, n do jobs[#jobs + 1] = i end
  local outputs = dhsm.parallel(jobs, function(which)
    if which ~= "go" then return proc.run(child(code, t.tmpdir(), guard)).stdout end
    local deadline = dhsm.now() + 60
    repeat
      dhsm.sleep(0.02)
      local ready = t.sh("ls " .. util.shell_quote(dir) .. " | grep -c '^ready'").stdout
    until tonumber(ready) == n or dhsm.now() > deadline
    t.write(dir .. "/go", "")
    return ""
  end)
  local tally = {}
  for w in table.concat(outputs, " "):gmatch("%S+") do tally[w] = (tally[w] or 0) + 1 end
  return tally
end

-- The guard's counts in a guard folder, by key and role.
local function counts_in(guard)
  return cjson.decode(util.read_file(guard .. "/logins.json"))
end

-- Bring the appliance's SO counter to `failures` through the guard itself.
local function fail_so(name, failures)
  local s = open(name)
  for _ = 1, failures do t.raises(function() s:login_so(wrong()) end, "LUNA_RET_UM_PIN_INCORRECT") end
  return s
end

-- The guard's count and the appliance back to a clean slate.
local function reset_so(name)
  local s = open(name)
  s:login_so(estate:secret(name .. "_so_password"), { allow_destructive_login = true })
  t.eq(so_state(name).failures, 0)
end

---------------------------------------------------------------------------
-- 1. the race

-- The race matrix: N wrong HSM SO logins at once, from N tasks whose
-- sessions have N different names, and from N processes with N different
-- state folders.  make test runs N = 3; `make races` runs 3, 5 and 10
-- (DHSM_RACES=full).
local RACES = os.getenv("DHSM_RACES") == "full" and { 3, 5, 10 } or { 3 }

local function range(n)
  local out = {}
  for i = 1, n do out[i] = i end
  return out
end

local function race_timeout()
  local n = 0
  for _, k in ipairs(RACES) do n = n + k end
  return 120 + 30 * n
end

t.test("N tasks, N session names, N wrong SO logins at once: the appliance keeps one attempt", function()
  for _, n in ipairs(RACES) do
    local results = dhsm.parallel(range(n), function(i)
      local s = luna.open(entry("hsm1"), { name = "alias" .. i })      -- a name is a label, not an identity
      t.cleanup(function() s:close() end)
      local ok, err = pcall(s.login_so, s, wrong())
      return { ok = ok, code = not ok and dhsm.error.normalize(err).code or nil }
    end)
    t.eq(so_state("hsm1"), { failures = 2, zeroized = false }, ("N = %d: exactly two wrong passwords reached it"):format(n))
    t.eq(codes(results), { LUNA_RET_UM_PIN_INCORRECT = 2, LastLoginAttempt = n - 2 }, "N = " .. n)
    reset_so("hsm1")
  end
end, { timeout = race_timeout() })

t.test("N processes, N state folders, one guard: N wrong SO logins at once leave one attempt", function()
  for _, n in ipairs(RACES) do
    local guard_dir = t.tmpdir()
    local tally = at_once(n, [[
      local luna = require "dhsm.luna"
      local inv = require("dhsm.inventory").load(os.getenv("DHSM_INVENTORY"))
      local s = luna.open(inv:hsm("hsm2"), { name = "operator-" .. require("dhsm.sys").getpid() })
    ]], [[
      local ok, err = pcall(s.login_so, s, dhsm.secret.value("not-the-password"))
      print(ok and "ok" or dhsm.error.normalize(err).code)
    ]], guard_dir)
    t.eq(so_state("hsm2"), { failures = 2, zeroized = false }, ("N = %d: exactly two wrong passwords reached it"):format(n))
    t.eq(tally, { LUNA_RET_UM_PIN_INCORRECT = 2, LastLoginAttempt = n - 2 }, "N = " .. n)
    local key = ("hsm:%s/so"):format(estate:state().appliances.hsm2.serial)
    t.eq(counts_in(guard_dir)[key].failures, 2, "every process's failures are in the one count, under the serial")
    reset_so("hsm2")
  end
end, { timeout = race_timeout() })

t.test("after a failure the device is read again: attempts lost elsewhere are counted", function()
  -- another dhsm, with a count of its own, makes one wrong attempt we know nothing of
  local other = t.tmpdir()
  local r = proc.run(child([[
    local s = require("dhsm.luna").open(require("dhsm.inventory").load(os.getenv("DHSM_INVENTORY")):hsm("hsm3"))
    print(pcall(s.login_so, s, dhsm.secret.value("not-the-password")))
  ]], other))
  t.ok(r.stdout:find("false", 1, true), r.stdout .. r.stderr)
  t.eq(so_state("hsm3").failures, 1)
  local s = open("hsm3")
  local key = s:guard_device()
  t.eq(key.key, "hsm:" .. estate:state().appliances.hsm3.serial, "the HSM's own serial, not the session's name")
  t.eq(guard.failures(key, "so"), 0)
  t.raises(function() s:login_so(wrong()) end, "LUNA_RET_UM_PIN_INCORRECT")
  t.eq(so_state("hsm3").failures, 2)
  t.eq(guard.failures(key, "so"), 2, "ours plus the one the device says it lost")
  t.raises(function() s:login_so(wrong()) end, "LastLoginAttempt")
  reset_so("hsm3")
end, { timeout = 120 })

t.test("two processes, six wrong PKCS#11 PINs each, at once: nine reach the token, the rest are refused", function()
  local p11 = require "support.p11"
  if not p11.available() then t.skip("SoftHSM2 is not installed") end
  local hsm = p11.softhsm { "race" }
  local guard_dir = t.tmpdir()
  local tally = at_once(2, ([[
    local lib = require("dhsm.pkcs11").load(%q, { env = { SOFTHSM2_CONF = %q } })
    local s = lib:open { label = "race", rw = true }
    s:guard_devices()     -- read the token now: SoftHSM2 may fail a read that meets the other's write
  ]]):format(p11.LIB, hsm.conf), [[
    local out = {}
    for _ = 1, 6 do
      local ok, err = pcall(s.login, s, "user", dhsm.secret.value("bad-pin"))
      out[#out + 1] = ok and "ok" or dhsm.error.normalize(err).code
    end
    print(table.concat(out, " "))
  ]], guard_dir)
  t.eq(tally, { CKR_PIN_INCORRECT = 9, LastLoginAttempt = 3 })
  local n = 0
  for _, c in pairs(counts_in(guard_dir)) do n = n + c.failures end
  t.eq(n, 9, "every failure of both processes is in the shared count")
end, { timeout = 120 })

t.test("a failed-login count that cannot be read refuses every login rather than assume none", function()
  local state, before = t.tmpdir(), so_state("hsm1")
  require("dhsm.sys").mkdir(state .. "/guard", tonumber("700", 8))
  t.write(state .. "/guard/logins.json", '{"hsm:1/so": {"failures": 2')     -- cut short
  local r = proc.run(child([[
    local s = require("dhsm.luna").open(require("dhsm.inventory").load(os.getenv("DHSM_INVENTORY")):hsm("hsm1"))
    local ok, err = pcall(s.login_so, s, dhsm.secret.value("not-the-password"))
    print(ok, err.code)
  ]], state))
  t.eq(r.stdout, "false\tLoginCountUnreadable\n", r.stderr)
  t.eq(so_state("hsm1"), before, "nothing reached the appliance")
end)

t.test("without its folder the guard makes no login; its files are the group's to share", function()
  local before = so_state("hsm1")
  local state = t.tmpdir()
  t.write(state .. "/not-a-folder", "")
  local r = proc.run(child([[
    local s = require("dhsm.luna").open(require("dhsm.inventory").load(os.getenv("DHSM_INVENTORY")):hsm("hsm1"))
    local ok, err = pcall(s.login_so, s, dhsm.secret.value("not-the-password"))
    print(ok, err.code, err.message)
  ]], state, state .. "/not-a-folder"))
  t.ok(r.stdout:find("^false\tGuardFolderMissing\t"), r.stdout .. r.stderr)
  local move = r.stdout:match("(move %S+ away)")
  t.eq(move, ("move %s/not-a-folder away"):format(state), "the message says what to do: " .. r.stdout)
  t.eq(so_state("hsm1"), before, "nothing reached the appliance")
  -- the remedy, typed: the thing moved away, the same login is made (and counted)
  t.eq(os.rename(state .. "/not-a-folder", state .. "/moved"), true)
  r = proc.run(child([[
    local s = require("dhsm.luna").open(require("dhsm.inventory").load(os.getenv("DHSM_INVENTORY")):hsm("hsm1"))
    local ok, err = pcall(s.login_so, s, dhsm.secret.value("not-the-password"))
    print(ok, err.code)
  ]], state, state .. "/not-a-folder"))
  t.eq(r.stdout, "false\tLUNA_RET_UM_PIN_INCORRECT\n", r.stderr)
  t.eq(so_state("hsm1").failures, before.failures + 1, "the login reached the appliance once the folder could be made")
  reset_so("hsm1")
  -- a folder whose locks cannot be taken (here: "locks" is a file) makes no login either
  local unusable = t.tmpdir()
  t.write(unusable .. "/locks", "")
  r = proc.run(child([[
    local s = require("dhsm.luna").open(require("dhsm.inventory").load(os.getenv("DHSM_INVENTORY")):hsm("hsm1"))
    local ok, err = pcall(s.login_so, s, dhsm.secret.value("not-the-password"))
    print(ok, err.code)
  ]], state, unusable))
  t.eq(r.stdout, "false\tGuardFolderUnusable\n", r.stderr)
  t.eq(so_state("hsm1"), before, "nothing reached the appliance")
  -- a login that is made leaves the counts and its lock readable and writable by the folder's group
  local guard_dir = t.tmpdir()
  r = proc.run(child([[
    local s = require("dhsm.luna").open(require("dhsm.inventory").load(os.getenv("DHSM_INVENTORY")):hsm("hsm1"))
    print(pcall(s.login_so, s, dhsm.secret.value("not-the-password")))
  ]], state, guard_dir))
  local sys = require "dhsm.sys"
  local serial = estate:state().appliances.hsm1.serial
  t.eq(sys.stat(guard_dir .. "/logins.json").mode, tonumber("660", 8))
  t.eq(sys.stat(("%s/locks/hsm_%s.so.lock"):format(guard_dir, serial)).mode, tonumber("660", 8))
  t.eq(sys.stat(guard_dir .. "/locks").mode, tonumber("2770", 8), "the locks folder keeps its group (setgid)")
  reset_so("hsm1")
end, { timeout = 120 })

-- lunacm on the estate's client install: argv and env for a command
local function lunacm(args)
  local argv = { estate.inventory.client.lunacm }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return { argv = argv, env = { ChrystokiConfigurationPath = estate.inventory.client.chrystoki_conf:match("^(.*)/[^/]*$") },
    timeout = 60 }
end

-- A lunacm command that logs in, through the guard (proc.lunacm_login).
local function login(args, password, opts)
  local run = lunacm(args)
  run.password = password
  for k, v in pairs(opts or {}) do run[k] = v end
  return proc.lunacm_login(run)
end

-- The appliance's own view of a partition's roles.
local function partition_state(name)
  local p = estate:state().appliances[name].partitions.par1
  return { co_failures = p.co_failures, pso_failures = p.pso_failures, co_locked = p.co_locked }
end

-- The slot id of a partition, by label (a Lua pattern)
local function slot_of(label)
  return proc.run(lunacm { "-c", "slot", "list" }).stdout:match("Slot Id %->%s+(%d+)%s+Label %->%s+" .. label .. "%s")
end

t.test("ten wrong lunacm CO logins at once: nine reach the partition, the tenth is refused", function()
  local slot = slot_of("hsm2%-par1")
  t.ok(slot, "the partition is a slot")
  local results = dhsm.parallel({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, function()
    local run = lunacm { "-c", "role", "login", "-name", "co", "-slot", slot }
    run.password = wrong()
    local ok, r = pcall(proc.lunacm_login, run)
    if not ok then return { ok = false, code = dhsm.error.normalize(r).code } end
    return { ok = r.ok, code = r.code }
  end)
  t.eq(partition_state("hsm2"), { co_failures = 9, pso_failures = 0, co_locked = false })
  t.eq(codes(results), { CKR_PIN_INCORRECT = 9, LastLoginAttempt = 1 })
  local run = lunacm { "-c", "role", "login", "-name", "co", "-slot", slot }
  run.password, run.allow_destructive_login = estate:secret("hsm2_par1_co_pin"), true
  t.eq(proc.lunacm_login(run).ok, true)
  t.eq(partition_state("hsm2").co_failures, 0)
end, { timeout = 180 })

-- Every appliance's view of its partition's roles.
local function partitions_state()
  local out = {}
  for i = 1, 4 do out[i] = partition_state("hsm" .. i) end
  return out
end

t.test("what the guard counted is what runs: argv changed by another task mid-login changes nothing", function()
  local counted, other = slot_of("hsm2%-par1"), slot_of("hsm3%-par1")
  local before = { partition_state("hsm2").co_failures, partition_state("hsm3").co_failures }
  local run = lunacm { "-c", "role", "login", "-name", "co", "-slot", counted }
  run.password = wrong()
  local results = dhsm.parallel({ "login", "swap" }, function(which)
    if which == "swap" then
      dhsm.sleep(0.05)                    -- while lunacm_login reads the slot list
      run.argv[#run.argv] = other
      return "swapped"
    end
    local ok, r = pcall(proc.lunacm_login, run)
    return ok and r.code or dhsm.error.normalize(r).code
  end)
  t.eq(results, { "CKR_PIN_INCORRECT", "swapped" })
  t.eq({ partition_state("hsm2").co_failures, partition_state("hsm3").co_failures }, { before[1] + 1, before[2] },
    "the login reached the partition the guard counted, not the one argv named afterwards")
  login({ "-c", "role", "login", "-name", "co", "-slot", counted }, estate:secret("hsm2_par1_co_pin"))
end, { timeout = 120 })

t.test("lunacm logins go nowhere but through the guard, however spelled", function()
  local before = partitions_state()
  local function refused(args, stdin, code)
    local o = lunacm(args)
    o.stdin = stdin
    t.raises(function() proc.run(o) end, code or "UnguardedLogin")
  end
  local pin = { wrong(), "\n" }
  local slot = slot_of("hsm1%-par1")
  refused({ "-c", "role", "login", "-name", "co", "-slot", slot }, pin)
  refused({ "-c", "ROLE", "LOGI", "-n", "co", "-s", "0" }, pin)
  refused({ "-c", "ro lo -n so" }, pin)
  refused({ "-c", "role", "-name", "co", "login" }, pin)
  refused({ "-c", "role", "changepw", "-name", "co" }, pin)
  refused({ "-c", "ha", "cr", "-l", "g", "-slot", "0" }, pin)
  refused({ "-c", "hagroup", "addMember", "-group", "g", "-slot", "0" }, pin)
  refused({ "-c", "hagroup", "synchronize", "-group", "g" }, pin)
  refused({ "-c", "hagroup", "listGroups" }, pin)                -- a secret where a login could take it
  refused({}, "role login -name co -slot 0\nwrong\n")            -- commands on stdin
  t.raises(function() proc.spawn(lunacm {}) end, "UnguardedLogin")
  local sync = lunacm { "-c", "hagroup", "synchronize", "-group", "g" }
  sync.password = wrong()
  t.raises(function() proc.lunacm_login(sync) end, "no HA group g")   -- its members are not known
  -- an option given twice: lunacm takes the last, so the guard takes neither
  for _, args in ipairs {
    { "-c", "role", "login", "-name", "co", "-slot", "0", "-slot", "1" },
    { "-c", "role", "login", "-name", "so", "-s", "2", "-slot", "0" },
    { "-c", "role", "login", "-name", "so", "-name", "co", "-slot", "1" },
    { "-c", "role", "login", "-name", "co", "-slot", "0", "-serialNumber", "1" },
  } do
    t.raises(function() login(args, wrong()) end, "AmbiguousOption")
  end
  t.eq(pcall(require, "dhsm.proc.core"), false)
  t.eq(partitions_state(), before, "nothing reached any partition")
  -- what is not a login still runs
  t.eq(proc.run(lunacm { "-c", "role", "show", "-slot", slot }).status, 0)
end, { timeout = 120 })

t.test("hagroup synchronize: the guard's attempt for every member's Crypto Officer, refused at one left", function()
  local co = estate:secret("hsm1_par1_co_pin")
  local function serial(name)
    for _, s in ipairs(proc.lunacm_slots(lunacm {})) do
      if s.label == name .. "-par1" then return s.serial end
    end
  end
  t.ok(login({ "-c", "hagroup", "createGroup", "-label", "syncg", "-serialNumber", serial("hsm3") }, co).ok)
  t.ok(login({ "-c", "hagroup", "addMember", "-group", "syncg", "-serialNumber", serial("hsm1") }, co).ok)
  local sync = { "-c", "hagroup", "synchronize", "-group", "syncg" }
  local r = login(sync, wrong())
  t.eq({ r.ok, r.code, r.status }, { false, "CKR_PIN_INCORRECT", 0 }, "lunacm exits 0 on failures: read from its output")
  t.eq(partition_state("hsm3").co_failures, 1, "the first member refused the PIN")
  for _ = 1, 8 do login({ "-c", "role", "login", "-name", "co", "-slot", slot_of("hsm3%-par1") }, wrong()) end
  t.eq(partition_state("hsm3").co_failures, 9)
  local before = { partition_state("hsm1"), partition_state("hsm3") }
  t.raises(function() login(sync, co) end, "LastLoginAttempt")
  t.eq({ partition_state("hsm1"), partition_state("hsm3") }, before, "one member at its last attempt: no member reached")
  r = login(sync, co, { allow_destructive_login = true })
  t.eq(r.ok, true, r.stdout)
  t.eq({ partition_state("hsm1").co_failures, partition_state("hsm3").co_failures }, { 0, 0 })
  proc.run(lunacm { "-c", "hagroup", "deleteGroup", "-label", "syncg" })
end, { timeout = 180 })

-- The client's PKCS#11 library (the estate's libCryptoki2: partitions by
-- their Luna serials, HA groups as virtual slots), as dhsm loads it.
local function client_library()
  local client = require("dhsm.chrystoki").install(estate.inventory)
  return require("dhsm.pkcs11").load(client.pkcs11_lib, { env = client.library_env })
end

t.test("one partition, one count: lunacm, PKCS#11 and the HA group's virtual slot", function()
  local co = estate:secret("hsm3_par1_co_pin")
  local part = {}
  for _, s in ipairs(proc.lunacm_slots(lunacm {})) do
    if not s.virtual then part[s.label] = s end
  end
  local p3, p4 = part["hsm3-par1"], part["hsm4-par1"]
  t.ok(login({ "-c", "hagroup", "createGroup", "-label", "countg", "-serialNumber", p3.serial }, co).ok)
  t.ok(login({ "-c", "hagroup", "addMember", "-group", "countg", "-serialNumber", p4.serial }, co).ok)
  t.cleanup(function() proc.run(lunacm { "-c", "hagroup", "deleteGroup", "-label", "countg" }) end)
  local guard_dir = guard.dir()
  local function count(serial) return ((counts_in(guard_dir)["partition:" .. serial .. "/co"]) or {}).failures or 0 end
  -- 1. four wrong PINs through lunacm, four through PKCS#11 on the partition's own slot
  for _ = 1, 4 do login({ "-c", "role", "login", "-name", "co", "-slot", p3.id }, wrong()) end
  local lib <close> = client_library()
  local s3 = lib:open { serial = p3.serial }
  t.eq(s3:guard_devices().devices[1].key, "partition:" .. p3.serial, "the token reports the Luna partition serial")
  for _ = 1, 4 do t.raises(function() s3:login("user", wrong()) end, "CKR_PIN_INCORRECT") end
  t.eq(count(p3.serial), 8, "lunacm's and PKCS#11's failures in one count")
  -- 2. the HA slot: one login on every member, counted on every member
  local ha = lib:open { label = "countg" }
  -- another Chrystoki.conf named for the process after the library read its own changes nothing here
  local fake = t.tmpdir()
  t.write(fake .. "/Chrystoki.conf", ("VirtualToken = {\n  VirtualToken00Label = countg;\n  VirtualToken00SN = %s;\n"
    .. "  VirtualToken00Members = 4242424242;\n}\n"):format(ha:token().serial))
  local other <close> = require("dhsm.pkcs11").load(estate.inventory.client.pkcs11_lib,
    { env = { ChrystokiConfigurationPath = fake } })
  local id = ha:guard_devices()
  t.eq({ id.token.model, #id.devices }, { "LunaVirtual", 2 }, "the virtual slot is both members")
  t.eq({ id.devices[1].serial, id.devices[2].serial }, { p3.serial, p4.serial }, "as the library's own Chrystoki.conf says")
  t.raises(function() ha:login("user", wrong()) end, "CKR_PIN_INCORRECT")
  t.eq({ count(p3.serial), count(p4.serial) }, { 9, 1 })
  -- 3. one member at its last attempt: the HA login is refused, even with the right PIN, by every route
  local before = { partition_state("hsm3"), partition_state("hsm4") }
  t.raises(function() ha:login("user", co) end, "LastLoginAttempt")
  t.raises(function() s3:login("user", co) end, "LastLoginAttempt")
  t.raises(function() login({ "-c", "role", "login", "-name", "co", "-slot", p3.id }, co) end, "LastLoginAttempt")
  t.raises(function() login({ "-c", "hagroup", "synchronize", "-group", "countg" }, co) end, "LastLoginAttempt")
  t.eq({ partition_state("hsm3"), partition_state("hsm4") }, before, "nothing reached either member")
  t.eq({ count(p3.serial), count(p4.serial) }, { 9, 1 })
  -- an HA slot whose members the library's Chrystoki.conf no longer lists: not counted under the group, refused
  local conf_path = estate.inventory.client.chrystoki_conf
  local conf_text = util.read_file(conf_path)
  t.cleanup(function() t.write(conf_path, conf_text) end)
  local lost <close> = client_library()
  local ha2 = lost:open { label = "countg" }
  t.write(conf_path, (conf_text:gsub("VirtualToken%d%dSN%s*=%s*[^;]*;", "")))
  t.raises(function() ha2:login("user", co, { allow_destructive_login = true }) end, "DeviceUnknown")
  t.write(conf_path, conf_text)
  t.eq({ count(p3.serial), count(p4.serial) }, { 9, 1 })
  -- 4. the operator, sure of the PIN: every member's count starts again
  t.eq(ha:login("user", co, { allow_destructive_login = true }), true)
  t.eq({ count(p3.serial), count(p4.serial) }, { 0, 0 })
  t.ok(login({ "-c", "role", "login", "-name", "co", "-slot", p3.id }, co).ok)    -- the appliance's own counter too
end, { timeout = 180 })

t.test("lunacm by any route is lunacm: through env, a shell, an interpreter, a link or a copy", function()
  local lunacm_path = estate.inventory.client.lunacm
  local dir = t.tmpdir()
  local q = util.shell_quote
  t.sh(("ln -s %s %s/tool && cp %s %s/copied && ln -s %s %s/cm2 && ln -s %s %s"):format(q(lunacm_path), dir,
    q(lunacm_path), dir, q(lunacm_path), dir, q(lunacm_path), q(dir .. "/q@cm")))
  local routes = {
    { "/usr/bin/env", lunacm_path, "-c", "role", "login", "-name", "co", "-slot", "0" },
    { "/usr/bin/env", "ChrystokiConfigurationPath=" .. dir, lunacm_path, "-c", "role login -name co -slot 0" },
    { "env", "-i", lunacm_path, "-c", "role", "login" },
    { "/usr/bin/python3", lunacm_path, "-c", "role", "login", "-name", "co", "-slot", "0" },
    { "sh", "-c", lunacm_path .. " -c role login -name co -slot 0" },
    { "bash", "-c", "exec lunacm -c role login -name co -slot 0" },
    { "nice", lunacm_path, "-c", "role", "login" },
    { "timeout", "30", lunacm_path, "-c", "role", "login" },
    { "sudo", "-E", lunacm_path },
    { "xargs", lunacm_path },
    -- programs that are no shell, and names that are no "lunacm"
    { "setarch", "x86_64", lunacm_path, "-c", "role", "login" },
    { "prlimit", "--nofile=1024", lunacm_path, "-c", "role", "login" },
    { "find", lunacm_path:match("^(.*)/"), "-maxdepth", "1", "-name", "lunacm", "-exec", "{}", "-c", "role", "login", ";" },
    { "/lib64/ld-linux-x86-64.so.2", "/usr/bin/python3", lunacm_path, "-c", "role", "login" },
    { "env", "PATH=" .. dir .. ":/usr/bin:/bin", "cm2", "-c", "role", "login", "-name", "co", "-slot", "0" },
    { "env", dir .. "/q@cm", "-c", "role", "login" },
    { "sh", "-c", dir .. "/q@cm -c role login -name co -slot 0" },
  }
  local code = ([[
    local proc, out = require "dhsm.proc", {}
    local dir, routes = %q, require("cjson").decode(%q)
    local function try(f)
      local ok, err = pcall(f)
      out[#out + 1] = ok and "ran" or dhsm.error.normalize(err).code
    end
    local pin = { dhsm.secret.value("not-the-pin"), "\n" }
    for _, argv in ipairs(routes) do try(function() proc.run { argv = argv, stdin = pin, timeout = 30 } end) end
    try(function()       -- a bare link name found through the child's PATH
      proc.run { argv = { "sh", "-c", "cm2 -c role login -name co -slot 0" }, env = { PATH = dir .. ":/usr/bin:/bin" },
        stdin = pin, timeout = 30 }
    end)
    try(function() proc.spawn { argv = { "/usr/bin/env", routes[1][2] } } end)
    try(function() proc.spawn { argv = { dir .. "/copied" } } end)
    for _, tool in ipairs { dir .. "/tool", dir .. "/copied" } do
      try(function() proc.run { argv = { tool, "-c", "role", "login", "-name", "co", "-slot", "0" }, stdin = pin } end)
    end
    print(table.concat(out, " "))
  ]]):format(dir, cjson.encode(routes))
  local before = partitions_state()
  local function lunacm_logins()
    local n = 0
    for _, m in ipairs(estate:log()) do if m:find("^lunacm: role login") then n = n + 1 end end
    return n
  end
  local logins = lunacm_logins()
  local r = proc.run(child(code, t.tmpdir()))
  local got = {}
  for w in r.stdout:gmatch("%S+") do got[#got + 1] = w end
  local want = {}
  for i = 1, #routes + 1 do want[i] = "AroundTheRules" end
  for _, c in ipairs { "AroundTheRules", "UnguardedLogin", "UnguardedLogin", "UnguardedLogin" } do want[#want + 1] = c end
  t.eq(got, want, r.stderr)
  t.eq(partitions_state(), before, "no login reached a partition")
  t.eq(lunacm_logins(), logins, "lunacm never ran a login")
end, { timeout = 120 })

---------------------------------------------------------------------------
-- 2. no way around the guard

-- Spellings LunaSH reads as `hsm login` (the simulator's parser: words and
-- options abbreviated, any case, quotes, extra blanks), plus the ones it
-- would refuse as ambiguous or misplaced, which the guard treats as logins
-- all the same.
local SO_SPELLINGS = {
  "hsm login", "HSM LOGIN", "Hsm LoGiN", "hsm logi", "hsm log", "hs login", "h login",
  "  hsm \t login  ", "hsm login -password not-the-password", "hsm login -p not-the-password",
  "hsm -password not-the-password login", "HS LOGI -PASS not-the-password", [["hsm" login]], "hsm 'login'",
  [[hsm lo"g"in]], [[hsm log\in]], "hsm lo", "hsm l",
}
local AUDIT_SPELLINGS = { "audit login", "AUDIT LOGI", "a login", "au lo -p x", "audit -serial 1 login" }
local OTHER_LOGINS = { "role login -name co", "partition showContents -partition p1", "hsm changePw", "par showc -par p" }

t.test("every spelling of a login classifies as one", function()
  for _, c in ipairs(SO_SPELLINGS) do t.eq(luna.classify(c), "login:so", c) end
  for _, c in ipairs(AUDIT_SPELLINGS) do t.eq(luna.classify(c), "login:audit", c) end
  for _, c in ipairs(OTHER_LOGINS) do t.eq(luna.classify(c), "login:unsupported", c) end
  -- and what is not a login stays what it was
  t.eq({ luna.classify("hsm logout") }, { "write", "hsm logout" })
  t.eq({ luna.classify("hsm init -label lo") }, { "write", "hsm init" })
  t.eq({ luna.classify("par li") }, { "read", "partition list" })
  t.eq({ luna.classify("ntls ipcheck show") }, { "read", "ntls ipcheck" })
  t.eq({ luna.classify("hsm ze -f") }, { "write", "hsm zeroize" })
end)

t.test("at one attempt left, no spelling and no option gets an SO login out", function()
  local audit = t.audit_log()
  local s = fail_so("hsm4", 2)
  t.eq(so_state("hsm4").failures, 2)
  for _, c in ipairs(SO_SPELLINGS) do
    t.raises(function() s:run(c, { password = wrong() }) end, "LastLoginAttempt")
    t.raises(function() s:run(c, { guarded = true, answers = { { match = "[Pp]assword", answer = wrong() } } }) end,
      "LastLoginAttempt")
    t.raises(function() s:must(c, { password = wrong() }) end, "LastLoginAttempt")
  end
  t.raises(function() s:login_so(wrong()) end, "LastLoginAttempt")
  for _, c in ipairs(OTHER_LOGINS) do t.raises(function() s:run(c, { password = wrong() }) end, "UnsupportedLogin") end
  t.eq(so_state("hsm4"), { failures = 2, zeroized = false }, "nothing reached the appliance")
  for _, r in ipairs(t.audit_records(audit)) do
    t.ok(not (r.command or ""):find("not-the-password", 1, true), "no literal password in the audit log")
  end
  reset_so("hsm4")
end, { timeout = 120 })

t.test("no raw object, method or module writes to the shell around the guard", function()
  local s = open("hsm1")
  for _, name in ipairs { "exchange", "login", "read_until", "ssh", "shell", "buf" } do
    t.eq(s[name], nil, "session field " .. name)
  end
  -- nothing the session holds or inherits is an SSH object
  local seen = {}
  local function walk(v, path)
    if seen[v] then return end
    seen[v] = true
    t.ok(not tostring(v):find("^ssh "), path .. " is " .. tostring(v))
    if type(v) == "table" then
      for k, x in pairs(v) do walk(x, path .. "." .. tostring(k)) end
      local mt = getmetatable(v)
      if mt then walk(mt, path .. "<mt>") end
    end
  end
  walk(s, "session")
  walk(luna, "luna")
  for _, m in ipairs { "dhsm.luna.ssh", "dhsm.pkcs11.core", "dhsm.proc.core" } do
    t.eq(pcall(require, m), false, m .. " is private")
    t.eq(package.preload[m], nil)
  end
  -- the rules cannot be patched from outside: the guard and the grammar are
  -- read-only, and the write path does not look luna.classify up
  t.raises(function() guard.attempt = function() end end, "read%-only")
  t.raises(function() guard.THRESHOLDS.so = 100 end, "read%-only")
  t.raises(function() require("dhsm.guard.commands").readings = function() return {} end end, "read%-only")
  t.raises(function() luna.DESTRUCTIVE["hsm zeroize"] = nil end, "read%-only")
  local classify = luna.classify
  luna.classify = function() return "read", "hsm show" end
  t.cleanup(function() luna.classify = classify end)
  t.raises(function() s:run("hsm login -password x") end, "needs password=")
  -- a copy of dhsm.luna loaded from its embedded source gets no SSH module
  local src = require("dhsm.sys").embedded_read("m", "dhsm.luna")
  t.ok(src, "the embedded source")
  t.raises(function() load(src, "=copy")("dhsm.luna", "x") end, "private")
end)

t.test("an answer cannot carry a second command: a login after a line end is never sent", function()
  -- (an answer is one word, or a secret for a password question: dhsm.luna)
  local s = open("hsm1")
  local before = so_state("hsm1").failures
  local injection = "quit\nhsm login -password not-the-password"
  t.raises(function() s:run("sysconf regenCert", { answers = { { match = "proceed", answer = injection } } }) end,
    "an answer is one word")
  local s2 = open("hsm1")
  t.raises(function()
    s2:run("sysconf regenCert", { answers = { { match = "proceed", answer = dhsm.secret.value(injection) } } })
  end, "a secret is sent only to a password or cloning%-domain question")
  local s3 = open("hsm1")
  t.raises(function() s3:run("sysconf regenCert", { answers = { { match = "proceed", answer = "hsm login" } } }) end,
    "UnguardedLogin")
  -- an answer of several words could be read as a command of its own: never sent
  local zeroizes = #estate:mutations("hsm zeroize")
  t.raises(function()
    open("hsm1"):run("sysconf regenCert", { answers = { { match = "proceed", answer = "hsm zeroize -force" } } })
  end, "AnswerNotAWord")
  t.raises(function()
    open("hsm1"):run("sysconf regenCert", { answers = { { match = "proceed", answer = dhsm.secret.value("proceed") } } })
  end, "SecretNotForThisQuestion")
  t.eq(#estate:mutations("hsm zeroize"), zeroizes, "no zeroize reached the appliance")
  for _, c in ipairs { "hsm lo\127\127login", "hsm login\21hsm login", "hsm log\bin" } do
    t.raises(function() open("hsm1"):run(c, { password = wrong() }) end, "control character")
  end
  t.eq(so_state("hsm1").failures, before, "nothing reached the appliance")
end)

---------------------------------------------------------------------------
-- 3. intent before a destructive command

t.test("a process killed while hsm zeroize runs leaves the intent in the audit log", function()
  local state = t.tmpdir()
  estate:appliance("hsm3", { slow_command = "5000:hsm zeroize" })
  t.cleanup(function() estate:appliance("hsm3", { slow_command = "" }) end)
  local code = [[
    local inv = require("dhsm.inventory").load(os.getenv("DHSM_INVENTORY"))
    local s = require("dhsm.luna").open(inv:hsm("hsm3"))
    s:run("hsm zeroize -force")
    print("answered")
  ]]
  local audit = state .. "/audit.jsonl"
  local run = child(code, state)
  run.timeout = nil
  local p <close> = proc.spawn(run)
  -- Kill once the appliance has the command (its own log says so) and
  -- before it answers: the intent record must already be there.
  local function received()
    return (util.read_file(estate.dir .. "/estate.log") or ""):find("hsm3 lunash received: hsm zeroize", 1, true)
  end
  local deadline = dhsm.now() + 60
  while not received() and dhsm.now() < deadline do dhsm.sleep(0.01) end
  p:kill(9)
  local intent
  for _, r in ipairs(t.audit_records(audit)) do
    if r.action == "luna.command" and r.outcome == "sending" then intent = r end
  end
  local status = p:wait(30)
  t.eq(status.signal, 9, "killed, not finished")
  t.ok(intent, "the intent record was written before the command")
  t.eq({ intent.target, intent.command }, { "hsm3", "hsm zeroize -force" })
  -- the appliance acts all the same: the record is the only trace dhsm leaves
  deadline = dhsm.now() + 60
  while not so_state("hsm3").zeroized and dhsm.now() < deadline do dhsm.sleep(0.05) end
  t.eq(so_state("hsm3").zeroized, true)
end, { timeout = 120 })

t.test("every command that changes something is audited twice: its intent, then its result", function()
  local audit = t.audit_log()
  local s = open("hsm1")
  s:run("client delete -client nobody -force")
  s:run("client list")
  local seen = {}
  for _, r in ipairs(t.audit_records(audit)) do
    if r.action == "luna.command" then seen[#seen + 1] = r.command .. " " .. r.outcome end
  end
  t.eq(seen, { "client delete -client nobody -force sending", "client delete -client nobody -force 65535",
    "client list 0" })
end)

-- zeroize_by_failures against a pretend device: its readings in turn
local function pretend(readings, rejects)
  local i, sent = 0, 0
  return {
    read = function() i = math.min(i + 1, #readings); return readings[i] end,
    fail = function() sent = sent + 1; return rejects ~= false end,
  }, function() return sent end
end

t.test("zeroize by failed logins stops when the device does not count, stops saying, or accepts a login", function()
  local cases = {
    { "did not count the failure", { { serial = "S1", attempts_left = 3 }, { serial = "S1", attempts_left = 3 } } },
    { "did not count the failure", { { serial = "S1", attempts_left = 3 }, { serial = "S1" } } },   -- no figure any more
    { "now reports another serial", { { serial = "S1", attempts_left = 3 }, { serial = "S2", attempts_left = 2 } } },
    { "accepted a login", { { serial = "S1", attempts_left = 3 }, { serial = "S1", attempts_left = 2 } }, false },
  }
  for i, c in ipairs(cases) do
    local steps, sent = pretend(c[2], c[3])
    local err = t.raises(function()
      guard.zeroize_by_failures(guard.device("hsm", "P" .. i), "so", { zeroize = true, serial = "S1" }, steps)
    end, "NotCounting")
    t.ok(err.message:find(c[1], 1, true), err.message)
    t.eq(sent(), 1, "stopped after the first attempt: " .. c[1])
  end
  local steps, sent = pretend { { serial = "S1", attempts_left = 2 }, { serial = "S1", attempts_left = 1 },
    { serial = "S1", zeroized = true } }
  t.eq(guard.zeroize_by_failures(guard.device("hsm", "P0"), "so", { zeroize = true, serial = "S1" }, steps),
    { attempts = 2, zeroized = true })
  t.eq(sent(), 2)
end)

t.test("the sealed rule tables hand out no writable table, not even through pairs", function()
  local luna = require "dhsm.luna"
  for name, sealed in pairs { guard = require "dhsm.guard", commands = require "dhsm.guard.commands",
      destructive = luna.DESTRUCTIVE } do
    local iter, state, first = pairs(sealed)
    t.eq({ state, first }, { nil, nil }, name .. ": pairs gives neither the table nor a key to start from")
    local n = 0
    for k, v in iter do
      n = n + 1
      if type(v) == "table" then t.raises(function() v.x = 1 end, "read%-only") end
      t.ok(k ~= nil)
    end
    t.ok(n > 0, name .. " lists its fields")
    t.raises(function() sealed.lunacm = function() return "read" end end, "read%-only")
  end
end)
