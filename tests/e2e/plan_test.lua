-- Two operators against the simulated estate: alice plans a decommission
-- and signs the plan with her SSH key, bob reviews and approves it with his,
-- alice applies it - under a host policy that lets decommission and every
-- destructive change go only from an approved plan.  What reached the
-- estate is counted from its own request log (estate.log), never from
-- dhsm's output.  The keys are real OpenSSH keys, the signatures
-- ssh-keygen's own (namespace dhsm-plan), checked against an
-- allowed_signers file.
local t = require "dhsm.test"
local support = require "support.estate"
local killrun = require "support.killrun"
local cjson = require "cjson"
local util = require "dhsm.util"

local q = util.shell_quote

local function estate()
  return support.start { set = { delete_seconds = 0, retry_after = 0, hsm_step_seconds = 0, gateway_seconds = 0,
    network_seconds = 0 }, args = "--appliances 2" }
end

local operators = require("support.operators").new

-- The operators' inventory: the SO passwords by reference.
local function inventory(e)
  local inv = cjson.decode(util.read_file(e.dir .. "/inventory.json"))
  for _, h in ipairs(inv.hsms) do h.so_password = "file:" .. e.dir .. "/secrets/" .. h.name .. "_so_password" end
  local path = e.dir .. "/operators-inventory.json"
  t.write(path, cjson.encode(inv))
  return path
end

-- dhsm ARGS as an operator on this host: the estate's state folder and audit log, the host's policy
local function dhsm(e, k, args)
  return t.run(args, { state = e.dir .. "/state", env = k.env })
end

local DECOMMISSION = "run decommission -e hsm=hsm1 -e backups_confirmed=true -e poll_interval=0.02"

-- alice's plan, saved to a new file -> its path
local function plan_by_alice(e, k)
  local path = t.tmpdir() .. "/plan.json"
  local r = dhsm(e, k, ("-i %s %s --check --out %s --key %s"):format(q(inventory(e)), DECOMMISSION, q(path), q(k.alice)))
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("plan written to " .. path, 1, true), r.stderr)
  return path
end

local function approve(e, k, path, who)
  return dhsm(e, k, ("plan approve %s --key %s"):format(q(path), q(k[who])))
end

-- What reached the estate: zeroizations and DELETEs of hsm1, from its log
local function sent(e)
  local n = { zeroize = 0, delete = 0 }
  for _, x in ipairs(e:mutations()) do
    if x:match("^hsm1 lunash: hsm zeroize") then n.zeroize = n.zeroize + 1 end
    if x:match("^DELETE .*/dedicatedHSMs/hsm1$") then n.delete = n.delete + 1 end
  end
  return n
end

local function audit(e)
  return t.audit_records(e.dir .. "/state/audit.jsonl")
end

---------------------------------------------------------------------------

-- docs/playbooks.md's worked example, its commands as they read there
local function worked_example()
  local doc = util.read_file(t.here() .. "/../../docs/playbooks.md")
  local block = doc:match("<!%-%- two%-operators %-%->\n```sh\n(.-)```")
  t.ok(block, "docs/playbooks.md lost its two-operators example")
  local lines = {}
  for line in block:gmatch("[^\n]+") do
    if not line:match("^#") then lines[#lines + 1] = line end
  end
  return lines
end

t.test("two operators: alice plans, bob approves with his SSH key, alice applies exactly that", function()
  local e, k = estate(), operators()
  local plan = t.tmpdir() .. "/plan.json"
  local vars = ("dhsm() { %s \"$@\"; }; INVENTORY=%s PLAN=%s ALICE_KEY=%s BOB_KEY=%s XDG_STATE_HOME=%s DHSM_AUDIT=%s %s; "
    .. "export XDG_STATE_HOME DHSM_AUDIT DHSM_POLICY; "):format(q(t.dhsm), q(inventory(e)), q(plan), q(k.alice), q(k.bob),
    q(e.dir .. "/state"), q(e.dir .. "/state/audit.jsonl"), k.env)
  local lines = worked_example()
  t.eq(#lines, 4, "plan, show, approve, apply")
  local before = #e:mutations()
  local out = {}
  for i, line in ipairs(lines) do
    out[i] = t.sh(vars .. line)
    if i == 1 then t.eq(#e:mutations(), before, "planning sends nothing") end
    t.eq(out[i].status, 0, line .. "\n" .. out[i].stderr)
  end
  -- bob read the destructive changes first
  local shown = out[2].stdout
  local zeroize_at = shown:find("hsm zeroize -force", 1, true)
  local login_at = shown:find("log in as HSM SO", 1, true)
  t.ok(zeroize_at and login_at and zeroize_at < login_at, shown)
  t.ok(shown:find("/dedicatedHSMs/hsm1", 1, true), shown)
  t.eq(sent(e), { zeroize = 1, delete = 1 })
  t.eq({ e:hsms().hsm1, e:hsms().hsm2 ~= nil }, { nil, true })
  -- the approval and the apply are audited with the signers' fingerprints
  local approved, applied = false, false
  for _, x in ipairs(audit(e)) do
    if x.action == "plan.approve" and x.outcome == "approved" and x.approver_key == k.bob_fp then approved = true end
    if x.action == "plan.apply" and util.same(x.signers, { k.bob_fp }) then applied = true end
  end
  t.eq({ approved, applied }, { true, true })
end)

t.test("a plan not yet approved is not applied, --yes or not", function()
  local e, k = estate(), operators()
  local path = plan_by_alice(e, k)
  local r = dhsm(e, k, "run --plan " .. q(path) .. " --yes")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("NotApproved", 1, true), r.stderr)
  t.eq(sent(e), { zeroize = 0, delete = 0 })
end)

t.test("with the policy in force no route acts without an approved plan: run, exec, the REPL; --yes is no approval", function()
  local e, k = estate(), operators()
  local inv = inventory(e)
  local r = dhsm(e, k, ("-i %s %s --yes"):format(q(inv), DECOMMISSION))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("PlanRequired", 1, true) or r.stderr:find("only from an approved plan", 1, true), r.stderr)
  local code = ("local s <close> = hsm 'hsm1'; s:login_so(require('dhsm.secret').file(%s)); s:run('hsm zeroize -force')")
    :format(("%q"):format(e.dir .. "/secrets/hsm1_so_password"))
  r = dhsm(e, k, ("-i %s exec --yes -e %s"):format(q(inv), q(code)))
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("approved plan", 1, true), r.stderr)
  r = dhsm(e, k, ("-i %s exec --yes -e %s"):format(q(inv),
    q("az:delete(az:group_path('hsm-rg') .. '/providers/Microsoft.HardwareSecurityModules/dedicatedHSMs/hsm2')")))
  t.eq(r.status, 3, r.stderr)
  -- parallel tasks, each its own zeroize: each refused at the gate
  local each = ("local refused = 0; dhsm.parallel({ 'hsm1', 'hsm2' }, function(name) local s <close> = hsm(name); "
    .. "s:login_so(require('dhsm.secret').file(%q .. '/secrets/' .. name .. '_so_password')); "
    .. "local ok, err = pcall(s.run, s, 'hsm zeroize -force'); assert(not ok and err.code == 'PlanRequired', "
    .. "tostring(err)); refused = refused + 1 end); print('refused ' .. refused)"):format(e.dir)
  r = dhsm(e, k, ("-i %s exec --yes -e %s"):format(q(inv), q(each)))
  t.eq({ r.status, r.stdout }, { 0, "refused 2\n" }, r.stderr)
  t.eq(support.count(e:mutations(), "lunash: hsm zeroize"), 0, "no zeroize reached any appliance")
  r = t.run(("-i %s repl"):format(q(inv)), { state = e.dir .. "/state", env = k.env,
    stdin = ("s = hsm 'hsm1'\ns:login_so(require('dhsm.secret').file(%q))\ns:run('hsm zeroize -force')\n")
      :format(e.dir .. "/secrets/hsm1_so_password") })
  t.ok(r.stdout:find("approved plan", 1, true) or r.stderr:find("approved plan", 1, true), r.stdout .. r.stderr)
  t.eq(sent(e), { zeroize = 0, delete = 0 })
  t.eq({ e:hsms().hsm1 ~= nil, e:hsms().hsm2 ~= nil }, { true, true })
  -- a check run is no change: it plans under the policy as anywhere
  r = dhsm(e, k, ("-i %s %s --check"):format(q(inv), DECOMMISSION))
  t.eq(r.status, 0, r.stderr)
  t.eq(sent(e), { zeroize = 0, delete = 0 })
end)

t.test("a plan tampered with, approved by an unlisted key or by its author, or expired: refused, nothing sent", function()
  local e, k = estate(), operators()
  -- the author's own approval does not count, even though alice is listed
  local path = plan_by_alice(e, k)
  local r = approve(e, k, path, "alice")
  t.eq(r.status, 3, r.stderr)
  r = dhsm(e, k, "run --plan " .. q(path) .. " --yes")
  t.eq(r.status, 3, r.stderr)
  -- carol is not in allowed_signers: her signature is no approval
  approve(e, k, path, "carol")
  r = dhsm(e, k, "run --plan " .. q(path) .. " --yes")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("NotApproved", 1, true), r.stderr)
  -- bob's approval, then one byte of the body changed
  t.eq(approve(e, k, path, "bob").status, 0)
  local text = util.read_file(path)
  local tampered = text:gsub("hsm zeroize %-force", "hsm zeroize -forcf", 1)
  t.ok(tampered ~= text)
  t.write(path, tampered)
  r = dhsm(e, k, "run --plan " .. q(path) .. " --yes")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("PlanTampered", 1, true) or r.stderr:find("changed after", 1, true), r.stderr)
  -- an expired plan: made valid for 1 s, approved, applied too late
  local short = t.tmpdir() .. "/short.json"
  r = dhsm(e, k, ("-i %s %s --check --out %s --key %s --valid-for 0.0003"):format(q(inventory(e)), DECOMMISSION,
    q(short), q(k.alice)))
  t.eq(r.status, 0, r.stderr)
  t.eq(approve(e, k, short, "bob").status, 0)
  local y, mo, d, h, mi, sec = cjson.decode(util.read_file(short)).body.expires:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)Z$")
  local expires = os.time { year = y, month = mo, day = d, hour = h, min = mi, sec = sec, isdst = false }
    + (os.time() - os.time(os.date("!*t")))                       -- the UTC time, as this host's epoch
  t.eventually(function() return os.time() > expires + 1 end, "the plan's expiry passes", 10)
  r = dhsm(e, k, "run --plan " .. q(short) .. " --yes")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("PlanExpired", 1, true) or r.stderr:find("expired", 1, true), r.stderr)
  t.eq(sent(e), { zeroize = 0, delete = 0 })
end)

-- Apply an approved plan after `change(e)` changed the estate: stopped
-- before the first change that differs; what was sent is counted.
local function changed_since(change)
  local e, k = estate(), operators()
  local path = plan_by_alice(e, k)
  t.eq(approve(e, k, path, "bob").status, 0)
  change(e, k)
  local before = #e:mutations()
  local r = dhsm(e, k, "run --plan " .. q(path) .. " --yes")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("the estate changed since the plan was approved", 1, true), r.stderr)
  return e, before, r
end

-- an out-of-band LunaSH change on hsm1 by another operator (no policy in
-- that process: the test's own hand)
local function on_hsm1(e, lines)
  local code = ("local s <close> = hsm 'hsm1'; s:login_so(require('dhsm.secret').file(%q)); %s")
    :format(e.dir .. "/secrets/hsm1_so_password", lines)
  local r = t.run(("-i %s exec --yes -e %s"):format(q(e.dir .. "/inventory.json"), q(code)))
  t.eq(r.status, 0, r.stderr)
end

t.test("the estate changed between approval and apply: stopped before the first differing change, nothing sent", function()
  -- an extra partition (and so what zeroizing destroys) on hsm1
  local e, before, r = changed_since(function(e) on_hsm1(e, "s:must('partition create -partition extra -force')") end)
  t.eq(#e:mutations(), before, "nothing sent")
  t.eq(sent(e), { zeroize = 0, delete = 0 })
  t.ok(r.stderr:find("hsms[1].partitions was none, now [{", 1, true), r.stderr)
  -- the way on, typed as it reads: a new plan of the estate as it is now
  local hint = r.stderr:match("make a new plan, and have it approved: dhsm (.-)\n")
  t.ok(hint, r.stderr)
  local fresh = t.tmpdir() .. "/new-plan.json"
  hint = hint:gsub("NEW%-PLAN%.json", q(fresh)):gsub(" KEY$", " " .. q(operators().alice))
  local again = t.run(hint, { state = e.dir .. "/state" })
  t.eq(again.status, 0, again.stderr)
  t.ok(util.read_file(fresh):find("partition", 1, true) ~= nil)
  t.eq(#e:mutations(), before, "nothing sent")
  -- the HSM already given back by someone else
  e, before = changed_since(function(e, k)
    local r = t.run(("-i %s %s --yes"):format(q(inventory(e)), DECOMMISSION), { state = t.tmpdir() })
    t.eq(r.status, 0, r.stderr)
    t.eq(sent(e), { zeroize = 1, delete = 1 })
    t.ok(k)
  end)
  t.eq(#e:mutations(), before, "nothing sent")
  -- the appliance re-initialised (zeroized, then initialised again with another label)
  e, before = changed_since(function(e)
    on_hsm1(e, "s:run('hsm zeroize -force')")
  end)
  t.eq(#e:mutations(), before, "nothing sent")
end)

-- Kill points while a plan is applied (make test runs those marked
-- reduced; DHSM_KILLS=full, make kills, runs them all).
local FULL = os.getenv("DHSM_KILLS") == "full"

local function delete_record(outcome)
  return { where = "with hsm1's DELETE " .. (outcome == "sending" and "on its way" or "accepted, being waited for"),
    match = function(r)
      return r.action == "azure.DELETE" and r.outcome == outcome and (r.target or ""):match("/hsm1$") ~= nil
    end }
end

local KILLS = {
  { point = killrun.after_command("hsm login") },
  { point = killrun.after_command("hsm zeroize -force"), reduced = true },
  { point = delete_record("sending"), reduced = true },
  { point = delete_record("202") },
}

-- One kill point: killed there, resumed; each change sent once, under the plan
local function killed_and_resumed(kill)
  local e, k = estate(), operators()
  local path = plan_by_alice(e, k)
  t.eq(approve(e, k, path, "bob").status, 0)
  local p <close> = require("dhsm.proc").spawn { argv = { t.dhsm, "run", "--plan", path, "--yes" },
    env = { XDG_STATE_HOME = e.dir .. "/state", DHSM_AUDIT = e.dir .. "/audit.jsonl", DHSM_POLICY = k.policy } }
  killrun.kill_at(e, p, kill.point)
  local r = t.run("run decommission --resume " .. killrun.run_id(e) .. " --yes",
    { state = e.dir .. "/state", env = k.env .. " DHSM_AUDIT=" .. q(e.dir .. "/audit.jsonl") })
  t.eq(r.status, 0, kill.point.where .. ": " .. r.stderr)
  t.eq(sent(e), { zeroize = 1, delete = 1 }, kill.point.where)
  -- the resume applied the plan: every intent record of the run names it
  local intents, under_plan = 0, 0
  for _, x in ipairs(t.audit_records(e.dir .. "/audit.jsonl")) do
    if x.outcome == "sending" and x.run == killrun.run_id(e) then
      intents = intents + 1
      if x.plan then under_plan = under_plan + 1 end
    end
  end
  t.eq({ under_plan >= 3, under_plan }, { true, intents }, kill.point.where)
end

t.test("killed while applying a plan, then --resume: held to the plan again, nothing sent twice", function()
  for _, kill in ipairs(KILLS) do
    if FULL or kill.reduced then killed_and_resumed(kill) end
  end
end, { timeout = 240 })

t.test("a plan is applied once: two processes at once, one applies it, the other is refused; again later, refused", function()
  local e, k = estate(), operators()
  local path = plan_by_alice(e, k)
  t.eq(approve(e, k, path, "bob").status, 0)
  local env = { XDG_STATE_HOME = e.dir .. "/state", DHSM_AUDIT = e.dir .. "/audit.jsonl", DHSM_POLICY = k.policy }
  local spawn = require("dhsm.proc").spawn
  local a <close> = spawn { argv = { t.dhsm, "run", "--plan", path, "--yes" }, env = env }
  local b <close> = spawn { argv = { t.dhsm, "run", "--plan", path, "--yes" }, env = env }
  local ra, rb = a:wait(120), b:wait(120)
  local statuses = { ra.status, rb.status }
  table.sort(statuses)
  t.eq(statuses, { 0, 3 }, a:stderr() .. b:stderr())
  t.ok((a:stderr() .. b:stderr()):find("a plan is applied once", 1, true), a:stderr() .. b:stderr())
  t.eq(sent(e), { zeroize = 1, delete = 1 })
  local r = dhsm(e, k, "run --plan " .. q(path) .. " --yes")
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("PlanApplied", 1, true) or r.stderr:find("was applied by run", 1, true), r.stderr)
  t.eq(sent(e), { zeroize = 1, delete = 1 })
end)

t.test("a provision plan applies as made: the run's own id in its tags by its role, each body by its canonical JSON", function()
  local e = support.start { set = { hsm_step_seconds = 0, gateway_seconds = 0, network_seconds = 0, delete_seconds = 0,
    retry_after = 0 }, args = "--appliances 0" }
  local k = operators { playbooks = { "provision" }, destructive_changes = false }
  local path = t.tmpdir() .. "/provision.json"
  local r = dhsm(e, k, ("-i %s run provision -e poll_interval=0.02 -e backoff=0.01 -e hsms=hsm-a:stamp1,hsm-b:stamp2 "
    .. "-e vnet=plan-vnet -e gateway=plan-gw -e gateway_pip=plan-pip --check --out %s --key %s")
    :format(q(e.dir .. "/inventory.json"), q(path), q(k.alice)))
  t.eq(r.status, 0, r.stderr)
  t.eq(e:mutations(), {}, "planning sends nothing")
  local planned = #cjson.decode(util.read_file(path)).body.changes
  t.eq(approve(e, k, path, "bob").status, 0)
  r = dhsm(e, k, "run --plan " .. q(path) .. " --yes")
  t.eq(r.status, 0, r.stderr)
  local puts = support.count(e:mutations(), "^PUT ")
  t.eq({ puts, planned > 0 }, { planned, true }, "each planned change sent once")
  t.eq({ e:hsms()["hsm-a"], e:hsms()["hsm-b"] }, { "Succeeded", "Succeeded" })
end)
