-- The initialize playbook against the simulated estate: hsm3 provisioned
-- factory-fresh on the spare appliance, taken to a serving member of HA
-- group demoHA (hsm1, hsm2) that holds an application's sensitive key.
-- What happened is read from the estate: its log (LunaSH commands, client
-- tools), the appliance's syslog, its state, the tokens over PKCS#11.
local t = require "dhsm.test"
local util = require "dhsm.util"
local fresh = require "support.fresh"

local e = fresh.estate()

local function initialize(extra, omit, hsm)
  -- one state folder and audit log for every run, as on an operator's host
  return e:run(("run initialize -e hsm=%s %s"):format(hsm or "hsm3", fresh.line(e, extra, omit)),
    { state = e.dir .. "/state" })
end

local function match(text, pattern, what)
  t.ok(text:find(pattern), ("%s: no %q in:\n%s"):format(what or "output", pattern, text))
end

local function nomatch(text, pattern, what)
  t.ok(not text:find(pattern), ("%s: %q found in:\n%s"):format(what or "output", pattern, text))
end

local function hsm3()
  return e:state().appliances.hsm3
end

t.test("check mode on a factory-fresh appliance: the plan stops at the first login, nothing is sent", function()
  local from = fresh.mark(e)
  local r = initialize({ "--check" })
  t.eq(r.status, 0, r.stderr)
  match(r.stderr, "would change the tenantadmin password of hsm3 at its first login")
  match(r.stderr, "partition create %-partition par1: unknown until first login")
  match(r.stderr, "hsm init %-label hsm3 %(only if it reads zeroized%): unknown until first login")
  t.eq(fresh.sent(e, from), { first_login = 0, hsm_init = 0, partition_create = 0, register = 0, assign = 0,
    add_server = 0, partition_init = 0, add_member = 0, synchronize = 0 })
  t.eq(e:mutations("hsm3 lunash"), {}, "no LunaSH change reached hsm3")
  t.eq(hsm3().faults.force_password_change, true, "the password change is still due")
end)

t.test("without new_password: the first login's need said, bad input, nothing sent; the way on names the parameter",
  function()
  local from = fresh.mark(e)
  local r = initialize(nil, { new_password = true })
  t.eq(r.status, 2, r.stderr)
  match(r.stderr, "hsm3 demands a new administrator password at its first login")
  match(r.stderr, "start a new run: .*%-e new_password=prompt")
  t.eq(fresh.sent(e, from).first_login, 0, "no password change")
  t.eq(e:mutations("hsm3 lunash"), {}, "no LunaSH change reached hsm3")
end)

t.test("without credentials_stored: the guide's Lost Credentials words, refused before hsm init; the way on is typed", function()
  local from = fresh.mark(e)
  local r = initialize(nil, { credentials_stored = true })
  t.eq(r.status, 3, r.stderr)
  match(r.stderr, "Lost Credentials")
  match(r.stderr, "CredentialsNotStored")
  t.eq(fresh.sent(e, from).hsm_init, 0, "no hsm init")
  t.eq(fresh.sent(e, from).first_login, 1, "the first login was made (step 1 comes before)")
  nomatch(r.stderr, "%-%-resume", "no resume hint: the run needs another parameter")
  match(r.stderr, "credentials_stored=true")
end)

t.test("a used HSM is refused, kind safety, nothing sent: re-initialising is decommission's job", function()
  local from = fresh.mark(e, "hsm1")
  local r = initialize({ "-e", "partition=par9" }, { partition = true }, "hsm1")
  t.eq(r.status, 3, r.stderr)
  match(r.stderr, "safety/HsmInUse")
  match(r.stderr, "decommission")
  t.eq(fresh.sent(e, from).hsm_init, 0)
  t.eq(e:mutations("hsm1 lunash"), {}, "no LunaSH change reached hsm1")
end)

t.test("initialize hsm3 into demoHA: each change once, the application's key replicated, a second run changes nothing",
  function()
  local from = fresh.mark(e)
  local r = initialize({ "--yes" })
  t.eq(r.status, 0, r.stderr)
  -- (the first login was made by the refused run above: its step 1)
  t.eq(fresh.sent(e, from), { first_login = 0, hsm_init = 1, partition_create = 1, register = 1, assign = 1,
    add_server = 1, partition_init = 1, add_member = 1, synchronize = 1 })
  local state = hsm3()
  t.eq(state.hsm.initialized, true, "hsm3 initialised")
  t.ok(state.partitions.par1, "partition par1 on hsm3")
  t.eq(fresh.objects(e, "hsm3-par1"), { "secret_key:" .. fresh.APP_KEY }, "the application's key is on hsm3")
  local members = {}
  for _, m in ipairs(e:control("GET", "/client").groups[1].members) do members[#members + 1] = m.status end
  t.eq(members, { "alive", "alive", "alive" })
  match(r.stderr, "alive in HA group demoHA")
  match(r.stderr, ('add "%s" to the partitions of hsm3'):format(state.partitions.par1.serial), "the inventory's partitions")
  nomatch(r.stderr, "Fresh%-Passw0rd|Hsm%-SO%-Passw0rd|Par%-SO%-Passw0rd|another%-domain", "no secret printed")
  local log = util.read_file(e.dir .. "/estate.log")
  nomatch(log, "Fresh%-Passw0rd|Hsm%-SO%-Passw0rd|Par%-SO%-Passw0rd", "no secret in the estate's log")

  local again_from = fresh.mark(e)
  local again = initialize({ "--yes" })
  t.eq(again.status, 0, again.stderr)
  t.eq(fresh.sent(e, again_from), { first_login = 0, hsm_init = 0, partition_create = 0, register = 0, assign = 0,
    add_server = 0, partition_init = 0, add_member = 0, synchronize = 0 }, "a second run sends nothing")

  local d = e:run("run diagnose -e hsm=hsm3")
  nomatch(d.stdout .. d.stderr, "FAIL ", "diagnose finds no FAIL on hsm3")
end, { timeout = 240 })

t.test("recovery after Microsoft resets hsm2: trust, removeMember, initialize; keys replicated, diagnose clean",
  function()
  local reset = e:appliance("hsm2", "support-reset")
  t.ok(reset.host_keys and reset.host_keys.rsa, "the reset answers the new host keys' fingerprints")
  -- a changed host key stops every connection until the operator accepts it, fingerprint typed
  local refused = initialize({ "--yes" }, nil, "hsm2")
  t.ok(refused.status ~= 0, refused.stderr)
  match(refused.stderr, "inventory trust hsm2 %-%-fingerprint")
  local state = e.dir .. "/state"
  local trusted = e:run("inventory trust hsm2 --fingerprint " .. reset.host_keys.rsa .. " --yes", { state = state })
  t.eq(trusted.status, 0, trusted.stderr)
  -- the stale member (hsm2's old partition, gone with the reset) leaves the group
  local client = e.inventory.client
  local r = require("dhsm.proc").run { argv = { client.lunacm, "-c", "hagroup", "removeMember", "-group", "demoHA",
    "-serialNumber", e.serials.hsm2 }, env = { ChrystokiConfigurationPath = client.chrystoki_conf:match("^(.*)/[^/]*$") } }
  t.ok(r.ok, r.stdout)
  local from = fresh.mark(e)
  local again = initialize({ "--yes", "-e", "partition_label=hsm2-par2", "-e", "partition=par2" }, { partition = true },
    "hsm2")
  t.eq(again.status, 0, again.stderr)
  local n = e:count_since(from.log, { add_server = "^vtl: addServer .*%-> 0$", delete_server = "^vtl: deleteServer .*%-> 0$" })
  t.eq(n, { add_server = 1, delete_server = 1 }, "hsm2's old server certificate replaced in the client's trust")
  t.eq(fresh.objects(e, "hsm2-par2"), { "secret_key:" .. fresh.APP_KEY }, "the group's key replicated to hsm2 again")
  local d = e:run("run diagnose")
  nomatch(d.stdout .. d.stderr, " FAIL ", "diagnose finds no FAIL")
end, { timeout = 240 })
