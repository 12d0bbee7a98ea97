-- `dhsm inventory discover` and `dhsm inventory trust` against the
-- simulated estate: each credential of the chain, the address map, host
-- keys on first contact, a changed key and its explicit acceptance, and
-- --merge after the group gained and lost an HSM.  What reached the estate
-- is read from its own log (DIR/estate.log); what reached the disk from the
-- files themselves.
local t = require "dhsm.test"
local cjson = require "cjson"
local inventory = require "dhsm.inventory"
local util = require "dhsm.util"
local support = require "support.estate"

local q = util.shell_quote
local e = support.start { set = { hsm_step_seconds = 0, delete_seconds = 0, retry_after = 0 },
  args = "--appliances 2 --spare 1" }
local az = e.json.azure
local secret_value = assert(util.read_file(az.secret_file)):gsub("%s+$", "")
local ADDRESS_MAP = e.dir .. "/address-map.json"
local DEAD_IMDS = "http://127.0.0.1:9"           -- nothing listens: the chain goes on to az

-- Nothing of the operator's environment: no credential, no inventory, a home of the test's own.
local function clean_env(more)
  return ("env -u AZURE_CLIENT_ID -u AZURE_TENANT_ID -u AZURE_CLIENT_SECRET -u AZURE_SUBSCRIPTION_ID "
    .. "-u DHSM_INVENTORY HOME=%s %s"):format(q(t.tmpdir()), more or "")
end

local SP_ENV = clean_env(("AZURE_CLIENT_ID=%s AZURE_TENANT_ID=%s AZURE_CLIENT_SECRET=%s AZURE_SUBSCRIPTION_ID=%s")
  :format(q(az.client_id), q(az.tenant), q(secret_value), q(az.subscription)))

-- The rehearsal's endpoints (a real estate has Azure's defaults).
local function endpoints(imds)
  return ("--endpoint %s --authority %s --ca-file %s --imds-endpoint %s"):format(q(e.json.services.arm.url),
    q(e.json.services.aad.url), q(e.json.ca_file), q(imds or DEAD_IMDS))
end

-- discover(args, env [, state]) -> {status, stdout, stderr}, with no inventory
local function discover(args, env, state)
  return t.run("inventory discover -g hsm-rg " .. endpoints() .. " " .. args, { env = env or SP_ENV, state = state })
end

local function no_secret(r)
  t.ok(not (r.stdout .. r.stderr):find(secret_value, 1, true), "the client secret appears in the output")
end

local function audit_of(state)
  local out = {}
  for line in (util.read_file(state .. "/audit.jsonl") or ""):gmatch("[^\n]+") do out[#out + 1] = cjson.decode(line) end
  return out
end

local function count_audit(state, action, outcome)
  local n = 0
  for _, r in ipairs(audit_of(state)) do
    if r.action == action and (outcome == nil or r.outcome == outcome) then n = n + 1 end
  end
  return n
end

-- How many times the group's HSMs were listed, from the estate's own log.
local function listings()
  return support.count(e:log(), "^arm GET /subscriptions/[^/]+/resourceGroups/hsm%-rg/providers/"
    .. "Microsoft%.HardwareSecurityModules/dedicatedHSMs %-> 200")
end

local function address_map() return cjson.decode(assert(util.read_file(ADDRESS_MAP))) end

local function loads(text, what)
  local ok, inv = pcall(inventory.decode, text, what)
  t.ok(ok, tostring(inv))
  return inv
end

---------------------------------------------------------------------------

t.test("environment service principal: to stdout, loadable, the address map applied, host keys recorded with "
  .. "--accept-new (audited)", function()
  local kh, state = t.tmpdir() .. "/known_hosts", t.tmpdir()
  local before = listings()
  local r = discover("--address-map " .. q(ADDRESS_MAP) .. " --known-hosts " .. q(kh) .. " --accept-new", nil, state)
  t.eq(r.status, 0, r.stderr)
  no_secret(r)
  t.eq(listings(), before + 1, "one listing of the group reached the estate")
  local doc = cjson.decode(r.stdout)
  t.eq(doc.azure.credential, { type = "client_secret", client_id = az.client_id, secret = "env:AZURE_CLIENT_SECRET" })
  t.eq({ doc.azure.subscription, doc.azure.tenant, doc.azure.resource_group, doc.azure.location },
    { az.subscription, az.tenant, "hsm-rg", az.location })
  local inv = loads(r.stdout, "stdout")
  local map = address_map()
  t.eq(#inv.hsms, 2)
  local by_ip = {}
  for ip, m in pairs(map) do by_ip[m.ssh_port] = ip end
  for _, h in ipairs(inv.hsms) do
    t.ok(by_ip[h.ssh_port], h.name .. " has a port of the address map")
    t.eq({ h.host, h.ntls_port }, { map[by_ip[h.ssh_port]].host, map[by_ip[h.ssh_port]].ntls_port })
    t.eq({ h.password:origin(), h.so_password:origin(), h.resource, h.known_hosts }, { "prompt", "prompt", h.name, kh })
  end
  t.eq(#util.lines(assert(util.read_file(kh))), 2, "one known_hosts line per appliance")
  t.eq(count_audit(state, "ssh.accept_new_host_key", "added"), 2)
  t.eq(count_audit(state, "confirm", "skipped (--accept-new)"), 2)
end)

t.test("managed identity through the estate's IMDS, to -o FILE; a known key is said and left; -o refuses an "
  .. "existing file", function()
  local kh = t.tmpdir() .. "/known_hosts"
  t.eq(discover("--address-map " .. q(ADDRESS_MAP) .. " --known-hosts " .. q(kh) .. " --accept-new").status, 0)
  local kh_before = util.read_file(kh)
  local out = t.tmpdir() .. "/inv.json"
  local r = t.run(("inventory discover -g hsm-rg --subscription %s %s --address-map %s --known-hosts %s -o %s"):format(
    q(az.subscription), endpoints(e.json.services.imds.url), q(ADDRESS_MAP), q(kh), q(out)), { env = clean_env() })
  t.eq(r.status, 0, r.stderr)
  t.eq(r.stdout, "")
  local text = assert(util.read_file(out))
  t.eq(cjson.decode(text).azure.credential, { type = "managed_identity" })
  t.eq(cjson.decode(text).azure.tenant, az.tenant, "the tenant, from the subscription ARM serves")
  t.eq(#loads(text, out).hsms, 2)
  t.ok(r.stderr:find("already in " .. kh .. ", matching; nothing written", 1, true), r.stderr)
  t.eq(util.read_file(kh), kh_before, "known_hosts untouched")
  local again = t.run(("inventory discover -g hsm-rg --subscription %s %s --address-map %s --known-hosts %s -o %s")
    :format(q(az.subscription), endpoints(e.json.services.imds.url), q(ADDRESS_MAP), q(kh), q(out)), { env = clean_env() })
  t.eq(again.status, 2)
  t.ok(again.stderr:find("exists; nothing was written (--merge " .. out, 1, true), again.stderr)
  t.eq(util.read_file(out), text)
end)

t.test("az CLI login: the subscription from 'az account show', the credential azure_cli", function()
  local kh = t.tmpdir() .. "/known_hosts"
  local bin = t.here() .. "/../sim/bin"
  local r = discover("--address-map " .. q(ADDRESS_MAP) .. " --known-hosts " .. q(kh) .. " --accept-new",
    clean_env(("PATH=%s:\"$PATH\" DHSM_ESTATE_DIR=%s"):format(q(bin), q(e.dir))))
  t.eq(r.status, 0, r.stderr)
  local doc = cjson.decode(r.stdout)
  t.eq({ doc.azure.credential, doc.azure.subscription }, { { type = "azure_cli" }, az.subscription })
  loads(r.stdout, "stdout")
end)

t.test("the default known_hosts is not written into the entries; a fresh account's ~/.ssh is made (0700), as "
  .. "OpenSSH makes it", function()
  local home = t.tmpdir()
  local r = discover("--address-map " .. q(ADDRESS_MAP) .. " --accept-new", SP_ENV .. " HOME=" .. q(home))
  t.eq(r.status, 0, r.stderr)
  for _, h in ipairs(cjson.decode(r.stdout).hsms) do t.eq(h.known_hosts, nil) end
  t.eq(#util.lines(assert(util.read_file(home .. "/.ssh/known_hosts"))), 2)
  t.eq(require("dhsm.sys").stat(home .. "/.ssh").mode & tonumber("7777", 8), tonumber("700", 8))
end)

t.test("no terminal and no --accept-new: refused with the command to type, which then records the keys", function()
  local kh, state = t.tmpdir() .. "/known_hosts", t.tmpdir()
  local r = discover("--address-map " .. q(ADDRESS_MAP) .. " --known-hosts " .. q(kh), nil, state)
  t.eq(r.status, 3, r.stderr)
  t.eq(r.stdout, "")
  t.ok(util.read_file(kh) == nil, "nothing written to known_hosts")
  local command = r.stderr:match("then type: dhsm (.-)\n")
  t.ok(command and command:find("--accept-new", 1, true), r.stderr)
  no_secret(r)
  local typed = t.run(command, { env = SP_ENV, state = state })
  t.eq(typed.status, 0, typed.stderr)
  t.eq(#util.lines(assert(util.read_file(kh))), 2)
  loads(typed.stdout, "stdout")
end)

t.test("bad input is a usage error naming what is missing", function()
  local r = t.run("inventory discover " .. endpoints(), { env = SP_ENV })
  t.eq(r.status, 2)
  t.ok(r.stderr:find("give -g GROUP", 1, true), r.stderr)
  r = t.run("inventory discover -g hsm-rg " .. endpoints(), { env = clean_env("PATH=/nonexistent") })
  t.eq(r.status, 2)
  t.ok(r.stderr:find("give --subscription ID, or set AZURE_SUBSCRIPTION_ID", 1, true), r.stderr)
  local partial = t.tmpdir() .. "/map.json"
  local map = address_map()
  local dropped = next(map)
  map[dropped] = nil
  t.write(partial, cjson.encode(map))
  r = discover("--address-map " .. q(partial) .. " --known-hosts " .. q(t.tmpdir() .. "/kh") .. " --accept-new")
  t.eq(r.status, 2)
  t.ok(r.stderr:find("has no entry for " .. dropped, 1, true), r.stderr)
  -- a map that is no JSON object, or whose entry has a bad port: each named
  for text, said in pairs { ["[1, 2]"] = "expected a JSON object", ["{\"a\": "] = "invalid JSON at line 1",
    ['{"10.2.1.4": {"host": "127.0.0.1", "ssh_port": 0, "ntls_port": 2}}'] = '["10.2.1.4"].ssh_port: expected integer' } do
    t.write(partial, text)
    r = discover("--address-map " .. q(partial))
    t.eq(r.status, 2, text)
    t.ok(r.stderr:find(said, 1, true), text .. ": " .. r.stderr)
  end
  r = t.run("inventory trust hsm1 --merge x", { env = SP_ENV })
  t.eq(r.status, 2)
  t.ok(r.stderr:find("--merge is not one of 'inventory trust'", 1, true), r.stderr)
end)

---------------------------------------------------------------------------
-- what changes the estate: last

t.test("a changed host key: refused with both fingerprints; trust takes only the one the refusal names",
  function()
  local dir = t.tmpdir()
  local kh, inv_file, state = dir .. "/known_hosts", dir .. "/inv.json", t.tmpdir()
  local r = discover(("--address-map %s --known-hosts %s --accept-new -o %s"):format(q(ADDRESS_MAP), q(kh), q(inv_file)))
  t.eq(r.status, 0, r.stderr)
  local old_fp = r.stderr:match("hsm1: host key %S+ (SHA256:%S+) recorded")
  t.ok(old_fp, r.stderr)
  e:appliance("hsm1", "new-host-key")
  local kh_before = util.read_file(kh)
  r = discover("--address-map " .. q(ADDRESS_MAP) .. " --known-hosts " .. q(kh) .. " --accept-new")
  t.eq(r.status, 3)
  local new_fp = r.stderr:match("offered (SHA256:[%w+/]+)")
  t.ok(r.stderr:find("known " .. old_fp, 1, true) and new_fp and new_fp ~= old_fp, r.stderr)
  t.eq(util.read_file(kh), kh_before, "discover never replaces a key")
  -- a session's refusal names the remedy; typed back in with a wrong fingerprint, then the right one
  local env = SP_ENV .. " DHSM_INVENTORY=" .. q(inv_file)
  r = t.run("exec -e 'hsm(\"hsm1\")'", { env = env })
  t.eq(r.status, 3)
  local remedy = r.stderr:match("accept it with: dhsm (inventory trust [^\n]+)")
  t.eq(remedy, "inventory trust hsm1 --fingerprint " .. new_fp)
  local wrong = t.run("inventory trust hsm1 --fingerprint " .. old_fp .. " --yes", { env = env, state = state })
  t.eq(wrong.status, 3)
  t.ok(wrong.stderr:find("not " .. old_fp .. "; nothing was written", 1, true), wrong.stderr)
  local unconfirmed = t.run(remedy, { env = env, state = state })
  t.eq(unconfirmed.status, 3)
  t.ok(unconfirmed.stderr:find("no terminal to confirm it on; nothing was written", 1, true), unconfirmed.stderr)
  t.eq(util.read_file(kh), kh_before)
  -- a runbook replacing it through the library, with no question of its own: the gate's, refused here
  local runbook = t.run(("exec -e %s"):format(q(("require('dhsm.luna').trust_host_key(inv:hsm('hsm1'), %q)")
    :format(new_fp))), { env = env, state = state })
  t.eq(runbook.status, 3, runbook.stderr)
  t.ok(runbook.stderr:find("NotConfirmed", 1, true), runbook.stderr)
  t.eq(util.read_file(kh), kh_before, "no key replaced without the operator's word")
  local ok = t.run(remedy .. " --yes", { env = env, state = state })
  t.eq(ok.status, 0, ok.stderr)
  local lines, old_lines = util.lines(assert(util.read_file(kh))), util.lines(kh_before)
  t.eq(#lines, #old_lines)
  t.eq(lines[1], old_lines[2], "hsm2's line kept as it was")
  t.ok(lines[2] ~= old_lines[1])
  local replaced
  for _, a in ipairs(audit_of(state)) do
    if a.action == "ssh.replace_host_key" and a.outcome == "replaced" then replaced = a end
  end
  t.eq(replaced and { replaced.old, replaced.fingerprint, replaced.appliance }, { old_fp, new_fp, "hsm1" })
  t.eq(count_audit(state, "ssh.replace_host_key", "sending"), 1)
  r = discover("--address-map " .. q(ADDRESS_MAP) .. " --known-hosts " .. q(kh))
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("hsm1: host key %S+ " .. new_fp:gsub("%p", "%%%0") .. " already in"), r.stderr)
end)

t.test("at a terminal: a new host key is recorded only when yes is typed (audited), nothing on another answer",
  function()
  local tty = require "support.tty"
  if not tty.available() then t.skip("tmux is not installed") end
  local function session(kh, state)
    return tty.start(t.cmd("inventory discover -g hsm-rg " .. endpoints() .. " --address-map " .. q(ADDRESS_MAP)
      .. " --known-hosts " .. q(kh) .. " -o " .. q(t.tmpdir() .. "/inv.json")),
      { env = SP_ENV .. " DHSM_AUDIT=" .. q(state .. "/audit.jsonl"), keep = true })
  end
  -- the question of appliance name, read off the screen (wrapped lines joined) -> the fingerprint shown
  local function asked(term, name)
    term.wait_for("type yes to record it:$", 30)
    local screen = term.screen():gsub("\n", "")
    local shown = screen:match(name .. " %(127%.0%.0%.1:%d+%) offers the ssh%-%S+ host key (SHA256:[%w+/]+), not in "
      .. "[^;]*; type yes to record it:$")
    t.ok(shown, screen)
    return shown
  end
  -- "no" for the first key: nothing written, the run refused
  local kh, state = t.tmpdir() .. "/known_hosts", t.tmpdir()
  local term = session(kh, state)
  asked(term, "hsm1")
  term.keys("no", "Enter")
  term.wait_for("not confirmed: the host key of hsm1", 30)
  term.wait_for("%[exit [1-9]%d*%]$", 30)
  t.eq(util.read_file(kh), nil, "nothing recorded")
  t.eq(count_audit(state, "confirm", "refused (typed something else)"), 1)
  -- "yes" for each: both recorded, each typed confirmation audited, the keys on file those shown
  kh, state = t.tmpdir() .. "/known_hosts", t.tmpdir()
  term = session(kh, state)
  local shown = {}
  for _, name in ipairs { "hsm1", "hsm2" } do
    shown[name] = asked(term, name)
    term.keys("yes", "Enter")
    if name == "hsm1" then term.wait_for("recorded in", 30) end
  end
  term.wait_for("inv%.json: 2 HSMs of hsm%-rg", 30)
  term.wait_for("%[exit 0%]$", 30)
  t.eq(#util.lines(assert(util.read_file(kh))), 2)
  t.eq(count_audit(state, "confirm", "typed"), 2)
  for _, name in ipairs { "hsm1", "hsm2" } do
    local entry = setmetatable({ known_hosts = kh }, { __index = e.inventory:hsm(name) })
    t.eq(require("dhsm.luna").host_key(entry).sha256, shown[name], name .. ": the key on file is the one shown")
  end
end)

t.test("an appliance whose SSH does not answer: its entry written, its key unchecked, the run says so and exits 1",
  function()
  local dir = t.tmpdir()
  local map = address_map()
  local ip2
  for ip, m in pairs(map) do
    if m.ssh_port == e.inventory:hsm("hsm2").ssh_port then ip2 = ip end
  end
  map[ip2].ssh_port = 1                                      -- nothing listens there: refused at once
  t.write(dir .. "/map.json", cjson.encode(map))
  local kh, out = dir .. "/known_hosts", dir .. "/inv.json"
  local r = discover(("--address-map %s --known-hosts %s --accept-new -o %s"):format(q(dir .. "/map.json"), q(kh), q(out)))
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find("hsm2: SSH does not answer", 1, true), r.stderr)
  t.ok(r.stderr:find("goal not reached: 1 HSM not written, or not checked", 1, true), r.stderr)
  local inv = loads(assert(util.read_file(out)), out)
  t.eq({ inv:hsm("hsm1").name, inv:hsm("hsm2").ssh_port }, { "hsm1", 1 })
  t.eq(#util.lines(assert(util.read_file(kh))), 1, "hsm1's key recorded, hsm2's not")
end)

t.test("--merge: a new HSM added, a deleted one flagged, nothing else changed; --check writes nothing", function()
  local dir = t.tmpdir()
  local file, kh, state = dir .. "/inventory.json", dir .. "/known_hosts", t.tmpdir()
  -- the estate's own inventory, as an operator keeps it: its client section, its formatting, its secrets
  local original = assert(util.read_file(e.dir .. "/inventory.json"))
  t.write(file, original)
  local env = SP_ENV
  local merge = ("inventory discover --address-map %s --known-hosts %s --merge %s"):format(q(ADDRESS_MAP), q(kh), q(file))
  local r = t.run(merge, { env = env })
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("nothing to add", 1, true), r.stderr)
  t.eq(util.read_file(file), original)
  local c = e:azure()
  t.eq(select(2, e:put_hsm(c, "hsm3", { vnet = "hsm-vnet", subnet = "hsm", stamp = "stamp1" })), "Succeeded")
  t.eventually(function()
    local n = 0
    for _ in pairs(address_map()) do n = n + 1 end
    return n == 3
  end, "the address map lists the appliance bound to hsm3")
  local puts = #e:mutations()
  r = t.run(merge .. " --check --accept-new", { env = env, state = state })
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find('+ { "name": "hsm3"', 1, true), r.stderr)
  t.ok(r.stderr:find("check mode: nothing was written", 1, true), r.stderr)
  t.eq(util.read_file(file), original)
  t.ok(util.read_file(kh) == nil, "check mode records no host key")
  r = t.run(merge .. " --accept-new", { env = env })
  t.eq(r.status, 3, "no terminal and no --yes: refused")
  t.eq(util.read_file(file), original)
  t.ok(util.read_file(kh) == nil, "a refused merge records no host key either")
  r = t.run(merge .. " --accept-new --yes", { env = env, state = state })
  t.eq(r.status, 0, r.stderr)
  no_secret(r)
  local merged = assert(util.read_file(file))
  local cut = original:find("%s*%]%s*,%s*\"client\"")        -- the end of the last entry
  t.ok(cut, "the estate's inventory lists hsms before client")
  t.eq(merged:sub(1, cut - 1), original:sub(1, cut - 1), "every byte before the new entry kept")
  t.eq(merged:sub(-(#original - cut + 1)), original:sub(cut), "every byte after it kept")
  local inv = loads(merged, file)
  local hsm3 = inv:hsm("hsm3")
  t.eq({ hsm3.resource, hsm3.password:origin(), hsm3.so_password:origin(), hsm3.known_hosts }, { "hsm3", "prompt", "prompt", kh })
  t.eq(#e:mutations(), puts, "discover changed nothing in the estate")
  -- hsm2's resource deleted: flagged, its entry kept, nothing written
  e:appliance("hsm2", "zeroize")
  e:remove_hsm(c, "hsm2")
  r = t.run(merge .. " --yes", { env = env })
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("! hsm2: resource hsm2 is not in resource group hsm-rg", 1, true), r.stderr)
  t.ok(r.stderr:find("nothing to add", 1, true) and r.stderr:find("1 flagged", 1, true), r.stderr)
  t.eq(util.read_file(file), merged)
end)

t.test("--merge into an inventory starting with a UTF-8 byte order mark: read, merged, written without the mark",
  function()
  -- after the test above the group holds hsm3: an inventory without it, as a Windows editor saved it
  local dir = t.tmpdir()
  local file, kh = dir .. "/inventory.json", dir .. "/known_hosts"
  local inv = cjson.decode(assert(util.read_file(e.dir .. "/inventory.json")))
  local kept = {}
  for _, h in ipairs(inv.hsms) do
    if h.name ~= "hsm3" then kept[#kept + 1] = h end
  end
  inv.hsms = kept
  t.write(file, "\239\187\191" .. cjson.encode(inv))
  local r = t.run(("inventory discover --address-map %s --known-hosts %s --merge %s --accept-new --yes"):format(
    q(ADDRESS_MAP), q(kh), q(file)), { env = SP_ENV })
  t.eq(r.status, 0, r.stderr)
  t.ok(not r.stderr:find("invalid JSON", 1, true) and not r.stderr:find("expected a JSON object", 1, true), r.stderr)
  local merged = assert(util.read_file(file))
  t.ok(merged:sub(1, 1) == "{", "the mark is not written back")
  t.eq(loads(merged, file):hsm("hsm3").resource, "hsm3")
end)
